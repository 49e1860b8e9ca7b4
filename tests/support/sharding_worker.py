"""Sharded training with optadam on 8 fake CPU devices (run by test_sharded_training.py).

XLA's host device count must be set before JAX initialises, so these checks run
in this separate process:  python tests/support/sharding_worker.py [scenario ...]
Each scenario prints one ``RESULT {json}`` line; the exit code is the number of
failed scenarios.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import optadam
from dist_common import (
  STEPS,
  bitwise_equal,
  host_batches,
  host_params,
  make_tx,
  mismatched_shardings,
  param_specs,
  param_specs_model,
  run_scenarios,
  shardings_match,
  single_device_run,
  train_step,
  worst_relative,
)
import dist_common
from helpers import checkpoint_keys

TOL = 1e-6
_REFERENCE = {}


def mesh_8():
  return jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))


def mesh_2x4():
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def reference():
  if "default" not in _REFERENCE:
    _REFERENCE["default"] = single_device_run(make_tx)
  return _REFERENCE["default"]


def sharded_setup(kind: str):
  """(mesh, sharded params, batch sharding) for mesh kind "8" or "2x4"."""
  if kind == "8":
    mesh = mesh_8()
    specs = param_specs(host_params(), "d")
    batch = NamedSharding(mesh, P("d"))
  else:
    mesh = mesh_2x4()
    specs = param_specs_model(host_params())
    batch = NamedSharding(mesh, P("data"))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.device_put(host_params(), shardings)
  return mesh, params, batch


def _init_contrast(kind: str):
  """jit(tx.init) on sharded params: optax.adam's moments land on one device, optadam's don't."""
  _, params, _ = sharded_setup(kind)
  n_sharded = sum(not p.sharding.is_fully_replicated for p in jax.tree.leaves(params))
  assert n_sharded >= 4, n_sharded

  # The contrast: optax.adam's zeros do not depend on the params, so under jit XLA gives them
  # no sharding and they come back on a single device.
  optax_state = jax.jit(optax.adam(1e-3).init)(params)
  optax_mu = optax_state[0].mu
  on_one_device = [len(m.sharding.device_set) == 1 for m in jax.tree.leaves(optax_mu)]
  assert all(on_one_device), [m.sharding for m in jax.tree.leaves(optax_mu)]
  optax_mismatch = sum(
    not m.sharding.is_equivalent_to(p.sharding, p.ndim)
    for m, p in zip(jax.tree.leaves(optax_mu), jax.tree.leaves(params))
  )
  assert optax_mismatch >= n_sharded, optax_mismatch

  tx = make_tx()
  for how, state in (("eager", tx.init(params)), ("jit", jax.jit(tx.init)(params))):
    bad = mismatched_shardings(state, params)
    assert not bad, (how, bad)
    for name, tree in dist_common.params_shaped_parts(state).items():
      assert all(not np.any(np.asarray(a)) for a in jax.tree.leaves(tree)) or name == "ema"
    assert bitwise_equal(state.ema.ema, params)

  # Abstract params: eval_shape, then jit(init, out_shardings=state_shardings(...)).
  abstract = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
  )
  abstract_state = jax.eval_shape(tx.init, abstract)
  assert jax.tree.structure(abstract_state) == jax.tree.structure(tx.init(params))
  param_sh = jax.tree.map(lambda p: p.sharding, params)
  for target in (param_sh, abstract):
    opt_sh = optadam.state_shardings(tx, target)
    assert optadam.state_shardings(abstract_state, param_sh) == opt_sh
    state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    assert not mismatched_shardings(state, params)
    assert not shardings_match(state, opt_sh)
    assert state.adam.count.sharding.is_fully_replicated
  # optax.tree_map_params builds the same tree.
  replicated = NamedSharding(jax.tree.leaves(param_sh)[0].mesh, P())
  via_optax = optax.tree_map_params(
    tx, lambda _, s: s, tx.init(params), param_sh, transform_non_params=lambda _: replicated
  )
  assert via_optax == optadam.state_shardings(tx, param_sh)
  return {"sharded_params": n_sharded, "optax_moments_on_one_device": optax_mismatch}


def _train(kind: str):
  """Sharded jit training: the state keeps the params' shardings; trajectory == single device.

  Two ways: (a) no shardings given to jit: XLA's propagation decides, and the moments and
  the EMA must follow whatever it gives the parameters (on the 2x4 mesh it re-shards the
  replicated (16, 1) kernel over "model" -- optax.adam's parameters do the same); (b) the
  recipe: out_shardings from the parameter shardings and `optadam.state_shardings`.
  """
  _, params0, batch_sh = sharded_setup(kind)
  tx = make_tx()
  param_sh = jax.tree.map(lambda p: p.sharding, params0)
  opt_sh = optadam.state_shardings(tx, param_sh)
  replicated = NamedSharding(jax.tree.leaves(param_sh)[0].mesh, P())
  ref_history, ref_state = reference()
  info = {}
  for how, step in (
    ("propagated", jax.jit(train_step(tx))),
    ("pinned", jax.jit(train_step(tx), out_shardings=(param_sh, opt_sh, replicated))),
  ):
    params = params0
    opt_state = jax.jit(tx.init)(params)
    history = []
    for i, (x, y) in enumerate(host_batches()):
      params, opt_state, _ = step(
        params, opt_state, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
      )
      bad = mismatched_shardings(opt_state, params)
      assert not bad, (how, i, bad)
      if how == "pinned":
        assert not shardings_match(params, param_sh), (how, i)
        assert not shardings_match(opt_state, opt_sh), (how, i)
      history.append(jax.tree.map(np.asarray, params))
    err = worst_relative(history, ref_history)
    ema_err = worst_relative(opt_state.ema.ema, ref_state.ema.ema)
    assert err <= TOL and ema_err <= TOL, (how, err, ema_err)
    assert int(opt_state.adam.count) == STEPS
    info[how] = {"worst_relative": err, "ema_worst_relative": ema_err}
  return info


def scenario_init_mesh8():
  return _init_contrast("8")


def scenario_init_mesh2x4():
  return _init_contrast("2x4")


def scenario_train_mesh8():
  return _train("8")


def scenario_train_mesh2x4():
  return _train("2x4")


def scenario_explicit_mesh():
  """jax.make_mesh's default (Explicit axes) under jax.set_mesh: shardings are part of the types."""
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  assert all(t == AxisType.Explicit for t in mesh.axis_types)
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs_model(host_params()))
  params = jax.device_put(host_params(), param_sh)
  batch_sh = NamedSharding(mesh, P("data"))
  tx = make_tx()
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(params)
    assert not mismatched_shardings(opt_state, params)
    step = jax.jit(train_step(tx))
    history = []
    for i, (x, y) in enumerate(host_batches()):
      params, opt_state, _ = step(
        params, opt_state, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
      )
      assert not shardings_match(params, param_sh), i
      assert not mismatched_shardings(opt_state, params), i
      history.append(jax.tree.map(np.asarray, params))
  err = worst_relative(history, reference()[0])
  assert err <= TOL, err
  return {"worst_relative": err}


def scenario_zero1():
  """ZeRO-1: params replicated over "data", moments split over it; same trajectory."""
  mesh = mesh_2x4()
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs_model(host_params()))
  params = jax.device_put(host_params(), param_sh)
  tx = make_tx()
  opt_sh = optadam.state_shardings(tx, params, zero1_axis="data")
  mu_sh = opt_sh.adam.mu
  # The first unsharded dimension divisible by 2 gets "data"; a bias over "model" or of size 1
  # stays.
  assert mu_sh["Dense_0"]["kernel"].spec == P("data", "model"), mu_sh["Dense_0"]["kernel"]
  assert mu_sh["Dense_2"]["kernel"].spec == P("data"), mu_sh["Dense_2"]["kernel"]
  assert mu_sh["Dense_0"]["bias"].spec == P("model"), mu_sh["Dense_0"]["bias"]
  assert mu_sh["Dense_2"]["bias"].spec == P(), mu_sh["Dense_2"]["bias"]
  assert opt_sh.ema.ema["Dense_1"]["kernel"].spec == P("data", "model")
  assert opt_sh.adam.count.spec == P()
  # The same from the PartitionSpecs and the mesh, and from an abstract state.
  specs = optadam.state_shardings(
    jax.eval_shape(tx.init, params), param_specs_model(params), zero1_axis="data", mesh=mesh
  )
  assert jax.tree.map(lambda s: s.spec, opt_sh) == specs

  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  batch_sh = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  step = jax.jit(
    train_step(tx),
    in_shardings=(param_sh, opt_sh, batch_sh, batch_sh),
    out_shardings=(param_sh, opt_sh, replicated),
  )
  history = []
  for x, y in host_batches():
    params, opt_state, _ = step(params, opt_state, x, y)
    history.append(jax.tree.map(np.asarray, params))
  assert not shardings_match(opt_state, opt_sh)
  mu = opt_state.adam.mu["Dense_0"]["kernel"]  # (8, 32): each device holds (4, 8)
  assert mu.addressable_shards[0].data.shape == (4, 8), mu.addressable_shards[0].data.shape
  assert params["Dense_0"]["kernel"].addressable_shards[0].data.shape == (8, 8)
  ref_history, ref_state = reference()
  err = worst_relative(history, ref_history)
  ema_err = worst_relative(opt_state.ema.ema, ref_state.ema.ema)
  assert err <= TOL and ema_err <= TOL, (err, ema_err)
  return {"worst_relative": err, "mu_shard_shape": list(mu.addressable_shards[0].data.shape)}


def scenario_shard_map_dp():
  """Data parallel with shard_map: per-device batch shards, lax.pmean gradients."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  tx = make_tx()

  def local_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(dist_common.loss_fn)(params, x, y)
    grads = jax.lax.pmean(grads, "data")
    updates, opt_state = tx.update(grads, opt_state, params)
    return optadam.apply_updates(params, updates), opt_state, jax.lax.pmean(loss, "data")

  # check_vma=False: classic shard_map semantics, where the gradient of the replicated
  # params is each device's local gradient and lax.pmean averages it. (With the default
  # check_vma=True, jax.grad already psums it over "data"; a pmean would then not divide.)
  step = jax.jit(
    jax.shard_map(
      local_step,
      mesh=mesh,
      in_specs=(P(), P(), P("data"), P("data")),
      out_specs=(P(), P(), P()),
      check_vma=False,
    )
  )
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(host_params(), replicated)
  opt_state = jax.device_put(tx.init(host_params()), replicated)
  batch_sh = NamedSharding(mesh, P("data"))
  history = []
  for x, y in host_batches():
    params, opt_state, _ = step(
      params, opt_state, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
    )
    history.append(jax.tree.map(np.asarray, params))
  ref_history, ref_state = reference()
  err = worst_relative(history, ref_history)
  ema_err = worst_relative(opt_state.ema.ema, ref_state.ema.ema)
  assert err <= TOL and ema_err <= TOL, (err, ema_err)
  return {"worst_relative": err}


def scenario_callable_lr():
  """A zero-argument learning-rate callable is read at every step of the sharded jit step."""
  current_lr = [1e-2]
  schedule = [1e-2, 1e-2, 5e-3, 5e-3, 2e-2, 1e-3, 1e-3, 3e-3]
  _, params, batch_sh = sharded_setup("2x4")
  tx = make_tx(learning_rate=lambda: current_lr[0])
  opt_state = jax.jit(tx.init)(params)
  traces = []

  def counted(*args):
    traces.append(1)
    return train_step(tx)(*args)

  step = jax.jit(counted)
  history = []
  for i, (x, y) in enumerate(host_batches()):
    current_lr[0] = schedule[i]
    params, opt_state, _ = step(
      params, opt_state, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
    )
    assert not mismatched_shardings(opt_state, params)
    history.append(jax.tree.map(np.asarray, params))
  assert len(traces) == 1, len(traces)

  # The same sequence as a schedule on one device, and the constant-lr run differs.
  ref_history, _ = single_device_run(lambda: make_tx(lambda count: jnp.asarray(schedule)[count]))
  err = worst_relative(history, ref_history)
  assert err <= TOL, err
  assert worst_relative(history, reference()[0]) > 1e-4
  return {"worst_relative": err, "traces": len(traces)}


def scenario_orbax_sharded():
  """Orbax save mid-training + restore into sharded targets: bitwise-identical resume."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from flax.training import train_state  # pylint: disable=import-outside-toplevel

  mesh, params, batch_sh = sharded_setup("2x4")
  tx = make_tx()
  param_sh = jax.tree.map(lambda p: p.sharding, params)
  opt_sh = optadam.state_shardings(tx, param_sh)
  state = train_state.TrainState.create(apply_fn=dist_common.MODEL.apply, params=params, tx=tx)

  @jax.jit
  def step(state, x, y):
    grads = jax.grad(dist_common.loss_fn)(state.params, x, y)
    return state.apply_gradients(grads=grads)

  batches = [(jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)) for x, y in host_batches()]
  half = STEPS // 2
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt")
    uninterrupted = dist_common.run_saving_checkpoint(step, state, batches, path, half)
    state = uninterrupted[-1]

    # Key paths in the checkpoint read like the state: opt_state/adam/mu/...
    keys = checkpoint_keys(ocp.StandardCheckpointer(), path)
    for k in (
      "opt_state/adam/mu/Dense_0/kernel",
      "opt_state/adam/nu/LayerNorm_0/scale",
      "opt_state/adam/nu_max/Dense_2/bias",
      "opt_state/adam/count",
      "opt_state/ema/ema/Dense_1/kernel",
      "opt_state/learning_rate/count",
      "params/Dense_0/kernel",
      "step",
    ):
      assert k in keys, (k, sorted(keys))

    # Restore into an abstract target built from the parameter shardings alone.
    abstract_params = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )
    abstract_opt = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      jax.eval_shape(tx.init, abstract_params),
      opt_sh,
    )
    target = state.replace(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
      params=abstract_params,
      opt_state=abstract_opt,
    )
    restored = ocp.StandardCheckpointer().restore(path, target)
    assert isinstance(restored.opt_state, optadam.AdamState)
    assert not shardings_match(restored.opt_state, opt_sh)
    assert not shardings_match(restored.params, param_sh)
    assert int(restored.step) == half
    resumed = restored
    for i, (x, y) in enumerate(batches[half:]):
      resumed = step(resumed, x, y)
      ref = uninterrupted[half + i]
      assert bitwise_equal(resumed.params, ref.params), i
      assert bitwise_equal(resumed.opt_state, ref.opt_state), i
    assert not mismatched_shardings(resumed.opt_state, resumed.params)
  return {"keys": len(keys)}


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def _collectives(tx, params, state) -> int:
  """Collective ops in the compiled optimizer step (gradients sharded like the parameters)."""
  text = (
    jax.jit(lambda g, s, p: tx.update(g, s, p)).lower(params, state, params).compile().as_text()
  )
  return sum(text.count(f" {op}(") + text.count(f" {op}-start(") for op in _COLLECTIVES)


def scenario_grouped_mesh2x4():
  """group_small_leaves on the 2x4 mesh: sharded leaves stay out of the groups, no collective.

  The small leaves sharded over "model" (biases) are never packed; the replicated ones are.
  Without norms the optimizer step has no collective, grouped or not; with clipnorm it has
  those of the sharded leaves' norms, no more. The grouped training equals the ungrouped one
  on the same mesh; the state built by `tx.init` on the sharded arrays, by
  jit(init, out_shardings=state_shardings(tx, ShapeDtypeStructs)) and by eval_shape agree.
  """
  _, params0, batch_sh = sharded_setup("2x4")
  kw = dict(amsgrad=True, weight_decay=1e-2, use_ema=True, ema_momentum=0.9)
  kw.update(ema_overwrite_frequency=5)  # no exclusions: the replicated Dense_2 leaves group
  leaves = jax.tree.leaves(params0)
  small_sharded = [
    i for i, p in enumerate(leaves) if p.size <= 4096 and not p.sharding.is_fully_replicated
  ]
  assert small_sharded, [p.sharding.spec for p in leaves]
  info = {"small_sharded_leaves": len(small_sharded), "leaves": len(leaves)}
  for label, extra in (("no_norm", {}), ("clipnorm", {"clipnorm": 1.0})):
    grouped_tx = optadam.adam(1e-2, **kw, **extra, group_small_leaves=4096)
    plain_tx = optadam.adam(1e-2, **kw, **extra)
    state = grouped_tx.init(params0)
    mu = state.adam.mu
    grouped = {m.index for g in mu.layout.groups for m in g.members}
    assert grouped and not grouped & set(small_sharded), (grouped, small_sharded)
    # The other ways of building the state give the same layout: the recipe on a fresh
    # optimizer (its layout fixed from ShapeDtypeStructs, state_shardings of them, then a
    # traced init), and eval_shape.
    abstract = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params0
    )
    fresh = optadam.adam(1e-2, **kw, **extra, group_small_leaves=4096).with_group_layout(abstract)
    sh = optadam.state_shardings(fresh, abstract)
    assert jax.tree.structure(optadam.state_shardings(grouped_tx, abstract)) == (
      jax.tree.structure(sh)
    )
    pinned = jax.jit(fresh.init, out_shardings=sh)(params0)
    assert jax.tree.structure(pinned) == jax.tree.structure(state)
    assert jax.tree.structure(jax.eval_shape(fresh.init, abstract)) == jax.tree.structure(state)
    assert not shardings_match(pinned, sh)
    n_grouped = _collectives(grouped_tx, params0, state)
    n_plain = _collectives(plain_tx, params0, plain_tx.init(params0))
    assert n_grouped <= n_plain, (label, n_grouped, n_plain)
    if label == "no_norm":
      assert n_plain == 0, n_plain
    runs = {}
    for name, tx in (("grouped", grouped_tx), ("plain", plain_tx)):
      params, opt_state = params0, tx.init(params0)
      step = jax.jit(train_step(tx))
      history = []
      for x, y in host_batches():
        params, opt_state, _ = step(
          params, opt_state, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
        )
        history.append(jax.tree.map(np.asarray, params))
      runs[name] = history
    err = worst_relative(runs["grouped"], runs["plain"])
    assert err <= TOL, (label, err)
    info[label] = {"collectives": [n_grouped, n_plain], "worst_relative": err}
  return info


SCENARIOS = {
  name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")
}


def main(argv: list[str]) -> int:
  assert jax.device_count() == 8, jax.devices()
  names = argv or list(SCENARIOS)
  return run_scenarios(SCENARIOS, names)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
