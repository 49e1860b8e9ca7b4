"""Which Keras optimizer a configuration describes: Adam, AdamW, TF's legacy Adam, or another.

optadam continues the Adam family only; every other optimizer has other arithmetic. A
serialized config names its class; a bare ``get_config()`` dict does not, so it is told by its
keys: only the Adam family writes ``amsgrad``, only TF's legacy optimizers write ``decay``, and
the other optimizers have keys of their own (``momentum``, ``rho``, ...). A bare config that
cannot be told apart from another optimizer's is refused, never built as Adam.
"""

from __future__ import annotations

import re
from typing import Any

# The keys of Keras's new Adam (and AdamW): Keras 2's get_config(), and Keras 3's.
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
# TF's legacy Adam (tf.keras.optimizers.legacy.Adam; the Adam of TF <= 2.10).
LEGACY_KEYS = (
  "name",
  "learning_rate",
  "decay",
  "beta_1",
  "beta_2",
  "epsilon",
  "amsgrad",
  "clipnorm",
  "clipvalue",
  "global_clipnorm",
  "is_legacy_optimizer",
)
FAMILY = ("Adam", "AdamW", "legacy.Adam")
LSO_CLASSES = ("LossScaleOptimizer", "LossScaleOptimizerV3", "BaseLossScaleOptimizer")
# Keys by which another Keras optimizer's bare config is recognised.
_OTHERS = {
  "momentum": "SGD or RMSprop",
  "nesterov": "SGD",
  "rho": "RMSprop or Adadelta",
  "centered": "RMSprop",
  "initial_accumulator_value": "Adagrad or Ftrl",
  "learning_rate_power": "Ftrl",
  "beta_2_decay": "Adafactor",
  "adam_beta_1": "Muon",
  "warmup_steps": "ScheduleFreeAdamW",
}
_REFUSAL = (
  "optadam continues Keras's Adam and AdamW (and TF's legacy Adam) only: other optimizers "
  "have other arithmetic."
)


def class_name(entry: dict[str, Any]) -> str:
  """The class of a serialized optimizer, without the ``Custom>`` prefix of TF 2.15's ``.h5``
  or a module prefix (``keras.optimizers.Adam``)."""
  return str(entry.get("class_name")).split(">")[-1].split(".")[-1]


def is_legacy_adam(entry: Any) -> bool:
  """True for a serialized TF legacy Adam (by its module, or by its config's keys)."""
  if not isinstance(entry, dict) or class_name(entry) != "Adam":
    return False
  config = entry.get("config")
  legacy_keys = isinstance(config, dict) and _has_legacy_keys(config)
  return entry.get("module") == "keras.optimizers.legacy" or legacy_keys


def family_member(config: dict[str, Any], module: Any = None, cls: Any = None) -> str:
  """``"Adam"``, ``"AdamW"`` or ``"legacy.Adam"`` for a config body, or a ValueError naming
  the optimizer it is (from its class name `cls` when serialized, else from its keys)."""
  legacy = module == "keras.optimizers.legacy" or _has_legacy_keys(config)
  if cls is not None:
    if cls == "Adam":
      return "legacy.Adam" if legacy else "Adam"
    if cls == "AdamW" and not legacy:
      return "AdamW"
    where = "legacy " if legacy else ""
    raise ValueError(f"The optimizer is the {where}Keras {cls!r}, not Adam. {_REFUSAL}")
  others = sorted(k for k in config if k in _OTHERS)
  if others:
    seen = sorted({_OTHERS[k] for k in others})
    raise ValueError(
      f"This optimizer config has keys of another optimizer than Adam: {others} "
      f"({'; '.join(seen)}; name {config.get('name')!r}). {_REFUSAL}"
    )
  if "amsgrad" not in config:
    raise ValueError(
      "This optimizer config has no `amsgrad` key, which every Keras Adam config has: it "
      f"cannot be told apart from Nadam, Adamax, Lamb or Lion (name {config.get('name')!r}, "
      f"keys {sorted(config)}{', a legacy optimizer' if legacy else ''}). {_REFUSAL} Give "
      "the serialized form (with its class_name), or build optadam.adam(...) directly."
    )
  if legacy:
    return "legacy.Adam"
  return "AdamW" if _normal_name(config.get("name")) == "adamw" else "Adam"


def _has_legacy_keys(config: dict[str, Any]) -> bool:
  """A legacy optimizer's config: it has ``decay`` (or says so) and none of the new keys."""
  new_only = set(KERAS2_KEYS + KERAS3_EXTRA_KEYS) - set(LEGACY_KEYS)
  said = config.get("is_legacy_optimizer") is True
  return ("decay" in config or said) and not (set(config) & new_only)


def _normal_name(name: Any) -> str:
  """``"AdamW"``, ``"adam_w"``, ``"adam_w_1"`` -> ``"adamw"`` (Keras's default names)."""
  return re.sub(r"[_\d]", "", str(name).lower())
