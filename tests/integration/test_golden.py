"""Parity with the real TF 2.15 `tf.keras.optimizers.Adam`: golden trajectories in tests/golden/.

The files are made by `tools/make_keras2_golden.py` (`make golden`, in its own venv);
these tests need only numpy to read them (`support/golden.py`, which also gives test_keras_config.py
and test_keras_state.py their configs and variables). See tools/README.md for the format.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from golden import SCENARIOS, Golden
from helpers import worst_relative, worst_ulps
from reference import reference_adam


def run(tx, golden: Golden, params, state, steps) -> tuple[list[dict[str, np.ndarray]], Any]:
  step = jax.jit(
    lambda p, s, g: (lambda u, s2: (optadam.apply_updates(p, u), s2))(*tx.update(g, s, p))
  )
  hist = []
  for s in steps:
    params, state = step(params, state, golden.grads(s))
    hist.append({k: np.asarray(v, np.float64) for k, v in params.items()})
  return hist, state


def _compare(name: str, build: str):
  g = Golden(name)
  with jax.enable_x64(g.x64):
    if build == "kwargs":
      tx = optadam.adam(**g.kwargs())
    else:
      tx = optadam.from_keras_config(
        g.meta["config"], exclude_from_weight_decay=g.meta["exclude_from_weight_decay"]
      )
    params = g.params()
    ours, state = run(tx, g, params, tx.init(params), range(g.steps))
    final = optadam.finalize_variable_values(jax.tree.map(jnp.asarray, ours[-1]), state)
  theirs = [g.expected(s) for s in range(g.steps)]
  return g, ours, theirs, final


FLOAT_SCENARIOS = [n for n in SCENARIOS if not (n.startswith(("float16", "bfloat16")))]


@pytest.mark.parametrize("name", FLOAT_SCENARIOS)
@pytest.mark.parametrize("build", ["kwargs", "from_keras_config"])
def test_trajectory_matches_tf215(name, build, report):
  g, ours, theirs, final = _compare(name, build)
  if "inf" in name:  # Keras's NaN propagation: compare where TF is finite, NaN where it is NaN
    for a, b in zip(ours, theirs):
      for k in b:
        np.testing.assert_array_equal(np.isnan(a[k]), np.isnan(b[k]))
    theirs = [{k: np.nan_to_num(v) for k, v in s.items()} for s in theirs]
    ours = [{k: np.nan_to_num(v) for k, v in s.items()} for s in ours]
  err, ulps = worst_relative(ours, theirs), worst_ulps(ours, theirs)
  if build == "kwargs":
    report(f"tf2.15 golden / {name}", f"max rel err {err:.2e}  ({ulps:.1f} ulp at tensor scale)")
  tol = 1e-13 if g.x64 else 1e-6
  assert err <= tol, f"{name}: {err:.3e} ({ulps:.1f} ulp)"
  if g.meta["kwargs"].get("use_ema"):
    expected_final = {n: g.z[f"final_{i}"] for i, n in enumerate(g.names)}
    assert worst_relative([{k: np.asarray(v) for k, v in final.items()}], [expected_final]) <= tol


@pytest.mark.parametrize("name", [n for n in FLOAT_SCENARIOS if Golden(n).meta["K"]])
def test_resume_from_keras_state(name):
  """Import Keras's optimizer variables after K steps and continue in optadam."""
  g = Golden(name)
  k = g.meta["K"]
  with jax.enable_x64(g.x64):
    tx = optadam.adam(**g.kwargs())
    params = g.params(str(k - 1))
    variables = [g.z[f"optvarK_{j}"] for j in range(len(g.meta["variables_names"]))]
    state = optadam.state_from_keras(tx, variables, params, order=g.names)
    ours, _ = run(tx, g, params, state, range(k, g.steps))
  theirs = [g.expected(s) for s in range(k, g.steps)]
  if "inf" in name:
    ours = [{a: np.nan_to_num(v) for a, v in s.items()} for s in ours]
    theirs = [{a: np.nan_to_num(v) for a, v in s.items()} for s in theirs]
  assert worst_relative(ours, theirs) <= (1e-13 if g.x64 else 1e-6)


def test_bfloat16_optadam_moves_where_keras2_does_not():
  """docs/semantics.md (one step): Keras 2 rounds beta_2 to 1.0 in bfloat16 and never moves."""
  g, ours, theirs, _ = _compare("bfloat16", "kwargs")
  init = {n: np.asarray(g.z[f"param_{i}_init"]) for i, n in enumerate(g.names)}
  for k in init:
    np.testing.assert_array_equal(theirs[-1][k], init[k])  # Keras 2: frozen
  # optadam moves every element whose steps are not below bfloat16's resolution
  moved = max(np.max(np.abs(ours[-1][k] - init[k])) for k in init)
  assert moved > 2e-3, moved


def test_float16_moments_underflow_like_keras_unless_kept_in_float32(report):
  """Keras 2 in float16: (g*g - v) * 0.001 underflows for |g| < ~5e-3, so v = 0 and the step
  jumps by up to ~1000 * lr. optadam's default (moments in the parameter dtype, as Keras) has the
  same artifact; with mu_dtype/nu_dtype=float32 it follows exact Adam closely."""
  g = Golden("float16")
  params0 = {n: g.z[f"param_{i}_init"].astype(np.float64) for i, n in enumerate(g.names)}
  grads = [
    {n: g.z[f"grad_{s}_{i}"].astype(np.float64) for i, n in enumerate(g.names)}
    for s in range(g.steps)
  ]
  exact, _ = reference_adam(params0, grads)
  theirs = [g.expected(s) for s in range(g.steps)]
  tx = optadam.adam(mu_dtype=jnp.float32, nu_dtype=jnp.float32)
  params = g.params()
  ours32, _ = run(tx, g, params, tx.init(params), range(g.steps))
  _, ours_default, _, _ = _compare("float16", "kwargs")
  err_keras, err_default, err_f32 = (
    worst_relative(x, exact) for x in (theirs, ours_default, ours32)
  )
  report(
    "tf2.15 golden / float16 vs exact Adam",
    f"keras2 {err_keras:.2e}  optadam default {err_default:.2e}  optadam f32 moments {err_f32:.2e}",
  )
  assert err_keras > 0.1 and err_default > 0.1  # the underflow artifact, in both
  assert err_f32 < 5e-3  # float16 parameter rounding only
