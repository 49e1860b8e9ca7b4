"""`optadam.readers`: `ema_params` / `finalize_variable_values` and `loss_scale` / `scale_loss`
find their state inside optax's wrappers, and say so when there is none or more than one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam

# --- parameter EMA -----------------------------------------------------------------------


def _nested(tx):
  return {
    "plain": tx,
    "chain": optax.chain(optax.identity(), tx),
    "inject": optax.inject_hyperparams(optadam.adam)(learning_rate=0.01, use_ema=True),
    "multisteps": optax.MultiSteps(tx, every_k_schedule=2),
    "apply_if_finite": optax.apply_if_finite(tx, max_consecutive_errors=3),
  }


@pytest.mark.parametrize("where", ["plain", "chain", "inject", "multisteps", "apply_if_finite"])
def test_ema_found_in_nested_states(where):
  tx = _nested(optadam.adam(learning_rate=0.01, use_ema=True, ema_momentum=0.5))[where]
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    params = optax.apply_updates(params, updates)
  avg = optadam.ema_params(state)
  assert avg["w"].shape == (3,)
  # averages lag behind the (decreasing) parameters
  assert np.all(np.asarray(avg["w"]) > np.asarray(params["w"]))
  final = optadam.finalize_variable_values(params, state)
  np.testing.assert_array_equal(final["w"], avg["w"])


def test_without_ema():
  tx = optadam.adam()
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  assert optadam.finalize_variable_values(params, state) is params
  with pytest.raises(ValueError, match="no parameter EMA"):
    optadam.ema_params(state)


def test_two_emas_is_ambiguous():
  tx = optax.chain(optadam.parameter_ema(), optadam.parameter_ema())
  with pytest.raises(ValueError, match="2 parameter EMAs"):
    optadam.ema_params(tx.init({"w": jnp.ones(1)}))


# --- loss scale --------------------------------------------------------------------------


def test_loss_scale_and_scale_loss_in_nested_wrappers():
  lso = optadam.loss_scale_optimizer(optadam.adam(0.01), 2.0**12, 3)
  params = {"w": jnp.ones(3)}
  for tx in (
    optax.chain(optax.identity(), lso),
    optax.MultiSteps(lso, every_k_schedule=2),
    optax.named_chain(("scaled", lso)),
    optax.inject_hyperparams(lambda learning_rate: optax.chain(lso, optax.scale(learning_rate)))(
      learning_rate=1.0
    ),
  ):
    state = tx.init(params)
    assert float(optadam.loss_scale(state)) == 4096.0
    assert float(jax.jit(optadam.loss_scale)(state)) == 4096.0
  for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
    scaled = optadam.scale_loss(jnp.asarray(0.75, dtype), state)
    assert scaled.dtype == dtype and float(scaled) == 3072.0
  with pytest.raises(ValueError, match="no loss scale"):
    optadam.loss_scale(optadam.adam().init(params))
  two = optax.chain(lso, lso).init(params)
  with pytest.raises(ValueError, match="2 loss scales"):
    optadam.loss_scale(two)


def test_scale_loss_inside_grad_gives_the_scaled_gradient():
  tx = optadam.loss_scale_optimizer(optadam.adam(0.01), 2.0**10)
  params = {"w": jnp.asarray([0.5, -1.0, 2.0])}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p["w"] ** 2)
  g = jax.jit(jax.grad(lambda p, s: optadam.scale_loss(loss(p), s)))(params, state)
  np.testing.assert_array_equal(g["w"], 2.0**10 * 2 * params["w"])
