"""Keras configurations in and out: `get_config` and `from_keras_config`.

The Adam family: Keras's ``Adam`` and ``AdamW`` (TF 2.11–2.15's and Keras 3's; the same
keys) and TF's legacy ``Adam`` (``tf.keras.optimizers.legacy.Adam``, keys ``name,
learning_rate, decay, beta_1, beta_2, epsilon, amsgrad`` and the clipping keys that are set),
which becomes `optadam.adam` with an `optadam.LegacyDecay` learning rate and float32 betas.
Any other optimizer's config is refused (`optadam._keras_classes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from optadam import _keras_classes
from optadam import alias
from optadam import chain
from optadam import hyperparams
from optadam import loss_scaling
from optadam import schedules
from optadam.config import AdamConfig
from optadam.chain import KerasAdam
from optadam.learning_rate import LegacyDecay

_MODULES = {"Adam": "keras.optimizers", "AdamW": "keras.optimizers"}
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


def get_config(
  tx: KerasAdam, *, keras_version: int = 2, serialized: bool = False
) -> dict[str, Any]:
  """The Keras ``get_config()`` dict of an `optadam.adam` or `optadam.adamw` optimizer.

  ``keras_version=2`` (default) gives Keras 2's keys (a float learning rate as its
  float32 value, as Keras 2 does); ``3`` gives Keras 3's (adds
  ``loss_scale_factor`` and ``gradient_accumulation_steps``, drops ``jit_compile``
  and ``is_legacy_optimizer``). optadam-only options (``exclude_from_weight_decay``,
  dtypes, ``ema_style``) have no Keras key and are not included. An optimizer built
  from TF's legacy Adam (``tx.config.keras_class == "legacy.Adam"``) gives the legacy
  config (``learning_rate``, ``decay``, ...), whichever `keras_version`.

  With ``serialized=True`` the result is ``keras.optimizers.serialize``'s form,
  ``{"module": ..., "class_name": "Adam" | "AdamW", "config": {...},
  "registered_name": None}`` (module ``keras.optimizers.legacy`` for the legacy Adam).

  For `optadam.loss_scale_optimizer` around `optadam.adam` it gives the
  ``LossScaleOptimizer`` config of that Keras version: Keras 2's ``{"inner_optimizer":
  {serialized Adam}, "dynamic": True, "initial_scale": ..., "dynamic_growth_steps": ...}``
  or Keras 3's ``{"name": ..., "inner_optimizer": ..., "initial_scale": ...,
  "dynamic_growth_steps": ...}``.
  """
  if keras_version not in (2, 3):
    raise ValueError(f"`keras_version` must be 2 or 3; got {keras_version!r}.")
  if isinstance(tx, loss_scaling.LossScaleOptimizer):
    config = _loss_scale_config(tx, keras_version)
    cls, module = "LossScaleOptimizer", "keras.mixed_precision"
  elif isinstance(tx, KerasAdam):
    cls = tx.config.keras_class
    if cls == "legacy.Adam":
      config, cls, module = _legacy_config(tx.config), "Adam", "keras.optimizers.legacy"
    else:
      config, module = _new_config(tx.config, keras_version), _MODULES[cls]
  else:
    raise TypeError(
      "get_config needs the optimizer returned by optadam.adam, optadam.adamw or "
      f"optadam.loss_scale_optimizer(optadam.adam(...)); got {type(tx).__name__}."
    )
  if not serialized:
    return config
  return {"module": module, "class_name": cls, "config": config, "registered_name": None}


def _new_config(config: AdamConfig, keras_version: int) -> dict[str, Any]:
  """Keras 2's or Keras 3's ``Adam.get_config()`` (and ``AdamW``'s: the same keys)."""
  args = config.keras_args
  out = {
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
    del out["jit_compile"], out["is_legacy_optimizer"]
    out["loss_scale_factor"] = _plain("loss_scale_factor", args["loss_scale_factor"])
    out["gradient_accumulation_steps"] = args["gradient_accumulation_steps"]
  return out


def _legacy_config(config: AdamConfig) -> dict[str, Any]:
  """TF's legacy ``Adam.get_config()``: the clipping keys only when set, float32 values."""
  rule = config.learning_rate
  assert isinstance(rule, LegacyDecay)  # AdamConfig checks it for keras_class "legacy.Adam"
  out: dict[str, Any] = {"name": config.name}
  for key in ("clipnorm", "clipvalue", "global_clipnorm"):
    if getattr(config, key) is not None:
      out[key] = _plain(key, getattr(config, key))
  out["learning_rate"] = _serialize_learning_rate(rule.learning_rate)
  out["decay"] = _plain("decay", rule.decay)
  for key in ("beta_1", "beta_2", "epsilon"):
    out[key] = _plain(key, getattr(config, key))
  out["amsgrad"] = bool(config.amsgrad)
  return out


def from_keras_config(config: dict[str, Any], **overrides: Any) -> KerasAdam:
  """Builds `optadam.adam` (or `optadam.adamw`) from a Keras Adam-family configuration.

  Accepts a Keras 2 ``optimizer.get_config()`` dict, a Keras 3 one, or the
  ``{"class_name": "Adam", "config": {...}}`` wrapper that
  ``keras.optimizers.serialize`` writes, of ``Adam``, ``AdamW`` (a bare config is
  AdamW when its ``name`` is Keras's default, ``"AdamW"`` or ``"adam_w"``) and TF's
  legacy ``Adam`` (its ``decay`` becomes an `optadam.LegacyDecay` learning rate, its
  betas float32 numbers, so that ``1 - beta`` is formed in float32 as TF's legacy
  kernels do, and an ``epsilon`` of 0 is 1e-7, as TF's legacy Adam makes it). A
  learning-rate schedule in Keras's serialized form becomes the matching
  `optadam.schedules` class. `overrides` are passed to `optadam.adam` as well (e.g.
  ``exclude_from_weight_decay``, which Keras keeps outside the config).

  A ``LossScaleOptimizer`` config (Keras 2's, with ``"dynamic"``, or Keras 3's, with
  ``"name"``; bare or in its ``{"class_name": "LossScaleOptimizer", ...}`` wrapper) gives
  `optadam.loss_scale_optimizer` around the inner Adam, in the matching ``style``.

  Raises:
    ValueError: for another optimizer (named where its class name, keys or name tell
      it), a bare config without Adam's keys, unknown keys or malformed values.
  """
  if not isinstance(config, dict):
    raise TypeError(f"from_keras_config needs a dict; got {hyperparams.describe(config)}.")
  if config.get("class_name") in _keras_classes.LSO_CLASSES or "inner_optimizer" in config:
    return _loss_scale_from_config(config, overrides)
  module = cls = None
  if "class_name" in config:
    module, cls = config.get("module"), _keras_classes.class_name(config)
    config = _unwrap_serialized(config, "Keras optimizer", "Adam")
  member = _keras_classes.family_member(config, module, cls)
  if member == "legacy.Adam":
    return _legacy_from_config(config, overrides)
  return _new_from_config(config, member, overrides)


def _new_from_config(config: dict[str, Any], member: str, overrides: dict[str, Any]) -> KerasAdam:
  known = _keras_classes.KERAS2_KEYS + _keras_classes.KERAS3_EXTRA_KEYS
  unknown = sorted(set(config) - set(known))
  if unknown:
    raise ValueError(
      f"Unknown keys in the Keras {member} config: {unknown}. Known keys: {sorted(known)}."
    )
  kwargs = {k: v for k, v in config.items() if k != "is_legacy_optimizer"}
  kwargs["learning_rate"] = _learning_rate(kwargs.get("learning_rate", 0.001))
  if kwargs.get("gradient_accumulation_steps") is None:
    kwargs.pop("gradient_accumulation_steps", None)
  kwargs.update(overrides)
  return (alias.adamw if member == "AdamW" else alias.adam)(**kwargs)


def _legacy_from_config(config: dict[str, Any], overrides: dict[str, Any]) -> KerasAdam:
  """`optadam.adam` with TF's legacy Adam's learning rate (`LegacyDecay`) and float32 betas."""
  unknown = sorted(set(config) - set(_keras_classes.LEGACY_KEYS))
  if unknown:
    raise ValueError(
      f"Unknown keys in the legacy Keras Adam config: {unknown}. Known keys: "
      f"{sorted(_keras_classes.LEGACY_KEYS)}."
    )
  clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if config.get(k)]
  if len(clips) > 1:
    raise ValueError(
      f"This legacy Adam config sets {' and '.join(clips)}: TF's legacy optimizer clips by value "
      "and then by norm, optadam.adam applies one clipping rule, so it cannot continue this "
      "run exactly."
    )
  rule = LegacyDecay(_learning_rate(config.get("learning_rate", 0.001)), config.get("decay", 0.0))
  built = AdamConfig(
    learning_rate=rule,
    beta_1=np.float32(config.get("beta_1", 0.9)),
    beta_2=np.float32(config.get("beta_2", 0.999)),
    epsilon=config.get("epsilon") or 1e-7,  # TF's legacy Adam: `epsilon or backend.epsilon()`
    amsgrad=config.get("amsgrad", False),
    **{k: config[k] for k in clips},
    name=config.get("name", "Adam"),
    keras_class="legacy.Adam",
  )
  return chain.build(dataclasses.replace(built, **overrides) if overrides else built)


def _learning_rate(lr: Any) -> Any:
  """A config's learning rate: a number, or a serialized schedule made an `optadam.schedules`."""
  if isinstance(lr, dict):
    return schedules.deserialize(lr)
  if isinstance(lr, (list, str)) or lr is None:
    raise ValueError(
      f"`learning_rate` in a Keras config must be a number or a serialized schedule; got {lr!r}."
    )
  return lr


# --- LossScaleOptimizer configs ---------------------------------------------------------------


def _loss_scale_config(tx: loss_scaling.LossScaleOptimizer, keras_version: int) -> dict[str, Any]:
  """Keras 2's or Keras 3's ``LossScaleOptimizer.get_config()``."""
  if not isinstance(tx.inner, KerasAdam):
    raise TypeError(
      "get_config of a loss_scale_optimizer needs optadam.adam inside it; got "
      f"{type(tx.inner).__name__}."
    )
  inner = get_config(tx.inner, keras_version=keras_version, serialized=True)
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
  return tx if name is None else tx.with_name(name)
