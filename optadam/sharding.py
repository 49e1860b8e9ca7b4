"""Shardings of an optimizer state, derived from the parameters' shardings.

`state_shardings` answers "where does each piece of the optimizer state live?"
for ``jax.jit(tx.init, out_shardings=...)``, ``jax.jit(train_step,
in_shardings=..., out_shardings=...)`` and Orbax restore targets: every
parameter-shaped part of the state (Adam's ``mu``, ``nu``, ``nu_max``, the
EMA average, and those of any other optax transform) gets the sharding of its
parameter, and everything else (step counters, injected hyperparameters) is
replicated. With ``zero1_axis`` the parameter-shaped parts are additionally
split along a data-parallel mesh axis (ZeRO stage 1): the parameters stay
replicated over that axis while each device keeps only its slice of the
moments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from optadam import grouping

__all__ = ["state_shardings"]

AxisNames = Union[str, Sequence[str]]


@jax.tree_util.register_pytree_node_class
class _Placeholder:
  """An empty pytree node standing for "the parameters" when calling ``tx.init``."""

  def tree_flatten(self):
    return (), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux, children
    return cls()


def _is_spec_leaf(x: Any) -> bool:
  return isinstance(x, (Sharding, PartitionSpec))


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _is_transformation(x: Any) -> bool:
  if isinstance(x, optax.GradientTransformation):
    return True
  return callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))


class _Param:
  """One parameter: its sharding (or PartitionSpec) and, when known, its shape."""

  def __init__(self, leaf: Any):
    if _is_spec_leaf(leaf):
      self.sharding, self.shape = leaf, None
    elif getattr(leaf, "sharding", None) is not None:
      self.sharding = leaf.sharding
      self.shape = tuple(leaf.shape) if hasattr(leaf, "shape") else None
    else:
      raise TypeError(
        "optadam.state_shardings: each leaf of `param_shardings` must be a "
        "jax.sharding.Sharding, a PartitionSpec, or an array / jax.ShapeDtypeStruct "
        f"carrying a `.sharding`; got {leaf!r} (type {type(leaf).__name__})."
      )


def _replicated(sharding: Any) -> Any:
  """A fully replicated sharding over the same devices as `sharding`."""
  if isinstance(sharding, PartitionSpec):
    return PartitionSpec()
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec(), memory_kind=sharding.memory_kind)
  if sharding.is_fully_replicated:
    return sharding
  devices = sorted(sharding.device_set, key=lambda d: (d.process_index, d.id))
  return NamedSharding(
    Mesh(np.array(devices), ("replica",)), PartitionSpec(), memory_kind=sharding.memory_kind
  )


def _axis_tuple(axes: AxisNames) -> tuple[str, ...]:
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _used_axes(spec: PartitionSpec) -> set[str]:
  used: set[str] = set()
  for entry in spec:
    if entry is None:
      continue
    used.update(_axis_tuple(entry))
  return used


def _zero1_spec(
  spec: PartitionSpec, shape: tuple[int, ...], axes: tuple[str, ...], axis_size: int
) -> PartitionSpec:
  """`spec` with the first unsharded dimension divisible by `axis_size` split over `axes`."""
  if _used_axes(spec) & set(axes):
    return spec  # already split over (part of) that axis
  entries = list(spec) + [None] * (len(shape) - len(spec))
  for i, (entry, size) in enumerate(zip(entries, shape)):
    if entry is None and size > 0 and size % axis_size == 0:
      entries[i] = axes[0] if len(axes) == 1 else axes
      return PartitionSpec(*entries[: max(len(spec), i + 1)])
  return spec


def state_shardings(
  tx_or_state: Any,
  param_shardings: Any,
  *,
  zero1_axis: Optional[AxisNames] = None,
  mesh: Optional[Mesh] = None,
) -> Any:
  """The shardings of an optimizer state, from the shardings of the parameters.

  Every parameter-shaped part of the state (``mu``, ``nu``, ``nu_max``, the EMA
  average, ... of `optadam.adam` or of any optax transform) gets its parameter's
  sharding; scalars and other non-parameter leaves (step counts, injected
  hyperparameters) are replicated over the same devices. The result is a pytree
  with the state's structure, ready for ``jax.jit(..., out_shardings=...)``,
  ``in_shardings`` or an Orbax restore target::

    param_sh = jax.tree.map(lambda p: p.sharding, params)
    opt_sh = optadam.state_shardings(tx, param_sh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)

  Args:
    tx_or_state: the optimizer (an ``optax.GradientTransformation``), or an
      optimizer state (arrays or ``jax.ShapeDtypeStruct`` leaves, e.g. from
      ``jax.eval_shape(tx.init, abstract_params)``). With an optimizer, the
      parameter-shaped parts are located exactly (optax's
      ``tree_map_params`` approach: ``tx.init`` is called on a placeholder); with
      a state, a sub-tree counts as parameter-shaped when it has the parameters'
      tree structure.
    param_shardings: a pytree with the parameters' structure whose leaves are
      ``jax.sharding.Sharding`` objects, ``PartitionSpec`` objects (then the result holds
      ``PartitionSpec`` objects, ``P()`` for the replicated leaves), or arrays /
      ``jax.ShapeDtypeStruct`` objects carrying a ``.sharding`` (their shapes are then
      known, which `zero1_axis` and optimizers holding ``optax.masked`` /
      ``optax.partition`` states need).
    zero1_axis: ZeRO-1: a mesh axis name (or tuple of names) over which to split
      the parameter-shaped state. Each such leaf is split along its first
      dimension that is not already sharded and whose size is divisible by the
      axis size; a leaf with no such dimension, or already split over that axis,
      keeps its parameter's sharding. Parameters keep their own (typically
      replicated) sharding: XLA then reduce-scatters the update into the moments
      and all-gathers the step into the parameters.
    mesh: the mesh giving `zero1_axis`'s size when `param_shardings` holds
      ``PartitionSpec`` objects (not needed with ``NamedSharding`` objects).

  Returns:
    A pytree of shardings (or PartitionSpecs) with the structure of the state.

  Raises:
    ValueError: if `zero1_axis` is used without known shapes or with an axis the
      mesh does not have.
  """
  p_leaves, p_def = jax.tree.flatten(param_shardings, is_leaf=_is_spec_leaf)
  if not p_leaves:
    raise ValueError("optadam.state_shardings: `param_shardings` has no leaves.")
  params = [_Param(leaf) for leaf in p_leaves]
  replicated = _replicated(params[0].sharding)
  zero1_axes = None if zero1_axis is None else _axis_tuple(zero1_axis)

  def axis_size_for(sharding: Any) -> int:
    assert zero1_axes is not None  # only asked for when zero1_axis is given
    m = sharding.mesh if isinstance(sharding, NamedSharding) else mesh
    if m is None:
      raise ValueError("optadam.state_shardings: `zero1_axis` with PartitionSpecs needs `mesh=`.")
    missing = [a for a in zero1_axes if a not in m.shape]
    if missing:
      raise ValueError(
        f"optadam.state_shardings: zero1_axis {zero1_axis!r}: the mesh has no "
        f"axis {missing[0]!r} (axes: {tuple(m.shape)})."
      )
    return math.prod(m.shape[a] for a in zero1_axes)

  def leaf_sharding(state_leaf: Any, param: _Param) -> Any:
    """The sharding of a state leaf that sits where `param` sits in a params-shaped part."""
    if _is_masked(state_leaf) or state_leaf is None:
      return state_leaf
    sharding = param.sharding
    shape = getattr(state_leaf, "shape", None)
    shape = param.shape if shape is None else tuple(shape)
    if shape is not None:
      spec = sharding if isinstance(sharding, PartitionSpec) else getattr(sharding, "spec", None)
      if param.shape is not None and shape != param.shape:
        return replicated  # not a copy of the parameter (e.g. a factored statistic)
      if spec is not None and len(spec) > len(shape):
        return replicated
    if zero1_axes is None:
      return sharding
    if shape is None:
      raise ValueError(
        "optadam.state_shardings: `zero1_axis` needs the parameters' shapes: pass arrays or "
        "jax.ShapeDtypeStructs carrying shardings as `param_shardings` (e.g. "
        "`jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), "
        "params, shardings)`), or a state instead of the optimizer."
      )
    if isinstance(sharding, PartitionSpec):
      return _zero1_spec(sharding, shape, zero1_axes, axis_size_for(sharding))
    if not isinstance(sharding, NamedSharding):
      raise ValueError(
        "optadam.state_shardings: `zero1_axis` needs NamedShardings (or "
        f"PartitionSpecs with `mesh=`); got {sharding!r}."
      )
    spec = _zero1_spec(sharding.spec, shape, zero1_axes, axis_size_for(sharding))
    return NamedSharding(sharding.mesh, spec, memory_kind=sharding.memory_kind)

  def params_subtree(value: Any) -> Any:
    """Shardings for one parameter-shaped part of the state."""
    if isinstance(value, grouping.LeafGroups):  # packed small leaves: replicated, never sharded
      return grouping.LeafGroups(
        tuple(replicated for _ in value.groups), params_subtree(value.leaves), value.layout
      )
    if isinstance(value, _Placeholder):  # shapes unknown: the parameters' own shardings
      return p_def.unflatten([leaf_sharding(_NO_SHAPE, p) for p in params])
    v_leaves = p_def.flatten_up_to(value)
    return p_def.unflatten([leaf_sharding(v, p) for v, p in zip(v_leaves, params)])

  def non_param(value: Any) -> Any:
    if value is None or _is_masked(value):
      return value
    return replicated

  if _is_transformation(tx_or_state):
    tx = tx_or_state
    state = None
    if all(p.shape is not None for p in params):
      abstract = p_def.unflatten(
        [
          jax.ShapeDtypeStruct(
            p.shape,
            getattr(leaf, "dtype", np.float32),
            sharding=p.sharding if isinstance(p.sharding, jax.sharding.Sharding) else None,
          )
          for p, leaf in zip(params, p_leaves)
        ]
      )
      decide = getattr(tx, "group_layout", None)
      if decide is not None:  # group_small_leaves: sharded leaves stay out; the traced init
        decide(abstract)  # below reuses this layout
      state = jax.eval_shape(tx.init, abstract)
    try:
      placeholder_state = tx.init(_Placeholder())
    except Exception:  # pylint: disable=broad-except
      if state is None:
        raise
      # e.g. optax.masked with a pytree mask: match the abstract state structurally.
      return state_shardings(state, param_shardings, zero1_axis=zero1_axis, mesh=mesh)
    if state is None and getattr(tx, "group_small_leaves", None) is not None:
      raise ValueError(
        "optadam.state_shardings: this optimizer groups small leaves (group_small_leaves), so "
        "its state's layout depends on the parameters' shapes: pass arrays or "
        "jax.ShapeDtypeStructs carrying shardings as `param_shardings`, or pass the state "
        "(e.g. jax.eval_shape(tx.init, params)) instead of the optimizer."
      )
    if state is None:
      state = placeholder_state
    try:
      return jax.tree.map(
        lambda marker, value: (
          params_subtree(value)
          if isinstance(marker, _Placeholder)
          else jax.tree.map(non_param, value, is_leaf=_is_masked)
        ),
        placeholder_state,
        state,
        is_leaf=lambda x: isinstance(x, _Placeholder),
      )
    except (ValueError, TypeError):
      if state is placeholder_state:
        raise
      # The placeholder state's structure differs from the real one: match structurally.
      return state_shardings(state, param_shardings, zero1_axis=zero1_axis, mesh=mesh)

  def is_params_shaped(x: Any) -> bool:
    if isinstance(x, grouping.LeafGroups):
      return True
    if _is_masked(x) or x is None:
      return False
    if p_def.num_leaves == 1 and p_def.num_nodes == 1:
      return False  # a single-array parameter tree: matched leaf by leaf below
    try:
      leaves = p_def.flatten_up_to(x)
    except (ValueError, TypeError):
      return False
    return all(_is_masked(l) or hasattr(l, "shape") for l in leaves)

  if p_def.num_leaves == 1 and p_def.num_nodes == 1:
    only = params[0]

    def single(value: Any) -> Any:
      if value is None or _is_masked(value):
        return value
      shape = tuple(getattr(value, "shape", ()))
      if (shape == only.shape) if only.shape is not None else bool(shape):
        return leaf_sharding(value, only)
      return replicated

    return jax.tree.map(single, tx_or_state, is_leaf=_is_masked)

  return jax.tree.map(
    lambda x: params_subtree(x) if is_params_shaped(x) else non_param(x),
    tx_or_state,
    is_leaf=lambda x: is_params_shaped(x) or _is_masked(x),
  )


class _NoShape:
  """A stand-in state leaf whose shape is unknown (placeholder states)."""

  shape = None


_NO_SHAPE = _NoShape()
