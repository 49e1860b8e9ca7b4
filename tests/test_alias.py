"""`optadam.adam`'s API: the Keras 2 signature, tracing and vmap, state dtypes, None gradients.

Its step-by-step parity with Keras 3 and with the float64 reference is test_alias_parity.py; the
arguments' checks are test_config.py; each link of the chain has its own module's test file.
"""

from __future__ import annotations

import inspect

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from helpers import run_optadam, worst_relative
from reference import make_grads, make_params, reference_adam

SHAPES = {"w": (4, 3), "b": (3,)}


# --- signature ---------------------------------------------------------------------------


def test_signature_is_keras2():
  params = list(inspect.signature(optadam.adam).parameters.values())
  positional = [(p.name, p.default) for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
  assert positional == [
    ("learning_rate", 0.001),
    ("beta_1", 0.9),
    ("beta_2", 0.999),
    ("epsilon", 1e-7),
    ("amsgrad", False),
    ("weight_decay", None),
    ("clipnorm", None),
    ("clipvalue", None),
    ("global_clipnorm", None),
    ("use_ema", False),
    ("ema_momentum", 0.99),
    ("ema_overwrite_frequency", None),
    ("jit_compile", True),
    ("name", "Adam"),
  ]
  assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[len(positional) :])


def test_positional_arguments_in_keras_order():
  tx = optadam.adam(0.01, 0.8, 0.99, 1e-3, True)
  assert tx.keras_args["learning_rate"] == 0.01 and tx.keras_args["amsgrad"] is True
  assert tx.name == "Adam"
  assert optadam.adam(name="enc_opt").name == "enc_opt"


# --- tracing, recompilation, vmap --------------------------------------------------------


def _loss_grads(params, x):
  return jax.grad(lambda p: jnp.sum((x @ p["w"] + p["b"]) ** 2))(params)


def test_no_recompilation_in_user_jit():
  tx = optadam.adam(
    amsgrad=True, weight_decay=0.01, clipnorm=1.0, use_ema=True, ema_overwrite_frequency=2
  )
  params = {k: jnp.asarray(v) for k, v in make_params(SHAPES).items()}
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, x):
    updates, state = tx.update(_loss_grads(params, x), state, params)
    return optadam.apply_updates(params, updates), state

  for i in range(4):
    params, state = step(params, state, jnp.full((2, 4), 0.1 * i))
  assert int(state.adam.count) == 4


def test_vmap_over_independent_problems():
  tx = optadam.adam(weight_decay=0.01)
  params = {"w": jnp.stack([jnp.ones(3), 2 * jnp.ones(3)])}
  grads = {"w": jnp.stack([jnp.ones(3), -jnp.ones(3)])}
  states = jax.vmap(tx.init)(params)
  updates, _ = jax.vmap(tx.update)(grads, states, params)
  for i in range(2):
    single, _ = tx.update(
      {"w": grads["w"][i]}, tx.init({"w": params["w"][i]}), {"w": params["w"][i]}
    )
    np.testing.assert_array_equal(updates["w"][i], single["w"])


# --- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64])
def test_state_dtypes_and_shapes_are_stable(dtype):
  with jax.enable_x64(dtype == jnp.float64):
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros(2, dtype)}
    tx = optadam.adam(
      amsgrad=True, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=2, clipnorm=1.0
    )
    state0 = tx.init(params)
    state = state0
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for _ in range(3):
      grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, dtype), params)
      updates, state = step(params, state, grads)
      chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
      chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
      params = optadam.apply_updates(params, updates)
    assert state.adam.mu["w"].dtype == dtype


# --- None gradients ------------------------------------------------------------------------


def test_none_gradients_skip_the_parameter_entirely():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 12, none=lambda s, k: k == "b" and s % 3 == 1)
  kwargs = dict(
    amsgrad=True,
    weight_decay=0.05,
    clipnorm=0.5,
    use_ema=True,
    ema_overwrite_frequency=4,
    learning_rate=0.01,
  )
  ours, state = run_optadam(optadam.adam(**kwargs), params0, grads)
  ref, avg = reference_adam(params0, grads, **kwargs)
  assert worst_relative(ours, ref) < 1e-6
  np.testing.assert_allclose(optadam.ema_params(state)["b"], avg["b"], rtol=1e-6)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  pattern=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6),
  amsgrad=st.booleans(),
)
def test_none_leaves_leave_their_state_untouched(pattern, amsgrad):
  tx = optadam.adam(amsgrad=amsgrad, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=2)
  params = {"a": jnp.arange(3.0), "b": -jnp.arange(2.0)}
  state = tx.init(params)
  steps = 0
  for i, (a_none, b_none) in enumerate(pattern):
    grads = {
      "a": None if a_none else jnp.full(3, 0.3 * (i + 1)),
      "b": None if b_none else jnp.ones(2),
    }
    updates, new_state = tx.update(grads, state, params)
    for key, is_none in (("a", a_none), ("b", b_none)):
      if is_none:
        assert updates[key] is None
        np.testing.assert_array_equal(new_state.adam.mu[key], state.adam.mu[key])
        np.testing.assert_array_equal(new_state.adam.nu[key], state.adam.nu[key])
        np.testing.assert_array_equal(new_state.ema.ema[key], state.ema.ema[key])
        if amsgrad:
          np.testing.assert_array_equal(new_state.adam.nu_max[key], state.adam.nu_max[key])
    steps += not (a_none and b_none)  # a step without any gradient is no step (Keras 3)
    assert int(new_state.adam.count) == steps
    params, state = optadam.apply_updates(params, updates), new_state
