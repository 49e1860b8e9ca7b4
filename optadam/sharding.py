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
from optadam.chain import KerasAdam

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


class _Zero1:
  """ZeRO-1: a parameter-shaped state leaf is also split over a data-parallel mesh axis."""

  def __init__(self, zero1_axis: AxisNames, mesh: Optional[Mesh]):
    self.name, self.axes, self.mesh = zero1_axis, _axis_tuple(zero1_axis), mesh

  def __call__(self, sharding: Any, shape: Optional[tuple[int, ...]]) -> Any:
    """`sharding` split along the first unsharded dimension divisible by the axis size."""
    if shape is None:
      raise ValueError(
        "optadam.state_shardings: `zero1_axis` needs the parameters' shapes: pass arrays or "
        "jax.ShapeDtypeStructs carrying shardings as `param_shardings` (e.g. "
        "`jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), "
        "params, shardings)`), or a state instead of the optimizer."
      )
    if isinstance(sharding, PartitionSpec):
      return self._split(sharding, shape, self._axis_size(sharding))
    if not isinstance(sharding, NamedSharding):
      raise ValueError(
        "optadam.state_shardings: `zero1_axis` needs NamedShardings (or "
        f"PartitionSpecs with `mesh=`); got {sharding!r}."
      )
    spec = self._split(sharding.spec, shape, self._axis_size(sharding))
    return NamedSharding(sharding.mesh, spec, memory_kind=sharding.memory_kind)

  def _axis_size(self, sharding: Any) -> int:
    m = sharding.mesh if isinstance(sharding, NamedSharding) else self.mesh
    if m is None:
      raise ValueError("optadam.state_shardings: `zero1_axis` with PartitionSpecs needs `mesh=`.")
    missing = [a for a in self.axes if a not in m.shape]
    if missing:
      raise ValueError(
        f"optadam.state_shardings: zero1_axis {self.name!r}: the mesh has no "
        f"axis {missing[0]!r} (axes: {tuple(m.shape)})."
      )
    return math.prod(m.shape[a] for a in self.axes)

  def _split(self, spec: PartitionSpec, shape: tuple[int, ...], axis_size: int) -> PartitionSpec:
    used = {a for entry in spec if entry is not None for a in _axis_tuple(entry)}
    if used & set(self.axes):
      return spec  # already split over (part of) that axis
    entries = list(spec) + [None] * (len(shape) - len(spec))
    for i, (entry, size) in enumerate(zip(entries, shape)):
      if entry is None and size > 0 and size % axis_size == 0:
        entries[i] = self.axes[0] if len(self.axes) == 1 else self.axes
        return PartitionSpec(*entries[: max(len(spec), i + 1)])
    return spec


class _Rule:
  """Where each part of a state lives: params-shaped parts like their parameters, the rest
  replicated."""

  def __init__(self, params: list[_Param], p_def: Any, zero1: Optional[_Zero1]):
    self.params, self.p_def, self.zero1 = params, p_def, zero1
    self.replicated = _replicated(params[0].sharding)

  def leaf(self, state_leaf: Any, param: _Param) -> Any:
    """The sharding of a state leaf that sits where `param` sits in a params-shaped part."""
    if _is_masked(state_leaf) or state_leaf is None:
      return state_leaf
    sharding = param.sharding
    shape = getattr(state_leaf, "shape", None)
    shape = param.shape if shape is None else tuple(shape)
    if shape is not None:
      spec = sharding if isinstance(sharding, PartitionSpec) else getattr(sharding, "spec", None)
      if param.shape is not None and shape != param.shape:
        return self.replicated  # not a copy of the parameter (e.g. a factored statistic)
      if spec is not None and len(spec) > len(shape):
        return self.replicated
    return sharding if self.zero1 is None else self.zero1(sharding, shape)

  def params_subtree(self, value: Any) -> Any:
    """Shardings for one parameter-shaped part of the state."""
    if isinstance(value, grouping.LeafGroups):  # packed small leaves: replicated, never sharded
      return grouping.LeafGroups(
        tuple(self.replicated for _ in value.groups),
        self.params_subtree(value.leaves),
        value.layout,
      )
    if isinstance(value, _Placeholder):  # shapes unknown: the parameters' own shardings
      return self.p_def.unflatten([self.leaf(_NO_SHAPE, p) for p in self.params])
    v_leaves = self.p_def.flatten_up_to(value)
    return self.p_def.unflatten([self.leaf(v, p) for v, p in zip(v_leaves, self.params)])

  def non_param(self, value: Any) -> Any:
    if value is None or _is_masked(value):
      return value
    return self.replicated


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

  With ``group_small_leaves`` (and no layout fixed yet) the layout is decided from
  `param_shardings`' ShapeDtypeStructs (`optadam.KerasAdam.with_group_layout`): build
  the state with the same layout (``tx.with_group_layout(structs).init``).

  Raises:
    ValueError: if `zero1_axis` is used without known shapes or with an axis the
      mesh does not have.
  """
  p_leaves, p_def = jax.tree.flatten(param_shardings, is_leaf=_is_spec_leaf)
  if not p_leaves:
    raise ValueError("optadam.state_shardings: `param_shardings` has no leaves.")
  zero1 = None if zero1_axis is None else _Zero1(zero1_axis, mesh)
  rule = _Rule([_Param(leaf) for leaf in p_leaves], p_def, zero1)
  if _is_transformation(tx_or_state):
    return _from_transformation(tx_or_state, rule, p_leaves)
  return _from_state(tx_or_state, rule)


def _abstract_params(rule: _Rule, p_leaves: list[Any]) -> Optional[Any]:
  """The parameters as ShapeDtypeStructs with their shardings, when every shape is known."""
  if any(p.shape is None for p in rule.params):
    return None
  return rule.p_def.unflatten(
    [
      jax.ShapeDtypeStruct(
        p.shape,
        getattr(leaf, "dtype", np.float32),
        sharding=p.sharding if isinstance(p.sharding, jax.sharding.Sharding) else None,
      )
      for p, leaf in zip(rule.params, p_leaves)
    ]
  )


def _from_transformation(tx: Any, rule: _Rule, p_leaves: list[Any]) -> Any:
  """From the optimizer: `tx.init` on a placeholder locates the parameter-shaped parts exactly
  (optax's ``tree_map_params`` approach); the abstract state gives their shapes."""
  abstract = _abstract_params(rule, p_leaves)
  grouped = isinstance(tx, KerasAdam) and tx.config.group_small_leaves is not None
  if grouped and abstract is None:
    raise ValueError(
      "optadam.state_shardings: this optimizer groups small leaves (group_small_leaves), so "
      "its state's layout depends on the parameters' shapes: pass arrays or "
      "jax.ShapeDtypeStructs carrying shardings as `param_shardings`, or pass the state "
      "(e.g. jax.eval_shape(tx.init, params)) instead of the optimizer."
    )
  if grouped and tx.group_layout is None:  # sharded leaves stay out: decided from the structs
    tx = tx.with_group_layout(abstract)
  state = None if abstract is None else jax.eval_shape(tx.init, abstract)
  try:
    placeholder_state = tx.init(_Placeholder())
  except Exception:  # pylint: disable=broad-except
    if state is None:
      raise
    # e.g. optax.masked with a pytree mask: match the abstract state structurally.
    return _from_state(state, rule)
  if state is None:
    state = placeholder_state
  try:
    return jax.tree.map(
      lambda marker, value: (
        rule.params_subtree(value)
        if isinstance(marker, _Placeholder)
        else jax.tree.map(rule.non_param, value, is_leaf=_is_masked)
      ),
      placeholder_state,
      state,
      is_leaf=lambda x: isinstance(x, _Placeholder),
    )
  except (ValueError, TypeError):
    if state is placeholder_state:
      raise
    # The placeholder state's structure differs from the real one: match structurally.
    return _from_state(state, rule)


def _from_state(state: Any, rule: _Rule) -> Any:
  """From a state: a sub-tree counts as parameter-shaped when it has the parameters' structure."""
  p_def = rule.p_def
  if p_def.num_leaves == 1 and p_def.num_nodes == 1:  # a single-array parameter tree
    only = rule.params[0]

    def single(value: Any) -> Any:
      if value is None or _is_masked(value):
        return value
      shape = tuple(getattr(value, "shape", ()))
      if (shape == only.shape) if only.shape is not None else bool(shape):
        return rule.leaf(value, only)
      return rule.replicated

    return jax.tree.map(single, state, is_leaf=_is_masked)

  def is_params_shaped(x: Any) -> bool:
    if isinstance(x, grouping.LeafGroups):
      return True
    if _is_masked(x) or x is None:
      return False
    try:
      leaves = p_def.flatten_up_to(x)
    except (ValueError, TypeError):
      return False
    return all(_is_masked(l) or hasattr(l, "shape") for l in leaves)

  return jax.tree.map(
    lambda x: rule.params_subtree(x) if is_params_shaped(x) else rule.non_param(x),
    state,
    is_leaf=lambda x: is_params_shaped(x) or _is_masked(x),
  )


class _NoShape:
  """A stand-in state leaf whose shape is unknown (placeholder states)."""

  shape = None


_NO_SHAPE = _NoShape()
