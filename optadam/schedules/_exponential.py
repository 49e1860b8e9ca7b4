"""`ExponentialDecay` and `InverseTimeDecay`, which share Keras's arguments and progress."""

from __future__ import annotations

import jax.numpy as jnp

from optadam.schedules._base import (
  _F32,
  LearningRateSchedule,
  _as_f32,
  _bool,
  _div,
  _finite,
  _name,
  _non_negative,
  _positive,
)


class _RateDecay(LearningRateSchedule):
  """Shared by `ExponentialDecay` and `InverseTimeDecay`: Keras's same arguments and progress."""

  _CONFIG_KEYS = (
    "initial_learning_rate",
    "decay_steps",
    "decay_rate",
    "staircase",
    "name",
  )

  def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase, name):
    self.initial_learning_rate = _finite("initial_learning_rate", initial_learning_rate)
    self.decay_steps = _positive("decay_steps", decay_steps)
    self.decay_rate = _non_negative("decay_rate", decay_rate)
    self.staircase = _bool("staircase", staircase)
    self.name = _name(name)

  def _progress(self, step):
    """``p = float32(step) / decay_steps``, floored with `staircase`."""
    p = _div(_as_f32(step), _F32(self.decay_steps))
    if self.staircase:  # Static config, not a branch on `step`.
      p = jnp.floor(p)
    return p


class ExponentialDecay(_RateDecay):
  """Exponential decay: `initial_learning_rate * decay_rate ** (step / decay_steps)`.

  Formula (float32, like Keras)::

      p = float32(step) / decay_steps
      if staircase:
          p = floor(p)
      lr = initial_learning_rate * decay_rate ** p

  Args:
      initial_learning_rate: Python number. The initial learning rate.
      decay_steps: Python number > 0. See the formula.
      decay_rate: Python number >= 0. The decay rate.
      staircase: bool. If True, `p` is floored, so the rate decays at
          discrete intervals of `decay_steps` steps.
      name: str or None. Name, kept for the config only.

  Example:
      >>> sched = ExponentialDecay(0.1, decay_steps=1000, decay_rate=0.96,
      ...                          staircase=True)
      >>> round(float(sched(2500)), 6)  # 0.1 * 0.96**2
      0.09216

  Keras 2 vs 3: same formula. Keras 2 defaults `name=None` and does not
  validate; Keras 3 checks `decay_steps > 0`. Here `decay_rate` must also
  be >= 0 (a negative base gives NaN at non-integer `p`).
  """

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    decay_rate,
    staircase=False,
    name="ExponentialDecay",
  ):
    super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

  def __call__(self, step):
    initial_learning_rate = _F32(self.initial_learning_rate)
    decay_rate = _F32(self.decay_rate)
    p = self._progress(step)
    return initial_learning_rate * jnp.power(decay_rate, p)


class InverseTimeDecay(_RateDecay):
  """Inverse time decay: `initial_learning_rate / (1 + decay_rate * step / decay_steps)`.

  Formula (float32, like Keras)::

      p = float32(step) / decay_steps
      if staircase:
          p = floor(p)
      lr = initial_learning_rate / (1 + decay_rate * p)

  Args:
      initial_learning_rate: Python number. The initial learning rate.
      decay_steps: Python number > 0. How often to apply decay.
      decay_rate: Python number >= 0. The decay rate.
      staircase: bool. Whether to decay in discrete steps (floor of `p`).
      name: str or None. Name, kept for the config only.

  Example:
      >>> sched = InverseTimeDecay(0.1, decay_steps=1.0, decay_rate=0.5)
      >>> round(float(sched(2)), 6)  # 0.1 / (1 + 0.5 * 2)
      0.05

  Keras 2 vs 3: same formula. Keras 2 defaults `name=None` and does not
  validate; Keras 3 checks `decay_steps > 0`. Here `decay_rate` must also
  be >= 0 (a negative rate makes the denominator cross zero).
  """

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    decay_rate,
    staircase=False,
    name="InverseTimeDecay",
  ):
    super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

  def __call__(self, step):
    initial_learning_rate = _F32(self.initial_learning_rate)
    decay_rate = _F32(self.decay_rate)
    p = self._progress(step)
    denom = _F32(1) + decay_rate * p
    return initial_learning_rate / denom
