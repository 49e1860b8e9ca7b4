"""Loss scaling on 8 fake CPU devices (run by tests/test_loss_scaling.py in a subprocess).

XLA's host device count must be set before JAX initialises. Prints one ``RESULT {json}``
line; exits non-zero on failure.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import optadam


def make_tx(axis_name=None):
  return optadam.loss_scale_optimizer(
    optadam.adam(0.01, amsgrad=True, use_ema=True), 2.0**8, 2, axis_name=axis_name
  )


def data(steps=8):
  rng = np.random.RandomState(0)
  params = {"kernel": rng.normal(size=(3, 16)).astype(np.float32), "bias": np.zeros(16, np.float32)}
  grads = []
  for s in range(steps):
    g = {k: (rng.normal(size=v.shape) * 2.0**8).astype(np.float32) for k, v in params.items()}
    if s in (2, 5):  # one bad element, in the columns that live on device 5 only
      g["kernel"][1, 11] = np.inf if s == 2 else np.nan
    grads.append(g)
  return params, grads


def step_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  return step


def run_single(params, grads):
  tx = make_tx()
  state = tx.init(params)
  step = jax.jit(step_fn(tx))
  hist = []
  for g in grads:
    params, state = step(params, state, g)
    hist.append((jax.tree.map(np.asarray, params), float(state.scale)))
  return hist


def main() -> int:
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("d",))
  params0, grads = data()
  ref = run_single(params0, grads)
  out = {}

  # 1. jit with sharded global arrays: one decision for the whole model.
  specs = {"kernel": P(None, "d"), "bias": P("d")}
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  tx = make_tx()
  opt_sh = optadam.state_shardings(tx, param_sh)
  assert opt_sh.scale.is_fully_replicated and opt_sh.good_steps.is_fully_replicated
  assert opt_sh.inner.adam.mu["kernel"].spec == P(None, "d")
  params = jax.device_put(params0, param_sh)
  state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  step = jax.jit(
    step_fn(tx),
    in_shardings=(param_sh, opt_sh, param_sh),
    out_shardings=(param_sh, opt_sh),
    donate_argnums=(0, 1),
  )
  worst = 0.0
  for i, g in enumerate(grads):
    before = jax.tree.map(np.asarray, params)
    params, state = step(params, state, jax.device_put(g, param_sh))
    now = jax.tree.map(np.asarray, params)
    if i in (2, 5):
      assert all(np.array_equal(now[k], before[k]) for k in now), f"step {i} moved"
    assert float(state.scale) == ref[i][1], (i, float(state.scale), ref[i][1])
    worst = max(worst, max(float(np.max(np.abs(now[k] - ref[i][0][k]))) for k in now))
  assert worst < 1e-6, worst
  assert state.inner.adam.mu["kernel"].sharding.spec == P(None, "d")
  out["jit_sharded"] = {"worst_abs_vs_single_device": worst, "scales": [r[1] for r in ref]}

  # 2. shard_map on per-device pieces: axis_name makes the decision global.
  def shard_mapped(tx):
    def local(params, state, grads):
      return step_fn(tx)(params, state, grads)

    state_specs = jax.tree.map(lambda _: P(), jax.eval_shape(tx.init, params0))
    state_specs = state_specs._replace(
      inner=jax.tree.map(
        lambda x: P(None, "d") if x.ndim == 2 else (P("d") if x.ndim == 1 else P()),
        jax.eval_shape(tx.init, params0).inner,
      )
    )
    return jax.jit(
      jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(specs, state_specs, specs),
        out_specs=(specs, state_specs),
        check_vma=False,
      )
    )

  for axis_name in ("d", None):
    tx = make_tx(axis_name)
    params = jax.device_put(params0, param_sh)
    state = tx.init(params)
    step = shard_mapped(tx)
    moved_on_bad = None
    for i, g in enumerate(grads[:3]):
      before = jax.tree.map(np.asarray, params)
      params, state = step(params, state, jax.device_put(g, param_sh))
      if i == 2:
        now = jax.tree.map(np.asarray, params)
        moved_on_bad = not np.array_equal(now["kernel"], before["kernel"])
    out[f"shard_map axis_name={axis_name}"] = {"moved_on_bad_step": moved_on_bad}
  assert out["shard_map axis_name=d"]["moved_on_bad_step"] is False
  assert out["shard_map axis_name=None"]["moved_on_bad_step"] is True  # local decisions differ
  print("RESULT " + json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
