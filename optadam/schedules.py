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

import math
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "LearningRateSchedule",
  "ExponentialDecay",
  "PiecewiseConstantDecay",
  "PolynomialDecay",
  "InverseTimeDecay",
  "CosineDecay",
  "CosineDecayRestarts",
  "SCHEDULES",
  "serialize",
  "deserialize",
]

_F32 = np.float32
_PI = _F32(math.pi)  # Keras: ops.array(math.pi, dtype=float32)


# --------------------------------------------------------------------------
# Argument validation helpers.
# --------------------------------------------------------------------------


def _real(name: str, value: Any) -> int | float:
  """Returns `value` as a Python int or float, or raises a TypeError.

  Accepts Python ints and floats, NumPy scalars and 0-d NumPy/JAX arrays of
  a numeric dtype (converted with `.item()`); rejects bools, strings, arrays
  with more than one element and abstract (traced) JAX values.
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(
      f"Argument `{name}` must be a real number (int or float), not a "
      f"bool. Received: {name}={value!r}"
    )
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    return float(value)
  dtype = getattr(value, "dtype", None)
  shape = getattr(value, "shape", None)
  if dtype is not None and shape == () and np.dtype(dtype).kind in "iuf":
    try:
      return value.item()
    except Exception as e:  # e.g. a jax tracer: not concrete.
      raise TypeError(
        f"Argument `{name}` must be a concrete number, known when the "
        f"schedule is built, not a traced value. Received: "
        f"{name}={value!r}"
      ) from e
  if isinstance(value, numbers.Real):
    return float(value)
  raise TypeError(
    f"Argument `{name}` must be a real number (int or float). "
    f"Received: {name}={value!r} of type {type(value).__name__}"
  )


def _finite(name: str, value: Any) -> int | float:
  value = _real(name, value)
  if not math.isfinite(value):
    raise ValueError(f"Argument `{name}` must be a finite number. Received: {name}={value!r}")
  return value


def _positive(name: str, value: Any) -> int | float:
  value = _finite(name, value)
  if not value > 0:
    raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value!r}")
  return value


def _non_negative(name: str, value: Any) -> int | float:
  value = _finite(name, value)
  if not value >= 0:
    raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
  return value


def _bool(name: str, value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(
    f"Argument `{name}` must be a bool (True or False). "
    f"Received: {name}={value!r} of type {type(value).__name__}"
  )


def _name(value: Any) -> str | None:
  if value is None or isinstance(value, str):
    return value
  raise TypeError(
    "Argument `name` must be a string or None. "
    f"Received: name={value!r} of type {type(value).__name__}"
  )


def _number_list(name: str, value: Any) -> list:
  if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    raise TypeError(
      f"Argument `{name}` must be a list of numbers. "
      f"Received: {name}={value!r} of type {type(value).__name__}"
    )
  if hasattr(value, "shape"):
    items = list(np.asarray(value).tolist())
  else:
    items = list(value)
  out = []
  for i, item in enumerate(items):
    try:
      out.append(_finite(f"{name}[{i}]", item))
    except TypeError:
      raise TypeError(
        f"Argument `{name}` must be a list of finite real numbers, but "
        f"{name}[{i}]={item!r} is of type {type(item).__name__}. "
        f"Received: {name}={value!r}"
      ) from None
    except ValueError:
      raise ValueError(
        f"Argument `{name}` must be a list of finite real numbers, but "
        f"{name}[{i}]={item!r}. Received: {name}={value!r}"
      ) from None
  return out


def _as_f32(step):
  """Keras's `ops.cast(step, float32)` for a step scalar or array."""
  return jnp.asarray(step).astype(jnp.float32)


def _div(x, divisor):
  """`x / divisor` for a float32 array `x` and a step-independent divisor.

  Rounded exactly like an eager float32 division, also under `jax.jit`,
  `jax.vmap` and for array steps. XLA would otherwise rewrite a division
  by a constant, or by a broadcast scalar, as a multiplication by the
  reciprocal (`41 / 41` then gives 0.99999994, and `ceil(14 / 7)` gives 3)
  and fuse that product into FMAs. So the divisor is given `x`'s shape
  (and, under `vmap`, its batch dimension: it is selected by a predicate
  on `x`) and passed through `lax.optimization_barrier`, which XLA cannot
  see through.
  """
  divisor = jnp.asarray(divisor, jnp.float32)
  divisor = jnp.where(x == x, divisor, divisor)  # Shaped/batched like x.
  return x / lax.optimization_barrier(divisor)


# --------------------------------------------------------------------------
# Base class.
# --------------------------------------------------------------------------


class LearningRateSchedule:
  """Base class of the schedules: a config-holding `step -> lr` callable.

  Subclasses implement `__call__(self, step)` as a pure `jax.numpy`
  function of `step` and list their constructor arguments, in Keras's
  config order, in `_CONFIG_KEYS`: `get_config()` returns them and
  `from_config` rebuilds an instance from that dict.
  """

  def __call__(self, step):  # pragma: no cover - abstract
    raise NotImplementedError(
      f"Learning rate schedule '{type(self).__name__}' must override `__call__(self, step)`."
    )

  def get_config(self) -> dict:
    """The constructor arguments, in Keras's key order (lists copied)."""
    return {
      k: list(getattr(self, k)) if isinstance(getattr(self, k), (list, tuple)) else getattr(self, k)
      for k in self._CONFIG_KEYS
    }

  @classmethod
  def from_config(cls, config: dict):
    """Instantiates the schedule from the output of `get_config()`.

    Args:
        config: A dict whose keys are constructor argument names, as
            returned by `get_config()` (Keras 2 or Keras 3 spelling).

    Returns:
        A new instance of `cls`.

    Raises:
        TypeError: if `config` is not a dict or has keys that are not
            constructor arguments of `cls`.
    """
    if not isinstance(config, dict):
      raise TypeError(
        f"Argument `config` of {cls.__name__}.from_config must be a "
        f"dict. Received: config={config!r} of type "
        f"{type(config).__name__}"
      )
    unknown = sorted(set(config) - set(cls._CONFIG_KEYS))
    if unknown:
      raise TypeError(
        f"Unknown keys in `config` for {cls.__name__}: {unknown}. "
        f"Allowed keys: {list(cls._CONFIG_KEYS)}. Received: "
        f"config={config!r}"
      )
    return cls(**config)

  _CONFIG_KEYS: tuple = ()

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------
# The six schedules.
# --------------------------------------------------------------------------


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


class PiecewiseConstantDecay(LearningRateSchedule):
  """Piecewise constant: `values[i]` on the i-th interval between `boundaries`.

  Formula (upper bounds inclusive, like Keras)::

      lr = values[0]     if step <= boundaries[0]
           values[i]     if boundaries[i-1] < step <= boundaries[i]
           values[-1]    if step > boundaries[-1]

  i.e. `lr = values[count(step > b for b in boundaries)]`. As in Keras the
  boundaries are first converted like `convert_to_tensor` (int -> int32,
  float -> float32) and then cast to the dtype of `step`, so with an integer
  step a float boundary is truncated (`2.5` acts as `2`).

  Args:
      boundaries: non-empty list of finite Python numbers, strictly
          increasing.
      values: list of finite Python numbers, `len(boundaries) + 1` long.
          The result is always float32 (Keras returns int32 for int values).
      name: str or None. Name, kept for the config only.

  Example:
      >>> sched = PiecewiseConstantDecay([100, 110], [1.0, 0.5, 0.25])
      >>> [float(sched(s)) for s in (100, 101, 110, 111)]
      [1.0, 0.5, 0.5, 0.25]

  Keras 2 vs 3: Keras 2 *selects* the value (`tf.case`); Keras 3 sums
  `cast(in_interval) * value` over all intervals. They differ when no
  interval matches (a NaN step: Keras 2 gives `values[0]` through its
  default branch, Keras 3 gives 0) and for non-finite values (0 * inf).
  This class follows Keras 2 (selection). Keras does not check that the
  boundaries increase (Keras 2 fails at call time on overlapping
  intervals, Keras 3 returns a sum of values); here that is a ValueError
  at construction.
  """

  _CONFIG_KEYS = ("boundaries", "values", "name")

  def __init__(self, boundaries, values, name="PiecewiseConstant"):
    boundaries = _number_list("boundaries", boundaries)
    values = _number_list("values", values)
    if len(boundaries) != len(values) - 1:
      raise ValueError(
        "The length of `boundaries` should be 1 less than the length "
        f"of `values`. Received: boundaries={boundaries} of length "
        f"{len(boundaries)}, and values={values} of length "
        f"{len(values)}."
      )
    if not boundaries:
      raise ValueError(
        "Argument `boundaries` must contain at least one boundary. "
        f"Received: boundaries={boundaries}"
      )
    for i in range(1, len(boundaries)):
      if not boundaries[i] > boundaries[i - 1]:
        raise ValueError(
          "Argument `boundaries` must be strictly increasing. "
          f"Received: boundaries={boundaries} (boundaries[{i}]="
          f"{boundaries[i]!r} <= boundaries[{i - 1}]="
          f"{boundaries[i - 1]!r})"
        )
    self.boundaries = boundaries
    self.values = values
    self.name = _name(name)

  def __call__(self, step):
    step = jnp.asarray(step)
    # Keras: convert_to_tensor(b) (int -> int32, float -> float32), then
    # cast to the step's dtype. int64 stands in for int32 so that a large
    # Python int does not overflow before the cast.
    boundaries = np.asarray(
      [
        np.asarray(b, dtype=np.int64 if isinstance(b, int) else _F32).astype(step.dtype)
        for b in self.boundaries
      ]
    )
    values = jnp.asarray(np.asarray(self.values, dtype=_F32))
    index = jnp.sum(step[..., None] > boundaries, axis=-1)
    return values[index]


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
      i_restart = jnp.floor(
        _div(
          jnp.log(1.0 - completed_fraction * (1.0 - t_mul)),
          jnp.log(t_mul),
        )
      )
      t_pow = jnp.power(t_mul, i_restart)
      sum_r = _div(1.0 - t_pow, 1.0 - t_mul)
      completed_fraction = (completed_fraction - sum_r) / t_pow

    m_fac = jnp.power(m_mul, i_restart)
    cosine_decayed = 0.5 * m_fac * (1.0 + jnp.cos(_PI * completed_fraction))
    decayed = (1 - alpha) * cosine_decayed + alpha
    return initial_learning_rate * decayed


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
