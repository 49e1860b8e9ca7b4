"""The registry `SCHEDULES` and `serialize`/`deserialize` in Keras's format."""

from __future__ import annotations

from optadam.schedules._base import LearningRateSchedule
from optadam.schedules._cosine import CosineDecay, CosineDecayRestarts
from optadam.schedules._exponential import ExponentialDecay, InverseTimeDecay
from optadam.schedules._piecewise import PiecewiseConstantDecay
from optadam.schedules._polynomial import PolynomialDecay

# --------------------------------------------------------------------------
# Registry and (de)serialisation in Keras's format.
# --------------------------------------------------------------------------

SCHEDULES: dict[str, type[LearningRateSchedule]] = {
  cls.__name__: cls
  for cls in (
    ExponentialDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
    InverseTimeDecay,
    CosineDecay,
    CosineDecayRestarts,
  )
}

_MODULE = "keras.optimizers.schedules"
# Module strings Keras 2/3 (and tf_keras) write for these built-in classes.
_KNOWN_MODULES = frozenset(
  {
    "keras.optimizers.schedules",
    "keras.optimizers.schedules.learning_rate_schedule",
    "keras.src.optimizers.schedules",
    "keras.src.optimizers.schedules.learning_rate_schedule",
    "tf_keras.optimizers.schedules",
    "tf_keras.src.optimizers.schedules.learning_rate_schedule",
  }
)


def serialize(schedule: LearningRateSchedule) -> dict:
  """Serialises a schedule to the dict `keras.optimizers.schedules.serialize` writes.

  Args:
      schedule: An instance of one of the classes in `SCHEDULES`.

  Returns:
      `{"module": "keras.optimizers.schedules", "class_name": ...,
      "config": schedule.get_config(), "registered_name": None}`, which is
      JSON-serialisable and loadable by Keras 3's `deserialize` as well as
      by `deserialize` here.

  Example:
      >>> serialize(ExponentialDecay(0.1, 1000, 0.96))["class_name"]
      'ExponentialDecay'
  """
  cls = type(schedule)
  if SCHEDULES.get(cls.__name__) is not cls:
    raise TypeError(
      "Argument `schedule` must be an instance of one of "
      f"{sorted(SCHEDULES)}. Received: schedule={schedule!r} of type "
      f"{cls.__name__}"
    )
  return {
    "module": _MODULE,
    "class_name": cls.__name__,
    "config": schedule.get_config(),
    "registered_name": None,
  }


def deserialize(config: dict) -> LearningRateSchedule:
  """Rebuilds a schedule from a dict written by `serialize` or by Keras.

  Accepts Keras 3's format (`module`, `class_name`, `config`,
  `registered_name`; `module` may also be the internal
  `keras.src.optimizers.schedules.learning_rate_schedule`) and the older
  `{"class_name": ..., "config": ...}` one; `module` and `registered_name`
  may be missing or None.

  Args:
      config: The serialised dict.

  Returns:
      A new schedule instance.

  Raises:
      TypeError: if `config` is not a dict of that shape.
      ValueError: if `class_name` is not one of `SCHEDULES`, or `module`
          / `registered_name` name something other than Keras's built-in
          schedules.

  Example:
      >>> deserialize({"class_name": "CosineDecay",
      ...              "config": {"initial_learning_rate": 0.1,
      ...                         "decay_steps": 100}})
      CosineDecay(initial_learning_rate=0.1, decay_steps=100, ...)
  """
  if not isinstance(config, dict):
    raise TypeError(
      "Argument `config` must be a dict with keys 'class_name' and "
      f"'config'. Received: config={config!r} of type "
      f"{type(config).__name__}"
    )
  if "class_name" not in config or "config" not in config:
    raise ValueError(
      f"Argument `config` must have keys 'class_name' and 'config'. Received: config={config!r}"
    )
  class_name = config["class_name"]
  if class_name not in SCHEDULES:
    raise ValueError(
      f"Unknown learning rate schedule class_name={class_name!r}. "
      f"Allowed: {sorted(SCHEDULES)}. Received: config={config!r}"
    )
  module = config.get("module")
  if module is not None and module not in _KNOWN_MODULES:
    raise ValueError(
      f"Unknown module={module!r} for learning rate schedule "
      f"{class_name!r}: expected one of {sorted(_KNOWN_MODULES)} or "
      f"None. Received: config={config!r}"
    )
  registered_name = config.get("registered_name")
  if registered_name not in (None, class_name):
    raise ValueError(
      f"Unknown registered_name={registered_name!r} for learning rate "
      f"schedule {class_name!r}: only Keras's built-in schedules "
      f"(registered_name None) are supported. Received: config={config!r}"
    )
  inner = config["config"]
  if not isinstance(inner, dict):
    raise TypeError(
      f"The 'config' entry of argument `config` must be a dict. Received: config={config!r}"
    )
  return SCHEDULES[class_name].from_config(inner)
