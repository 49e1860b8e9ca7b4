"""`PolynomialDecay`, with its guards against an inexact `1 - p`."""

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
  _positive,
)


class PolynomialDecay(LearningRateSchedule):
  """Polynomial decay from `initial_learning_rate` to `end_learning_rate`.

  Formula (float32, like Keras)::

      s = float32(step)
      if cycle:
          # first multiple of decay_steps that is >= step (1 at step 0)
          decay_steps = decay_steps * (1 if s == 0 else ceil(s / decay_steps))
      else:
          s = min(s, decay_steps)
      p = s / decay_steps
      lr = (initial_learning_rate - end_learning_rate)
           * (1 - p) ** power + end_learning_rate

  `1 - p` must be exactly 0 once the decay is over: with a fractional
  `power` the root magnifies any residue. Keras 3 under `jax.jit` (and for
  array steps) gets this wrong: XLA turns `s / decay_steps` into
  `s * (1 / decay_steps)` and fuses `1 - s * r` into an FMA, so `jax.jit`
  of Keras 3's `PolynomialDecay(0.1, 10, power=0.5)` returns NaN for
  every step >= 10 (`1 - p = -1.5e-8`; likewise for 1000), with
  `decay_steps=25` it stays at 1.149e-4 instead of 1e-4, and evaluated
  eagerly on an array of steps with `decay_steps=41` at 1.244e-4. Here
  the divisions are kept exact (see `_div`), and `1 - p` is also set to
  0 when `global_step >= decay_steps` and clamped at 0. Both guards are
  no-ops whenever `p` is rounded exactly, as in eager Keras 2 and 3
  (whose values this reproduces bit for bit); they also stop `cycle=True`
  from giving NaN at float32 steps beyond 2**24.

  Args:
      initial_learning_rate: Python number. The initial learning rate.
      decay_steps: Python number > 0. Steps to reach `end_learning_rate`.
      end_learning_rate: Python number. The final learning rate.
      power: Python number. The power of the polynomial (1.0: linear).
      cycle: bool. Whether to restart the decay every `decay_steps` steps
          (with a growing period, see the formula) instead of staying at
          `end_learning_rate`.
      name: str or None. Name, kept for the config only.

  Example:
      >>> sched = PolynomialDecay(0.1, 10000, end_learning_rate=0.01,
      ...                         power=0.5)
      >>> round(float(sched(20000)), 6)  # stays at end_learning_rate
      0.01

  Keras 2 vs 3: same formula. Keras 2 defaults `name=None` and does not
  validate; Keras 3 checks `decay_steps > 0`.
  """

  _CONFIG_KEYS = (
    "initial_learning_rate",
    "decay_steps",
    "end_learning_rate",
    "power",
    "cycle",
    "name",
  )

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    end_learning_rate=0.0001,
    power=1.0,
    cycle=False,
    name="PolynomialDecay",
  ):
    self.initial_learning_rate = _finite("initial_learning_rate", initial_learning_rate)
    self.decay_steps = _positive("decay_steps", decay_steps)
    self.end_learning_rate = _finite("end_learning_rate", end_learning_rate)
    self.power = _finite("power", power)
    self.cycle = _bool("cycle", cycle)
    self.name = _name(name)

  def __call__(self, step):
    initial_learning_rate = _F32(self.initial_learning_rate)
    end_learning_rate = _F32(self.end_learning_rate)
    power = _F32(self.power)
    global_step = _as_f32(step)
    decay_steps = _F32(self.decay_steps)
    if self.cycle:  # Static config, not a branch on `step`.
      multiplier = jnp.where(
        global_step == 0,
        _F32(1.0),
        jnp.ceil(_div(global_step, decay_steps)),
      )
      decay_steps = decay_steps * multiplier
      p = global_step / decay_steps  # Divisor depends on the step.
    else:
      global_step = jnp.minimum(global_step, decay_steps)
      p = _div(global_step, decay_steps)
    # Keras's `1 - p`, guarded (see the docstring): exact arithmetic gives
    # 1 - p == 0 once global_step >= decay_steps, and 1 - p >= 0 always.
    one_minus_p = jnp.where(
      global_step >= decay_steps,
      _F32(0),
      jnp.maximum(1 - p, _F32(0)),
    )
    return (initial_learning_rate - end_learning_rate) * jnp.power(
      one_minus_p, power
    ) + end_learning_rate
