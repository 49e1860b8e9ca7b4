"""Parameter EMA with overwrite: worked example, reference, Keras 3, dtypes, wrappers.

As docs/semantics.md (parameter EMA) describes it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from helpers import run_keras3, run_optadam, worst_relative, worst_ulps
from reference import make_grads, make_params, reference_adam

SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,), "out": (3, 2)}


def test_spec_worked_example():
  """SGD-like, lr 1, g = 1, momentum 0.5, freq 3, x0 = 2 -> 1, 0, -0.125, -1.125, -2.125, -2.25."""
  tx = optax.chain(optax.sgd(1.0), optadam.parameter_ema(0.5, 3))
  params = jnp.asarray(2.0)
  state = tx.init(params)
  seen = []
  for _ in range(6):
    updates, state = tx.update(jnp.asarray(1.0), state, params)
    params = optax.apply_updates(params, updates)
    seen.append(float(params))
  assert seen == [1.0, 0.0, -0.125, -1.125, -2.125, -2.25]
  assert float(optadam.ema_params(state)) == -2.25


@pytest.mark.parametrize("freq", [None, 1, 3, 7])
@pytest.mark.parametrize(
  "extras", [{}, {"amsgrad": True, "weight_decay": 0.02}], ids=["plain", "amsgrad+wd"]
)
def test_matches_float64_reference(freq, extras, report):
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 28, seed=3)
  kwargs = dict(
    learning_rate=0.01, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=freq, **extras
  )
  ref, ref_avg = reference_adam(params0, grads, **kwargs)
  ours, state = run_optadam(optadam.adam(**kwargs), params0, grads)
  err = worst_relative(ours, ref)
  avg_err = worst_relative([optadam.ema_params(state)], [ref_avg])
  report(f"ema float64 ref / freq={freq} {extras}", f"params {err:.2e}  averages {avg_err:.2e}")
  assert err < 5e-6 and avg_err < 5e-6  # float32 vs float64 rounding (lr 0.01)
  final = optadam.finalize_variable_values({k: jnp.asarray(v) for k, v in ours[-1].items()}, state)
  assert worst_relative([final], [ref_avg]) < 5e-6


@pytest.mark.parametrize("freq", [None, 3])
def test_keras3_style_matches_keras3(freq, report):
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 25, seed=4, none=lambda s, k: k == "out" and s % 4 == 2)
  kwargs = dict(
    learning_rate=0.01,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=freq,
    amsgrad=True,
    weight_decay=0.01,
  )
  keras_hist, opt, variables = run_keras3(kwargs, params0, grads)
  ours, state = run_optadam(optadam.adam(**kwargs, ema_style="keras3"), params0, grads)
  err, ulps = worst_relative(ours, keras_hist), worst_ulps(ours, keras_hist)
  # Keras 3's averages, in its variable order
  keras_avg = {
    k: np.asarray(a.value) for k, a in zip(variables, opt._model_variables_moving_average)
  }  # pylint: disable=protected-access
  avg_err = worst_relative(
    [{k: np.asarray(v) for k, v in optadam.ema_params(state).items()}], [keras_avg]
  )
  report(
    f"keras3 / ema_style=keras3 freq={freq}",
    f"max rel err {err:.2e} ({ulps:.1f} ulp), averages {avg_err:.2e}",
  )
  assert err < 1e-6 and avg_err < 1e-6
  # ...and the default (Keras 2) seeding gives measurably different averages
  _, keras2_state = run_optadam(optadam.adam(**kwargs), params0, grads)
  keras2_avg = {k: np.asarray(v) for k, v in optadam.ema_params(keras2_state).items()}
  assert worst_relative([keras2_avg], [keras_avg]) > 1e-4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_overwrite_lands_exactly_on_the_average(dtype):
  # large parameters with a tiny average: avg - x rounds, the stored average follows the params
  params = {
    "big": jnp.full((5,), 1000.0, dtype),
    "mixed": jnp.asarray([1e-3, -3.0, 7.0, 0.0, 2.5], dtype),
  }
  tx = optax.chain(optax.sgd(1.0), optadam.parameter_ema(0.1, 2))
  state = tx.init(params)
  grads = {
    "big": jnp.full((5,), 1000.0 - 1e-4, dtype),
    "mixed": jnp.asarray([1.0, -2.0, 3.0, 0.1, -4.0], dtype),
  }
  for step in range(6):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if step % 2 == 1:
      avg = optadam.ema_params(state)
      for k in params:
        np.testing.assert_array_equal(np.asarray(params[k]), np.asarray(avg[k]))


@pytest.mark.parametrize("style", ["keras2", "keras3"])
@pytest.mark.parametrize(
  "dtype, ema_dtype", [(jnp.float32, None), (jnp.bfloat16, jnp.float32)], ids=["f32", "bf16+f32"]
)
def test_overwrite_keeps_an_infinite_parameter(style, dtype, ema_dtype):
  """A parameter that became -inf stays -inf through overwrites (Keras assigns the average).

  With epsilon 0 and a gradient of 1e-30, g*g underflows, v = 0 and the step is -inf; the
  average is then -inf too. Overwriting by the update `avg - x` would give -inf - -inf = NaN.
  """
  kw = dict(epsilon=0.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=1)
  tx = optadam.adam(0.1, **kw, ema_style=style, ema_dtype=ema_dtype)
  params = {"w": jnp.asarray([1.0, 2.0], dtype)}
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update({"w": jnp.asarray([1e-30, 1.0], dtype)}, state, params)
    params = optadam.apply_updates(params, updates)
    w, avg = np.asarray(params["w"], np.float32), np.asarray(optadam.ema_params(state)["w"])
    assert w[0] == -np.inf and avg[0] == -np.inf, (w, avg)
    assert np.isfinite(w[1]) and w[1] == np.float32(avg[1].astype(dtype)), (w, avg)


def test_multisteps_with_ema_equals_adam_on_mean_gradient():
  params0 = make_params(SHAPES)
  micro = make_grads(SHAPES, 12, seed=5)
  kwargs = dict(learning_rate=0.01, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=2)
  multi, state = run_optadam(
    optax.MultiSteps(optadam.adam(**kwargs), every_k_schedule=3), params0, micro
  )
  mean = [
    {k: np.mean([micro[i + j][k] for j in range(3)], axis=0) for k in SHAPES}
    for i in range(0, 12, 3)
  ]
  ref, ref_avg = reference_adam(params0, mean, **kwargs)
  assert worst_relative(multi[2::3], ref) < 1e-6
  assert worst_relative([optadam.ema_params(state)], [ref_avg]) < 1e-6


def test_apply_if_finite_skips_nan_steps_including_the_average():
  tx = optax.apply_if_finite(
    optadam.adam(learning_rate=0.1, use_ema=True, ema_overwrite_frequency=1), 5
  )
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  params = optax.apply_updates(params, updates)
  before = optadam.ema_params(state)["w"]
  updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
  np.testing.assert_array_equal(updates["w"], np.zeros(2))
  np.testing.assert_array_equal(optadam.ema_params(state)["w"], before)


def test_ema_dtype_float32_for_bfloat16_params():
  """A float32 average of bfloat16 parameters is the float32 recurrence over the stored values."""
  params = {"w": jnp.full(4, 1.0, jnp.bfloat16)}
  tx = optadam.adam(learning_rate=1e-2, use_ema=True, ema_momentum=0.9, ema_dtype=jnp.float32)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update({"w": jnp.ones(4, jnp.bfloat16)}, s, p))
  expected = np.ones(4, np.float32)
  for _ in range(20):
    updates, state = step(params, state)
    params = optadam.apply_updates(params, updates)
    stored = np.asarray(params["w"], np.float32)
    expected = np.float32(0.9) * expected + np.float32(1 - 0.9) * stored
  avg = optadam.ema_params(state)["w"]
  assert avg.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(avg), expected, rtol=1e-6)
  assert np.all(np.asarray(params["w"], np.float32) < 1.0)  # the parameters moved
  # the average resolves values between bfloat16's grid points
  assert np.any(np.asarray(avg) != np.asarray(avg.astype(jnp.bfloat16), np.float32))
  assert optadam.finalize_variable_values(params, state)["w"].dtype == jnp.bfloat16


def test_keras3_style_blends_float64_with_the_double_momentum():
  """Keras 3 blends a float64 average with the Python double momentum (not its float32).

  Keras 3: momentum = cast(iterations != 0, var.dtype) * ema_momentum; average =
  momentum * average + (1 - momentum) * var. Checked bit for bit in float64 against that
  formula in NumPy, on the parameters optadam itself produced.
  """
  with jax.enable_x64(True):
    params = {"w": jnp.asarray([0.3, -1.7, 2.25], jnp.float64)}
    tx = optax.chain(optax.sgd(0.1), optadam.parameter_ema(0.3, ema_style="keras3"))
    state = tx.init(params)
    avg = None
    for step in range(4):
      grads = {"w": jnp.asarray([1.0, -0.5, 0.25], jnp.float64) * (step + 1)}
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      x = np.asarray(params["w"])
      momentum = np.float64(step != 0) * 0.3
      avg = x if avg is None else momentum * avg + (1 - momentum) * x
      np.testing.assert_array_equal(np.asarray(optadam.ema_params(state)["w"]), avg)


def test_keras3_first_step_takes_the_parameters_also_when_infinite():
  """Keras 3 starts its average at zeros, so its first step gives the parameters themselves:
  also an infinite one (a copy blended with momentum 0 would be 0 * inf = NaN)."""
  tx = optax.chain(optax.sgd(0.1), optadam.parameter_ema(0.9, ema_style="keras3"))
  params = {"w": jnp.asarray([jnp.inf, 1.0])}
  state = tx.init(params)
  _, state = tx.update({"w": jnp.zeros(2)}, state, params)
  np.testing.assert_array_equal(optadam.ema_params(state)["w"], [np.inf, 1.0])
  with pytest.raises(ValueError, match="keras3"):
    optadam.parameter_ema(0.9, gradient_accumulation_steps=2)
