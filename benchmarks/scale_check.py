"""Scale check: optadam.adam vs optax.adam on a ~100M-parameter transformer-shaped tree.

8 fake CPU devices, mesh (2, 4) = ("data", "model"), Megatron-style tensor-parallel
parameter shardings (replicated over "data"). For each optimizer, in a fresh
subprocess (so that peak memory is its own):

  * init: ``jax.jit(tx.init, out_shardings=state_shardings)`` -- first call
    (compile + run) and a second call (run);
  * where plain ``jax.jit(tx.init)(params)`` puts the state: the largest amount
    of optimizer state on one device (optax.adam's zeros land on a single device);
  * step: ``jit(update + apply_updates)`` with donated params/state, on fixed
    gradients; median wall time over the timed steps after one warm-up;
  * memory: optimizer state per device, XLA's memory analysis of the step
    (arguments + outputs + temporaries, per device) and the process's peak RSS.

Usage:
  python benchmarks/scale_check.py                 # ~102M params, writes RESULTS_scale.md
  python benchmarks/scale_check.py --layers 2 --d-model 256 --vocab 8000 --steps 3  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {  # key: (label, optimizer expression)
  "optax": ("optax.adam", "optax.adam(1e-3)"),
  "optadam": ("optadam.adam", "optadam.adam(1e-3)"),
  "optadam-full": (
    "optadam.adam(amsgrad, weight_decay, use_ema, global_clipnorm)",
    "optadam.adam(1e-3, amsgrad=True, weight_decay=0.004, use_ema=True, "
    "global_clipnorm=1.0, exclude_from_weight_decay=['ln', 'bias'])",
  ),
  "optadam-zero1": ("optadam.adam, ZeRO-1 over data", "optadam.adam(1e-3)"),
}


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


def child(args: argparse.Namespace) -> dict:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import resource  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel,unused-import
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  import optadam  # pylint: disable=import-outside-toplevel

  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  shapes = param_shapes(args.vocab, args.d_model, args.layers)
  is_shape = lambda s: isinstance(s, tuple)

  def spec(path, shape):
    name = jax.tree_util.keystr(path)
    if len(shape) == 1:
      return P("model") if "up_bias" in name else P()
    if "'o'" in name or "'down'" in name or "embedding" in name:
      return P("model", None)  # row-parallel (and the vocabulary split)
    return P(None, "model")  # column-parallel

  param_sh = jax.tree_util.tree_map_with_path(
    lambda path, s: NamedSharding(mesh, spec(path, s)), shapes, is_leaf=is_shape
  )
  n_params = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=is_shape))

  def make(scale, phase):
    # Cheap deterministic values (an RNG over 100M elements costs more than the step).
    def leaf(s):
      i = jax.lax.broadcasted_iota(jnp.float32, s, len(s) - 1)
      return scale * jnp.sin(i * 0.37 + phase)

    return jax.tree.map(leaf, shapes, is_leaf=is_shape)

  t_setup = time.perf_counter()
  params = jax.jit(lambda: make(0.02, 0.0), out_shardings=param_sh)()
  grads = jax.jit(lambda: make(1e-3, 1.0), out_shardings=param_sh)()
  jax.block_until_ready((params, grads))
  print(f"setup {time.perf_counter() - t_setup:.1f}s", file=sys.stderr, flush=True)

  tx = eval(CONFIGS[args.config][1], {"optax": optax, "optadam": optadam})  # pylint: disable=eval-used
  zero1 = args.config.endswith("zero1")

  def per_device_bytes(tree):
    totals = {}
    for leaf in jax.tree.leaves(tree):
      for shard in leaf.addressable_shards:
        totals[shard.device.id] = totals.get(shard.device.id, 0) + shard.data.nbytes
    return max(totals.values()), sum(totals.values())

  # Plain jit(tx.init): where does the state land without out_shardings?
  plain_state = jax.jit(tx.init)(params)
  jax.block_until_ready(plain_state)
  plain_max, _ = per_device_bytes(plain_state)
  del plain_state

  opt_sh = optadam.state_shardings(tx, params, zero1_axis="data" if zero1 else None)
  init = jax.jit(tx.init, out_shardings=opt_sh)
  t0 = time.perf_counter()
  state = jax.block_until_ready(init(params))
  init_first = time.perf_counter() - t0
  del state
  t0 = time.perf_counter()
  state = jax.block_until_ready(init(params))
  init_run = time.perf_counter() - t0
  state_max, state_total = per_device_bytes(state)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step_jit = jax.jit(
    step,
    in_shardings=(param_sh, opt_sh, param_sh),
    out_shardings=(param_sh, opt_sh),
    donate_argnums=(0, 1),
  )
  t0 = time.perf_counter()
  compiled = step_jit.lower(params, state, grads).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  step_bytes = None
  if mem is not None:
    step_bytes = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes
    )
  params, state = jax.block_until_ready(compiled(params, state, grads))  # warm-up
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(compiled(params, state, grads))
    times.append(time.perf_counter() - t0)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)[:3])
  print(f"total {time.perf_counter() - t_setup:.1f}s", file=sys.stderr, flush=True)
  return {
    "config": CONFIGS[args.config][0],
    "n_params": n_params,
    "init_first_s": init_first,
    "init_run_s": init_run,
    "plain_jit_init_max_device_MB": plain_max / 2**20,
    "state_per_device_MB": state_max / 2**20,
    "state_total_MB": state_total / 2**20,
    "step_compile_s": compile_s,
    "step_median_s": float(np.median(times)),
    "step_device_MB": None if step_bytes is None else step_bytes / 2**20,
    "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def table(rows: list[dict]) -> str:
  head = (
    "| optimizer | init: compile+run (s) | init: run (s) | state/device (MB) "
    "| state/device with plain `jit(tx.init)` (MB) | step (s, median) | step compile (s) "
    "| step memory/device, XLA (MB) | peak RSS (MB) |"
  )
  lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
  for r in rows:
    step_mb = "n/a" if r["step_device_MB"] is None else f"{r['step_device_MB']:.0f}"
    lines.append(
      f"| {r['config']} | {r['init_first_s']:.2f} | {r['init_run_s']:.3f} "
      f"| {r['state_per_device_MB']:.0f} | {r['plain_jit_init_max_device_MB']:.0f} "
      f"| {r['step_median_s']:.3f} | {r['step_compile_s']:.2f} | {step_mb} "
      f"| {r['peak_rss_MB']:.0f} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--d-model", type=int, default=768)
  parser.add_argument("--layers", type=int, default=11)
  parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
  parser.add_argument(
    "--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS)
  )
  parser.add_argument(
    "--output",
    default=os.path.join(HERE, "RESULTS_scale.md"),
    help="markdown file to write ('' to skip)",
  )
  parser.add_argument("--config", help=argparse.SUPPRESS)  # internal: run one config
  args = parser.parse_args()
  if args.config:
    print("CHILD " + json.dumps(child(args)), flush=True)
    return

  load = os.getloadavg()[0]
  rows = []
  for config in [c for c in args.configs.split(",") if c]:
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--config",
      config,
      "--vocab",
      str(args.vocab),
      "--d-model",
      str(args.d_model),
      "--layers",
      str(args.layers),
      "--steps",
      str(args.steps),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("CHILD ")]
    if out.returncode or not lines:
      sys.exit(
        f"{config} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
      )
    rows.append(json.loads(lines[-1][len("CHILD ") :]))
    print(f"done: {config}", file=sys.stderr, flush=True)

  command = "python benchmarks/scale_check.py" + "".join(
    f" --{k.replace('_', '-')} {v}"
    for k, v in (
      ("vocab", args.vocab),
      ("d_model", args.d_model),
      ("layers", args.layers),
      ("steps", args.steps),
    )
    if v != parser.get_default(k)
  )
  import jax  # pylint: disable=import-outside-toplevel

  md = "\n".join(
    [
      "# Scale check: optadam.adam vs optax.adam, sharded state on 8 CPU devices",
      "",
      f"{rows[0]['n_params'] / 1e6:.1f}M float32 parameters (transformer-shaped: vocab "
      f"{args.vocab}, d_model {args.d_model}, {args.layers} layers), mesh (2, 4) = "
      "(data, model), tensor-parallel parameter shardings replicated over data. "
      "Optimizer step only (fixed gradients), params and state donated. "
      f"jax {jax.__version__}, {os.cpu_count()} CPU cores (8 fake XLA devices share them); "
      f"1-minute load average at the start: {load:.1f} (timings are noisy on a shared "
      "machine; fake CPU devices make collectives -- ZeRO-1's reduce-scatter/all-gather -- "
      "far costlier than on accelerators).",
      "",
      f"Command: `{command}`",
      "",
      table(rows),
      "",
      "- *state/device*: optimizer state held by the busiest device with "
      "`jax.jit(tx.init, out_shardings=optadam.state_shardings(tx, params))` "
      '(ZeRO-1: `zero1_axis="data"`).',
      "- *plain `jit(tx.init)`*: the same without `out_shardings`; optax.adam's zeros "
      "do not depend on the parameters, so they land on one device.",
      "- *step memory/device*: XLA's memory analysis of the compiled step "
      "(arguments + outputs + temporaries - aliased), per device.",
      "- *peak RSS*: the whole process (all 8 fake devices, parameters, gradients, "
      "and the plain-init state).",
    ]
  )
  print(md)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(md + "\n")


if __name__ == "__main__":
  main()
