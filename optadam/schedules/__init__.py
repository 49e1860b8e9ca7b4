"""Keras's six learning-rate schedules as pure, jit-safe JAX functions.

Each class here mirrors the schedule of the same name in
``keras.optimizers.schedules``: the same constructor arguments (names, order,
defaults), the same formula evaluated op for op in float32, the same boundary
rules and the same ``get_config()`` keys. An instance is a plain callable
``schedule(step) -> float32 scalar`` built only from ``jax.numpy`` ops, with no
Python branching on ``step``; it can therefore be used wherever Optax expects a
schedule, e.g. ``optax.scale_by_schedule(schedule)`` or as the
``learning_rate=`` of an optimizer, and it can be called under ``jax.jit``
without retracing per step.

Where Keras 2 (tf.keras 2.15) and Keras 3 differ in *formula*, this module
follows Keras 2 and says so in the class docstring. Differences that hold for
every class:

* Default ``name``: Keras 2 defaults ``name=None`` (and uses the class's
  default name only for its TF name scope), Keras 3 defaults to a string. The
  signatures here use the Keras 3 strings; ``name=None`` is still accepted so
  that Keras 2 configs load, and is kept as ``None`` in ``get_config()``.
* Dtype: both Keras versions compute in the dtype of
  ``convert_to_tensor(initial_learning_rate)``, which is ``int32`` for a Python
  ``int`` such as ``0`` (so ``CosineDecay(0, 1000, warmup_target=0.1,
  warmup_steps=1000)`` - Keras's own docstring example - is all zeros there).
  Here every schedule always evaluates in float32 and returns float32.
* Validation: Keras 3 checks only ``decay_steps > 0`` (Keras 2 checks nothing
  but the PiecewiseConstantDecay lengths). Here every argument is checked at
  construction (type, finiteness, sign where the formula needs it) with a
  ``TypeError``/``ValueError`` that names the argument and the value received.

Float32 evaluation: in eager mode each schedule performs Keras's float32 ops
in Keras's order, so its values are Keras 3's eager values bit for bit
(Keras 3 itself deviates by an ulp or so where it uses ``ops.cond``, i.e.
``CosineDecay`` with warmup and ``CosineDecayRestarts``, because XLA compiles
those branches). Every division by a step-independent quantity goes through
``_div``, which keeps XLA from replacing it by a multiplication with the
reciprocal, so array steps give exactly the scalar values and ``jax.jit``
differs from eager only where XLA contracts ``a * b + c`` into an FMA (at
most ~1 ulp of the learning rate's scale). Keras 3 under ``jax.jit`` has no
such guard; see ``PolynomialDecay`` for where that matters.

Besides the schedules, the module provides ``SCHEDULES`` (class name -> class),
``serialize`` and ``deserialize``, which read and write the same dicts as
``keras.optimizers.schedules.serialize``/``deserialize``.
"""

from __future__ import annotations

from optadam.schedules._base import LearningRateSchedule
from optadam.schedules._cosine import CosineDecay, CosineDecayRestarts
from optadam.schedules._exponential import ExponentialDecay, InverseTimeDecay
from optadam.schedules._piecewise import PiecewiseConstantDecay
from optadam.schedules._polynomial import PolynomialDecay
from optadam.schedules._serialization import SCHEDULES, deserialize, serialize

__all__ = [
  "SCHEDULES",
  "CosineDecay",
  "CosineDecayRestarts",
  "ExponentialDecay",
  "InverseTimeDecay",
  "LearningRateSchedule",
  "PiecewiseConstantDecay",
  "PolynomialDecay",
  "deserialize",
  "serialize",
]
