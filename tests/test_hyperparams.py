"""Hyperparameter forms (`optadam.hyperparams`): betas as schedules and zero-argument callables,
and values that `optax.inject_hyperparams` passes as arrays (docs/semantics.md, learning rate and
betas).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from helpers import run_optadam, worst_relative
from reference import make_grads, make_params

SHAPES = {"w": (4, 3), "b": (3,)}


def test_beta_schedules_and_callables_match_constant():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 8)
  const, _ = run_optadam(optadam.adam(beta_1=0.8, beta_2=0.99), params0, grads)
  sched, _ = run_optadam(
    optadam.adam(beta_1=lambda step: 0.8, beta_2=lambda step: 0.99), params0, grads
  )
  zero_arg, _ = run_optadam(optadam.adam(beta_1=lambda: 0.8, beta_2=lambda: 0.99), params0, grads)
  # arrays/callables form 1 - beta in float32 (Python floats in double): equal to ~1 ulp
  assert worst_relative(sched, const) < 1e-6
  assert worst_relative(zero_arg, const) < 1e-6


@pytest.mark.parametrize("static", [True, False])
def test_inject_hyperparams_gives_same_numbers(static):
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 12)
  kwargs = dict(
    amsgrad=True, weight_decay=0.01, clipnorm=1.0, use_ema=True, ema_overwrite_frequency=4
  )
  plain, _ = run_optadam(optadam.adam(1e-2, **kwargs), params0, grads)
  static_args = ("beta_1", "beta_2", "ema_momentum", "ema_overwrite_frequency") if static else ()
  injected_tx = optax.inject_hyperparams(optadam.adam, static_args=static_args)(
    learning_rate=1e-2, **kwargs
  )
  injected, state = run_optadam(injected_tx, params0, grads)
  if static:
    assert worst_relative(injected, plain) == 0.0
  else:  # betas as float32 arrays: 1 - beta rounds differently from Keras's double
    assert worst_relative(injected, plain) < 1e-6
  assert "learning_rate" in state.hyperparams


def test_inject_hyperparams_changes_lr_without_recompiling():
  tx = optax.inject_hyperparams(optadam.adam)(learning_rate=0.1)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optadam.apply_updates(params, updates), state, updates

  g = {"w": jnp.array([1.0, -1.0])}
  params, state, u1 = step(params, state, g)
  state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)  # same (not weak) type
  params, state, u2 = step(params, state, g)
  np.testing.assert_allclose(u1["w"], [-0.1, 0.1], rtol=1e-5)
  np.testing.assert_allclose(u2["w"], [-0.01, 0.01], rtol=1e-5)
