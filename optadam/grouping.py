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
as the element of its own leaf; the norms of ``clipnorm`` / ``global_clipnorm``
are reduced from the original leaves. One caveat: XLA:CPU contracts ``a*b + c``
into a fused multiply-add when both sit in one kernel, and packing can move a
product into another kernel. Measured (tests/test_grouping.py): bit-identical
parameters and state for the defaults, amsgrad, clipvalue + schedule + mask,
global_clipnorm + EMA, gradient accumulation, bfloat16 with float32 moments;
within 1-4 ulp of each tensor's scale with clipnorm + weight decay, EMA with
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


def _or(x: Any, default: Any) -> Any:
  return default if x is None else x


def _is_groups(x: Any) -> bool:
  return isinstance(x, LeafGroups)


def _sharded(leaf: Any) -> bool:
  """True when `leaf` is known to be split across devices (never grouped)."""
  sharding = getattr(leaf, "sharding", None)
  if sharding is None or isinstance(leaf, jax.core.Tracer):
    return False
  return len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def make_layout(params: Any, max_size: int, decay_mask: Optional[Any] = None) -> Layout:
  """Groups the leaves of `params` with at most `max_size` elements (see `group_leaves`)."""
  leaves, treedef = jax.tree.flatten(params)
  decay: tuple[Optional[bool], ...]
  if decay_mask is None:
    decay = (None,) * len(leaves)
  else:
    mask = decay_mask(params) if callable(decay_mask) else decay_mask
    decay = tuple(bool(m) for m in treedef.flatten_up_to(mask))
  buckets: dict[tuple[str, Optional[bool]], list[int]] = {}
  for i, leaf in enumerate(leaves):
    shape = tuple(np.shape(leaf))
    dtype = jnp.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype
    if (
      0 < int(np.prod(shape)) <= max_size
      and jnp.issubdtype(dtype, jnp.floating)
      and not _sharded(leaf)
    ):
      buckets.setdefault((str(np.dtype(dtype)), decay[i]), []).append(i)
  groups = []
  chunks = []
  for key, indices in buckets.items():
    for start in range(0, len(indices), MAX_MEMBERS):
      chunks.append((key, indices[start : start + MAX_MEMBERS]))
  for (dtype, dec), indices in chunks:
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

  The layout is decided from the parameters at ``init`` (their shapes, dtypes,
  shardings when they are concrete arrays) and stored in the state as static
  metadata; ``update`` reads it from the state.

  Args:
    inner: the elementwise transformation (e.g. an ``optax.chain``).
    max_size: leaves with at most this many elements are grouped.
    decay_mask_fn: the weight-decay mask of the ORIGINAL parameters (a pytree of
      bools or a callable), so that groups never mix decayed and excluded leaves.
    clipnorm: Keras's per-tensor ``clipnorm``, applied first: each leaf's norm is
      reduced from the leaf itself (as `optadam.clip_by_tensor_norm` does) and the
      clip ``(g * clipnorm) / max(norm, clipnorm)`` runs on the packed buffer
      with each element's own norm (the same operations, so the same bits,
      without a kernel per leaf for the scaling).
    global_clipnorm: Keras's ``global_clipnorm``, applied first: the global norm
      is reduced from the original leaves (as `optadam.clip_by_keras_global_norm`
      does) and the packed buffers are scaled in place of their leaves.

  Numerics: XLA:CPU contracts ``a * b + c`` into one fused multiply-add when
  both sit in one kernel, so a value can round differently when the packing
  moves a product into another kernel. The scalings above run packed so that
  their products fuse as they do per leaf; the tests pin parameters and state
  bit for bit for the configurations where that holds and bound the rest.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is ``inner``'s, over
    `LeafGroups`.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if not jax.tree.leaves(params):  # a placeholder (optax.tree_map_params, state_shardings)
      return inner.init(params)
    layout = make_layout(params, max_size, decay_mask_fn)
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
    norms = None
    if clipnorm is not None:
      norms = [None if g is None else jnp.sqrt(clipping._sum_of_squares(g)) for g in g_leaves]
      rest_clip = clipping.clip_by_tensor_norm(clipnorm)
      rest = [None if i in layout.grouped else g for i, g in enumerate(g_leaves)]
      rest, _ = rest_clip.update(layout.treedef.unflatten(rest), optax.EmptyState())
      rest = layout.treedef.flatten_up_to(rest)
      g_leaves = [g if i in layout.grouped else rest[i] for i, g in enumerate(g_leaves)]
    global_scale = None
    if global_clipnorm is not None:
      present = [g for g in g_leaves if g is not None]
      if present:
        norm = jnp.sqrt(jnp.sum(jnp.stack([clipping._sum_of_squares(g) for g in present])))
        global_scale = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
        global_scale = global_scale + (norm - norm)  # NaN when the norm is not finite (Keras)

        def scale_leaf(g):
          values = sparse.values_of(g)
          return sparse.with_values(g, values * global_scale.astype(values.dtype))

        g_leaves = [
          g if (g is None or i in layout.grouped) else scale_leaf(g) for i, g in enumerate(g_leaves)
        ]
    packed_g = _pack(layout, g_leaves, fill=None)
    if global_scale is not None:
      packed_g = LeafGroups(
        tuple(
          None if flat is None else flat * global_scale.astype(flat.dtype)
          for flat in packed_g.groups
        ),
        packed_g.leaves,
        layout,
      )
    if norms is not None:
      groups: list[Any] = []
      for group, flat in zip(layout.groups, packed_g.groups):
        if flat is None:
          groups.append(None)
          continue
        zero = jnp.zeros([], jnp.float32)
        member_norms = jnp.stack([_or(norms[m.index], zero) for m in group.members])
        segment = np.repeat(
          np.arange(len(group.members), dtype=np.int32), [m.size for m in group.members]
        )
        dtype = jnp.promote_types(flat.dtype, jnp.float32)
        norm = member_norms.astype(dtype)[segment]
        clipped = (flat.astype(dtype) * clipnorm) / jnp.maximum(norm, clipnorm)  # type: ignore[arg-type]
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

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
