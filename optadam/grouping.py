"""Packing many small parameters into flat buffers: a step costs kernels per byte, not per leaf.

XLA compiles (and, at every step, dispatches) at least one kernel per output
array of an Adam step: on a tree of a thousand small leaves that is thousands
of kernels, each ~9 ms of compile time on CPU and a dispatch per step, for very
little data. `group_leaves` runs the elementwise part of optadam's chain (the
Keras Adam scaler, the learning rate, the Keras-placement weight decay and the
parameter EMA) on *groups*: the small leaves of one dtype and one weight-decay
mask value are concatenated (raveled, in tree order) into one 1-D buffer, and
their state (``mu``, ``nu``, ``nu_max``, the EMA average) is KEPT in that packed
layout, so that a step writes one buffer per group and state field instead of
one per leaf. Large leaves, and leaves sharded across devices, stay as they are.

Numbers: every transform wrapped here is elementwise given its scalars (the step
count, the learning rate, the bias correction of one dtype), so an element of a
packed buffer is computed by the same operations, in the same order and dtype,
as the element of its own leaf. Two exceptions:

* the norms of ``clipnorm`` (each tensor's) and ``global_clipnorm`` are summed
  from the packed buffers (`segment_sums_of_squares`: row sums and a segment
  sum, a few kernels per group instead of one to three per leaf), in another
  order than a reduction over each leaf, so a clip factor can differ in its
  last bit;
* XLA:CPU contracts ``a*b + c`` into a fused multiply-add when both sit in one
  kernel, and packing can move a product into another kernel.

Measured (tests/test_grouping.py): bit-identical parameters and state for the
defaults, amsgrad, clipvalue + schedule + mask, gradient accumulation, bfloat16
with float32 moments; within 1 ulp of each tensor's scale (parameters) and 5
(moments, EMA) with clipnorm + weight decay, global_clipnorm + EMA, EMA with
overwrite, and a sparse large leaf. This is why the mode is opt-in.

The state layout: every parameter-shaped part of the wrapped state is a
`LeafGroups` (a pytree node) instead of a params-shaped tree::

  LeafGroups(groups=(flat_0, flat_1, ...),   # one 1-D buffer per group
             leaves=<the params tree, the grouped leaves replaced by None>)

with the layout (which leaf sits where in which buffer, its shape and dtype) as
static metadata, so a checkpoint stores ``.../mu/groups/0`` and
``.../mu/leaves/<path of a large leaf>``. `ungroup_state` gives the same state
with every `LeafGroups` replaced by the params-shaped tree (per parameter path,
e.g. for reading a checkpoint), and `regroup_state` the converse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import clipping
from optadam import sparse

__all__ = ["LeafGroups", "group_leaves", "regroup_state", "ungroup_state"]

# At most this many leaves per group: bounds the operand list of each packed kernel (one per
# member). Not tuned: on 100 leaves, everything on, a bound of 16 gave ~9% more kernels than none.
MAX_MEMBERS = 32

# Rows of the segmented norm (`segment_sums_of_squares`): a group's buffer is read as rows of
# this many elements; with clipnorm, leaves smaller than this are grouped apart, so that a row
# of a group of larger leaves holds elements of at most two of them.
ROW = 32


@dataclasses.dataclass(frozen=True)
class _Member:
  index: int  # position in the params' tree leaves
  offset: int  # first element in the group's buffer
  size: int
  shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Group:
  dtype: str  # the parameters' dtype (state fields keep their own dtypes)
  decay: Optional[bool]  # the weight-decay mask value shared by the members (None: no decay)
  members: tuple[_Member, ...]

  @property
  def size(self) -> int:
    return sum(m.size for m in self.members)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static metadata of a grouped state: where each small parameter sits (hashable)."""

  treedef: Any  # of the params
  groups: tuple[_Group, ...]
  decay: tuple[Optional[bool], ...]  # the weight-decay mask value of every leaf (None: off)

  @property
  def grouped(self) -> frozenset[int]:
    return frozenset(m.index for g in self.groups for m in g.members)


@jax.tree_util.register_pytree_with_keys_class
class LeafGroups:
  """A parameter-shaped part of a grouped optimizer state (see `group_leaves`).

  Attributes:
    groups: one 1-D array per group of small leaves (the members' values,
      raveled and concatenated in tree order), or None in a gradient tree where
      no member of that group has a gradient.
    leaves: the params-shaped tree of the leaves that are not grouped; the
      grouped ones are None there.
    layout: the static `Layout` (part of the tree structure, not a leaf).
  """

  def __init__(self, groups: tuple[Any, ...], leaves: Any, layout: Layout):
    self.groups = tuple(groups)
    self.leaves = leaves
    self.layout = layout

  def tree_flatten_with_keys(self):
    return (
      (jax.tree_util.GetAttrKey("groups"), self.groups),
      (jax.tree_util.GetAttrKey("leaves"), self.leaves),
    ), self.layout

  def tree_flatten(self):
    return (self.groups, self.leaves), self.layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    groups, leaves = children
    return cls(groups, leaves, layout)

  def __repr__(self) -> str:
    return f"LeafGroups(groups={self.groups!r}, leaves={self.leaves!r})"


def _is_groups(x: Any) -> bool:
  return isinstance(x, LeafGroups)


def _sharded(leaf: Any) -> bool:
  """True when `leaf` is known to be split across devices (never grouped).

  Arrays and ``jax.ShapeDtypeStruct``s tell by their sharding; a tracer only in
  explicit-sharding mode (its type's spec names a mesh axis).
  """
  if isinstance(leaf, jax.core.Tracer):
    try:
      spec = jax.typeof(leaf).sharding.spec
    except (AttributeError, TypeError, ValueError):
      return False
    return any(axis is not None for axis in spec)
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    return False
  return len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def make_layout(
  params: Any, max_size: int, decay_mask: Optional[Any] = None, *, rows: bool = False
) -> Layout:
  """Groups the leaves of `params` with at most `max_size` elements (see `group_leaves`).

  With `rows` (clipnorm), leaves of fewer than `ROW` elements form groups of their own.
  """
  leaves, treedef = jax.tree.flatten(params)
  decay: tuple[Optional[bool], ...]
  if decay_mask is None:
    decay = (None,) * len(leaves)
  else:
    mask = decay_mask(params) if callable(decay_mask) else decay_mask
    decay = tuple(bool(m) for m in treedef.flatten_up_to(mask))
  buckets: dict[tuple[str, Optional[bool], bool], list[int]] = {}
  for i, leaf in enumerate(leaves):
    shape = tuple(np.shape(leaf))
    dtype = getattr(leaf, "dtype", None)  # a Python scalar stays a leaf of its own
    if (
      dtype is not None
      and 0 < int(np.prod(shape)) <= max_size
      and jnp.issubdtype(dtype, jnp.floating)
      and not _sharded(leaf)
    ):
      tiny = rows and int(np.prod(shape)) < ROW
      buckets.setdefault((str(np.dtype(dtype)), decay[i], tiny), []).append(i)
  groups = []
  chunks = []
  for key, indices in buckets.items():
    for start in range(0, len(indices), MAX_MEMBERS):
      chunks.append((key, indices[start : start + MAX_MEMBERS]))
  for (dtype, dec, _), indices in chunks:
    if len(indices) < 2:
      continue  # a group of one saves nothing
    members, offset = [], 0
    for i in indices:
      shape = tuple(np.shape(leaves[i]))
      size = int(np.prod(shape))
      members.append(_Member(i, offset, size, shape))
      offset += size
    groups.append(_Group(dtype, dec, tuple(members)))
  return Layout(treedef, tuple(groups), decay)


def _pack(
  layout: Layout, leaves: list[Any], fill: Optional[Callable[[_Member], Any]]
) -> LeafGroups:
  """A `LeafGroups` of `leaves` (in params order); `fill(member)` stands in for None leaves.

  With `fill` None, a group all of whose leaves are None is None.
  """
  grouped = layout.grouped
  groups: list[Any] = []
  for group in layout.groups:
    parts = [leaves[m.index] for m in group.members]
    if all(p is None for p in parts) and fill is None:
      groups.append(None)
      continue
    dtype = jnp.result_type(*[p.dtype for p in parts if p is not None])
    flat = [
      jnp.zeros((m.size,), dtype) if p is None else jnp.ravel(p).astype(dtype)
      for m, p in zip(group.members, parts)
    ]
    groups.append(jnp.concatenate(flat))
  rest = layout.treedef.unflatten([None if i in grouped else x for i, x in enumerate(leaves)])
  return LeafGroups(tuple(groups), rest, layout)


def _unpack(packed: LeafGroups, dtypes: Optional[list[Any]] = None) -> list[Any]:
  """The per-parameter leaves of a `LeafGroups`, in params order (cast to `dtypes[i]` if given)."""
  layout = packed.layout
  out = layout.treedef.flatten_up_to(packed.leaves)
  for group, flat in zip(layout.groups, packed.groups):
    for m in group.members:
      if flat is None:
        out[m.index] = None
        continue
      x = jax.lax.slice(flat, (m.offset,), (m.offset + m.size,)).reshape(m.shape)
      if dtypes is not None and dtypes[m.index] is not None:
        x = x.astype(dtypes[m.index])
      out[m.index] = x
  return out


def ungroup_state(state: Any) -> Any:
  """`state` with every `LeafGroups` replaced by its params-shaped tree (one leaf per path).

  The result has the layout an ungrouped optimizer's state has (``mu``, ``nu``,
  ... keyed by parameter path), e.g. to read or export a checkpoint. Works on
  arrays and on ``jax.ShapeDtypeStruct`` leaves (abstract states).
  """

  def unpack(x):
    if not _is_groups(x):
      return x
    if any(isinstance(g, jax.ShapeDtypeStruct) for g in x.groups):
      leaves = x.layout.treedef.flatten_up_to(x.leaves)
      for group, flat in zip(x.layout.groups, x.groups):
        for m in group.members:
          leaves[m.index] = jax.ShapeDtypeStruct(m.shape, flat.dtype)
      return x.layout.treedef.unflatten(leaves)
    return x.layout.treedef.unflatten(_unpack(x))

  return jax.tree.map(unpack, state, is_leaf=_is_groups)


def regroup_state(per_path_state: Any, like: Any) -> Any:
  """The converse of `ungroup_state`: `per_path_state` packed as `like` (a grouped state).

  Args:
    per_path_state: a state with params-shaped trees where `like` has `LeafGroups`.
    like: a grouped state of the same optimizer (e.g. ``tx.init(params)``), giving
      the layout and the dtypes.

  Returns:
    A state with the structure of `like`.
  """

  def pack(template, value):
    if not _is_groups(template):
      return value
    packed = _pack(template.layout, template.layout.treedef.flatten_up_to(value), fill=None)
    groups = tuple(g.astype(t.dtype) for g, t in zip(packed.groups, template.groups))
    return LeafGroups(groups, packed.leaves, template.layout)

  return jax.tree.map(pack, like, per_path_state, is_leaf=_is_groups)


def _row_plan(group: _Group) -> tuple[int, int, np.ndarray, np.ndarray]:
  """(r, rows, first, split): the buffer's first ``rows * r`` elements as rows of ``r``.

  ``r`` is the largest power of two <= min(`ROW`, the smallest member), so that a row
  holds elements of one member or of two consecutive ones: ``first[i]`` is the member
  of row i's first element and ``split[i]`` how many of its elements belong to it. The
  ``n - rows * r < r`` elements left over belong to the last member.
  """
  r = 1
  while 2 * r <= min(ROW, min(m.size for m in group.members)):
    r *= 2
  rows = group.size // r
  starts = np.arange(rows, dtype=np.int64) * r
  ends = np.asarray([m.offset + m.size for m in group.members], np.int64)
  first = np.searchsorted(ends, starts, side="right")
  split = np.minimum(ends[first] - starts, r)
  return r, rows, first.astype(np.int32), split.astype(np.int32)


def segment_sums_of_squares(group: _Group, flat: jax.Array) -> jax.Array:
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


def per_element(group: _Group, per_member: jax.Array) -> jax.Array:
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


def decay_mask(params: Any) -> Any:
  """The weight-decay mask of a packed params tree: its layout's mask values (`optax.masked`)."""
  if not _is_groups(params):  # tx.init on a placeholder (optax.tree_map_params, state_shardings)
    return params
  layout = params.layout
  rest = [None if i in layout.grouped else d for i, d in enumerate(layout.decay)]
  return LeafGroups(tuple(g.decay for g in layout.groups), layout.treedef.unflatten(rest), layout)


def _find_layout(state: Any) -> Optional[Layout]:
  for x in jax.tree.leaves(state, is_leaf=_is_groups):
    if _is_groups(x):
      return x.layout
  return None


def group_leaves(
  inner: optax.GradientTransformation,
  max_size: int,
  *,
  decay_mask_fn: Optional[Any] = None,
  clipnorm: Optional[float] = None,
  global_clipnorm: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  """Runs the elementwise transformation `inner` on flat buffers of small leaves.

  At ``init``, the floating-point leaves of the parameters with at most
  `max_size` elements that are not sharded across devices are grouped by dtype
  and weight-decay mask value (groups of two or more leaves); ``inner.init``
  then sees, and its state keeps, a `LeafGroups` (one 1-D buffer per group plus
  the other leaves as they are) wherever it would hold a params-shaped tree. At
  ``update`` the gradients and parameters are packed the same way (the
  concatenation fuses into the step's kernels), ``inner.update`` runs, and its
  updates are split back per leaf (each slice fuses with ``apply_updates``).

  `inner` must be elementwise per leaf given scalars that do not depend on the
  leaf (true of `scale_by_keras_adam`, `scale_by_learning_rate`,
  `add_decayed_weights` in its Keras placement with ``weight_decay_mask=
  optadam.grouping.decay_mask``, and `parameter_ema` with ``ema_style=
  "keras2"``); anything per-tensor (``clipnorm``) must run before this.

  ``None`` gradients: a group none of whose members has a gradient is skipped
  (its state is untouched); in a group where only some have one, the others
  take part with a zero gradient and their elements of every state buffer are
  then restored (``where``, fused into the same kernels), so their state is
  exactly as before and their update is None. Sparse gradients are supported
  on leaves that are not grouped (larger than `max_size`); on a grouped leaf
  they raise TypeError.

  The layout is decided from the parameters at ``init`` (their shapes, dtypes and
  shardings) and stored in the state as static metadata; ``update`` reads it from
  the state. Under a trace (``jax.jit(tx.init)``, ``jax.eval_shape``) the
  parameters show no sharding (except in explicit-sharding mode), so a traced
  ``init`` reuses the layout of an earlier ``init`` of the same tree of arrays or
  ShapeDtypeStructs (`optadam.state_shardings` makes one), and otherwise decides
  from shapes and dtypes alone: with small leaves sharded across devices, build
  the state (or its shardings) from the sharded arrays or ShapeDtypeStructs first.

  Args:
    inner: the elementwise transformation (e.g. an ``optax.chain``).
    max_size: leaves with at most this many elements are grouped.
    decay_mask_fn: the weight-decay mask of the ORIGINAL parameters (a pytree of
      bools or a callable), so that groups never mix decayed and excluded leaves.
    clipnorm: Keras's per-tensor ``clipnorm``, applied first: each grouped leaf's
      norm is summed from the packed buffer (`segment_sums_of_squares`; leaves of
      fewer than `ROW` elements are then grouped apart), and the clip
      ``(g * clipnorm) / max(norm, clipnorm)`` runs on the packed buffer with each
      element's own norm (`per_element`). The other leaves are clipped as
      `optadam.clip_by_tensor_norm` does.
    global_clipnorm: Keras's ``global_clipnorm``, applied first: the global norm
      is summed from the packed buffers and the other leaves, and the factor of
      `optadam.clip_by_keras_global_norm` scales the packed buffers in place of
      their leaves.

  Numerics: XLA:CPU contracts ``a * b + c`` into one fused multiply-add when
  both sit in one kernel, so a value can round differently when the packing
  moves a product into another kernel; and the norms above are summed in another
  order than per leaf. The tests pin parameters and state bit for bit for the
  configurations without a norm where that holds and bound the rest (module
  docstring).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is ``inner``'s, over
    `LeafGroups`.
  """
  inner = optax.with_extra_args_support(inner)

  # Layouts decided from arrays or ShapeDtypeStructs (which show their shardings), by tree
  # structure, shapes and dtypes: a traced init (jit, eval_shape) of the same tree, which sees
  # no sharding in Auto mode, reuses them, so that every way of building the state agrees.
  seen: dict[Any, Layout] = {}

  def layout_of(params):
    leaves = jax.tree.leaves(params)
    key = (
      jax.tree.structure(params),
      tuple(
        (tuple(np.shape(x)), str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype))
        for x in leaves
      ),
    )
    traced = any(isinstance(x, jax.core.Tracer) for x in leaves)
    layout = seen.get(key) if traced else None
    if layout is None:
      layout = make_layout(params, max_size, decay_mask_fn, rows=clipnorm is not None)
      if not traced:
        seen[key] = layout
    return layout

  def init_fn(params):
    if not jax.tree.leaves(params):  # a placeholder (optax.tree_map_params, state_shardings)
      return inner.init(params)
    layout = layout_of(params)
    return inner.init(_pack(layout, layout.treedef.flatten_up_to(params), fill=None))

  def update_fn(updates, state, params=None, **extra_args):
    layout = _find_layout(state)
    if layout is None:
      raise ValueError(
        "optadam.group_leaves: the state holds no LeafGroups (was it built by this optimizer's "
        "init?)."
      )
    g_leaves = layout.treedef.flatten_up_to(updates)
    for group in layout.groups:
      for m in group.members:
        if sparse.is_sparse(g_leaves[m.index]):
          raise TypeError(
            f"optadam.group_leaves: leaf {m.index} (shape {m.shape}) is grouped (at most "
            f"{max_size} elements) but its gradient is sparse; raise the grouping threshold "
            "below its size or densify the gradient."
          )
    if clipnorm is not None:  # the leaves that are not grouped: clipped as they are
      rest_clip = clipping.clip_by_tensor_norm(clipnorm)
      rest = [None if i in layout.grouped else g for i, g in enumerate(g_leaves)]
      rest, _ = rest_clip.update(layout.treedef.unflatten(rest), optax.EmptyState())
      rest = layout.treedef.flatten_up_to(rest)
      g_leaves = [g if i in layout.grouped else rest[i] for i, g in enumerate(g_leaves)]
    packed_g = _pack(layout, g_leaves, fill=None)
    if global_clipnorm is not None:
      # Keras's global norm: per-group sums of squares of the packed buffers, per-leaf ones
      # of the others (one reduction per group, not per leaf).
      sums = [clipping._sum_of_squares(flat) for flat in packed_g.groups if flat is not None]
      sums += [
        clipping._sum_of_squares(g)
        for i, g in enumerate(g_leaves)
        if g is not None and i not in layout.grouped
      ]
      if sums:
        scale = clipping._keras_global_scale(jnp.sqrt(jnp.sum(jnp.stack(sums))), global_clipnorm)
        g_leaves = [
          g if (g is None or i in layout.grouped) else clipping._scale_by_real(g, scale)
          for i, g in enumerate(g_leaves)
        ]
        packed_g = LeafGroups(
          tuple(
            None if flat is None else clipping._scale_by_real(flat, scale)
            for flat in packed_g.groups
          ),
          layout.treedef.unflatten(
            [None if i in layout.grouped else g for i, g in enumerate(g_leaves)]
          ),
          layout,
        )
    if clipnorm is not None:
      groups: list[Any] = []
      for group, flat in zip(layout.groups, packed_g.groups):
        if flat is None:
          groups.append(None)
          continue
        # Each member's norm from the packed buffer (segmented), its clip elementwise.
        dtype = jnp.promote_types(flat.dtype, jnp.float32)
        norm = per_element(group, jnp.sqrt(segment_sums_of_squares(group, flat)).astype(dtype))
        clipped = (flat.astype(dtype) * clipnorm) / jnp.maximum(norm, clipnorm)
        groups.append(clipped.astype(flat.dtype))
      packed_g = LeafGroups(tuple(groups), packed_g.leaves, layout)
    packed_p = None
    if params is not None:
      packed_p = _pack(layout, layout.treedef.flatten_up_to(params), fill=None)
    new_u, new_state = inner.update(packed_g, state, packed_p, **extra_args)

    # Members without a gradient in a group that has some: keep their state exactly.
    keep: list[Any] = []
    for group, flat in zip(layout.groups, packed_g.groups):
      present = [g_leaves[m.index] is not None for m in group.members]
      if flat is None or all(present):
        keep.append(None)
        continue
      keep.append(np.concatenate([np.full(m.size, p) for m, p in zip(group.members, present)]))

    def restore(new, old):
      if not _is_groups(new):
        return new
      groups = tuple(
        n if k is None else jnp.where(k, n, o) for n, o, k in zip(new.groups, old.groups, keep)
      )
      return LeafGroups(groups, new.leaves, new.layout)

    if any(k is not None for k in keep):
      new_state = jax.tree.map(restore, new_state, state, is_leaf=_is_groups)
    u_leaves = _unpack(new_u, [None if g is None else g.dtype for g in g_leaves])
    u_leaves = [None if g is None else u for g, u in zip(g_leaves, u_leaves)]
    return layout.treedef.unflatten(u_leaves), new_state

  tx = _GroupedTransformation(init_fn, update_fn)
  tx.layout_of = layout_of
  return tx


class _GroupedTransformation(optax.GradientTransformationExtraArgs):
  """`group_leaves`'s transformation; ``layout_of(params)`` decides (and remembers) a layout."""
