"""Keras optimizer state in: `state_from_keras` (Keras 2's and Keras 3's variable orders)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optadam import _tree
from optadam import ema as ema_lib
from optadam import keras3
from optadam import loss_scaling
from optadam import readers
from optadam.chain import KerasAdam
from optadam.config import AdamConfig


def _layout(
  n: int, count: int, use_ema: bool, amsgrad: bool, legacy: bool
) -> Optional[dict[str, Any]]:
  """Positions in a Keras optimizer's `variables` (Keras 2, Keras 3 and TF legacy layouts)."""
  if legacy:  # iteration, every m, every v, every v-hat
    if count != 1 + n * (2 + amsgrad):
      return None
    block = lambda b: list(range(1 + b * n, 1 + (b + 1) * n))
    return {"avg": [], "acc": [], "m": block(0), "v": block(1), "vhat": block(2) if amsgrad else []}
  base = 1 + n * (2 + use_ema + amsgrad)
  for lr_slot, acc in ((0, 0), (1, 0), (0, 1), (1, 1)):  # Keras 3: learning_rate var, accumulators
    if count == base + lr_slot + acc * n:
      start = 1 + lr_slot
      avg = list(range(start, start + n)) if use_ema else []
      start += n if use_ema else 0
      accs = list(range(start, start + n)) if acc else []
      start += n if acc else 0
      m = [start + 2 * i for i in range(n)]
      v = [start + 2 * i + 1 for i in range(n)]
      start += 2 * n
      vhat = list(range(start, start + n)) if amsgrad else []
      return {"avg": avg, "acc": accs, "m": m, "v": v, "vhat": vhat}
  return None


def _with_counts(state: Any, value: jax.Array) -> Any:
  """`state` with the `count` of every transform's state set to `value`."""
  has_count = lambda x: hasattr(x, "_fields") and "count" in x._fields
  return jax.tree.map(
    lambda x: x._replace(count=value) if has_count(x) else x, state, is_leaf=has_count
  )


def state_from_keras(
  tx: KerasAdam,
  variables: Sequence[Any],
  params: Any,
  order: Optional[Sequence[str]] = None,
  *,
  loss_scale: Any = None,
  dynamic_counter: Any = None,
) -> Any:
  """An optadam state from a Keras 2 or Keras 3 Adam's ``optimizer.variables``.

  Keras 2's order is: iteration, one EMA average per variable (with EMA), then
  m and v interleaved per variable, then v-hat per variable (with amsgrad).
  Keras 3 adds the learning-rate variable after the iteration (float learning
  rates) and gradient accumulators after the averages.

  Args:
    tx: the `optadam.adam` optimizer that will continue the run (its amsgrad and
      use_ema decide the layout).
    variables: the values of ``optimizer.variables`` (numpy arrays), in order.
    params: the parameters, a pytree.
    order: the "/"-joined pytree paths of `params` in Keras's variable order
      (default: the order of ``jax.tree.leaves(params)``).

    loss_scale: Keras 2 ``LossScaleOptimizer`` only: ``lso.loss_scale`` (Keras 2's
      ``lso.variables`` are the inner Adam's only; its scale and counter live apart).
    dynamic_counter: Keras 2 ``LossScaleOptimizer`` only: ``lso.dynamic_counter``.

  For `optadam.loss_scale_optimizer` around `optadam.adam`, `variables` are either
  Keras 3's ``lso.variables`` (its own iteration, learning_rate, step_counter and
  dynamic_scale, then the inner Adam's), or Keras 2's ``lso.variables`` (the inner
  Adam's) together with `loss_scale` and `dynamic_counter`.

  Returns:
    The state ``tx.init(params)`` would give, with step counts, moments, v-hat
    and averages taken from Keras (and the loss scale and its counter).

  Raises:
    ValueError: when the number or shapes of the variables do not fit.
  """
  if isinstance(tx, loss_scaling.LossScaleOptimizer):
    return _loss_scale_state_from_keras(tx, variables, params, order, loss_scale, dynamic_counter)
  if loss_scale is not None or dynamic_counter is not None:
    raise ValueError(
      "`loss_scale` / `dynamic_counter` are for a loss_scale_optimizer; this optimizer has none."
    )
  config = tx.config
  slots = _Slots(variables, params, order, config)
  grouped = tx.init(params)
  state = readers.ungroup_state(grouped)  # filled per parameter path, packed again at the end
  iteration = int(np.asarray(variables[0]))
  real = iteration // (config.gradient_accumulation_steps or 1)
  if isinstance(state, keras3.GradientAccumulationState):
    acc = slots.tree("acc", state.acc) if slots.layout["acc"] else state.acc
    # Keras 3's EMA sees every call (optadam.chain): its count is the raw iteration.
    every_call = config.use_ema and config.ema_style == "keras3"
    ema_count = _count(iteration if every_call else real)
    inner = _filled(state.inner, slots, _count(real), config, ema_count)
    state = state._replace(count=_count(iteration), acc=acc, inner=inner)
  else:
    state = _filled(state, slots, _count(real), config, _count(real))
  return readers.regroup_state(state, grouped)


def _count(c: int) -> jax.Array:
  return jnp.asarray(min(c, np.iinfo(np.int32).max), jnp.int32)


class _Slots:
  """A Keras optimizer's variables, read per kind (``m``, ``v``, ``vhat``, ``avg``, ``acc``)."""

  def __init__(self, variables: Sequence[Any], params: Any, order: Any, config: AdamConfig):
    paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    self.paths = [_tree.path_str(p) for p, _ in paths_leaves]
    self.leaves = [leaf for _, leaf in paths_leaves]
    self.treedef = jax.tree.structure(params)
    self.variables = variables
    self.keras_index = _keras_index(order, self.paths)
    n = len(self.leaves)
    use_ema, amsgrad = config.use_ema, config.amsgrad
    legacy = config.keras_class == "legacy.Adam"
    layout = _layout(n, len(variables), use_ema, amsgrad, legacy)
    if layout is None:
      raise ValueError(
        f"Got {len(variables)} Keras optimizer variables for {n} parameters "
        f"(use_ema={use_ema}, amsgrad={amsgrad}); expected {1 + n * (2 + use_ema + amsgrad)} "
        + (
          "(TF's legacy Adam)."
          if legacy
          else "(Keras 2) or that plus the learning rate / accumulators (Keras 3)."
        )
      )
    self.layout = layout

  def values(self, kind: str) -> list[np.ndarray]:
    out = []
    for leaf_i, leaf in enumerate(self.leaves):
      value = np.asarray(self.variables[self.layout[kind][self.keras_index[leaf_i]]])
      if value.shape != np.shape(leaf):
        raise ValueError(
          f"Keras variable for {kind} of {self.paths[leaf_i]!r} has shape {value.shape}; "
          f"the parameter has shape {np.shape(leaf)}."
        )
      out.append(value)
    return out

  def tree(self, kind: str, like: Any) -> Any:
    """The variables of `kind` as a tree shaped like the params, in the dtypes of `like`."""
    values = self.treedef.unflatten(self.values(kind))
    return jax.tree.map(lambda ref, v: jnp.asarray(v, jnp.asarray(ref).dtype), like, values)


def _keras_index(order: Optional[Sequence[str]], paths: list[str]) -> list[int]:
  """Each tree leaf's position in Keras's order (`order`: the paths in Keras's order)."""
  if order is None:
    return list(range(len(paths)))
  missing = sorted(set(order) ^ set(paths))
  if missing or len(order) != len(paths):
    raise ValueError(
      f"`order` must name every parameter path once; mismatched: {missing}. "
      f"Parameter paths: {paths}."
    )
  return [list(order).index(p) for p in paths]


def _filled(
  inner: Any, slots: _Slots, count: jax.Array, config: AdamConfig, ema_count: jax.Array
) -> Any:
  """An `AdamState` (per parameter path) with Keras's moments, v-hat, averages and counts."""
  adam_state = inner.adam._replace(
    count=count,
    mu=slots.tree("m", inner.adam.mu),
    nu=slots.tree("v", inner.adam.nu),
    nu_max=slots.tree("vhat", inner.adam.nu_max) if config.amsgrad else None,
  )
  inner = _with_counts(inner._replace(adam=adam_state), count)
  if config.use_ema:
    ema = ema_lib.ParameterEmaState(count=ema_count, ema=slots.tree("avg", inner.ema.ema))
    inner = inner._replace(ema=ema)
  return inner


_KERAS3_LSO_OWN = 4  # Keras 3 lso.variables: iteration, learning_rate, step_counter, dynamic_scale


def _loss_scale_state_from_keras(
  tx: loss_scaling.LossScaleOptimizer,
  variables: Sequence[Any],
  params: Any,
  order: Optional[Sequence[str]],
  scale: Any,
  counter: Any,
) -> loss_scaling.LossScaleState:
  """A `LossScaleState` from a Keras 2 or Keras 3 LossScaleOptimizer's variables."""
  if (scale is None) != (counter is None):
    raise ValueError(
      "Pass both `loss_scale` and `dynamic_counter` (Keras 2's lso.loss_scale and "
      "lso.dynamic_counter), or neither (Keras 3's lso.variables hold them)."
    )
  variables = list(variables)
  if scale is None:
    if len(variables) <= _KERAS3_LSO_OWN:
      raise ValueError(
        f"Got {len(variables)} variables: Keras 3's LossScaleOptimizer.variables start with "
        "iteration, learning_rate, step_counter and dynamic_scale, then the inner Adam's. For "
        "Keras 2 pass lso.variables with loss_scale=lso.loss_scale and "
        "dynamic_counter=lso.dynamic_counter."
      )
    counter, scale = variables[2], variables[3]
    variables = variables[_KERAS3_LSO_OWN:]
  inner = state_from_keras(tx.inner, variables, params, order)
  scale = np.asarray(scale, np.float32)
  counter = np.asarray(counter)
  if scale.shape != () or counter.shape != () or not np.issubdtype(counter.dtype, np.integer):
    raise ValueError(
      f"The loss scale and its counter must be scalars (float, int); got {scale!r}, {counter!r}."
    )
  return loss_scaling.LossScaleState(
    scale=jnp.asarray(scale, jnp.float32),
    good_steps=jnp.asarray(min(int(counter), np.iinfo(np.int32).max), jnp.int32),
    inner=inner,
  )
