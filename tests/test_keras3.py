"""Keras 3's `loss_scale_factor` and `gradient_accumulation_steps`, against Keras 3.

As docs/semantics.md (Keras 3's options) describes them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from helpers import run_keras3, run_optadam, worst_relative, worst_ulps
from reference import make_grads, make_params, reference_adam

SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,)}


def _keras_schedule():
  import keras  # pylint: disable=import-outside-toplevel

  return keras.optimizers.schedules.PiecewiseConstantDecay([3, 7], [0.01, 0.005, 0.001])


CASES = {
  "loss_scale_factor": dict(loss_scale_factor=128.0),
  "accumulation k=2": dict(gradient_accumulation_steps=2),
  "accumulation k=3 + amsgrad + wd + clipnorm": dict(
    gradient_accumulation_steps=3, amsgrad=True, weight_decay=0.01, clipnorm=0.5
  ),
  "accumulation k=2 + schedule (raw call count)": dict(gradient_accumulation_steps=2),
  "loss scale + accumulation": dict(loss_scale_factor=8.0, gradient_accumulation_steps=2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras3(name, report):
  kwargs = dict(CASES[name], learning_rate=0.01)
  if "schedule" in name:
    kwargs["learning_rate"] = _keras_schedule()
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 24, seed=7, scale=3.0)
  theirs, _, _ = run_keras3(kwargs, params0, grads)
  ours, _ = run_optadam(optadam.adam(**kwargs), params0, grads)
  err, ulps = worst_relative(ours, theirs), worst_ulps(ours, theirs)
  report(f"keras3 / {name}", f"max rel err {err:.2e}  ({ulps:.1f} ulp at tensor scale)")
  assert err < 1e-6


def test_accumulation_equals_adam_on_the_mean():
  params0 = make_params(SHAPES)
  micro = make_grads(SHAPES, 12, seed=8)
  ours, state = run_optadam(optadam.adam(0.01, gradient_accumulation_steps=3), params0, micro)
  mean = [
    {k: np.sum([micro[i + j][k] for j in range(3)], axis=0) / 3 for k in SHAPES}
    for i in range(0, 12, 3)
  ]
  ref, _ = reference_adam(params0, mean, learning_rate=0.01)
  assert worst_relative(ours[2::3], ref) < 1e-6
  for s in (0, 1, 3, 4):  # calls that only accumulate leave the parameters as they were
    prev = params0 if s == 0 else ours[s - 1]
    for k in SHAPES:
      np.testing.assert_array_equal(ours[s][k], prev[k])
  assert isinstance(state, optadam.GradientAccumulationState)
  assert int(state.count) == 12 and int(state.inner.adam.count) == 4


@pytest.mark.parametrize(
  "bad,word",
  [
    (dict(gradient_accumulation_steps=1), "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=2.0), "gradient_accumulation_steps"),
    (dict(loss_scale_factor=0.0), "loss_scale_factor"),
    (dict(loss_scale_factor=-2.0), "loss_scale_factor"),
  ],
)
def test_bad_values(bad, word):
  with pytest.raises(ValueError, match=word):
    optadam.adam(**bad)


def test_loss_scale_divides():
  tx = optadam.divide_by_loss_scale(4.0)
  out, _ = tx.update({"w": jnp.array([2.0, -6.0])}, tx.init({"w": jnp.zeros(2)}))
  np.testing.assert_array_equal(out["w"], [0.5, -1.5])


def test_accumulation_with_keras3_ema_and_none_gradients():
  """Gradient accumulation + ema_style="keras3" with a None gradient runs, as Keras 3 does.

  (It used to fail building the accumulator's cond: the keras3 EMA gives an update for a
  parameter without a gradient, so the two branches returned different trees.)
  """
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 12, seed=9, none=lambda s, k: k == "dense/bias" and s % 3 == 1)
  kwargs = dict(learning_rate=0.01, use_ema=True, gradient_accumulation_steps=2)
  theirs, _, _ = run_keras3(kwargs, params0, grads)
  for jit in (True, False):
    tx = optadam.adam(**kwargs, ema_style="keras3")
    ours, _ = run_optadam(tx, params0, grads, jit=jit)
    assert worst_relative(ours, theirs) < 1e-6


@pytest.mark.parametrize("k,freq", [(2, 5), (2, 3), (3, 4), (3, 2)])
def test_keras3_ema_with_accumulation_matches_keras3(k, freq, report):
  """Keras 3 updates its EMA on every call (momentum 0 while calls // k == 0) and overwrites on
  every call of the overwrite update: params and averages follow Keras 3 (they diverged by 0.026
  at the 9th call with k=2, frequency 5, when the EMA ran on real updates only)."""
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 24, seed=11, none=lambda s, key: key == "dense/bias" and s == 7)
  kwargs = dict(
    learning_rate=0.01, use_ema=True, ema_overwrite_frequency=freq, gradient_accumulation_steps=k
  )
  theirs, opt, _ = run_keras3(kwargs, params0, grads)
  their_avg = {
    name: np.asarray(avg.value)
    for name, avg in zip(params0, opt._model_variables_moving_average)  # pylint: disable=protected-access
  }
  for jit in (True, False):
    ours, state = run_optadam(optadam.adam(**kwargs, ema_style="keras3"), params0, grads, jit=jit)
    err = worst_relative(ours, theirs)
    avg_err = worst_relative([optadam.ema_params(state)], [their_avg])
    assert err < 1e-6 and avg_err < 1e-6, (err, avg_err)
    assert int(state.count) == 24 and int(state.inner.ema.count) == 24  # the EMA sees every call
  report(
    f"keras3 / ema_style=keras3 k={k} freq={freq}", f"max rel err {err:.2e}, averages {avg_err:.2e}"
  )
