"""Sharded training (8 fake CPU devices, in a subprocess) and `optadam.state_shardings`.

XLA's host device count must be set before JAX initialises, and this pytest
process has already initialised it with one device, so the 8-device checks run
in `sharding_worker.py`, once for the module; each test below asserts on one of
its scenarios. The `state_shardings` unit tests run here, on one device, with
PartitionSpecs over an abstract (2, 4) mesh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

import optadam

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


# --- optadam.state_shardings on one device ------------------------------------------------

MESH = AbstractMesh((2, 4), ("data", "model"))
SHAPES = {"w": (8, 16), "b": (16,), "odd": (3, 5), "s": ()}
SPECS = {"w": P(None, "model"), "b": P("model"), "odd": P(), "s": P()}


def _abstract_params():
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()}


def test_state_shardings_specs_for_every_params_shaped_part():
  tx = optadam.adam(amsgrad=True, use_ema=True, weight_decay=0.1)
  out = optadam.state_shardings(tx, SPECS)
  assert isinstance(out, optadam.AdamState)
  for tree in (out.adam.mu, out.adam.nu, out.adam.nu_max, out.ema.ema):
    assert tree == SPECS
  assert out.adam.count == P() and out.learning_rate.count == P() and out.ema.count == P()
  # From a state instead of the optimizer: the same tree.
  state = jax.eval_shape(tx.init, _abstract_params())
  assert optadam.state_shardings(state, SPECS) == out
  # optax.tree_map_params agrees.
  assert (
    optax.tree_map_params(tx, lambda _, s: s, state, SPECS, transform_non_params=lambda _: P())
    == out
  )


def test_state_shardings_zero1_rule():
  tx = optadam.adam(use_ema=True)
  state = jax.eval_shape(tx.init, _abstract_params())
  out = optadam.state_shardings(state, SPECS, zero1_axis="data", mesh=MESH)
  # First dimension that is unsharded and divisible by the axis size (2) gets "data".
  expected = {"w": P("data", "model"), "b": P("model"), "odd": P(), "s": P()}
  assert out.adam.mu == expected and out.adam.nu == expected and out.ema.ema == expected
  assert out.adam.count == P()
  # A tuple of axes: size 8; w's (8) and b's (16) first dimensions divide, odd's (3, 5) don't.
  out = optadam.state_shardings(
    state, {k: P() for k in SPECS}, zero1_axis=("data", "model"), mesh=MESH
  )
  assert out.adam.mu == {"w": P(("data", "model")), "b": P(("data", "model")), "odd": P(), "s": P()}
  # Already split over the axis: unchanged.
  specs = dict(SPECS, w=P("data", None))
  out = optadam.state_shardings(state, specs, zero1_axis="data", mesh=MESH)
  assert out.adam.mu["w"] == P("data", None)


def test_state_shardings_errors():
  tx = optadam.adam()
  with pytest.raises(ValueError, match="needs the parameters' shapes"):
    optadam.state_shardings(tx, SPECS, zero1_axis="data", mesh=MESH)
  state = jax.eval_shape(tx.init, _abstract_params())
  with pytest.raises(ValueError, match="no axis 'batch'"):
    optadam.state_shardings(state, SPECS, zero1_axis="batch", mesh=MESH)
  with pytest.raises(ValueError, match="needs `mesh=`"):
    optadam.state_shardings(state, SPECS, zero1_axis="data")
  with pytest.raises(TypeError, match=r"must be a jax.sharding.Sharding"):
    optadam.state_shardings(tx, {"w": 3})


def test_state_shardings_with_real_shardings_masked_and_partitioned():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  params = {"w": jnp.ones((4, 2)), "b": jnp.ones(2)}
  shardings = {"w": sh, "b": rep}
  masked = optax.masked(optadam.adam(use_ema=True), {"w": True, "b": False})
  state = masked.init(params)
  # A pytree mask: the placeholder cannot be masked, so the abstract state is matched.
  abstract = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in params.items()
  }
  out = optadam.state_shardings(masked, abstract)
  assert out.inner_state.adam.mu["w"] == sh
  assert isinstance(out.inner_state.adam.mu["b"], optax.MaskedNode)
  assert out.inner_state.adam.count == rep
  assert optadam.state_shardings(state, shardings) == out
  # jit(init, out_shardings=...) accepts it.
  jax.jit(masked.init, out_shardings=out)(params)

  part = optax.partition(
    {"train": optadam.adam(use_ema=True), "frozen": optax.set_to_zero()},
    {"w": "train", "b": "frozen"},
  )
  out = optadam.state_shardings(part, abstract)
  inner = out.inner_states["train"].inner_state
  assert inner.adam.mu["w"] == sh and isinstance(inner.ema.ema["b"], optax.MaskedNode)
  jax.jit(part.init, out_shardings=out)(params)

  # A single array as the parameters.
  out = optadam.state_shardings(
    optadam.adam(), jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sh)
  )
  assert out.adam.mu == sh and out.adam.count == rep


@pytest.mark.parametrize(
  "wrapper", ["inject_hyperparams", "multisteps", "apply_if_finite", "named_chain"]
)
def test_state_shardings_through_optax_wrappers(wrapper):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = {"w": jax.device_put(jnp.ones((4, 2)), sh), "b": jax.device_put(jnp.ones(2), rep)}
  tx = {
    "inject_hyperparams": lambda: optax.inject_hyperparams(optadam.adam)(
      learning_rate=0.1, use_ema=True
    ),
    "multisteps": lambda: optax.MultiSteps(optadam.adam(use_ema=True), 4),
    "apply_if_finite": lambda: optax.apply_if_finite(optadam.adam(amsgrad=True), 3),
    "named_chain": lambda: optax.named_chain(
      ("clip", optax.clip(1.0)), ("adam", optadam.adam(amsgrad=True))
    ),
  }[wrapper]()
  for arg in (jax.tree.map(lambda p: p.sharding, params), params):
    out = optadam.state_shardings(tx, arg)
    state = jax.jit(tx.init, out_shardings=out)(params)
    inner = [
      x
      for x in jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, optadam.AdamState))
      if isinstance(x, optadam.AdamState)
    ]
    assert len(inner) == 1
    assert inner[0].adam.mu == {"w": sh, "b": rep} and inner[0].adam.count == rep
    s_leaves = jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    assert len(s_leaves) == len(jax.tree.leaves(state))
    assert all(leaf.sharding == s for leaf, s in zip(jax.tree.leaves(state), s_leaves))
