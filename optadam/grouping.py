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
  from the packed buffers by `optadam.clip_by_tensor_norm` and
  `optadam.clip_by_keras_global_norm`, which accept a `LeafGroups` gradient
  (row sums and a segment sum, a few kernels per group instead of one to three
  per leaf), in another order than a reduction over each leaf, so a clip factor
  can differ in its last bit;
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
``.../mu/leaves/<path of a large leaf>``. `optadam.ungroup_state` gives the same state
with every `LeafGroups` replaced by the params-shaped tree (per parameter path,
e.g. for reading a checkpoint), and `optadam.regroup_state` the converse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _tree

__all__ = ["Layout", "LeafGroups", "decay_mask", "group_leaves", "make_layout"]

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
class Group:
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
  groups: tuple[Group, ...]
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


def is_groups(x: Any) -> bool:
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
    groups.append(Group(dtype, dec, tuple(members)))
  return Layout(treedef, tuple(groups), decay)


def pack(layout: Layout, leaves: list[Any], fill: Optional[Callable[[_Member], Any]]) -> LeafGroups:
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


def unpack(packed: LeafGroups, dtypes: Optional[list[Any]] = None) -> list[Any]:
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


def decay_mask(params: Any) -> Any:
  """The weight-decay mask of a packed params tree: its layout's mask values (`optax.masked`)."""
  if not is_groups(params):  # tx.init on a placeholder (optax.tree_map_params, state_shardings)
    return params
  layout = params.layout
  rest = [None if i in layout.grouped else d for i, d in enumerate(layout.decay)]
  return LeafGroups(tuple(g.decay for g in layout.groups), layout.treedef.unflatten(rest), layout)


def find_layout(state: Any) -> Optional[Layout]:
  """The `Layout` of the first `LeafGroups` in `state`, or None (an ungrouped state)."""
  for x in jax.tree.leaves(state, is_leaf=is_groups):
    if is_groups(x):
      return x.layout
  return None


def group_leaves(
  inner: optax.GradientTransformation,
  max_size: int,
  *,
  decay_mask_fn: Optional[Any] = None,
  rows: bool = False,
  layout: Optional[Layout] = None,
) -> optax.GradientTransformationExtraArgs:
  """Runs the elementwise transformation `inner` on flat buffers of small leaves.

  ``init`` decides the `Layout` from the parameters it is given (`make_layout`:
  the floating-point leaves with at most `max_size` elements that are not sharded
  across devices, grouped by dtype and weight-decay mask value, groups of two or
  more), or takes `layout` when one is given; ``inner.init`` then sees, and its
  state keeps, a `LeafGroups` (one 1-D buffer per group plus the other leaves as
  they are) wherever it would hold a params-shaped tree. ``update`` reads the
  layout from the state: it packs the gradients and parameters the same way (the
  concatenation fuses into the step's kernels), runs ``inner.update`` and splits
  its updates back per leaf (each slice fuses with ``apply_updates``).

  `inner` must be elementwise per leaf given scalars that do not depend on the
  leaf (true of `scale_by_keras_adam`, `scale_by_learning_rate`,
  `add_decayed_weights` in its Keras placement with ``weight_decay_mask=
  optadam.grouping.decay_mask``, `parameter_ema` with ``ema_style="keras2"``,
  `clip_by_value`), or take `LeafGroups` gradients itself
  (`clip_by_tensor_norm` and `clip_by_keras_global_norm` sum each member's
  norm from the packed buffer).

  ``None`` gradients: a group none of whose members has a gradient is skipped
  (its state is untouched); in a group where only some have one, the others
  take part with a zero gradient and their elements of every state buffer are
  then restored (``where``, fused into the same kernels), so their state is
  exactly as before and their update is None. Sparse gradients are supported
  on leaves that are not grouped (larger than `max_size`); on a grouped leaf
  they raise TypeError.

  Under a trace (``jax.jit(tx.init)``, ``jax.eval_shape``) the parameters show
  no sharding (except in explicit-sharding mode), so a traced ``init`` decides
  from shapes and dtypes alone: with small leaves sharded across devices, pass
  the `layout` decided from the sharded arrays or ShapeDtypeStructs
  (``make_layout(structs, ...)``; `optadam.KerasAdam.with_group_layout` does it).

  Args:
    inner: the elementwise transformation (e.g. an ``optax.chain``).
    max_size: leaves with at most this many elements are grouped.
    decay_mask_fn: the weight-decay mask of the ORIGINAL parameters (a pytree of
      bools or a callable), so that groups never mix decayed and excluded leaves.
    rows: group leaves of fewer than `ROW` elements apart (for ``clipnorm``, whose
      per-member norms are summed from rows of `ROW` elements).
    layout: the layout to use at ``init`` instead of deciding one from the
      parameters (it must fit their structure and shapes).

  Numerics: see the module docstring (bit-identical except where XLA fuses a
  multiply-add differently or a clipping norm is summed in another order).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is ``inner``'s, over
    `LeafGroups`.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if not jax.tree.leaves(params):  # a placeholder (optax.tree_map_params, state_shardings)
      return inner.init(params)
    chosen = layout or make_layout(params, max_size, decay_mask_fn, rows=rows)
    return inner.init(pack(chosen, _leaves_of(chosen, params), fill=None))

  def update_fn(updates, state, params=None, **extra_args):
    found = find_layout(state)
    if found is None:
      raise ValueError(
        "optadam.group_leaves: the state holds no LeafGroups (was it built by this optimizer's "
        "init?)."
      )
    g_leaves = found.treedef.flatten_up_to(updates)
    _check_dense(found, g_leaves, max_size)
    packed_g = pack(found, g_leaves, fill=None)
    packed_p = None if params is None else pack(found, _leaves_of(found, params), fill=None)
    new_u, new_state = inner.update(packed_g, state, packed_p, **extra_args)
    new_state = _restore_absent(found, g_leaves, new_state, state)
    u_leaves = unpack(new_u, [None if g is None else g.dtype for g in g_leaves])
    u_leaves = [None if g is None else u for g, u in zip(g_leaves, u_leaves)]
    return found.treedef.unflatten(u_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _leaves_of(layout: Layout, params: Any) -> list[Any]:
  """The leaves of `params` in `layout`'s order; a ValueError if they do not fit it."""
  try:
    leaves = layout.treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"optadam.group_leaves: the parameters do not have the layout's tree structure: {e}"
    ) from None
  for group in layout.groups:
    for m in group.members:
      if tuple(np.shape(leaves[m.index])) != m.shape:
        raise ValueError(
          f"optadam.group_leaves: leaf {m.index} has shape {np.shape(leaves[m.index])}; the "
          f"layout groups it with shape {m.shape}."
        )
  return leaves


def _check_dense(layout: Layout, g_leaves: list[Any], max_size: int) -> None:
  for group in layout.groups:
    for m in group.members:
      if _tree.is_sparse(g_leaves[m.index]):
        raise TypeError(
          f"optadam.group_leaves: leaf {m.index} (shape {m.shape}) is grouped (at most "
          f"{max_size} elements) but its gradient is sparse; raise the grouping threshold "
          "below its size or densify the gradient."
        )


def _restore_absent(layout: Layout, g_leaves: list[Any], new_state: Any, state: Any) -> Any:
  """`new_state` with the elements of members that had no gradient (in a group that has some)
  put back to their values in `state`."""
  keep: list[Any] = []
  for group in layout.groups:
    present = [g_leaves[m.index] is not None for m in group.members]
    if not any(present) or all(present):
      keep.append(None)
      continue
    keep.append(np.concatenate([np.full(m.size, p) for m, p in zip(group.members, present)]))
  if all(k is None for k in keep):
    return new_state

  def restore(new, old):
    if not is_groups(new):
      return new
    groups = tuple(
      n if k is None else jnp.where(k, n, o) for n, o, k in zip(new.groups, old.groups, keep)
    )
    return LeafGroups(groups, new.leaves, new.layout)

  return jax.tree.map(restore, new_state, state, is_leaf=is_groups)
