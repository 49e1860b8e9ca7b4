"""`CosineDecay` (with optional warmup) and `CosineDecayRestarts` (SGDR)."""

from __future__ import annotations

import jax.numpy as jnp

from optadam.schedules._base import (
  _F32,
  _PI,
  LearningRateSchedule,
  _as_f32,
  _div,
  _finite,
  _name,
  _non_negative,
  _positive,
)


class CosineDecay(LearningRateSchedule):
  """Cosine decay, with an optional linear warmup before it.

  Formula (float32, like Keras)::

      def decay(s, from_lr):  # s in [0, decay_steps]
          cosine = 0.5 * (1 + cos(pi * s / decay_steps))
          return from_lr * ((1 - alpha) * cosine + alpha)

      s = float32(step)
      if warmup_target is None:
          lr = decay(min(s, decay_steps), initial_learning_rate)
      else:
          s = min(s, decay_steps + warmup_steps)
          if s < warmup_steps:  # linear warmup (a jnp.where, not a branch)
              lr = (warmup_target - initial_learning_rate)
                   * (s / warmup_steps) + initial_learning_rate
          else:
              lr = decay(s - warmup_steps, warmup_target)

  So the rate ends at `alpha * initial_learning_rate` without warmup and at
  `alpha * warmup_target` with it. With `warmup_target` set and
  `warmup_steps=0` the decay starts from `warmup_target`, as in Keras.
  `warmup_steps` is ignored when `warmup_target` is None.
  `(1 - alpha)` is computed in Python double precision and then rounded to
  float32, as Keras does (it is a Python-float expression there).

  Args:
      initial_learning_rate: Python number. The initial learning rate (the
          warmup's start if `warmup_target` is set).
      decay_steps: Python number > 0. Number of steps to decay over.
      alpha: Python number. Minimum learning rate as a fraction of the
          rate the decay starts from.
      name: str or None. Name, kept for the config only.
      warmup_target: None or Python number. The rate reached at the end of
          the warmup, from which the cosine decay starts. None: no warmup.
      warmup_steps: Python number >= 0. Number of warmup steps.

  Example:
      >>> sched = CosineDecay(0.0, 1000, warmup_target=0.1, warmup_steps=100)
      >>> [round(float(sched(s)), 6) for s in (50, 100, 600, 1100, 5000)]
      [0.05, 0.1, 0.05, 0.0, 0.0]

  Keras 2 vs 3: the same formula, warmup included, in tf.keras 2.15 and
  Keras 3; only their docstrings differ (Keras 2 says the decay goes "to
  alpha", Keras 3's warmup formula omits "+ initial_learning_rate"; the
  code of both does what is written above). Keras 3 picks warmup or decay
  with `ops.cond`, whose XLA-compiled branches multiply by reciprocals
  instead of dividing, so its values can differ from these (and from
  Keras 2's op-by-op `tf.cond`) by an ulp or so. Keras computes in int32
  if `initial_learning_rate` is a Python int (so its own docstring example
  with `initial_learning_rate = 0` returns 0 everywhere); here it is
  float32.
  """

  _CONFIG_KEYS = (
    "initial_learning_rate",
    "decay_steps",
    "alpha",
    "name",
    "warmup_target",
    "warmup_steps",
  )

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    alpha=0.0,
    name="CosineDecay",
    warmup_target=None,
    warmup_steps=0,
  ):
    self.initial_learning_rate = _finite("initial_learning_rate", initial_learning_rate)
    self.decay_steps = _positive("decay_steps", decay_steps)
    self.alpha = _finite("alpha", alpha)
    self.name = _name(name)
    self.warmup_target = None if warmup_target is None else _finite("warmup_target", warmup_target)
    self.warmup_steps = _non_negative("warmup_steps", warmup_steps)

  def _decay_function(self, step, decay_steps, decay_from_lr):
    completed_fraction = _div(step, decay_steps)
    cosine_decayed = 0.5 * (1.0 + jnp.cos(_PI * completed_fraction))
    # Keras: `(1 - self.alpha) * cosine_decayed + self.alpha` with a
    # Python-float alpha: 1 - alpha is rounded to float32 once.
    decayed = _F32(1 - self.alpha) * cosine_decayed + _F32(self.alpha)
    return decay_from_lr * decayed

  def __call__(self, step):
    initial_learning_rate = _F32(self.initial_learning_rate)
    decay_steps = _F32(self.decay_steps)
    global_step = _as_f32(step)
    if self.warmup_target is None:  # Static config.
      global_step = jnp.minimum(global_step, decay_steps)
      return self._decay_function(global_step, decay_steps, initial_learning_rate)
    warmup_target = _F32(self.warmup_target)
    warmup_steps = _F32(self.warmup_steps)
    global_step = jnp.minimum(global_step, decay_steps + warmup_steps)
    warmup = (warmup_target - initial_learning_rate) * _div(
      global_step, warmup_steps
    ) + initial_learning_rate
    decay = self._decay_function(global_step - warmup_steps, decay_steps, warmup_target)
    # Both sides are computed; the unselected one may be inf/NaN (e.g.
    # s / 0 when warmup_steps == 0) without affecting the result.
    return jnp.where(global_step < warmup_steps, warmup, decay)


class CosineDecayRestarts(LearningRateSchedule):
  """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter 2016).

  Formula (float32, like Keras)::

      f = float32(step) / first_decay_steps
      if t_mul == 1:                       # decided once, on float32(t_mul)
          i = floor(f)
          f = f - i
      else:                                # period i lasts t_mul**i periods
          i = floor(log(1 - f * (1 - t_mul)) / log(t_mul))
          sum_r = (1 - t_mul**i) / (1 - t_mul)
          f = (f - sum_r) / t_mul**i
      cosine = 0.5 * m_mul**i * (1 + cos(pi * f))
      lr = initial_learning_rate * ((1 - alpha) * cosine + alpha)

  Note that the floor `alpha` is NOT scaled by `m_mul**i` (only the cosine
  part is), exactly as in Keras, so every period decays to
  `alpha * initial_learning_rate`.

  Args:
      initial_learning_rate: Python number. The initial learning rate.
      first_decay_steps: Python number > 0. Length of the first period.
      t_mul: Python number > 0. Each period is `t_mul` times longer than
          the previous one.
      m_mul: Python number. Each period starts at `m_mul` times the
          previous period's initial (cosine) amplitude.
      alpha: Python number. Minimum learning rate as a fraction of
          `initial_learning_rate`.
      name: str or None. Name, kept for the config only.

  Example:
      >>> sched = CosineDecayRestarts(0.1, first_decay_steps=100)
      >>> [round(float(sched(s)), 6) for s in (0, 50, 100, 200, 300)]
      [0.1, 0.05, 0.1, 0.05, 0.1]

  Unlike `CosineDecay`, `alpha` is cast to float32 before `1 - alpha`, as
  in Keras.

  Under `jax.jit` both logarithms are evaluated at run time by the same
  function, so the first restart (`f == 1`, where `1 - f * (1 - t_mul)` is
  exactly `t_mul`) gives exactly `i = 1`, as Keras 2's eager path does (TF
  2.15 under XLA, like a naive jit, folds the constant `log(t_mul)` with
  another `log` and loses that restart for some `t_mul`).

  Keras 2 vs 3: same formula (Keras 3 adds a no-op cast before the log).
  Keras 3 evaluates it inside `ops.cond` (on `t_mul == 1`), whose
  XLA-compiled branches multiply by reciprocals instead of dividing, so
  its values can differ from these (and from Keras 2's op-by-op
  `tf.cond`) by an ulp or so. Keras 2 defaults `name=None` and does not
  validate; Keras 3 checks `first_decay_steps > 0`. Here `t_mul` must
  also be > 0 (its log is taken). The config keys are `t_mul`/`m_mul`
  (Keras stores them as `_t_mul`/`_m_mul` attributes; here they are
  public `t_mul`/`m_mul`).
  """

  _CONFIG_KEYS = (
    "initial_learning_rate",
    "first_decay_steps",
    "t_mul",
    "m_mul",
    "alpha",
    "name",
  )

  def __init__(
    self,
    initial_learning_rate,
    first_decay_steps,
    t_mul=2.0,
    m_mul=1.0,
    alpha=0.0,
    name="SGDRDecay",
  ):
    self.initial_learning_rate = _finite("initial_learning_rate", initial_learning_rate)
    self.first_decay_steps = _positive("first_decay_steps", first_decay_steps)
    self.t_mul = _positive("t_mul", t_mul)
    self.m_mul = _finite("m_mul", m_mul)
    self.alpha = _finite("alpha", alpha)
    self.name = _name(name)

  def __call__(self, step):
    initial_learning_rate = _F32(self.initial_learning_rate)
    first_decay_steps = _F32(self.first_decay_steps)
    alpha = _F32(self.alpha)
    t_mul = _F32(self.t_mul)
    m_mul = _F32(self.m_mul)

    completed_fraction = _div(_as_f32(step), first_decay_steps)
    # Keras: ops.cond(t_mul == 1.0, ...) on a constant, so decided here.
    if t_mul == 1.0:
      i_restart = jnp.floor(completed_fraction)
      completed_fraction = completed_fraction - i_restart
    else:
      # log(t_mul) is taken at run time, like log(x): under jit XLA would fold a constant
      # log(t_mul) with the host's log, which rounds unlike its own, and at the first restart
      # (x == t_mul) the ratio would be 0.99999994 (rate 0 for that step). XLA keeps `+ 0 * f`.
      i_restart = jnp.floor(
        _div(
          jnp.log(1.0 - completed_fraction * (1.0 - t_mul)),
          jnp.log(t_mul + 0.0 * completed_fraction),
        )
      )
      t_pow = jnp.power(t_mul, i_restart)
      sum_r = _div(1.0 - t_pow, 1.0 - t_mul)
      completed_fraction = (completed_fraction - sum_r) / t_pow

    m_fac = jnp.power(m_mul, i_restart)
    cosine_decayed = 0.5 * m_fac * (1.0 + jnp.cos(_PI * completed_fraction))
    decayed = (1 - alpha) * cosine_decayed + alpha
    return initial_learning_rate * decayed
