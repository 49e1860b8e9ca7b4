"""One optimizer of `benchmarks.scale_check`, measured in its own process.

Imported by ``scale_check --config NAME`` only after it has set ``XLA_FLAGS`` for 8 fake
CPU devices (jax reads them when it is first imported).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optadam
from benchmarks import harness


def param_shapes(vocab: int, d: int, layers: int) -> dict:
  tree = {"embed": {"embedding": (vocab, d)}, "final_ln": {"scale": (d,), "bias": (d,)}}
  for i in range(layers):
    tree[f"layer_{i}"] = {
      "attn": {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d)},
      "mlp": {"up": (d, 4 * d), "up_bias": (4 * d,), "down": (4 * d, d), "down_bias": (d,)},
      "ln1": {"scale": (d,), "bias": (d,)},
      "ln2": {"scale": (d,), "bias": (d,)},
    }
  return tree


def _is_shape(s: Any) -> bool:
  return isinstance(s, tuple)


def _spec(path, shape) -> P:
  """Megatron-style tensor parallelism over "model" (replicated over "data")."""
  name = jax.tree_util.keystr(path)
  if len(shape) == 1:
    return P("model") if "up_bias" in name else P()
  if "'o'" in name or "'down'" in name or "embedding" in name:
    return P("model", None)  # row-parallel (and the vocabulary split)
  return P(None, "model")  # column-parallel


def _make(shapes: dict, scale: float, phase: float) -> Any:
  # Cheap deterministic values (an RNG over 100M elements costs more than the step).
  def leaf(s):
    i = jax.lax.broadcasted_iota(jnp.float32, s, len(s) - 1)
    return scale * jnp.sin(i * 0.37 + phase)

  return jax.tree.map(leaf, shapes, is_leaf=_is_shape)


def per_device_bytes(tree: Any) -> tuple[int, int]:
  """(bytes on the busiest device, bytes on all devices) of a tree of sharded arrays."""
  totals: dict[int, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device.id] = totals.get(shard.device.id, 0) + shard.data.nbytes
  return max(totals.values()), sum(totals.values())


def _init(tx: Any, params: Any, opt_sh: Any) -> dict[str, Any]:
  """Sharded init: first call (compile + run), second call (run), and the state it makes."""
  init = jax.jit(tx.init, out_shardings=opt_sh)
  run = lambda: jax.block_until_ready(init(params))
  state, first = harness.timed(run)
  del state
  state, again = harness.timed(run)
  return {"state": state, "init_first_s": first, "init_run_s": again}


def _step(tx, params, state, grads, shardings: tuple[Any, Any], steps: int) -> dict[str, Any]:
  """Compile time, XLA memory and median time of the donated, sharded step."""
  param_sh, opt_sh = shardings
  step_jit = jax.jit(
    harness.train_step(tx, optax.apply_updates),
    in_shardings=(param_sh, opt_sh, param_sh),
    out_shardings=(param_sh, opt_sh),
    donate_argnums=(0, 1),
  )
  compiled, compile_s = harness.timed(lambda: step_jit.lower(params, state, grads).compile())
  mem = harness.xla_memory(compiled)
  run = lambda p, s: jax.block_until_ready(compiled(p, s, grads))
  params, state = run(params, state)  # warm-up
  times = []
  for _ in range(steps):
    (params, state), dt = harness.timed(run, params, state)
    times.append(dt)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)[:3])
  return {
    "step_compile_s": compile_s,
    "step_median_s": float(np.median(times)),
    "step_device_MB": None if mem is None else harness.xla_peak(mem) / 2**20,
  }


def measure(args: argparse.Namespace, label: str, expression: str) -> dict[str, Any]:
  """Init, state placement, step time and memory of the optimizer `expression`."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  shapes = param_shapes(args.vocab, args.d_model, args.layers)
  param_sh = jax.tree_util.tree_map_with_path(
    lambda path, s: NamedSharding(mesh, _spec(path, s)), shapes, is_leaf=_is_shape
  )
  n_params = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=_is_shape))
  t_setup = time.perf_counter()
  params = jax.jit(lambda: _make(shapes, 0.02, 0.0), out_shardings=param_sh)()
  grads = jax.jit(lambda: _make(shapes, 1e-3, 1.0), out_shardings=param_sh)()
  jax.block_until_ready((params, grads))
  harness.log(f"setup {time.perf_counter() - t_setup:.1f}s")

  tx = eval(expression, {"optax": optax, "optadam": optadam})  # pylint: disable=eval-used
  # Plain jit(tx.init): where does the state land without out_shardings?
  plain_state = jax.jit(tx.init)(params)
  jax.block_until_ready(plain_state)
  plain_max, _ = per_device_bytes(plain_state)
  del plain_state

  zero1 = "data" if args.config.endswith("zero1") else None
  opt_sh = optadam.state_shardings(tx, params, zero1_axis=zero1)
  init = _init(tx, params, opt_sh)
  state = init.pop("state")
  state_max, state_total = per_device_bytes(state)
  step = _step(tx, params, state, grads, (param_sh, opt_sh), args.steps)
  harness.log(f"total {time.perf_counter() - t_setup:.1f}s")
  return {
    "config": label,
    "n_params": n_params,
    **init,
    "plain_jit_init_max_device_MB": plain_max / 2**20,
    "state_per_device_MB": state_max / 2**20,
    "state_total_MB": state_total / 2**20,
    **step,
    "peak_rss_MB": harness.peak_rss() / 2**20,
  }
