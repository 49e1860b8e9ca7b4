"""`optadam.scale_by_keras_adam`: Keras's first step (epsilon-hat), invariance to rescaling with
epsilon 0, 16-bit parameters, moment dtypes (docs/semantics.md, one step).
"""

from __future__ import annotations

import chex
import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

import optadam


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(scale=st.floats(1e-3, 1e3), lr=st.floats(1e-4, 1e-1))
def test_first_step_shows_epsilon_hat(scale, lr):
  """Keras's first step: -lr c m / (sqrt(v) + eps), c = sqrt(1 - b2) / (1 - b1), eps NOT scaled."""
  tx = optadam.adam(learning_rate=lr, epsilon=1e-3)
  params = {"w": jnp.zeros(3)}
  g = np.asarray(np.array([1.0, -1.0, 0.5]) * scale, np.float32).astype(np.float64)
  updates, _ = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init(params), params)
  f32 = lambda x: float(np.float32(x))
  c = np.sqrt(1 - f32(0.999)) / (1 - f32(0.9))  # powers in float32, as Keras
  m, v = g * f32(1 - 0.9), g * g * f32(1 - 0.999)  # 1 - beta in double, rounded (Keras)
  expected = -f32(lr) * c * m / (np.sqrt(v) + 1e-3)
  np.testing.assert_allclose(updates["w"], expected, rtol=2e-6)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  log_scales=st.lists(st.floats(-3, 3), min_size=6, max_size=6),
  amsgrad=st.booleans(),
)
def test_invariant_to_diagonal_rescaling_when_epsilon_is_zero(seed, log_scales, amsgrad):
  """With epsilon = 0, scaling each gradient coordinate by a constant d > 0 changes nothing."""
  d = np.float32(10.0) ** np.asarray(log_scales, np.float32).reshape(2, 3)
  rng = np.random.default_rng(seed)
  tx = optadam.scale_by_keras_adam(epsilon=0.0, amsgrad=amsgrad)
  params = {"w": jnp.zeros((2, 3))}
  s1, s2 = tx.init(params), tx.init(params)
  for _ in range(5):
    g = rng.normal(size=(2, 3)).astype(np.float32) + 0.1
    u1, s1 = tx.update({"w": jnp.asarray(g)}, s1)
    u2, s2 = tx.update({"w": jnp.asarray(g * d)}, s2)
    # float32 noise relative to the tensor's scale (m near 0 cancels in m + (g - m) * 0.1)
    np.testing.assert_allclose(
      u2["w"], u1["w"], rtol=2e-5, atol=2e-5 * float(np.max(np.abs(u1["w"])))
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_model_with_default_betas_moves(dtype):
  """Keras 2 rounds beta_2=0.999 to 1.0 in bfloat16 and never moves; optadam does.

  docs/semantics.md (one step): the betas' powers are never computed in a 16-bit dtype.
  """
  params = {"w": jnp.ones(4, dtype)}
  tx = optadam.adam(learning_rate=0.01)
  state = tx.init(params)
  for _ in range(20):
    updates, state = tx.update({"w": jnp.ones(4, dtype)}, state, params)
    params = optadam.apply_updates(params, updates)
  assert params["w"].dtype == dtype
  # 20 steps of ~lr each (Adam's step is ~lr for a constant gradient), quantized by the dtype
  w = np.asarray(params["w"], np.float32)
  assert np.all(w < 0.85) and np.all(w > 0.7), w


def test_mu_nu_dtypes_and_gradient_cast():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = optadam.adam(mu_dtype=jnp.float32, nu_dtype=jnp.float32, use_ema=True, ema_dtype=jnp.float32)
  state = tx.init(params)
  assert state.adam.mu["w"].dtype == jnp.float32 and state.adam.nu["w"].dtype == jnp.float32
  assert state.ema.ema["w"].dtype == jnp.float32
  updates, state2 = tx.update({"w": jnp.ones(3, jnp.float32)}, state, params)  # float32 gradient
  chex.assert_trees_all_equal_shapes_and_dtypes(state2, state)
  assert optadam.apply_updates(params, updates)["w"].dtype == jnp.bfloat16


def test_float32_betas_give_tf_legacy_one_minus_beta():
  """A float32 beta forms 1 - beta in float32 (TF's legacy kernels: 1 - 0.9f = 0.100000024); a
  Python beta forms it in double and rounds it (the new Keras Adam: 0.1)."""
  g = jnp.ones(1)
  for beta_1, one_minus in (
    (0.9, np.float32(1 - 0.9)),
    (np.float32(0.9), np.float32(1) - np.float32(0.9)),
  ):
    tx = optadam.scale_by_keras_adam(beta_1=beta_1)
    _, state = tx.update(g, tx.init(jnp.zeros(1)))
    assert np.float32(state.mu[0]) == one_minus
  assert np.float32(1) - np.float32(0.9) != np.float32(1 - 0.9)
