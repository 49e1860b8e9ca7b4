"""`optadam.scale_by_learning_rate`: the step a schedule is called with, and zero-argument
callables called at every step inside a user's jit (docs/semantics.md, learning rate and betas).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from helpers import worst_relative
from reference import make_grads, make_params, reference_adam

SHAPES = {"w": (4, 3), "b": (3,)}


def test_schedule_gets_step_before_increment():
  seen = []
  tx = optadam.scale_by_learning_rate(
    lambda count: (jax.debug.callback(seen.append, count), 1.0)[1]
  )
  state = tx.init({"w": jnp.ones(1)})
  for _ in range(3):
    _, state = tx.update({"w": jnp.ones(1)}, state)
  jax.effects_barrier()
  assert [int(c) for c in seen] == [0, 1, 2]


def test_zero_arg_callable_is_called_every_step_inside_jit():
  current = {"lr": 0.1, "b1": 0.9}
  tx = optadam.adam(learning_rate=lambda: current["lr"], beta_1=lambda: current["b1"])
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state, g):
    traces.append(1)
    updates, state = tx.update(g, state, params)
    return optadam.apply_updates(params, updates), state, updates

  g = {"w": jnp.array([1.0, -2.0])}
  seen = []
  for lr in (0.1, 0.01, 0.5):
    current["lr"] = lr
    params, state, updates = step(params, state, g)
    seen.append(np.asarray(updates["w"]))
  assert len(traces) == 1
  # with a constant gradient the Keras step size is exactly lr * sign(g) (up to epsilon)
  for lr, u in zip((0.1, 0.01, 0.5), seen):
    np.testing.assert_allclose(
      u, -lr * np.array([1.0, -1.0]), rtol=1e-4
    )  # 1 - beta_2**t cancels in f32


def test_zero_arg_callable_matches_reference_schedule():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 10)
  step = {"i": 0}
  lrs = [0.01 * (1 + (i % 3)) for i in range(10)]

  def lr_fn():
    return lrs[step["i"]]

  tx = optadam.adam(learning_rate=lr_fn)
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)
  step_fn = jax.jit(lambda p, s, g: tx.update(g, s, p))
  hist = []
  for i, g in enumerate(grads):
    step["i"] = i
    updates, state = step_fn(params, state, {k: jnp.asarray(v) for k, v in g.items()})
    params = optadam.apply_updates(params, updates)
    hist.append({k: np.asarray(v) for k, v in params.items()})
  ref, _ = reference_adam(params0, grads, learning_rate=lambda i: lrs[i])
  assert worst_relative(hist, ref) < 1e-6


def test_legacy_decay_is_tf_legacy_learning_rate():
  """LegacyDecay: lr(t) / (1 + decay * t) in float32, with t the steps already taken, a
  schedule's value composed with the decay; decay 0 leaves the rate alone."""
  f32 = np.float32
  rule = optadam.LegacyDecay(0.01, decay=0.05)
  for t in (0, 1, 7, 1000):
    want = f32(0.01) / (f32(1) + f32(0.05) * f32(t))
    assert np.float32(rule(jnp.int32(t))) == want
    assert np.float32(jax.jit(rule)(jnp.int32(t))) == pytest.approx(want, rel=3e-7)
  sched = optadam.schedules.ExponentialDecay(0.01, 4, 0.7, staircase=True)
  composed = optadam.LegacyDecay(sched, decay=0.02)
  want = f32(sched(jnp.float32(9))) / (f32(1) + f32(0.02) * f32(9))
  assert np.float32(composed(jnp.int32(9))) == want
  assert np.float32(optadam.LegacyDecay(0.003, 0.0)(jnp.int32(50))) == f32(0.003)
  with pytest.raises(ValueError, match="decay"):
    optadam.LegacyDecay(0.01, decay=-0.1)
  with pytest.raises(TypeError, match="zero-argument"):
    optadam.LegacyDecay(lambda: 0.01)
