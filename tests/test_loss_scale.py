"""`optadam.loss_scale_optimizer`: dynamic loss scaling, against Keras 3 and TF 2.15 (Keras 2)."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from helpers import run_optadam, worst_relative, worst_ulps

SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,)}
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _raw_grads(steps: int, seed: int, dtype=np.float32) -> list[dict[str, np.ndarray]]:
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(steps):
    mag = 10.0 ** rng.uniform(-3, 0)
    out.append({k: (rng.normal(size=s) * mag) for k, s in SHAPES.items()})
  return out


def _params0(dtype=np.float32) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(0)
  return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def _scaled(raw: dict[str, np.ndarray], scale: float, bad: Optional[str], dtype) -> dict:
  """The gradient of the scaled loss: raw * scale in float64, cast; `bad` poisons one element."""
  g = {k: (v * np.float64(scale)).astype(dtype) for k, v in raw.items()}
  if bad:
    g["dense/kernel"] = g["dense/kernel"].copy()
    g["dense/kernel"][1, 2] = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}[bad]
  return g


def run_keras3_lso(
  adam_kwargs: dict[str, Any],
  lso_kwargs: dict[str, Any],
  raw: Sequence[dict[str, np.ndarray]],
  bad: dict[int, str],
  dtype=np.float32,
):
  """Keras 3's LossScaleOptimizer(Adam) via `stateless_apply` (what Keras's JAX trainer calls).

  Returns the gradients fed (scaled by Keras's own scale at each step), the parameters,
  scales, counters and inner iterations after every step. (The stateful `apply` of Keras 3's
  LossScaleOptimizer fails on the JAX backend with an UnexpectedTracerError.)
  """
  import keras  # pylint: disable=import-outside-toplevel

  variables = [keras.Variable(v, name=k.replace("/", "_")) for k, v in _params0(dtype).items()]
  opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(**adam_kwargs), **lso_kwargs)
  opt.build(variables)
  paths = [v.path for v in opt.variables]
  i_scale = paths.index(opt.dynamic_scale.path)
  i_counter = paths.index(opt.step_counter.path)
  i_iter = paths.index(opt.inner_optimizer.iterations.path)
  ov = [v.value for v in opt.variables]
  tv = [v.value for v in variables]
  apply = jax.jit(opt.stateless_apply)
  fed, hist = [], []
  for s, r in enumerate(raw):
    g = _scaled(r, float(ov[i_scale]), bad.get(s), dtype)
    fed.append(g)
    tv, ov = apply(ov, [jnp.asarray(g[k]) for k in SHAPES], tv)
    hist.append(
      dict(
        params={k: np.asarray(t) for k, t in zip(SHAPES, tv)},
        scale=float(ov[i_scale]),
        counter=int(ov[i_counter]),
        iterations=int(ov[i_iter]),
      )
    )
  return fed, hist, opt, ov


def run_wrapper(tx, params0, fed, donate=True):
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  hist = []
  for g in fed:
    params, state = step(params, state, {k: jnp.asarray(v) for k, v in g.items()})
    hist.append(
      dict(
        params={k: np.asarray(v) for k, v in params.items()},
        scale=float(state.scale),
        counter=int(state.good_steps),
        iterations=int(jax.tree.leaves(_adam_count(state))[0]),
      )
    )
  return hist, state


def _adam_count(state):
  is_adam = lambda x: isinstance(x, optadam.ScaleByKerasAdamState)
  return [x.count for x in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(x)]


def _nan_safe(hist):
  return [{k: np.nan_to_num(v, nan=7.0) for k, v in h["params"].items()} for h in hist]


K3_CASES = {
  "growth and shrink": (
    dict(learning_rate=0.01),
    dict(initial_scale=2.0**8, dynamic_growth_steps=3),
    40,
    {5: "inf", 6: "nan", 13: "-inf", 30: "nan"},
  ),
  "long run of bad steps (no floor)": (
    dict(learning_rate=0.01),
    dict(initial_scale=4.0, dynamic_growth_steps=2),
    30,
    {s: "nan" for s in range(3, 15)},
  ),
  "scale reaches 0, then NaN": (
    dict(learning_rate=0.01),
    dict(initial_scale=2.0**-140, dynamic_growth_steps=5),
    14,
    {s: "inf" for s in range(0, 10)},
  ),
  "doubling to inf, then stuck": (
    dict(learning_rate=0.01, epsilon=1e-20),
    dict(initial_scale=2.0**126, dynamic_growth_steps=1),
    6,
    {},
  ),
  "non-power-of-two scale": (
    dict(learning_rate=0.01),
    dict(initial_scale=1000.0, dynamic_growth_steps=4),
    20,
    {7: "nan"},
  ),
  "ema + amsgrad + clipnorm": (
    dict(
      learning_rate=0.01,
      amsgrad=True,
      clipnorm=0.5,
      use_ema=True,
      ema_momentum=0.9,
      ema_overwrite_frequency=3,
    ),
    dict(initial_scale=2.0**10, dynamic_growth_steps=4),
    30,
    {2: "inf", 3: "inf", 9: "nan", 16: "inf"},
  ),
  "weight decay + global_clipnorm": (
    dict(learning_rate=0.01, weight_decay=0.02, global_clipnorm=1.0),
    dict(initial_scale=2.0**10, dynamic_growth_steps=4),
    24,
    {4: "nan", 12: "inf"},
  ),
}


@pytest.mark.parametrize("name", list(K3_CASES))
def test_matches_keras3_stateless_apply(name, report):
  adam_kwargs, lso_kwargs, steps, bad = K3_CASES[name]
  raw = _raw_grads(steps, seed=len(name))
  if "inf, then" in name:  # tiny raw gradients, so that grads * 2**127 stay finite
    raw = [{k: v * 1e-15 for k, v in r.items()} for r in raw]
  fed, theirs, _, _ = run_keras3_lso(adam_kwargs, lso_kwargs, raw, bad)
  style = {"ema_style": "keras3"} if adam_kwargs.get("use_ema") else {}
  tx = optadam.loss_scale_optimizer(
    optadam.adam(**adam_kwargs, **style), **lso_kwargs, style="keras3"
  )
  ours, _ = run_wrapper(tx, _params0(), fed)
  for s, (a, b) in enumerate(zip(ours, theirs)):
    assert (a["scale"], a["counter"], a["iterations"]) == (
      b["scale"],
      b["counter"],
      b["iterations"],
    ), f"step {s}: ours {a}, keras 3 {b}"
    for k in SHAPES:
      np.testing.assert_array_equal(np.isnan(a["params"][k]), np.isnan(b["params"][k]))
  err = worst_relative(_nan_safe(ours), _nan_safe(theirs))
  ulps = worst_ulps(_nan_safe(ours), _nan_safe(theirs))
  report(f"keras3 LSO / {name}", f"max rel err {err:.2e}  ({ulps:.1f} ulp at tensor scale)")
  assert err < 1e-6, (err, ulps)
  if "0, then NaN" in name:
    assert theirs[9]["scale"] == 0.0 and np.isnan(theirs[-1]["params"]["dense/bias"]).all()
  if "stuck" in name:
    assert [h["scale"] for h in theirs] == [2.0**127] + [np.inf] * 5
    assert [h["iterations"] for h in theirs] == [1, 2, 2, 2, 2, 2]


def test_keras3_float16_parameters():
  """float16 variables and gradients. Keras 3 divides in float32 and its Adam casts the result to
  float16; optadam's float16 Adam is not Keras 3's (SPEC §2), so the wrapper is compared with the
  plain optadam.adam fed Keras 3's unscaled gradients on the finite steps, and the scale, counter
  and iterations with Keras 3 itself."""
  adam_kwargs = dict(learning_rate=0.01)
  lso_kwargs = dict(initial_scale=1000.0, dynamic_growth_steps=3)
  raw = [{k: v * 1e-2 for k, v in r.items()} for r in _raw_grads(20, seed=3)]
  bad = {4: "inf", 9: "nan"}
  fed, theirs, _, _ = run_keras3_lso(adam_kwargs, lso_kwargs, raw, bad, dtype=np.float16)
  tx = optadam.loss_scale_optimizer(optadam.adam(**adam_kwargs), **lso_kwargs, style="keras3")
  ours, _ = run_wrapper(tx, _params0(np.float16), fed)
  assert [(h["scale"], h["counter"], h["iterations"]) for h in ours] == [
    (h["scale"], h["counter"], h["iterations"]) for h in theirs
  ]
  scales = [1000.0] + [h["scale"] for h in theirs[:-1]]
  unscaled = [
    {k: jnp.asarray(v.astype(np.float32) / np.float32(sc)) for k, v in g.items()}
    for s, (g, sc) in enumerate(zip(fed, scales))
    if s not in bad
  ]
  ref, _ = run_optadam(optadam.adam(**adam_kwargs), _params0(np.float16), unscaled)
  finite_steps = [s for s in range(len(fed)) if s not in bad]
  for r, s in zip(ref, finite_steps):
    for k in SHAPES:
      np.testing.assert_array_equal(ours[s]["params"][k], r[k])
  for s in bad:  # skipped steps: the parameters did not move
    for k in SHAPES:
      np.testing.assert_array_equal(ours[s]["params"][k], ours[s - 1]["params"][k])
  # keras2 style rounds differently here: g * float16(1/1000) instead of float32(g) / 1000
  k2, _ = run_wrapper(
    optadam.loss_scale_optimizer(optadam.adam(**adam_kwargs), **lso_kwargs),
    _params0(np.float16),
    fed,
  )
  assert any(
    not np.array_equal(a["params"][k], b["params"][k]) for a, b in zip(k2, ours) for k in SHAPES
  )
