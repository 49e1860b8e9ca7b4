"""Sharded training (8 fake CPU devices, in a subprocess).

XLA's host device count must be set before JAX initialises, and this pytest
process has already initialised it with one device, so the 8-device checks run
in `support/sharding_worker.py`, once for the module; each test below asserts on
one of its scenarios. The `state_shardings` unit tests, on one device, are in
tests/test_sharding.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, above integration/
WORKER = os.path.join(TESTS, "support", "sharding_worker.py")
WORKER_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def worker_results():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_ENABLE_X64", None)
  proc = subprocess.run(
    [sys.executable, WORKER],
    env=env,
    capture_output=True,
    text=True,
    timeout=WORKER_TIMEOUT_S,
    cwd=os.path.dirname(TESTS),
  )
  results = {}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      r = json.loads(line[len("RESULT ") :])
      results[r["scenario"]] = r
  if not results:
    pytest.fail(
      f"sharding worker produced no results (exit {proc.returncode}):\n"
      f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
  results["_log"] = f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
  return results


def _check(results, name, report=None):
  assert name in results, (
    f"scenario {name!r} did not run; got {sorted(results)}:\n{results['_log']}"
  )
  r = results[name]
  assert r["ok"], f"scenario {name!r} failed:\n{r['error']}"
  if report is not None:
    report(f"sharding/{name}", json.dumps(r["info"]))
  return r["info"]


@pytest.mark.parametrize("mesh", ["mesh8", "mesh2x4"])
def test_jit_init_keeps_param_shardings_unlike_optax(worker_results, mesh):
  """jit(tx.init): optadam's mu/nu/nu_max/EMA have the params' shardings; optax.adam's do not.

  Also: eager init, eval_shape on ShapeDtypeStructs + jit(init, out_shardings=state_shardings).
  """
  info = _check(worker_results, f"init_{mesh}")
  assert info["optax_moments_on_one_device"] >= info["sharded_params"] > 0


@pytest.mark.parametrize("mesh", ["mesh8", "mesh2x4"])
def test_sharded_flax_training_matches_single_device(worker_results, mesh, report):
  info = _check(worker_results, f"train_{mesh}", report)
  for how in ("propagated", "pinned"):
    assert info[how]["worst_relative"] <= 1e-6


def test_explicit_mesh_training(worker_results):
  assert _check(worker_results, "explicit_mesh")["worst_relative"] <= 1e-6


def test_zero1_state_sharding_training(worker_results, report):
  info = _check(worker_results, "zero1", report)
  assert info["mu_shard_shape"] == [4, 8]
  assert info["worst_relative"] <= 1e-6


def test_shard_map_data_parallel_pmean(worker_results, report):
  assert _check(worker_results, "shard_map_dp", report)["worst_relative"] <= 1e-6


def test_zero_arg_callable_lr_in_sharded_jit(worker_results):
  info = _check(worker_results, "callable_lr")
  assert info["traces"] == 1 and info["worst_relative"] <= 1e-6


def test_orbax_sharded_checkpoint_resume_is_bitwise(worker_results):
  _check(worker_results, "orbax_sharded")


def test_grouped_small_leaves_on_a_mesh(worker_results, report):
  """group_small_leaves: sharded small leaves stay out, no collective added, same trajectory."""
  info = _check(worker_results, "grouped_mesh2x4", report)
  assert info["small_sharded_leaves"] >= 1
  assert info["no_norm"]["collectives"] == [0, 0]
  n_grouped, n_plain = info["clipnorm"]["collectives"]
  assert n_grouped <= n_plain
  assert info["no_norm"]["worst_relative"] <= 1e-6
  assert info["clipnorm"]["worst_relative"] <= 1e-6
