"""Keras's three gradient-clipping rules: per-tensor norm, global norm, value.

Sparse `optadam.IndexedSlices` gradients are clipped on their raw values, before
duplicate rows are summed (what Keras does: its norms are over the raw values).

Complex gradients: the norms are over the moduli, ``||g||^2 = sum |g|^2`` (a
complex number counts as its two real parts), and the norm clips scale both parts
by the same real factor, so they keep the gradient's phase. ``clipvalue`` clips
the real and imaginary parts separately to ``[-clipvalue, clipvalue]`` (the
gradient seen as pairs of reals, the only reading of "value" that needs no
ordering of complex numbers); use ``clipnorm`` to bound moduli instead.

The norm clips also take the packed gradients of `optadam.grouping.group_leaves`: a
`LeafGroups` node's members' norms are summed from its flat buffers (`segment_sums_of_squares`,
a few kernels per group instead of one or more per leaf), and its other leaves are clipped as
they are.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _tree
from optadam import grouping
from optadam import hyperparams
from optadam import sparse


def check_threshold(name: str, value: Any) -> None:
  """Validates a clipping threshold: a finite number > 0 (traced values pass)."""
  hyperparams.check_number(
    name,
    value,
    allow_callable=False,
    low=0.0,
    allowed="in optadam.adam, None or 0 means no clipping",
  )
  if hyperparams.concrete_number(value) == 0.0:
    raise ValueError(
      f"`{name}` must be > 0 for this transform (in `optadam.adam`, "
      f"None or 0 means 'no clipping'); got {value!r}."
    )


def _sum_of_squares(g: Any) -> jax.Array:
  """sum(|g|**2) over the raw values, accumulated in at least float32 (real)."""
  values = sparse.values_of(g)
  acc_dtype = jnp.promote_types(values.dtype, jnp.float32)
  if _tree.is_complex(values.dtype):
    return jnp.sum(_tree.complex_abs_sq(values, _tree.real_dtype(acc_dtype)))
  return jnp.sum(jnp.square(values.astype(acc_dtype)))


def keras_clip(clipnorm: Any, clipvalue: Any, global_clipnorm: Any) -> optax.GradientTransformation:
  """The one clipping rule Keras's arguments set (``None`` or 0: off), or ``optax.identity()``.

  Raises:
    ValueError: when more than one of the three is set (Keras 3's rule).
  """
  given = {
    name: value
    for name, value in (
      ("clipnorm", clipnorm),
      ("clipvalue", clipvalue),
      ("global_clipnorm", global_clipnorm),
    )
    if is_set(value)
  }
  if len(given) > 1:
    raise ValueError(
      f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; got "
      f"{', '.join(f'{k}={v!r}' for k, v in given.items())}."
    )
  if "clipnorm" in given:  # each clipping transform validates its own threshold
    return clip_by_tensor_norm(clipnorm)
  if "global_clipnorm" in given:
    return clip_by_keras_global_norm(global_clipnorm)
  if "clipvalue" in given:
    return clip_by_value(clipvalue)
  return optax.identity()


def is_set(value: Any) -> bool:
  """Keras's "off" for clipping: None or 0."""
  return value is not None and hyperparams.concrete_number(value) != 0.0


def clip_by_tensor_norm(clipnorm: float) -> optax.GradientTransformation:
  """Clips each gradient tensor to L2 norm `clipnorm` (Keras's ``clipnorm``).

  ``g <- (g * clipnorm) / max(||g||_2, clipnorm)``, tensor by tensor (Keras's
  formula, with its rounding). A zero gradient stays zero.

  Differs from ``optax.clip_by_global_norm`` (one norm over the whole tree) and
  ``optax.clip_by_block_rms`` (RMS, not norm). The norm of a 16-bit tensor is
  accumulated in float32. A complex tensor's norm is over its moduli, and both
  parts are divided by the same real number (the phase is kept).

  Args:
    clipnorm: the largest L2 norm a gradient tensor may have (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  check_threshold("clipnorm", clipnorm)

  def clip(g):
    values = sparse.values_of(g)
    return sparse.with_values(g, _clip_to(values, jnp.sqrt(_sum_of_squares(g)), clipnorm))

  def clip_node(g):
    if not grouping.is_groups(g):
      return clip(g)
    groups = tuple(
      None if flat is None else _clip_to(flat, _packed_norms(group, flat), clipnorm)
      for group, flat in zip(g.layout.groups, g.groups)
    )
    return grouping.LeafGroups(groups, _tree.map_grads(clip, g.leaves), g.layout)

  def update_fn(updates, state, params=None):
    del params
    return _map_nodes(clip_node, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_keras_global_norm(global_clipnorm: float) -> optax.GradientTransformation:
  """Scales all gradients so that their global L2 norm is at most `global_clipnorm`.

  With ``n`` the L2 norm over every (non-None) gradient,
  ``g <- g * (c * min(1/n, 1/c) + (n - n))`` — Keras's factor. Below the
  threshold that factor can differ from 1 by an ulp, and a non-finite ``n``
  turns every gradient into NaN; both are what Keras does, and kept.

  Differs from ``optax.clip_by_global_norm``, which leaves gradients untouched
  below the threshold and multiplies by ``c / n`` above it. Complex gradients
  count with their moduli in ``n``; both parts are multiplied by the real factor.

  Args:
    global_clipnorm: the largest global norm (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  check_threshold("global_clipnorm", global_clipnorm)

  def update_fn(updates, state, params=None):
    del params
    parts = _norm_parts(updates)
    if not parts:
      return updates, state
    norm = jnp.sqrt(jnp.sum(jnp.stack([_sum_of_squares(g) for g in parts])))
    scale = _keras_global_scale(norm, global_clipnorm)
    return _tree.map_grads(lambda g: _scale_by_real(g, scale), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _clip_to(values: jax.Array, norm: jax.Array, clipnorm: Any) -> jax.Array:
  """Keras's ``(g * clipnorm) / max(norm, clipnorm)``, in at least float32, in `values`' dtype."""
  dtype = jnp.promote_types(values.dtype, jnp.float32)
  clipped = _tree.divide_by_real(values.astype(dtype) * clipnorm, jnp.maximum(norm, clipnorm))
  return clipped.astype(values.dtype)


def _map_nodes(fn: Any, updates: Any) -> Any:
  """Maps `fn` over the gradient leaves and `LeafGroups` nodes of `updates`; None stays None."""
  is_node = lambda x: grouping.is_groups(x) or _tree.is_grad_leaf(x)
  return jax.tree.map(lambda g: None if g is None else fn(g), updates, is_leaf=is_node)


def _norm_parts(updates: Any) -> list[Any]:
  """The arrays a global norm sums over: each gradient leaf; a `LeafGroups`'s buffers, leaves."""
  parts: list[Any] = []
  is_node = lambda x: grouping.is_groups(x) or _tree.is_grad_leaf(x)
  for g in jax.tree.leaves(updates, is_leaf=is_node):
    if grouping.is_groups(g):
      parts += [flat for flat in g.groups if flat is not None]
      parts += [x for x in _tree.flatten_grads(g.leaves)[0] if x is not None]
    elif g is not None:
      parts.append(g)
  return parts


def _packed_norms(group: grouping.Group, flat: jax.Array) -> jax.Array:
  """Each member's L2 norm, spread over its elements of the packed buffer `flat`."""
  dtype = jnp.promote_types(flat.dtype, jnp.float32)
  return per_element(group, jnp.sqrt(segment_sums_of_squares(group, flat)).astype(dtype))


def _keras_global_scale(norm: jax.Array, global_clipnorm: Any) -> jax.Array:
  """Keras's global-clip factor ``c * min(1/n, 1/c) + (n - n)`` (NaN when `norm` is not finite)."""
  scale = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
  return scale + (norm - norm)


def _scale_by_real(g: Any, scale: jax.Array) -> Any:
  """`g` (dense or sparse values) times the real `scale`; a complex `g` part by part."""
  values = sparse.values_of(g)
  if _tree.is_complex(values.dtype):  # both parts times the real factor
    part_scale = scale.astype(_tree.real_dtype(values.dtype))
    return sparse.with_values(
      g, jax.lax.complex(jnp.real(values) * part_scale, jnp.imag(values) * part_scale)
    )
  return sparse.with_values(g, values * scale.astype(values.dtype))


def clip_by_value(clipvalue: float) -> optax.GradientTransformation:
  """Clips every gradient element to ``[-clipvalue, clipvalue]`` (Keras's ``clipvalue``).

  The same numbers as ``optax.clip``; written here because ``optax.clip`` would
  also clip the integer row indices of a sparse `optadam.IndexedSlices` gradient.
  A complex gradient has its real and imaginary parts clipped separately
  (``optax.clip`` and ``jnp.clip`` refuse complex values).

  Args:
    clipvalue: the largest absolute value of a gradient element (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  check_threshold("clipvalue", clipvalue)

  def clip_real(x):
    return jnp.clip(x, -clipvalue, clipvalue)

  def clip(g):
    values = sparse.values_of(g)
    if _tree.is_complex(values.dtype):
      return sparse.with_values(
        g, jax.lax.complex(clip_real(jnp.real(values)), clip_real(jnp.imag(values)))
      )
    return sparse.with_values(g, clip_real(values))

  def update_fn(updates, state, params=None):
    del params
    return _tree.map_grads(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# --- norms of packed gradients (optadam.grouping) -------------------------------------------


def _row_plan(group: grouping.Group) -> tuple[int, int, np.ndarray, np.ndarray]:
  """(r, rows, first, split): the buffer's first ``rows * r`` elements as rows of ``r``.

  ``r`` is the largest power of two <= min(`grouping.ROW`, the smallest member), so that a row
  holds elements of one member or of two consecutive ones: ``first[i]`` is the member
  of row i's first element and ``split[i]`` how many of its elements belong to it. The
  ``n - rows * r < r`` elements left over belong to the last member.
  """
  r = 1
  while 2 * r <= min(grouping.ROW, min(m.size for m in group.members)):
    r *= 2
  rows = group.size // r
  starts = np.arange(rows, dtype=np.int64) * r
  ends = np.asarray([m.offset + m.size for m in group.members], np.int64)
  first = np.searchsorted(ends, starts, side="right")
  split = np.minimum(ends[first] - starts, r)
  return r, rows, first.astype(np.int32), split.astype(np.int32)


def segment_sums_of_squares(group: grouping.Group, flat: jax.Array) -> jax.Array:
  """``sum(g**2)`` of every member of `group`, from its packed buffer `flat` (at least float32).

  One reduction over the ``(rows, r)`` view of the buffer gives the row sums; the
  few rows where one member ends and the next begins are summed again in two halves;
  a segment sum over the rows adds them up per member: a few kernels per group instead
  of one or more per leaf, and one pass over the gradients. The summation order differs
  from a reduction over each leaf, so a norm can differ from the per-leaf one in its
  last bit.
  """
  r, rows, first, split = _row_plan(group)
  count = len(group.members)
  sq = jnp.square(flat.astype(jnp.promote_types(flat.dtype, jnp.float32)))
  main = sq[: rows * r].reshape(rows, r)
  boundary = np.nonzero(split < r)[0]  # rows shared by two members
  ids = first.copy()
  ids[boundary] = count  # a segment that is dropped: those rows are counted in halves below
  values, segments = [jnp.sum(main, axis=1)], [ids]
  if boundary.size:
    shared = main[boundary]
    in_first = (
      jax.lax.broadcasted_iota(jnp.int32, shared.shape, 1) < jnp.asarray(split[boundary])[:, None]
    )
    zero = jnp.zeros((), sq.dtype)  # where, not a product: an inf stays in its own member
    values += [
      jnp.sum(jnp.where(in_first, shared, zero), axis=1),
      jnp.sum(jnp.where(in_first, zero, shared), axis=1),
    ]
    segments += [first[boundary], first[boundary] + 1]
  sums = jax.ops.segment_sum(
    jnp.concatenate(values), np.concatenate(segments).astype(np.int32), count + 1
  )[:count]
  if rows * r < group.size:
    sums = sums.at[count - 1].add(jnp.sum(sq[rows * r :]))
  return sums


def per_element(group: grouping.Group, per_member: jax.Array) -> jax.Array:
  """A value per member of `group`, spread over its elements: a ``(group.size,)`` array.

  Built from the rows of `_row_plan` (a gather of one or two values per row, no
  per-element index array), so that it fuses into the kernel that reads it.
  """
  r, rows, first, split = _row_plan(group)
  count = len(group.members)
  in_first = jax.lax.broadcasted_iota(jnp.int32, (rows, r), 1) < jnp.asarray(split)[:, None]
  second = np.minimum(first + 1, count - 1)
  pair = per_member[np.stack([first, second], axis=1)]  # one gather: (rows, 2)
  out = jnp.where(in_first, pair[:, :1], pair[:, 1:]).reshape(-1)
  if rows * r < group.size:
    last = jnp.broadcast_to(per_member[count - 1], (group.size - rows * r,))
    out = jnp.concatenate([out, last])
  return out
