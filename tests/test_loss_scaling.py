"""`optadam.loss_scale_optimizer`: dynamic loss scaling, against Keras 3 and TF 2.15 (Keras 2)."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Optional
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from helpers import checkpoint_keys, run_optadam, worst_relative, worst_ulps

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
  snapshot_at: Optional[int] = None,
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
  i_iter = paths.index(opt.inner_optimizer._iterations.path)  # raw calls  # pylint: disable=protected-access
  ov = [v.value for v in opt.variables]
  tv = [v.value for v in variables]
  apply = jax.jit(opt.stateless_apply)
  fed, hist = [], []
  snapshot = None
  for s, r in enumerate(raw):
    if s == snapshot_at:
      snapshot = [np.asarray(v) for v in ov]
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
  return fed, hist, opt, ov if snapshot_at is None else snapshot


def run_wrapper(tx, params0, fed, donate=True):
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  hist = []
  for g in fed:
    g = {k: None if v is None else jnp.asarray(v) for k, v in g.items()}
    params, state = step(params, state, g)
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
  """Keras's `iterations`: the raw call count with gradient accumulation, else Adam's count."""
  is_acc = lambda x: isinstance(x, optadam.GradientAccumulationState)
  acc = [x.count for x in jax.tree.leaves(state, is_leaf=is_acc) if is_acc(x)]
  if acc:
    return acc
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
    {s: "inf" for s in range(10)},
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
  "gradient accumulation inside (k=2)": (
    dict(learning_rate=0.01, gradient_accumulation_steps=2),
    dict(initial_scale=2.0**8, dynamic_growth_steps=3),
    24,
    {3: "nan", 4: "inf", 11: "nan"},
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
  float16 (so does the wrapper: its updates are float16); optadam's float16 Adam is not Keras 3's
  (docs/semantics.md, one step), so the wrapper is compared with the plain optadam.adam fed
  Keras 3's unscaled gradients, cast to float16, on the finite steps, and the scale, counter and
  iterations with Keras 3 itself."""
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
    {
      k: jnp.asarray((v.astype(np.float32) / np.float32(sc)).astype(np.float16))
      for k, v in g.items()
    }
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
  # keras2 style rounds differently here: g * float16(1/1000) instead of float16(float32(g) / 1000)
  k2, _ = run_wrapper(
    optadam.loss_scale_optimizer(optadam.adam(**adam_kwargs), **lso_kwargs),
    _params0(np.float16),
    fed,
  )
  assert any(
    not np.array_equal(a["params"][k], b["params"][k]) for a, b in zip(k2, ours) for k in SHAPES
  )


# --- TF 2.15 goldens (tools/make_loss_scale_golden.py) ----------------------------------------

GOLDENS = sorted(
  os.path.basename(p)[len("loss_scale_") : -5]
  for p in glob.glob(os.path.join(GOLDEN, "loss_scale_*.json"))
)
DTYPES = {"float32": np.float32, "float16": np.float16}


class Golden:
  """One loss-scale scenario made by the real TF 2.15 LossScaleOptimizer."""

  def __init__(self, name: str):
    with open(os.path.join(GOLDEN, f"loss_scale_{name}.json")) as f:
      self.meta = json.load(f)
    self.z = dict(np.load(os.path.join(GOLDEN, f"loss_scale_{name}.npz")))
    self.names = self.meta["param_names"]
    self.dtype = DTYPES[self.meta["param_dtypes"][0]]
    self.steps = self.meta["steps"]

  def params(self, key: str = "init") -> dict[str, np.ndarray]:
    fmt = "param_{i}_init" if key == "init" else "param_{key}_{i}"
    return {
      n: self.z[fmt.format(i=i, key=key)].astype(self.dtype) for i, n in enumerate(self.names)
    }

  def grads(self, s: int) -> dict[str, Optional[np.ndarray]]:
    return {
      n: self.z[f"grad_{s}_{i}"].astype(self.dtype) if f"grad_{s}_{i}" in self.z else None
      for i, n in enumerate(self.names)
    }

  def expected(self, s: int) -> dict[str, Any]:
    return dict(
      params={n: self.z[f"param_{s}_{i}"] for i, n in enumerate(self.names)},
      scale=float(self.z[f"scale_{s}"]),
      counter=int(self.z[f"counter_{s}"]),
      iterations=int(self.z[f"iterations_{s}"]),
    )

  def adam_kwargs(self) -> dict[str, Any]:
    kwargs = dict(self.meta["adam_kwargs"])
    if isinstance(kwargs.get("learning_rate"), dict):
      kwargs["learning_rate"] = optadam.schedules.deserialize(kwargs["learning_rate"])
    return kwargs

  def tx(self):
    return optadam.loss_scale_optimizer(
      optadam.adam(**self.adam_kwargs()),
      self.meta["initial_scale"],
      self.meta["dynamic_growth_steps"],
    )


def _counters(hist):
  return [(h["scale"], h["counter"], h["iterations"]) for h in hist]


@pytest.mark.parametrize("name", [n for n in GOLDENS if n != "float16"])
def test_trajectory_matches_tf215(name, report):
  g = Golden(name)
  ours, state = run_wrapper(g.tx(), g.params(), [g.grads(s) for s in range(g.steps)])
  theirs = [g.expected(s) for s in range(g.steps)]
  assert _counters(ours) == _counters(theirs)
  err = worst_relative([h["params"] for h in ours], [h["params"] for h in theirs])
  ulps = worst_ulps([h["params"] for h in ours], [h["params"] for h in theirs])
  report(f"tf2.15 LSO golden / {name}", f"max rel err {err:.2e}  ({ulps:.1f} ulp at tensor scale)")
  assert err <= 1e-6, (err, ulps)
  for s in map(int, g.meta["bad_steps"]):  # skipped: the parameters did not move
    prev = g.params() if s == 0 else ours[s - 1]["params"]
    for k in g.names:
      np.testing.assert_array_equal(ours[s]["params"][k], prev[k])
  if g.meta["adam_kwargs"].get("use_ema"):
    final = optadam.finalize_variable_values(ours[-1]["params"], state)
    expected = {n: g.z[f"final_{i}"] for i, n in enumerate(g.names)}
    assert worst_relative([{k: np.asarray(v) for k, v in final.items()}], [expected]) <= 1e-6


def test_float16_golden_reciprocal_underflow():
  """TF 2.15 with float16 gradients: above a scale of 2**24, Keras 2's reciprocal cast to
  float16 is 0, so finite steps apply zero gradients. optadam's float16 Adam is not Keras 2's
  (docs/semantics.md, one step), so the wrapper is compared with plain optadam.adam fed
  g * float16(1/scale)."""
  g = Golden("float16")
  fed = [g.grads(s) for s in range(g.steps)]
  ours, _ = run_wrapper(g.tx(), g.params(), fed)
  theirs = [g.expected(s) for s in range(g.steps)]
  assert _counters(ours) == _counters(theirs)
  scales = [float(g.z["scale_init"])] + [h["scale"] for h in theirs[:-1]]
  assert max(scales) == 2.0**36 and min(scales) == 2.0**22  # overflowing float16 sets the ceiling
  finite = [s for s in range(g.steps) if all(np.isfinite(v).all() for v in fed[s].values())]
  assert len(finite) < g.steps
  recip = [np.float16(np.float32(1.0) / np.float32(sc)) for sc in scales]
  assert recip[finite[-1]] == 0.0  # the float16 reciprocal of 2**35 underflows
  unscaled = [{k: v * recip[s] for k, v in fed[s].items()} for s in finite]
  ref, _ = run_optadam(optadam.adam(**g.adam_kwargs()), g.params(), unscaled)
  for r, s in zip(ref, finite):
    for k in g.names:
      np.testing.assert_array_equal(ours[s]["params"][k], r[k])


def test_keras3_style_differs_from_tf215_where_keras_does():
  """Each rule the two styles disagree on, shown on a TF 2.15 golden."""

  def run(name, style):
    g = Golden(name)
    tx = optadam.loss_scale_optimizer(
      optadam.adam(**g.adam_kwargs()),
      g.meta["initial_scale"],
      g.meta["dynamic_growth_steps"],
      style=style,
    )
    return run_wrapper(tx, g.params(), [g.grads(s) for s in range(g.steps)])[0]

  # unscaling: g * float32(1/1000) (Keras 2) vs g / 1000 (Keras 3) round differently (steps
  # before the first bad one, step 7, where the iterations part ways)
  k2, k3 = run("non_power_of_two", "keras2"), run("non_power_of_two", "keras3")
  assert [c[:2] for c in _counters(k2)] == [c[:2] for c in _counters(k3)]
  assert any(
    not np.array_equal(a["params"][k], b["params"][k])
    for a, b in zip(k2[:7], k3[:7])
    for k in SHAPES
  )
  # floor: Keras 2 stops halving at 1, Keras 3 goes on (12 bad steps from 8: 8 / 2**12)
  assert min(h["scale"] for h in run("floor", "keras2")) == 1.0
  assert min(h["scale"] for h in run("floor", "keras3")) == 2.0**-9
  # a doubled scale: Keras 2 keeps it only if finite, Keras 3 takes inf (then skips forever)
  assert run("growth_cap", "keras2")[-1]["scale"] == 2.0**127
  assert [h["scale"] for h in run("growth_cap", "keras3")] == [2.0**127] + [np.inf] * 5
  # skipped steps: Keras 2 advances the inner iterations, Keras 3 does not (4 bad steps)
  name = "ema_amsgrad_clipnorm_schedule"
  assert run(name, "keras2")[-1]["iterations"] == 30
  assert run(name, "keras3")[-1]["iterations"] == 26


# --- API: validation, state, leaves -------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,error,word",
  [
    (dict(initial_scale=0.0), ValueError, "initial_scale"),
    (dict(initial_scale=-2.0), ValueError, "initial_scale"),
    (dict(initial_scale=float("inf")), ValueError, "initial_scale"),
    (dict(initial_scale=float("nan")), ValueError, "initial_scale"),
    (dict(initial_scale=1e39), ValueError, "float32"),
    (dict(initial_scale="big"), TypeError, "initial_scale"),
    (dict(initial_scale=True), TypeError, "initial_scale"),
    (dict(dynamic_growth_steps=0), ValueError, "dynamic_growth_steps"),
    (dict(dynamic_growth_steps=2.5), ValueError, "dynamic_growth_steps"),
    (dict(dynamic_growth_steps=True), ValueError, "dynamic_growth_steps"),
    (dict(style="keras4"), ValueError, "keras2"),
  ],
)
def test_bad_arguments(kwargs, error, word):
  with pytest.raises(error, match=word):
    optadam.loss_scale_optimizer(optadam.adam(), **kwargs)


def test_bad_inner():
  with pytest.raises(TypeError, match="GradientTransformation"):
    optadam.loss_scale_optimizer(0.01)
  with pytest.raises(TypeError, match="cannot wrap another"):
    optadam.loss_scale_optimizer(optadam.loss_scale_optimizer(optadam.adam()))


def _grads(value=1.0, bad=None):
  g = {k: jnp.full(s, value, jnp.float32) for k, s in SHAPES.items()}
  if bad is not None:
    g["dense/bias"] = g["dense/bias"].at[1].set(bad)
  return g


def test_state_and_skipped_step_is_exactly_zero():
  tx = optadam.loss_scale_optimizer(optadam.adam(0.1), 64.0, 2)
  params = {k: jnp.asarray(v) for k, v in _params0().items()}
  state = tx.init(params)
  assert isinstance(state, optadam.LossScaleState) and isinstance(state.inner, optadam.AdamState)
  assert state.scale.dtype == jnp.float32 and state.good_steps.dtype == jnp.int32
  updates, state = jax.jit(tx.update)(_grads(64.0), state, params)
  assert float(state.scale) == 64.0 and int(state.good_steps) == 1
  assert all(np.abs(np.asarray(u)).max() > 0 for u in jax.tree.leaves(updates))
  before = state
  updates, state = jax.jit(tx.update)(_grads(64.0, bad=-np.inf), state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, np.zeros_like(u))
    assert not np.signbit(np.asarray(u)).any()  # +0.0: x + u is x, bit for bit
  assert float(state.scale) == 32.0 and int(state.good_steps) == 0
  np.testing.assert_array_equal(
    state.inner.adam.mu["dense/kernel"], before.inner.adam.mu["dense/kernel"]
  )
  assert int(state.inner.adam.count) == 2  # keras2: the skipped step still counts


def test_none_leaves_are_ignored_by_the_check():
  tx = optadam.loss_scale_optimizer(optadam.adam(0.1), 8.0, 100)
  params = {k: jnp.asarray(v) for k, v in _params0().items()}
  state = tx.init(params)
  g = {"dense/kernel": jnp.full((4, 3), 8.0), "dense/bias": None}
  updates, state = tx.update(g, state, params)
  assert updates["dense/bias"] is None and int(state.good_steps) == 1
  g = {"dense/kernel": jnp.full((4, 3), jnp.nan), "dense/bias": None}
  updates, state = tx.update(g, state, params)
  assert float(state.scale) == 4.0 and not np.asarray(updates["dense/kernel"]).any()
  updates, state = tx.update({"dense/kernel": None, "dense/bias": None}, state, params)
  assert updates == {"dense/kernel": None, "dense/bias": None} and int(state.good_steps) == 1


@pytest.mark.parametrize("style", ["keras2", "keras3"])
def test_sparse_leaves_equal_their_dense_gradient(style):
  params = {"emb": jnp.asarray(np.random.RandomState(1).normal(size=(6, 2)), jnp.float32)}
  tx = optadam.loss_scale_optimizer(optadam.adam(0.1), 1000.0, 2, style=style)
  values = jnp.asarray([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]]) * 1000.0
  idx = jnp.asarray([4, 1, 4])
  sparse_g = {"emb": optadam.IndexedSlices(values, idx, (6, 2))}
  dense_g = {"emb": jnp.zeros((6, 2)).at[idx].add(values)}
  (us, ss), (ud, sd) = (jax.jit(tx.update)(g, tx.init(params), params) for g in (sparse_g, dense_g))
  np.testing.assert_allclose(us["emb"], ud["emb"], rtol=2e-6)
  assert int(ss.good_steps) == int(sd.good_steps) == 1
  bad = {"emb": optadam.IndexedSlices(values.at[2, 1].set(jnp.inf), idx, (6, 2))}
  ub, sb = jax.jit(tx.update)(bad, tx.init(params), params)
  assert not np.asarray(ub["emb"]).any() and float(sb.scale) == 500.0


# --- optax wrappers, jit, Orbax ---------------------------------------------------------------


def _bad_steps_grads(n, bad, scale_fn=lambda s: 2.0**8):
  raw = _raw_grads(n, seed=11)
  return [_scaled(r, scale_fn(s), bad.get(s), np.float32) for s, r in enumerate(raw)]


def test_no_recompilation_across_good_and_bad_steps():
  tx = optadam.loss_scale_optimizer(optadam.adam(0.01, use_ema=True), 2.0**8, 2)
  traces = []

  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  params = {k: jnp.asarray(v) for k, v in _params0().items()}
  state = tx.init(params)
  for g in _bad_steps_grads(8, {2: "nan", 3: "inf"}):
    params, state = step(params, state, {k: jnp.asarray(v) for k, v in g.items()})
  assert len(traces) == 1 and float(state.scale) == 2.0**9


@pytest.mark.parametrize("style", ["keras2", "keras3"])
def test_inject_hyperparams_inner_equals_plain(style):
  bad = {3: "nan", 4: "inf"}
  fed = _bad_steps_grads(12, bad)
  plain = optadam.loss_scale_optimizer(optadam.adam(0.01), 2.0**8, 2, style=style)
  injected = optadam.loss_scale_optimizer(
    optax.inject_hyperparams(optadam.adam)(learning_rate=0.01), 2.0**8, 2, style=style
  )
  a, _ = run_wrapper(plain, _params0(), fed)
  b, sb = run_wrapper(injected, _params0(), fed)
  for x, y in zip(a, b):
    assert (x["scale"], x["counter"], x["iterations"]) == (
      y["scale"],
      y["counter"],
      y["iterations"],
    )
    for k in SHAPES:
      np.testing.assert_allclose(x["params"][k], y["params"][k], rtol=1e-6, atol=1e-7)
  # keras2 advances inject_hyperparams' own count on skipped steps too (schedules see it)
  assert int(sb.inner.count) == (12 if style == "keras2" else 10)
  sb.inner.hyperparams["learning_rate"] = jnp.asarray(0.0)  # changed between jitted steps
  params = {k: jnp.asarray(v[-1]) for k, v in {k: [b[-1]["params"][k]] for k in SHAPES}.items()}
  updates, _ = jax.jit(injected.update)({k: jnp.asarray(v) for k, v in fed[0].items()}, sb, params)
  assert all(not np.asarray(u).any() for u in jax.tree.leaves(updates))


FAST_CASES = {
  "defaults": dict(),
  "amsgrad + ema overwrite + clipnorm + masked decay": dict(
    amsgrad=True,
    use_ema=True,
    ema_overwrite_frequency=3,
    clipnorm=0.5,
    weight_decay=0.1,
    exclude_from_weight_decay=["bias"],
  ),
  "ema keras3 style + global_clipnorm": dict(use_ema=True, ema_style="keras3", global_clipnorm=1.0),
  "gradient accumulation (k=2)": dict(gradient_accumulation_steps=2),
  "grouped small leaves": dict(group_small_leaves=64, amsgrad=True, use_ema=True),
  "jit_compile=False + schedule": dict(
    jit_compile=False, learning_rate=optadam.schedules.ExponentialDecay(0.01, 3, 0.5)
  ),
}


@pytest.mark.parametrize("style", ["keras2", "keras3"])
@pytest.mark.parametrize("case", list(FAST_CASES))
def test_straight_line_path_equals_the_cond_path(case, style):
  """Around optadam.adam the wrapper runs no cond (each transform keeps its own state on a
  skipped step); it gives the cond path's trajectory, and exactly the old state when skipped."""
  kwargs = {"learning_rate": 0.01, **FAST_CASES[case]}
  bad = {2: "nan", 3: "inf", 4: "-inf", 9: "nan"}
  fed = _bad_steps_grads(12, bad)
  inner = optadam.adam(**kwargs)
  assert inner.skippable_update is not None
  hidden = optax.GradientTransformationExtraArgs(inner.init, inner.update)  # no fast path
  fast = optadam.loss_scale_optimizer(inner, 2.0**8, 3, style=style)
  slow = optadam.loss_scale_optimizer(hidden, 2.0**8, 3, style=style)
  a, sa = run_wrapper(fast, _params0(), fed)
  b, sb = run_wrapper(slow, _params0(), fed)
  for x, y in zip(a, b):
    assert (x["scale"], x["counter"], x["iterations"]) == (
      y["scale"],
      y["counter"],
      y["iterations"],
    )
  assert worst_ulps([h["params"] for h in a], [h["params"] for h in b]) <= 4
  for step in bad:  # a skipped step does not move the parameters, bit for bit
    for k in SHAPES:
      np.testing.assert_array_equal(a[step]["params"][k], a[step - 1]["params"][k])
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    assert x.dtype == y.dtype and x.shape == y.shape
    if jnp.issubdtype(x.dtype, jnp.integer):
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=3e-6, atol=1e-7)


def test_skipped_step_keeps_every_state_array_exactly():
  """A skipped step leaves every parameter-sized array of the inner state bit for bit."""
  inner = optadam.adam(0.01, amsgrad=True, use_ema=True, ema_overwrite_frequency=2)
  for style in ("keras2", "keras3"):
    tx = optadam.loss_scale_optimizer(inner, 2.0**4, 100, style=style)
    params = {k: jnp.asarray(v) for k, v in _params0().items()}
    state = tx.init(params)
    step = jax.jit(tx.update)
    _, state = step(_grads(16.0), state, params)
    updates, after = step(_grads(16.0, bad=np.nan), state, params)
    assert not any(np.asarray(u).any() for u in jax.tree.leaves(updates))
    for x, y in zip(jax.tree.leaves(state.inner), jax.tree.leaves(after.inner)):
      if np.ndim(x):
        np.testing.assert_array_equal(x, y)
    counts = [int(x) for x in jax.tree.leaves(after.inner) if jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts == [2 if style == "keras2" else 1] * len(counts)


@pytest.mark.parametrize("style", ["keras2", "keras3"])
def test_step_around_adam_has_no_conditional_nor_copies(style):
  """The wrapper's step is Adam's kernels plus one finiteness reduction: no ``conditional``
  copying the state in and out, and no copy of a parameter-sized buffer (issue 14's cost)."""
  # (large enough: XLA turns a cond over small arrays into selects by itself)
  params = {"a": jnp.zeros((1024, 1024)), "b": jnp.zeros(1000)}
  tx = optadam.loss_scale_optimizer(optadam.adam(1e-3), style=style)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  state = tx.init(params)
  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()
  entry = hlo[hlo.index("ENTRY") :]
  copies = re.findall(r"= f32\[(?:1024,1024|1000)\]\S* copy\(", entry)
  assert not copies, "a parameter-sized buffer is copied"
  conditionals = re.findall(r"= (.*) conditional\(", entry)
  # keras2 checks the unscaled gradients only when the scale is below 1: a scalar-output cond
  assert conditionals == (["(pred[])"] if style == "keras2" else [])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "complex64"])
@pytest.mark.parametrize("shape", [(2**17,), (64, 2048), (3, 3, 64, 512), (300, 301)])
def test_finiteness_check_of_large_leaves(shape, dtype):
  """Large leaves are checked by a matrix-vector product with zeros on CPU (a reduction to a
  scalar runs on one thread): every position of an inf or a NaN is still seen, large finite
  values are not mistaken for overflow, and the decision is one for all leaves."""
  from optadam import _finite

  big = jnp.full(shape, jnp.finfo(jnp.dtype(dtype)).max / 2, dtype)
  check = jax.jit(lambda leaves: _finite.all_finite(leaves))
  assert bool(check([big, None, jnp.ones(3)]))
  assert bool(check([jnp.zeros((0,) + shape[1:], dtype), big]))
  n = int(np.prod(shape))
  for flat in (0, 1, n // 2 + 7, n - 1):
    index = np.unravel_index(flat, shape)
    for bad in (np.inf, -np.inf, np.nan):
      assert not bool(check([big.at[index].set(bad), jnp.ones(3)])), (flat, bad)
      assert not bool(check([jnp.ones(3), big.at[index].set(bad)])), (flat, bad)
  if dtype == "complex64":
    assert not bool(check([big.at[(0,) * len(shape)].set(1j * np.inf)]))


def test_multisteps_around_the_wrapper():
  """optax.MultiSteps(lso, k): the wrapper sees the mean of k scaled micro-gradients and the
  scale is found inside MultiSteps's state. (Finite gradients only: optax's MultiSteps keeps a
  NaN in its accumulator forever, `(1 - emit) * nan`; put MultiSteps inside the wrapper when
  micro-steps may overflow, next test.)"""
  k = 2
  fed = _bad_steps_grads(12, {})
  lso = lambda: optadam.loss_scale_optimizer(optadam.adam(0.01), 2.0**8, 2)
  multi, state = run_wrapper_plain(optax.MultiSteps(lso(), every_k_schedule=k), _params0(), fed)
  means = [
    {key: fed[i][key] + (fed[i + 1][key] - fed[i][key]) / 2 for key in SHAPES}
    for i in range(0, len(fed), k)
  ]
  ref, _ = run_wrapper(lso(), _params0(), means)
  for i in range(k - 1, len(fed), k):
    for key in SHAPES:
      np.testing.assert_allclose(multi[i][key], ref[i // k]["params"][key], rtol=1e-6, atol=1e-7)
  assert float(optadam.loss_scale(state)) == ref[-1]["scale"] == 2.0**11
  assert int(state.inner_opt_state.good_steps) == ref[-1]["counter"]


def test_multisteps_inside_the_wrapper_drops_bad_micro_steps():
  """lso(MultiSteps(adam, k), style="keras3"): a non-finite micro-step is skipped before it
  reaches the accumulator (Keras 3's LossScaleOptimizer(Adam(gradient_accumulation_steps=k)))."""
  k, bad = 2, {3: "nan", 4: "inf"}
  fed = _bad_steps_grads(12, bad)
  inner = lambda: optax.MultiSteps(optadam.adam(0.01), every_k_schedule=k)
  tx = optadam.loss_scale_optimizer(inner(), 2.0**8, 100, style="keras3")
  ours, state = run_wrapper_plain(tx, _params0(), fed)
  good = [s for s in range(12) if s not in bad]
  ref, _ = run_wrapper_plain(
    inner(),
    _params0(),
    [{key: fed[s][key] / (2.0**8 if s < 3 else 2.0**6) for key in SHAPES} for s in good],
  )
  for r, s in zip(ref, good):
    for key in SHAPES:
      np.testing.assert_allclose(ours[s][key], r[key], rtol=1e-6, atol=1e-7)
  assert float(optadam.loss_scale(state)) == 2.0**6 and int(state.inner.gradient_step) == 5


def run_wrapper_plain(tx, params0, fed):
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  hist = []
  for g in fed:
    params, state = step(params, state, {k: jnp.asarray(v) for k, v in g.items()})
    hist.append({k: np.asarray(v) for k, v in params.items()})
  return hist, state


def test_orbax_resume_is_bitwise(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  tx = optadam.loss_scale_optimizer(
    optadam.adam(0.01, amsgrad=True, use_ema=True, ema_overwrite_frequency=3), 2.0**8, 2
  )
  fed = _bad_steps_grads(10, {2: "nan", 6: "inf"})

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  params = {k: jnp.asarray(v) for k, v in _params0().items()}
  state = tx.init(params)
  path = str(tmp_path / "ckpt")
  uninterrupted = []
  for i, g in enumerate(fed):
    if i == 4:
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"params": params, "opt_state": state})
    params, state = step(params, state, {k: jnp.asarray(v) for k, v in g.items()})
    uninterrupted.append((params, state))
  with ocp.StandardCheckpointer() as ckptr:
    keys = checkpoint_keys(ckptr, path)
    assert {"opt_state/scale", "opt_state/good_steps", "opt_state/inner/adam/count"} <= keys
    fresh = {"params": params, "opt_state": tx.init(params)}
    restored = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh))
  params, state = restored["params"], restored["opt_state"]
  assert isinstance(state, optadam.LossScaleState)
  assert float(state.scale) == float(uninterrupted[3][1].scale)
  for i, g in enumerate(fed[4:]):
    params, state = step(params, state, {k: jnp.asarray(v) for k, v in g.items()})
    ref_params, ref_state = uninterrupted[4 + i]
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ref_params, ref_state))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_decision_is_global(report):
  """8 fake CPU devices (subprocess): an inf on one device's shard skips the step everywhere,
  under jit with sharded arrays and (with axis_name) inside shard_map; state_shardings covers the
  wrapper (scale and counter replicated, moments sharded like their parameters)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), env.get("PYTHONPATH", "")])
  proc = subprocess.run(
    [sys.executable, os.path.join(here, "support", "loss_scale_worker.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(lines[0][len("RESULT ") :])
  assert result["jit_sharded"]["scales"] == [256.0, 512.0, 256.0, 256.0, 512.0, 256.0, 256.0, 512.0]
  assert result["shard_map axis_name=d"]["moved_on_bad_step"] is False
  report(
    "loss scale / 8-device jit vs 1 device",
    f"max abs {result['jit_sharded']['worst_abs_vs_single_device']:.1e}",
  )


# --- Keras configs and state in ------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDENS)
def test_tf215_configs_round_trip(name):
  g = Golden(name)
  for cfg in (g.meta["config"], g.meta["serialized"]):
    tx = optadam.from_keras_config(cfg)
    assert isinstance(tx, optadam.LossScaleOptimizer) and tx.style == "keras2"
    assert optadam.get_config(tx) == g.meta["config"]
    assert json.loads(json.dumps(optadam.get_config(tx))) == g.meta["config"]


def test_tf215_config_builds_the_same_trajectory():
  g = Golden("ema_amsgrad_clipnorm_schedule")
  ours, _ = run_wrapper(
    optadam.from_keras_config(g.meta["serialized"]),
    g.params(),
    [g.grads(s) for s in range(g.steps)],
  )
  theirs = [g.expected(s) for s in range(g.steps)]
  assert _counters(ours) == _counters(theirs)
  assert worst_relative([h["params"] for h in ours], [h["params"] for h in theirs]) <= 1e-6


def test_keras3_config_round_trip():
  import keras  # pylint: disable=import-outside-toplevel

  k3 = keras.optimizers.LossScaleOptimizer(
    keras.optimizers.Adam(learning_rate=0.01, amsgrad=True, use_ema=True, loss_scale_factor=4.0),
    initial_scale=1024.0,
    dynamic_growth_steps=7,
  )
  cfg = json.loads(json.dumps(k3.get_config()))
  tx = optadam.from_keras_config(cfg)
  assert tx.style == "keras3" and tx.dynamic_growth_steps == 7 and tx.initial_scale == 1024.0
  assert tx.inner.keras_args["loss_scale_factor"] is None  # Keras 3 turns it off when wrapping
  assert optadam.get_config(tx, keras_version=3) == cfg
  ser = json.loads(json.dumps(keras.optimizers.serialize(k3)))
  assert optadam.get_config(optadam.from_keras_config(ser), keras_version=3) == cfg
  # and Keras 3 reads optadam's config back
  back = keras.optimizers.LossScaleOptimizer.from_config(optadam.get_config(tx, keras_version=3))
  assert back.dynamic_growth_steps == 7 and back.inner_optimizer.amsgrad


@pytest.mark.parametrize(
  "bad,error,word",
  [
    (
      {"inner_optimizer": {"class_name": "Adam", "config": {}}, "dynamic": False},
      ValueError,
      "loss_scale_factor",
    ),
    ({"inner_optimizer": {"class_name": "SGD", "config": {}}}, ValueError, "SGD"),
    (
      {"inner_optimizer": {"class_name": "Adam", "config": {}}, "dynamic_growth_steps": 0},
      ValueError,
      "dynamic_growth_steps",
    ),
    (
      {"inner_optimizer": {"class_name": "Adam", "config": {}}, "initial_scale": -1.0},
      ValueError,
      "initial_scale",
    ),
    (
      {"inner_optimizer": {"class_name": "Adam", "config": {}}, "multiplier": 3},
      ValueError,
      "multiplier",
    ),
    (
      {"name": "lso", "inner_optimizer": {"class_name": "Adam", "config": {}}, "clipnorm": 1.0},
      ValueError,
      "inner optimizer",
    ),
    ({"class_name": "LossScaleOptimizer"}, ValueError, "config"),
  ],
)
def test_malformed_loss_scale_configs(bad, error, word):
  with pytest.raises(error, match=word):
    optadam.from_keras_config(bad)


@pytest.mark.parametrize(
  "name", ["basic", "ema_amsgrad_clipnorm_schedule", "floor", "weight_decay_global_clipnorm"]
)
def test_resume_from_tf215_lso_state(name):
  """Keras 2's lso.variables after 10 steps, with lso.loss_scale and lso.dynamic_counter."""
  g = Golden(name)
  k = g.meta["K"]
  tx = g.tx()
  variables = [g.z[f"optvarK_{j}"] for j in range(len(g.meta["variables_names"]))]
  state = optadam.state_from_keras(
    tx,
    variables,
    g.params(str(k - 1)),
    order=g.names,
    loss_scale=g.z["scaleK"],
    dynamic_counter=g.z["counterK"],
  )
  assert float(state.scale) == float(g.z[f"scale_{k - 1}"])
  assert int(state.good_steps) == int(g.z[f"counter_{k - 1}"])
  step = jax.jit(
    lambda p, s, gr: (lambda u, s2: (optadam.apply_updates(p, u), s2))(*tx.update(gr, s, p))
  )
  params = {n: jnp.asarray(v) for n, v in g.params(str(k - 1)).items()}
  ours = []
  for s in range(k, g.steps):
    params, state = step(params, state, g.grads(s))
    ours.append({n: np.asarray(v) for n, v in params.items()})
    assert float(state.scale) == float(g.z[f"scale_{s}"])
  assert worst_relative(ours, [g.expected(s)["params"] for s in range(k, g.steps)]) <= 1e-6


def test_resume_from_keras3_lso_state():
  adam_kwargs = dict(learning_rate=0.01, amsgrad=True)
  lso_kwargs = dict(initial_scale=2.0**8, dynamic_growth_steps=3)
  bad = {2: "nan", 9: "inf"}
  raw = _raw_grads(16, seed=21)
  fed_all, theirs_all, _, ov = run_keras3_lso(adam_kwargs, lso_kwargs, raw, bad, snapshot_at=7)
  theirs = theirs_all[:7]
  tx = optadam.loss_scale_optimizer(optadam.adam(**adam_kwargs), **lso_kwargs, style="keras3")
  params = {k: jnp.asarray(v) for k, v in theirs[-1]["params"].items()}
  state = optadam.state_from_keras(tx, [np.asarray(v) for v in ov], params, order=list(SHAPES))
  assert float(state.scale) == theirs[-1]["scale"] and int(state.inner.adam.count) == 6
  ours = []
  for g in fed_all[7:]:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = optadam.apply_updates(params, updates)
    ours.append({k: np.asarray(v) for k, v in params.items()})
  assert worst_relative(ours, [h["params"] for h in theirs_all[7:]]) < 1e-6
  with pytest.raises(ValueError, match="dynamic_counter"):
    optadam.state_from_keras(tx, [np.asarray(v) for v in ov], params, loss_scale=1.0)
