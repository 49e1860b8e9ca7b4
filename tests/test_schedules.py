"""Tests of optadam.schedules against Keras 3's learning-rate schedules.

Values are compared with `keras.optimizers.schedules` (Keras 3, JAX backend)
on step grids that include every boundary -1/0/+1 and steps far past the end:

* eagerly, bit for bit, where Keras 3 evaluates op by op (it uses `ops.cond`,
  i.e. XLA-compiled branches, in `CosineDecay` with warmup and in
  `CosineDecayRestarts`; those are compared to ~1 ulp);
* under `jax.jit`, to ~1 ulp (XLA contracts `a * b + c` into FMAs);
* where the module deliberately follows Keras 2 (tf.keras 2.15) or departs
  from both Keras versions, against the Keras 2 formula written out in NumPy
  float32 below (`_keras2_*`), as said at each such test.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optadam import schedules as S

import keras

ks = keras.optimizers.schedules

F32 = np.float32


# ---------------------------------------------------------------------------
# Cases: (class name, constructor kwargs, boundary steps, exact vs Keras 3).
# ---------------------------------------------------------------------------

CASES = {
  # ExponentialDecay
  "exp": (
    "ExponentialDecay",
    dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.96),
    [10, 20, 30],
  ),
  "exp-staircase": (
    "ExponentialDecay",
    dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5, staircase=True),
    [7, 14, 21],
  ),
  "exp-float-steps": (
    "ExponentialDecay",
    dict(initial_learning_rate=0.03, decay_steps=2.5, decay_rate=0.9, staircase=True),
    [5, 10],
  ),
  "exp-rate0": (
    "ExponentialDecay",
    dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.0),
    [5],
  ),
  # PiecewiseConstantDecay
  "pw": ("PiecewiseConstantDecay", dict(boundaries=[5, 10], values=[1.0, 0.5, 0.1]), [5, 10]),
  "pw-one": ("PiecewiseConstantDecay", dict(boundaries=[100], values=[0.01, 0.001]), [100]),
  "pw-three": (
    "PiecewiseConstantDecay",
    dict(boundaries=[3, 7, 20], values=[1.0, 0.0, 2.5, -1.0]),
    [3, 7, 20],
  ),
  "pw-float-bounds": (
    "PiecewiseConstantDecay",
    dict(boundaries=[2.5, 7.5], values=[0.3, 0.2, 0.1]),
    [2, 3, 7, 8],
  ),
  # PolynomialDecay
  "poly": ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=10), [10]),
  "poly-sqrt": (
    "PolynomialDecay",
    dict(initial_learning_rate=0.1, decay_steps=10, end_learning_rate=0.01, power=0.5),
    [10],
  ),
  "poly-sqrt-41": (
    "PolynomialDecay",
    dict(initial_learning_rate=0.1, decay_steps=41, power=0.5),
    [41],
  ),
  "poly-cycle": (
    "PolynomialDecay",
    dict(initial_learning_rate=0.1, decay_steps=10, end_learning_rate=0.001, power=2.0, cycle=True),
    [10, 20, 30, 40],
  ),
  "poly-cycle-sqrt": (
    "PolynomialDecay",
    dict(initial_learning_rate=0.1, decay_steps=7, power=0.5, cycle=True),
    [7, 14, 21],
  ),
  "poly-rising": (
    "PolynomialDecay",
    dict(initial_learning_rate=0.01, decay_steps=20, end_learning_rate=0.1, power=3.0),
    [20],
  ),
  # InverseTimeDecay
  "inv": (
    "InverseTimeDecay",
    dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5),
    [3, 6, 9],
  ),
  "inv-staircase": (
    "InverseTimeDecay",
    dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5, staircase=True),
    [3, 6, 9],
  ),
  "inv-float-steps": (
    "InverseTimeDecay",
    dict(initial_learning_rate=0.1, decay_steps=1.0, decay_rate=0.5),
    [1, 2],
  ),
  # CosineDecay
  "cos": ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=20), [20]),
  "cos-alpha": ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=20, alpha=0.1), [20]),
  # alpha=0.6: float32(1 - alpha) != 1 - float32(alpha); Keras rounds 1 - alpha once.
  "cos-alpha-rounding": (
    "CosineDecay",
    dict(initial_learning_rate=1.0, decay_steps=16, alpha=0.6),
    [16],
  ),
  "cos-warmup": (
    "CosineDecay",
    dict(initial_learning_rate=0.01, decay_steps=20, alpha=0.1, warmup_target=0.1, warmup_steps=5),
    [5, 25],
  ),
  "cos-warmup-from0": (
    "CosineDecay",
    dict(initial_learning_rate=0.0, decay_steps=30, warmup_target=0.05, warmup_steps=10),
    [10, 40],
  ),
  "cos-warmup0": (
    "CosineDecay",
    dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=0.2, warmup_steps=0),
    [10],
  ),
  # CosineDecayRestarts (boundaries: starts of the periods)
  "sgdr": (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=10),
    [10, 30, 70, 150],
  ),
  "sgdr-t1-m05-alpha": (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=1.0, m_mul=0.5, alpha=0.1),
    [10, 20, 30, 40],
  ),
  "sgdr-t15-m09-alpha": (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=8, t_mul=1.5, m_mul=0.9, alpha=0.05),
    [8, 20, 38, 65],
  ),
  # Here Keras casts alpha to float32 first: 1 - float32(0.6).
  "sgdr-alpha-rounding": (
    "CosineDecayRestarts",
    dict(initial_learning_rate=1.0, first_decay_steps=8, t_mul=1.0, alpha=0.6),
    [8, 16],
  ),
  "sgdr-t3-m05": (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.2, first_decay_steps=5, t_mul=3.0, m_mul=0.5),
    [5, 20, 65],
  ),
}

# Keras 3 evaluates these through `ops.cond` (XLA-compiled branches), so its
# eager values can differ from an op-by-op evaluation by ~1 ulp.
KERAS_USES_COND = {
  k
  for k, (n, kw, _) in CASES.items()
  if n == "CosineDecayRestarts" or (n == "CosineDecay" and kw.get("warmup_target") is not None)
}


def _grid(points):
  """Steps 0..2, every boundary -1/0/+1, and steps far past the end."""
  steps = {0, 1, 2, 10 * max(points), 12345, 10**6}
  for p in points:
    steps.update({p - 1, p, p + 1})
  return sorted(s for s in steps if s >= 0)


def _scale(kwargs):
  """Largest learning rate a schedule can produce: sets the absolute tolerance."""
  keys = ("initial_learning_rate", "end_learning_rate", "warmup_target", "values")
  vals = []
  for k in keys:
    v = kwargs.get(k)
    if v is None:
      continue
    vals.extend(v if isinstance(v, list) else [v])
  return max(abs(v) for v in vals)


def assert_f32_close(actual, expected, scale):
  """float32 and within ~1 ulp (of the value, or of the schedule's scale)."""
  actual = np.asarray(actual)
  assert actual.dtype == np.float32, actual.dtype
  np.testing.assert_allclose(
    actual, np.asarray(expected, np.float32), rtol=2e-7, atol=float(np.spacing(F32(scale)))
  )


def assert_f32_equal(actual, expected):
  actual = np.asarray(actual)
  assert actual.dtype == np.float32, actual.dtype
  np.testing.assert_array_equal(actual, np.asarray(expected, np.float32))


def _build(case_id):
  name, kwargs, points = CASES[case_id]
  return getattr(S, name)(**kwargs), getattr(ks, name)(**kwargs), _grid(points), kwargs


@functools.cache
def _keras_values(case_id):
  """Keras 3's eager values on the case's grid (int32 steps), cached."""
  _, k, steps, _ = _build(case_id)
  return np.array(
    [np.asarray(keras.ops.convert_to_numpy(k(jnp.int32(s)))) for s in steps], np.float32
  )


CASE_IDS = sorted(CASES)


# ---------------------------------------------------------------------------
# Values against Keras 3.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_eager_matches_keras3(case_id):
  m, _, steps, kwargs = _build(case_id)
  ours = np.array([np.asarray(m(jnp.int32(s))) for s in steps])
  if case_id in KERAS_USES_COND:
    assert_f32_close(ours, _keras_values(case_id), _scale(kwargs))
  else:
    assert_f32_equal(ours, _keras_values(case_id))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_jit_matches_keras3(case_id):
  m, _, steps, kwargs = _build(case_id)
  jm = jax.jit(m)
  ours = np.array([np.asarray(jm(jnp.int32(s))) for s in steps])
  assert np.all(np.isfinite(ours))
  assert_f32_close(ours, _keras_values(case_id), _scale(kwargs))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_array_steps_equal_scalar_steps(case_id):
  """A vector of steps gives exactly the per-step values (eager and jit)."""
  m, _, steps, kwargs = _build(case_id)
  scalar = np.array([np.asarray(m(jnp.int32(s))) for s in steps])
  vector = np.asarray(m(jnp.asarray(steps, jnp.int32)))
  assert vector.shape == (len(steps),)
  assert_f32_equal(vector, scalar)
  assert_f32_close(jax.jit(m)(jnp.asarray(steps, jnp.int32)), scalar, _scale(kwargs))


@pytest.mark.parametrize(
  "case_id",
  [
    "exp-staircase",
    "pw-three",
    "poly-sqrt-41",
    "poly-cycle-sqrt",
    "inv",
    "cos-warmup",
    "sgdr-t15-m09-alpha",
  ],
)
def test_vmap_matches_scalar_steps(case_id):
  """Under vmap XLA sees `x / broadcast(c)` and may use a reciprocal; the
  values stay within ~1 ulp and PolynomialDecay still ends exactly."""
  m, _, steps, kwargs = _build(case_id)
  scalar = np.array([np.asarray(m(jnp.int32(s))) for s in steps])
  batch = jnp.asarray(steps, jnp.int32)
  assert_f32_close(jax.vmap(m)(batch), scalar, _scale(kwargs))
  assert_f32_close(jax.jit(jax.vmap(m))(batch), scalar, _scale(kwargs))


@pytest.mark.parametrize("case_id", ["exp", "pw", "poly-cycle", "cos-warmup", "sgdr-t15-m09-alpha"])
def test_step_types(case_id):
  """Python ints, NumPy ints, int32/float32 arrays all give the same float32."""
  m, _, steps, _ = _build(case_id)
  for s in steps[:6]:
    ref = np.asarray(m(jnp.int32(s)))
    for step in (s, np.int64(s), np.int32(s), jnp.float32(s), float(s)):
      out = m(step)
      assert out.shape == () and out.dtype == jnp.float32
      assert_f32_equal(out, ref)


@pytest.mark.parametrize(
  "boundaries, values",
  [([5, 10], [1.0, 0.5, 0.1]), ([2.5, 7.5], [0.3, 0.2, 0.1]), ([16777217], [1.0, 2.0])],
)
def test_piecewise_float_steps_match_keras3(boundaries, values):
  """Boundaries are cast to the step's dtype, as in Keras (float steps)."""
  m = S.PiecewiseConstantDecay(boundaries, values)
  k = ks.PiecewiseConstantDecay(boundaries, values)
  steps = sorted(
    {
      x + d
      for b in boundaries
      for x in (float(b), math.floor(b))
      for d in (-1.0, -0.5, 0.0, 0.5, 1.0)
    }
    | {0.0}
  )
  for s in steps:
    step = jnp.float32(s)
    assert_f32_equal(m(step), keras.ops.convert_to_numpy(k(step)))
    assert_f32_equal(jax.jit(m)(step), keras.ops.convert_to_numpy(k(step)))


def test_piecewise_upper_bounds_inclusive():
  m = S.PiecewiseConstantDecay([100, 110], [1.0, 0.5, 0.25])
  got = [float(m(s)) for s in (99, 100, 101, 109, 110, 111)]
  assert got == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_cosine_restarts_alpha_not_scaled_by_m_mul():
  """Each period ends at alpha * lr (alpha is not multiplied by m_mul**i)."""
  m = S.CosineDecayRestarts(1.0, 10, t_mul=1.0, m_mul=0.5, alpha=0.2)
  # Mid-period i: 0.5 * m_mul**i * (1 - alpha) + alpha.
  for i in range(4):
    assert_f32_close(m(10 * i + 5), 0.5 * 0.5**i * 0.8 + 0.2, 1.0)
    assert_f32_close(m(10 * i), 0.5**i * 0.8 + 0.2, 1.0)


@pytest.mark.parametrize("t_mul", [1.69509, 1.1, 1.5, 2.0, 2.5, 0.9, 0.5])
@pytest.mark.parametrize("first_decay_steps", [1, 5, 7, 13])
def test_cosine_restarts_first_restart_under_jit(t_mul, first_decay_steps):
  """At the first restart (step == first_decay_steps) the period restarts, under jit too.

  The restart index is floor(log(x) / log(t_mul)) with x == t_mul at that step: XLA used to
  fold the constant log(t_mul) with another log than the run-time log(x), so the ratio was
  0.99999994 and the rate 0 (the whole update of that step lost) for t_mul=1.69509.
  """
  m = S.CosineDecayRestarts(0.003, first_decay_steps, t_mul=t_mul, m_mul=0.5)
  jm = jax.jit(m)
  for step in (first_decay_steps, first_decay_steps + 1):
    assert_f32_close(jm(step), m(step), 0.003)
  assert float(jm(first_decay_steps)) == float(m(first_decay_steps)) == pytest.approx(0.0015)


# ---------------------------------------------------------------------------
# Deliberate departures, checked against the Keras 2 formula in NumPy float32.
# ---------------------------------------------------------------------------


def _keras2_piecewise(boundaries, values, step):
  """tf.keras 2.15 PiecewiseConstantDecay: tf.case selection, values[0] default."""
  step = np.asarray(step)
  b = [
    np.asarray(x, np.int32 if isinstance(x, int) else np.float32).astype(step.dtype)
    for x in boundaries
  ]
  v = [F32(x) for x in values]
  if step <= b[0]:
    return v[0]
  if step > b[-1]:
    return v[-1]
  for lo, hi, val in zip(b[:-1], b[1:], v[1:-1]):
    if lo < step <= hi:
      return val
  return v[0]  # tf.case's default: no predicate true (a NaN step).


def _keras2_cosine(initial_learning_rate, decay_steps, alpha, warmup_target, warmup_steps, step):
  """tf.keras 2.15 CosineDecay (with warmup), in float32 ops."""
  lr0, ds, s = F32(initial_learning_rate), F32(decay_steps), F32(step)

  def decay(s, from_lr):
    cosine = F32(0.5) * (F32(1.0) + np.cos(F32(math.pi) * (s / ds)))
    return from_lr * (F32(1 - alpha) * cosine + F32(alpha))

  if warmup_target is None:
    return decay(np.minimum(s, ds), lr0)
  wt, ws = F32(warmup_target), F32(warmup_steps)
  s = np.minimum(s, ds + ws)
  if s < ws:
    return (wt - lr0) * (s / ws) + lr0
  return decay(s - ws, wt)


def _keras2_polynomial(initial_learning_rate, decay_steps, end_learning_rate, power, cycle, step):
  """tf.keras 2.15 PolynomialDecay, in float32 ops (exactly rounded division)."""
  lr0, end, pw, s, ds = (
    F32(initial_learning_rate),
    F32(end_learning_rate),
    F32(power),
    F32(step),
    F32(decay_steps),
  )
  if cycle:
    ds = ds * (F32(1.0) if s == 0 else np.ceil(s / ds))
  else:
    s = np.minimum(s, ds)
  return (lr0 - end) * np.power(F32(1) - s / ds, pw) + end


def test_piecewise_nan_step_follows_keras2():
  """Keras 2 selects values[0] when no interval matches (NaN step); Keras 3's
  sum of cast(in_interval) * value gives 0.0 there. We follow Keras 2."""
  boundaries, values = [5, 10], [1.0, 0.5, 0.1]
  m = S.PiecewiseConstantDecay(boundaries, values)
  nan = jnp.float32(float("nan"))
  expected = _keras2_piecewise(boundaries, values, F32("nan"))
  assert expected == F32(1.0)
  assert_f32_equal(m(nan), expected)
  assert_f32_equal(jax.jit(m)(nan), expected)
  for s in [0, 4, 5, 6, 10, 11, 100]:  # and the Keras 2 reference agrees elsewhere
    assert_f32_equal(m(s), _keras2_piecewise(boundaries, values, np.int32(s)))


def test_piecewise_int_values_give_float32():
  """Keras returns int32 for int values; we always return float32."""
  m = S.PiecewiseConstantDecay([2], [3, 1])
  assert_f32_equal(m(2), 3.0)
  assert_f32_equal(m(3), 1.0)


def test_integer_initial_learning_rate_is_float32():
  """Keras 2 and 3 compute in int32 for a Python-int initial_learning_rate
  (Keras's own warmup example, initial_learning_rate=0, gives all zeros).
  We compute in float32; expected numbers from the Keras 2 formula in float32."""
  kwargs = dict(
    initial_learning_rate=0, decay_steps=30, alpha=0.0, warmup_target=0.05, warmup_steps=10
  )
  m = S.CosineDecay(**kwargs)
  assert m.get_config()["initial_learning_rate"] == 0  # kept as given, like Keras
  for s in _grid([10, 40]):
    expected = _keras2_cosine(step=s, **kwargs)
    assert_f32_close(m(s), expected, 0.05)
    assert_f32_close(jax.jit(m)(s), expected, 0.05)
  assert_f32_close(m(5), 0.025, 0.05)


@pytest.mark.parametrize("decay_steps", [10, 25, 41, 1000])
@pytest.mark.parametrize("cycle", [False, True])
def test_polynomial_fractional_power_reaches_end_under_jit(decay_steps, cycle):
  """At and after the end of the decay, 1 - p is exactly 0, under jit too.

  jax.jit of Keras 3's PolynomialDecay(power=0.5) gives NaN (decay_steps 10,
  1000) or a wrong plateau (25, 41) there, because XLA turns the division by
  decay_steps into a multiplication by its reciprocal fused into an FMA.
  Expected numbers: the Keras 2 formula in NumPy float32 (exact division).
  """
  kwargs = dict(
    initial_learning_rate=0.1,
    decay_steps=decay_steps,
    end_learning_rate=1e-4,
    power=0.5,
    cycle=cycle,
  )
  m = S.PolynomialDecay(**kwargs)
  jm = jax.jit(m)
  steps = [
    decay_steps - 1,
    decay_steps,
    decay_steps + 1,
    2 * decay_steps,
    3 * decay_steps,
    50 * decay_steps,
  ]
  for s in steps:
    expected = _keras2_polynomial(step=s, **kwargs)
    assert_f32_close(m(s), expected, 0.1)
    assert_f32_close(jm(s), expected, 0.1)
  if not cycle:
    for s in steps[1:]:
      assert_f32_equal(jm(s), F32(1e-4))
  else:
    for k in (1, 2, 3, 50):
      assert_f32_equal(jm(k * decay_steps), F32(1e-4))
  vec = m(jnp.asarray(steps, jnp.int32))  # array steps: same values
  assert_f32_equal(vec, [m(s) for s in steps])


# ---------------------------------------------------------------------------
# jit-safety: one trace for all steps, usable as an Optax schedule.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "case_id", ["exp-staircase", "pw-three", "poly-cycle", "inv", "cos-warmup", "sgdr-t15-m09-alpha"]
)
def test_jit_does_not_retrace_per_step(case_id):
  m, _, steps, _ = _build(case_id)
  traces = []

  def f(step):
    traces.append(step)
    return m(step)

  jf = jax.jit(f)
  for s in steps:
    jf(jnp.int32(s))
  assert len(traces) == 1
  for s in range(5):  # Python ints are weakly typed int32: one more trace.
    jf(s)
  assert len(traces) == 2
  # The schedule object itself can be jitted.
  assert_f32_close(jax.jit(m)(jnp.int32(steps[1])), m(steps[1]), _scale(CASES[case_id][1]))


def test_usable_as_optax_schedule():
  import optax  # pylint: disable=import-outside-toplevel

  sched = S.CosineDecay(0.01, 10, alpha=0.1, warmup_target=0.1, warmup_steps=3)
  opt = optax.chain(optax.scale_by_schedule(sched), optax.scale(-1.0))
  sgd = optax.sgd(learning_rate=sched)
  params = jnp.zeros(3)
  grads = jnp.ones(3)

  @jax.jit
  def step(state, sgd_state):
    u, state = opt.update(grads, state, params)
    v, sgd_state = sgd.update(grads, sgd_state, params)
    return state, sgd_state, u, v

  state, sgd_state = opt.init(params), sgd.init(params)
  for t in range(16):
    state, sgd_state, u, v = step(state, sgd_state)
    expected = -np.asarray(sched(t))
    assert_f32_close(u, np.full(3, expected), 0.1)
    assert_f32_close(v, np.full(3, expected), 0.1)


# ---------------------------------------------------------------------------
# Config, from_config, serialize/deserialize.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_get_config_matches_keras(case_id):
  m, k, _, _ = _build(case_id)
  ours, theirs = m.get_config(), k.get_config()
  assert list(ours) == list(theirs)
  assert ours == theirs
  assert json.loads(json.dumps(ours)) == ours
  for v in ours.values():
    assert v is None or type(v) in (int, float, bool, str, list)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_from_config_round_trip(case_id):
  m, k, steps, _ = _build(case_id)
  cls = type(m)
  config = m.get_config()
  again = cls.from_config(config)
  assert type(again) is cls and again.get_config() == config
  from_keras = cls.from_config(k.get_config())
  assert from_keras.get_config() == config
  assert type(k).from_config(config).get_config() == config  # Keras reads ours
  for s in steps:
    assert_f32_equal(again(s), m(s))
    assert_f32_equal(from_keras(s), m(s))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_serialize_round_trip(case_id):
  m, k, steps, _ = _build(case_id)
  d = S.serialize(m)
  assert d == {
    "module": "keras.optimizers.schedules",
    "class_name": type(m).__name__,
    "config": m.get_config(),
    "registered_name": None,
  }
  assert d == ks.serialize(k)  # Keras 3 writes the same dict
  text = json.dumps(d)
  back = S.deserialize(json.loads(text))
  assert type(back) is type(m) and back.get_config() == m.get_config()
  assert ks.deserialize(json.loads(text)).get_config() == m.get_config()
  for s in steps[:5]:
    assert_f32_equal(back(s), m(s))


@pytest.mark.parametrize(
  "variant",
  [
    lambda d: {**d, "module": "keras.src.optimizers.schedules.learning_rate_schedule"},
    lambda d: {"class_name": d["class_name"], "config": d["config"]},
    lambda d: {**d, "module": None},
    lambda d: {k: v for k, v in d.items() if k != "registered_name"},
  ],
  ids=["keras-src-module", "no-module-no-registered-name", "module-none", "no-registered-name"],
)
def test_deserialize_accepts_keras_variants(variant):
  m = S.CosineDecayRestarts(0.1, 10, t_mul=1.5, m_mul=0.9, alpha=0.05)
  back = S.deserialize(variant(S.serialize(m)))
  assert isinstance(back, S.CosineDecayRestarts) and back.get_config() == m.get_config()


def test_deserialize_keras2_config_with_name_none():
  """Keras 2 configs carry name=None (and CosineDecay may lack warmup keys)."""
  d = {
    "class_name": "CosineDecay",
    "config": {"initial_learning_rate": 0.1, "decay_steps": 100, "alpha": 0.0, "name": None},
  }
  back = S.deserialize(d)
  assert back.get_config() == {
    "initial_learning_rate": 0.1,
    "decay_steps": 100,
    "alpha": 0.0,
    "name": None,
    "warmup_target": None,
    "warmup_steps": 0,
  }
  assert_f32_equal(back(50), S.CosineDecay(0.1, 100)(50))


def test_deserialize_keras_written_dicts():
  for name, kwargs, _ in CASES.values():
    d = ks.serialize(getattr(ks, name)(**kwargs))
    assert S.deserialize(d).get_config() == d["config"]


def test_deserialize_errors():
  good = S.serialize(S.ExponentialDecay(0.1, 10, 0.5))
  with pytest.raises(ValueError, match="class_name='LinearCosineDecay'"):
    S.deserialize({**good, "class_name": "LinearCosineDecay"})
  with pytest.raises(ValueError, match=r"module='my_project.schedules'"):
    S.deserialize({**good, "module": "my_project.schedules"})
  with pytest.raises(ValueError, match="registered_name='Custom>ExponentialDecay'"):
    S.deserialize({**good, "registered_name": "Custom>ExponentialDecay"})
  with pytest.raises(ValueError, match="'class_name' and 'config'"):
    S.deserialize({"class_name": "ExponentialDecay"})
  with pytest.raises(TypeError, match="`config` must be a dict"):
    S.deserialize("ExponentialDecay")
  with pytest.raises(TypeError, match="'config' entry"):
    S.deserialize({**good, "config": [0.1, 10, 0.5]})
  with pytest.raises(TypeError, match="bogus"):
    S.deserialize({**good, "config": {**good["config"], "bogus": 1}})
  with pytest.raises(TypeError, match="`schedule` must be an instance"):
    S.serialize(lambda step: 0.1)


def test_registry_and_public_names():
  assert sorted(S.SCHEDULES) == sorted(
    [
      "ExponentialDecay",
      "PiecewiseConstantDecay",
      "PolynomialDecay",
      "InverseTimeDecay",
      "CosineDecay",
      "CosineDecayRestarts",
    ]
  )
  for name, cls in S.SCHEDULES.items():
    assert cls.__name__ == name and getattr(S, name) is cls and name in S.__all__
    assert issubclass(cls, S.LearningRateSchedule)
    assert (
      cls.__doc__
      and "Keras 2 vs 3" in cls.__doc__
      and "Example" in cls.__doc__
      and "Args:" in cls.__doc__
    )


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_signature_matches_keras3(name):
  import inspect

  ours = inspect.signature(getattr(S, name))
  theirs = inspect.signature(getattr(ks, name))
  assert [(p.name, p.default) for p in ours.parameters.values()] == [
    (p.name, p.default) for p in theirs.parameters.values()
  ]


def test_numpy_arguments_become_python_types():
  m = S.ExponentialDecay(np.float32(0.1), np.int64(10), np.float64(0.5), staircase=np.bool_(True))
  cfg = m.get_config()
  assert [
    type(cfg[k]) for k in ("initial_learning_rate", "decay_steps", "decay_rate", "staircase")
  ] == [float, int, float, bool]
  json.dumps(cfg)
  p = S.PiecewiseConstantDecay(np.array([5, 10]), (np.float32(1.0), 0.5, 0.25))
  assert p.get_config()["boundaries"] == [5, 10] and type(p.get_config()["boundaries"][0]) is int
  assert p.get_config()["values"] == [1.0, 0.5, 0.25]


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")

INVALID = [
  # (class, kwargs, exception, argument named in the message, received text)
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.9),
    ValueError,
    "decay_steps",
    "decay_steps=0",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=-5, decay_rate=0.9),
    ValueError,
    "decay_steps",
    "decay_steps=-5",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=NAN, decay_rate=0.9),
    ValueError,
    "decay_steps",
    "decay_steps=nan",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps="10", decay_rate=0.9),
    TypeError,
    "decay_steps",
    "decay_steps='10'",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-0.5),
    ValueError,
    "decay_rate",
    "decay_rate=-0.5",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=INF, decay_steps=10, decay_rate=0.9),
    ValueError,
    "initial_learning_rate",
    "initial_learning_rate=inf",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=True, decay_steps=10, decay_rate=0.9),
    TypeError,
    "initial_learning_rate",
    "initial_learning_rate=True",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=None, decay_steps=10, decay_rate=0.9),
    TypeError,
    "initial_learning_rate",
    "initial_learning_rate=None",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=[0.1], decay_steps=10, decay_rate=0.9),
    TypeError,
    "initial_learning_rate",
    "initial_learning_rate=[0.1]",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.9, staircase="yes"),
    TypeError,
    "staircase",
    "staircase='yes'",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.9, staircase=1),
    TypeError,
    "staircase",
    "staircase=1",
  ),
  (
    S.ExponentialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.9, name=3),
    TypeError,
    "name",
    "name=3",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[5, 10], values=[1.0, 0.5]),
    ValueError,
    "boundaries",
    "boundaries=[5, 10] of length 2, and values=[1.0, 0.5] of length 2",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[5], values=[1.0, 0.5, 0.1]),
    ValueError,
    "values",
    "values=[1.0, 0.5, 0.1] of length 3",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[], values=[1.0]),
    ValueError,
    "boundaries",
    "boundaries=[]",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[10, 5], values=[1.0, 0.5, 0.1]),
    ValueError,
    "boundaries",
    "boundaries=[10, 5]",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[5, 5], values=[1.0, 0.5, 0.1]),
    ValueError,
    "boundaries",
    "strictly increasing",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=5, values=[1.0, 0.5]),
    TypeError,
    "boundaries",
    "boundaries=5",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[5], values=[1.0, "0.5"]),
    TypeError,
    "values",
    "values=[1.0, '0.5']",
  ),
  (
    S.PiecewiseConstantDecay,
    dict(boundaries=[5], values=[1.0, NAN]),
    ValueError,
    "values",
    "values[1]=nan",
  ),
  (
    S.PolynomialDecay,
    dict(initial_learning_rate=0.1, decay_steps=0),
    ValueError,
    "decay_steps",
    "decay_steps=0",
  ),
  (
    S.PolynomialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, end_learning_rate=None),
    TypeError,
    "end_learning_rate",
    "end_learning_rate=None",
  ),
  (
    S.PolynomialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, power=INF),
    ValueError,
    "power",
    "power=inf",
  ),
  (
    S.PolynomialDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, cycle="no"),
    TypeError,
    "cycle",
    "cycle='no'",
  ),
  (
    S.InverseTimeDecay,
    dict(initial_learning_rate=0.1, decay_steps=0.0, decay_rate=0.5),
    ValueError,
    "decay_steps",
    "decay_steps=0.0",
  ),
  (
    S.InverseTimeDecay,
    dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=-1),
    ValueError,
    "decay_rate",
    "decay_rate=-1",
  ),
  (
    S.InverseTimeDecay,
    dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=0.5, staircase=None),
    TypeError,
    "staircase",
    "staircase=None",
  ),
  (
    S.CosineDecay,
    dict(initial_learning_rate=0.1, decay_steps=0),
    ValueError,
    "decay_steps",
    "decay_steps=0",
  ),
  (
    S.CosineDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, alpha=NAN),
    ValueError,
    "alpha",
    "alpha=nan",
  ),
  (
    S.CosineDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=0.2, warmup_steps=-1),
    ValueError,
    "warmup_steps",
    "warmup_steps=-1",
  ),
  (
    S.CosineDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, warmup_target="0.2"),
    TypeError,
    "warmup_target",
    "warmup_target='0.2'",
  ),
  (
    S.CosineDecay,
    dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=INF),
    ValueError,
    "warmup_target",
    "warmup_target=inf",
  ),
  (
    S.CosineDecayRestarts,
    dict(initial_learning_rate=0.1, first_decay_steps=0),
    ValueError,
    "first_decay_steps",
    "first_decay_steps=0",
  ),
  (
    S.CosineDecayRestarts,
    dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=0.0),
    ValueError,
    "t_mul",
    "t_mul=0.0",
  ),
  (
    S.CosineDecayRestarts,
    dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=-2.0),
    ValueError,
    "t_mul",
    "t_mul=-2.0",
  ),
  (
    S.CosineDecayRestarts,
    dict(initial_learning_rate=0.1, first_decay_steps=10, m_mul=INF),
    ValueError,
    "m_mul",
    "m_mul=inf",
  ),
  (
    S.CosineDecayRestarts,
    dict(initial_learning_rate=0.1, first_decay_steps=10, alpha="0"),
    TypeError,
    "alpha",
    "alpha='0'",
  ),
]


@pytest.mark.parametrize(
  "cls, kwargs, exc, arg, received",
  INVALID,
  ids=[f"{c.__name__}-{a}-{i}" for i, (c, _, _, a, _) in enumerate(INVALID)],
)
def test_invalid_arguments(cls, kwargs, exc, arg, received):
  with pytest.raises(exc) as info:
    cls(**kwargs)
  msg = str(info.value)
  assert f"`{arg}`" in msg, msg
  assert received in msg, msg


def test_traced_argument_is_rejected():
  def f(lr):
    return S.ExponentialDecay(lr, 10, 0.9)(0)

  with pytest.raises(TypeError, match="`initial_learning_rate` must be a concrete number"):
    jax.jit(f)(0.1)


def test_valid_edge_arguments():
  """name=None (Keras 2 default) and warmup_steps ignored without a target."""
  assert S.ExponentialDecay(0.1, 10, 0.9, name=None).get_config()["name"] is None
  assert_f32_equal(S.CosineDecay(0.1, 10, warmup_steps=5)(3), S.CosineDecay(0.1, 10)(3))
  assert_f32_close(S.PolynomialDecay(0.1, 10, power=0.0)(3), F32(0.1), 0.1)
