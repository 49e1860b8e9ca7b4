"""`optadam.chain`: the `AdamState` and `KerasAdam` that `build` makes, and the chain's links.

The state's named fields, the parameters ``update`` needs, `KerasAdam`'s own jit (compiled once,
or op by op with ``jit_compile=False``), and the building blocks composed in an `optax.chain` in
Keras's order giving `optadam.adam` exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optadam
from helpers import run_optadam, worst_relative
from reference import make_grads, make_params

SHAPES = {"w": (4, 3), "b": (3,)}


def test_state_is_named():
  params = {"w": jnp.ones(3)}
  state = optadam.adam(use_ema=True, weight_decay=0.1).init(params)
  assert isinstance(state, optadam.AdamState)
  assert state._fields == ("loss_scale", "clip", "adam", "learning_rate", "weight_decay", "ema")
  assert state.adam.mu["w"].shape == (3,)
  assert isinstance(state.ema, optadam.ParameterEmaState)


def test_missing_params_is_a_clear_error():
  for kwargs in (dict(weight_decay=0.1), dict(use_ema=True)):
    tx = optadam.adam(**kwargs)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="needs the parameters"):
      tx.update({"w": jnp.ones(2)}, tx.init(params))
  tx = optadam.adam()  # without them, params are optional
  tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))


def test_own_jit_compiles_once():
  tx = optadam.adam(weight_decay=0.01)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    params = optadam.apply_updates(params, updates)
  assert tx.update._cache_size() == 1  # pylint: disable=protected-access


def test_jit_compile_false_runs_op_by_op_with_same_numbers():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 5)
  a, _ = run_optadam(optadam.adam(weight_decay=0.01, jit_compile=False), params0, grads, jit=False)
  b, _ = run_optadam(optadam.adam(weight_decay=0.01), params0, grads, jit=False)
  assert not hasattr(optadam.adam(jit_compile=False).update, "lower")
  assert hasattr(optadam.adam().update, "lower")
  assert worst_relative(a, b) < 1e-8  # fused (jit) code may contract a*b + c into one FMA


def test_standalone_building_blocks_compose_in_optax_chain():
  """The blocks are ordinary optax transforms: the chain equals optadam.adam."""
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 10, scale=5.0)
  keras_order = optax.chain(
    optadam.clip_by_tensor_norm(1.0),
    optadam.scale_by_keras_adam(amsgrad=True),
    optadam.scale_by_learning_rate(0.01),
    optadam.add_decayed_weights(0.01, learning_rate=0.01, exclude_from_weight_decay=["b"]),
  )
  adamw_order = optax.chain(  # optax's adamw placement: the same up to rounding
    optadam.clip_by_tensor_norm(1.0),
    optadam.scale_by_keras_adam(amsgrad=True),
    optadam.add_decayed_weights(0.01, exclude_from_weight_decay=["b"]),
    optadam.scale_by_learning_rate(0.01),
  )
  a, _ = run_optadam(keras_order, params0, grads)
  b, _ = run_optadam(
    optadam.adam(
      0.01, amsgrad=True, weight_decay=0.01, clipnorm=1.0, exclude_from_weight_decay=["b"]
    ),
    params0,
    grads,
  )
  c, _ = run_optadam(adamw_order, params0, grads)
  assert worst_relative(a, b) == 0.0
  assert 0.0 < worst_relative(c, b) < 1e-6


def test_a_step_without_any_gradient_is_no_step():
  """All gradients None: the state comes back as it was and the step is not counted (Keras 3
  returns without counting it; Keras 2 raises)."""
  params = {"a": jnp.ones(3), "b": jnp.zeros(2)}
  for kwargs in ({}, dict(use_ema=True, ema_style="keras3", gradient_accumulation_steps=2)):
    tx = optadam.adam(0.1, **kwargs)
    state = tx.init(params)
    updates, new = tx.update({"a": None, "b": None}, state, params)
    assert updates == {"a": None, "b": None}
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), new, state))
