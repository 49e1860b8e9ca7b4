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
import os
import sys

if __package__ in (None, ""):  # run as a script: ``python benchmarks/scale_check.py``
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness

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


def child(args: argparse.Namespace) -> dict:
  """Measures ``args.config`` in this process (a fresh one, with 8 fake CPU devices)."""
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from benchmarks import scale_child  # pylint: disable=import-outside-toplevel (after XLA_FLAGS)

  return scale_child.measure(args, *CONFIGS[args.config])


def run_config(config: str, args: argparse.Namespace) -> dict:
  """`child` of `config` in a fresh process; exits with its output if it fails."""
  sizes = ["--vocab", str(args.vocab), "--d-model", str(args.d_model)]
  cmd = ["--config", config, *sizes, "--layers", str(args.layers), "--steps", str(args.steps)]
  try:
    return harness.run_child("benchmarks.scale_check", cmd, timeout=600)
  except harness.ChildFailed as e:
    sys.exit(f"{config} failed: {e}")


def table(rows: list[dict]) -> str:
  header = [
    "optimizer",
    "init: compile+run (s)",
    "init: run (s)",
    "state/device (MB)",
    "state/device with plain `jit(tx.init)` (MB)",
    "step (s, median)",
    "step compile (s)",
    "step memory/device, XLA (MB)",
    "peak RSS (MB)",
  ]
  cells = []
  for r in rows:
    step_mb = "n/a" if r["step_device_MB"] is None else f"{r['step_device_MB']:.0f}"
    cells.append(
      [
        r["config"],
        f"{r['init_first_s']:.2f}",
        f"{r['init_run_s']:.3f}",
        f"{r['state_per_device_MB']:.0f}",
        f"{r['plain_jit_init_max_device_MB']:.0f}",
        f"{r['step_median_s']:.3f}",
        f"{r['step_compile_s']:.2f}",
        step_mb,
        f"{r['peak_rss_MB']:.0f}",
      ]
    )
  return harness.md_table(header, cells)


def _parser() -> argparse.ArgumentParser:
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
    default=harness.results_path("RESULTS_scale.md"),
    help="markdown file to write ('' to skip)",
  )
  parser.add_argument("--config", help=argparse.SUPPRESS)  # internal: run one config
  return parser


def _markdown(args: argparse.Namespace, command: str, rows: list[dict], load: float) -> str:
  import jax  # pylint: disable=import-outside-toplevel (not before the children ran)

  return "\n".join(
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


def main() -> None:
  parser = _parser()
  args = parser.parse_args()
  if args.config:
    harness.emit(harness.RESULT, child(args))
    return

  load = os.getloadavg()[0]
  rows = []
  for config in [c for c in args.configs.split(",") if c]:
    rows.append(run_config(config, args))
    harness.log(f"done: {config}")

  options = [(k, getattr(args, k)) for k in ("vocab", "d_model", "layers", "steps")]
  command = harness.options_command(
    "python benchmarks/scale_check.py", [(k, v) for k, v in options if v != parser.get_default(k)]
  )
  md = _markdown(args, command, rows, load)
  print(md)
  if args.output:
    harness.write_text(args.output, md + "\n")


if __name__ == "__main__":
  main()
