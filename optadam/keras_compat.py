"""Keras configurations in and out, and Keras optimizer state in (SPEC §9)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optadam import _tree
from optadam import alias
from optadam import ema as ema_lib
from optadam import grouping
from optadam import hyperparams
from optadam import keras3
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
  """
  if not isinstance(tx, alias.KerasAdam):
    raise TypeError(
      f"get_config needs the optimizer returned by optadam.adam; got {type(tx).__name__}."
    )
  if keras_version not in (2, 3):
    raise ValueError(f"`keras_version` must be 2 or 3; got {keras_version!r}.")
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

  Raises:
    ValueError: for another optimizer class, unknown keys or malformed values.
  """
  if not isinstance(config, dict):
    raise TypeError(f"from_keras_config needs a dict; got {hyperparams.describe(config)}.")
  if "class_name" in config:
    class_name = config["class_name"]
    if class_name not in _ADAM_CLASS_NAMES:
      raise ValueError(f"from_keras_config builds Adam only; got class_name={class_name!r}.")
    extra = set(config) - {"class_name", "config", "module", "registered_name", "build_config"}
    if extra or not isinstance(config.get("config"), dict):
      raise ValueError(
        "A serialized Keras optimizer is {'class_name': 'Adam', 'config': {...}} (with "
        f"optional 'module' and 'registered_name'); got keys {sorted(config)}."
      )
    config = config["config"]
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
  tx: alias.KerasAdam, variables: Sequence[Any], params: Any, order: Optional[Sequence[str]] = None
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

  Returns:
    The state ``tx.init(params)`` would give, with step counts, moments, v-hat
    and averages taken from Keras.

  Raises:
    ValueError: when the number or shapes of the variables do not fit.
  """
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
