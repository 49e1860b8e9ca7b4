"""Keras configurations in and out, and Keras optimizer state in (SPEC §9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optadam import _tree
from optadam import alias
from optadam import ema as ema_lib
from optadam import grouping
from optadam import hyperparams
from optadam import keras3
from optadam import loss_scaling
from optadam import schedules

KERAS2_KEYS = (
  "name",
  "weight_decay",
  "clipnorm",
  "global_clipnorm",
  "clipvalue",
  "use_ema",
  "ema_momentum",
  "ema_overwrite_frequency",
  "jit_compile",
  "is_legacy_optimizer",
  "learning_rate",
  "beta_1",
  "beta_2",
  "epsilon",
  "amsgrad",
)
KERAS3_EXTRA_KEYS = ("loss_scale_factor", "gradient_accumulation_steps")
_ADAM_CLASS_NAMES = ("Adam", "keras.optimizers.Adam", "optimizers.Adam")
_LSO_CLASS_NAMES = ("LossScaleOptimizer", "LossScaleOptimizerV3")
# Keras 3 accepts these base-optimizer keys in a LossScaleOptimizer config at their defaults only.
_LSO_KERAS3_IGNORED = {
  "weight_decay": None,
  "clipnorm": None,
  "global_clipnorm": None,
  "clipvalue": None,
  "use_ema": False,
  "ema_momentum": 0.99,
  "ema_overwrite_frequency": None,
  "loss_scale_factor": None,
  "gradient_accumulation_steps": None,
}


def _float32(x: Any) -> float:
  """A float as Keras stores it in a float32 variable (0.001 -> 0.0010000000474974513)."""
  return float(np.float32(x))


def _serialize_learning_rate(lr: Any) -> Any:
  if isinstance(lr, schedules.LearningRateSchedule):
    return schedules.serialize(lr)
  if callable(lr):
    if hyperparams.takes_no_arguments(lr):  # Keras 2 records the callable's current value
      return _float32(lr())
    raise TypeError(
      f"The learning rate {lr!r} is a schedule function that has no Keras form; only "
      "optadam.schedules (Keras's six schedules) can go into a Keras config."
    )
  value = hyperparams.concrete_number(lr)
  if value is None:
    raise TypeError(
      f"The learning rate {hyperparams.describe(lr)} has no concrete value to put in a config."
    )
  return _float32(value)


def _plain(name: str, value: Any) -> Any:
  if value is None or isinstance(value, (bool, str)):
    return value
  if callable(value):
    if hyperparams.takes_no_arguments(value):
      return float(value())
    raise TypeError(f"`{name}` is a schedule ({value!r}); a Keras config holds numbers only.")
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value)
  number = hyperparams.concrete_number(value)
  if number is None:
    raise TypeError(
      f"`{name}` has no concrete value to put in a config: {hyperparams.describe(value)}."
    )
  return number


def get_config(tx: alias.KerasAdam, *, keras_version: int = 2) -> dict[str, Any]:
  """The Keras ``get_config()`` dict of an `optadam.adam` optimizer (JSON-serialisable).

  ``keras_version=2`` (default) gives Keras 2's keys (a float learning rate as its
  float32 value, as Keras 2 does); ``3`` gives Keras 3's (adds
  ``loss_scale_factor`` and ``gradient_accumulation_steps``, drops ``jit_compile``
  and ``is_legacy_optimizer``). optadam-only options (``exclude_from_weight_decay``,
  dtypes, ``ema_style``) have no Keras key and are not included.

  For `optadam.loss_scale_optimizer` around `optadam.adam` it gives the
  ``LossScaleOptimizer`` config of that Keras version: Keras 2's ``{"inner_optimizer":
  {serialized Adam}, "dynamic": True, "initial_scale": ..., "dynamic_growth_steps": ...}``
  or Keras 3's ``{"name": ..., "inner_optimizer": ..., "initial_scale": ...,
  "dynamic_growth_steps": ...}``.
  """
  if keras_version not in (2, 3):
    raise ValueError(f"`keras_version` must be 2 or 3; got {keras_version!r}.")
  if isinstance(tx, loss_scaling.LossScaleOptimizer):
    return _loss_scale_config(tx, keras_version)
  if not isinstance(tx, alias.KerasAdam):
    raise TypeError(
      "get_config needs the optimizer returned by optadam.adam or "
      f"optadam.loss_scale_optimizer(optadam.adam(...)); got {type(tx).__name__}."
    )
  args = tx.keras_args
  config = {
    "name": args["name"],
    "weight_decay": _plain("weight_decay", args["weight_decay"]),
    "clipnorm": _plain("clipnorm", args["clipnorm"]),
    "global_clipnorm": _plain("global_clipnorm", args["global_clipnorm"]),
    "clipvalue": _plain("clipvalue", args["clipvalue"]),
    "use_ema": bool(args["use_ema"]),
    "ema_momentum": _plain("ema_momentum", args["ema_momentum"]),
    "ema_overwrite_frequency": _plain("ema_overwrite_frequency", args["ema_overwrite_frequency"]),
    "jit_compile": bool(args["jit_compile"]),
    "is_legacy_optimizer": False,
    "learning_rate": _serialize_learning_rate(args["learning_rate"]),
    "beta_1": _plain("beta_1", args["beta_1"]),
    "beta_2": _plain("beta_2", args["beta_2"]),
    "epsilon": _plain("epsilon", args["epsilon"]),
    "amsgrad": bool(args["amsgrad"]),
  }
  if keras_version == 3:
    del config["jit_compile"], config["is_legacy_optimizer"]
    config["loss_scale_factor"] = _plain("loss_scale_factor", args["loss_scale_factor"])
    config["gradient_accumulation_steps"] = args["gradient_accumulation_steps"]
  return config


def from_keras_config(config: dict[str, Any], **overrides: Any) -> alias.KerasAdam:
  """Builds `optadam.adam` from a Keras Adam configuration.

  Accepts a Keras 2 ``optimizer.get_config()`` dict, a Keras 3 one, or the
  ``{"class_name": "Adam", "config": {...}}`` wrapper that
  ``keras.optimizers.serialize`` writes; a learning-rate schedule in Keras's
  serialized form becomes the matching `optadam.schedules` class. `overrides`
  are passed to `optadam.adam` as well (e.g. ``exclude_from_weight_decay``,
  which Keras keeps outside the config).

  A ``LossScaleOptimizer`` config (Keras 2's, with ``"dynamic"``, or Keras 3's, with
  ``"name"``; bare or in its ``{"class_name": "LossScaleOptimizer", ...}`` wrapper) gives
  `optadam.loss_scale_optimizer` around the inner Adam, in the matching ``style``.

  Raises:
    ValueError: for another optimizer class, unknown keys or malformed values.
  """
  if not isinstance(config, dict):
    raise TypeError(f"from_keras_config needs a dict; got {hyperparams.describe(config)}.")
  if config.get("class_name") in _LSO_CLASS_NAMES or "inner_optimizer" in config:
    return _loss_scale_from_config(config, overrides)
  if "class_name" in config:
    class_name = config["class_name"]
    if class_name not in _ADAM_CLASS_NAMES:
      raise ValueError(f"from_keras_config builds Adam only; got class_name={class_name!r}.")
    config = _unwrap_serialized(config, "Keras optimizer", "Adam")
  unknown = sorted(set(config) - set(KERAS2_KEYS) - set(KERAS3_EXTRA_KEYS))
  if unknown:
    raise ValueError(
      f"Unknown keys in the Keras Adam config: {unknown}. Known keys: "
      f"{sorted(KERAS2_KEYS + KERAS3_EXTRA_KEYS)}."
    )
  if config.get("is_legacy_optimizer"):
    raise ValueError(
      "A legacy Keras optimizer config (is_legacy_optimizer=True) has other semantics; "
      "optadam reproduces the new optimizer (TF 2.11+)."
    )
  kwargs = {k: v for k, v in config.items() if k != "is_legacy_optimizer"}
  lr = kwargs.get("learning_rate", 0.001)
  if isinstance(lr, dict):
    kwargs["learning_rate"] = schedules.deserialize(lr)
  elif isinstance(lr, (list, str)) or lr is None:
    raise ValueError(
      f"`learning_rate` in a Keras config must be a number or a serialized schedule; got {lr!r}."
    )
  if kwargs.get("gradient_accumulation_steps") is None:
    kwargs.pop("gradient_accumulation_steps", None)
  kwargs.update(overrides)
  return alias.adam(**kwargs)


# --- LossScaleOptimizer configs ---------------------------------------------------------------


def _serialized_adam(tx: Any, keras_version: int) -> dict[str, Any]:
  if not isinstance(tx, alias.KerasAdam):
    raise TypeError(
      f"get_config of a loss_scale_optimizer needs optadam.adam inside it; got {type(tx).__name__}."
    )
  return {
    "module": "keras.optimizers",
    "class_name": "Adam",
    "config": get_config(tx, keras_version=keras_version),
    "registered_name": None,
  }


def _loss_scale_config(tx: loss_scaling.LossScaleOptimizer, keras_version: int) -> dict[str, Any]:
  """Keras 2's or Keras 3's ``LossScaleOptimizer.get_config()``."""
  inner = _serialized_adam(tx.inner, keras_version)
  scale = float(tx.initial_scale)
  if keras_version == 2:
    return {
      "inner_optimizer": inner,
      "dynamic": True,
      "initial_scale": scale,
      "dynamic_growth_steps": int(tx.dynamic_growth_steps),
    }
  return {
    "name": tx.name,
    "inner_optimizer": inner,
    "initial_scale": scale,
    "dynamic_growth_steps": int(tx.dynamic_growth_steps),
  }


def _unwrap_serialized(config: dict[str, Any], what: str, class_name: str) -> dict[str, Any]:
  """The ``config`` of Keras's serialized form ``{'class_name': ..., 'config': {...}, ...}``."""
  extra = set(config) - {"class_name", "config", "module", "registered_name", "build_config"}
  if extra or not isinstance(config.get("config"), dict):
    raise ValueError(
      f"A serialized {what} is {{'class_name': '{class_name}', 'config': {{...}}}} (with "
      f"optional 'module' and 'registered_name'); got keys {sorted(config)}."
    )
  return config["config"]


def _loss_scale_from_config(config: dict[str, Any], overrides: dict[str, Any]) -> Any:
  """`optadam.loss_scale_optimizer(from_keras_config(inner))` from a LossScaleOptimizer config."""
  if "class_name" in config:
    config = _unwrap_serialized(config, "LossScaleOptimizer", "LossScaleOptimizer")
  config = dict(config)
  if not config.pop("dynamic", True):
    raise ValueError(
      "A LossScaleOptimizer config with dynamic=False (a fixed loss scale) is not supported: "
      "build optadam.adam(..., loss_scale_factor=<the scale>) instead (Keras 3 no longer "
      "supports dynamic=False either)."
    )
  style = "keras2" if "name" not in config else "keras3"
  if "inner_optimizer" not in config:
    raise ValueError(f"A LossScaleOptimizer config needs 'inner_optimizer'; got {sorted(config)}.")
  inner_config = config.pop("inner_optimizer")
  name = config.pop("name", None)
  for key, default in _LSO_KERAS3_IGNORED.items():
    if key in config and config.pop(key) != default:
      raise ValueError(
        f"A LossScaleOptimizer config cannot set `{key}`; set it on the inner optimizer."
      )
  initial_scale = config.pop("initial_scale", 2.0**15)
  growth = config.pop("dynamic_growth_steps", 2000)
  if config:
    raise ValueError(
      f"Unknown keys in the LossScaleOptimizer config: {sorted(config)}. Known keys: "
      "dynamic, initial_scale, dynamic_growth_steps, inner_optimizer, name."
    )
  if initial_scale is None:
    initial_scale = 2.0**15
  if growth is None:
    growth = 2000
  if not isinstance(inner_config, dict):
    raise ValueError(
      f"`inner_optimizer` must be a serialized Adam config (a dict); got {inner_config!r}."
    )
  if style == "keras3":  # Keras 3 turns off the inner optimizer's loss_scale_factor
    inner_config = dict(inner_config)
    body = inner_config.get("config") if "class_name" in inner_config else inner_config
    if isinstance(body, dict) and "loss_scale_factor" in body:
      body = dict(body, loss_scale_factor=None)
      inner_config = dict(inner_config, config=body) if "class_name" in inner_config else body
  tx = loss_scaling.loss_scale_optimizer(
    from_keras_config(inner_config, **overrides), initial_scale, growth, style=style
  )
  if name is not None:
    tx.name = name
  return tx


# --- optimizer state in ----------------------------------------------------------------------


def _layout(n: int, count: int, use_ema: bool, amsgrad: bool) -> Optional[dict[str, Any]]:
  """Positions in a Keras optimizer's `variables` (Keras 2 and Keras 3 layouts)."""
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
  tx: alias.KerasAdam,
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
  args = tx.keras_args
  use_ema, amsgrad = bool(args["use_ema"]), bool(args["amsgrad"])
  paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [_tree.path_str(p) for p, _ in paths_leaves]
  leaves = [leaf for _, leaf in paths_leaves]
  if order is None:
    keras_index = list(range(len(leaves)))
  else:
    missing = sorted(set(order) ^ set(paths))
    if missing or len(order) != len(paths):
      raise ValueError(
        f"`order` must name every parameter path once; mismatched: {missing}. "
        f"Parameter paths: {paths}."
      )
    keras_index = [list(order).index(p) for p in paths]  # tree leaf -> Keras position
  n = len(leaves)
  layout = _layout(n, len(variables), use_ema, amsgrad)
  if layout is None:
    raise ValueError(
      f"Got {len(variables)} Keras optimizer variables for {n} parameters "
      f"(use_ema={use_ema}, amsgrad={amsgrad}); expected {1 + n * (2 + use_ema + amsgrad)} "
      "(Keras 2) or that plus the learning rate / accumulators (Keras 3)."
    )
  iteration = int(np.asarray(variables[0]))

  def pick(kind):
    out = []
    for leaf_i, leaf in enumerate(leaves):
      value = np.asarray(variables[layout[kind][keras_index[leaf_i]]])
      if value.shape != np.shape(leaf):
        raise ValueError(
          f"Keras variable for {kind} of {paths[leaf_i]!r} has shape {value.shape}; "
          f"the parameter has shape {np.shape(leaf)}."
        )
      out.append(value)
    return out

  grouped = tx.init(params)
  state = grouping.ungroup_state(grouped)  # filled per parameter path, packed again at the end
  inner = state.inner if isinstance(state, keras3.GradientAccumulationState) else state
  k = args["gradient_accumulation_steps"] or 1
  real = iteration // k
  treedef = jax.tree.structure(params)

  def tree_of(values, like):
    return jax.tree.map(
      lambda ref, v: jnp.asarray(v, jnp.asarray(ref).dtype), like, treedef.unflatten(values)
    )

  count = lambda c: jnp.asarray(min(c, np.iinfo(np.int32).max), jnp.int32)
  adam_state = inner.adam._replace(
    count=count(real),
    mu=tree_of(pick("m"), inner.adam.mu),
    nu=tree_of(pick("v"), inner.adam.nu),
    nu_max=tree_of(pick("vhat"), inner.adam.nu_max) if amsgrad else None,
  )
  inner = _with_counts(inner._replace(adam=adam_state), count(real))
  if use_ema:
    inner = inner._replace(
      ema=ema_lib.ParameterEmaState(count=count(real), ema=tree_of(pick("avg"), inner.ema.ema))
    )
  if isinstance(state, keras3.GradientAccumulationState):
    acc = tree_of(pick("acc"), state.acc) if layout["acc"] else state.acc
    return grouping.regroup_state(
      state._replace(count=count(iteration), acc=acc, inner=inner), grouped
    )
  return grouping.regroup_state(inner, grouped)


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
