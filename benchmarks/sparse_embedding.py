"""Sparse vs dense embedding gradients through `optadam.adam`: step time and peak memory.

A ``rows x features`` float32 embedding table gets a gradient on ``touched`` looked-up
rows per step (ids drawn with replacement, so some repeat). Three jitted training
steps, each donating the parameters and the optimizer state:

* ``sparse``: the rows' gradients and ids as an `optadam.IndexedSlices`;
* ``densified``: the same inputs scattered into a table-sized gradient inside the
  step (what ``jax.grad`` of a gather hands to an optimizer);
* ``dense input``: a precomputed table-sized gradient passed in (the optimizer's
  own cost on a dense gradient; the gradient is an extra argument).

Reported: the median step time over interleaved rounds; XLA's compiled memory
analysis (peak = arguments + outputs + temporaries - donated aliases); and, per
variant in a fresh subprocess, the process's peak RSS (CPU) or the device's peak
bytes in use (GPU). Run::

  python -m benchmarks.sparse_embedding            # 1M x 64, 4096 rows, ~1-2 min on CPU

It prints a markdown table and writes it to ``benchmarks/RESULTS_sparse.md``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import optadam
from benchmarks import harness

VARIANTS = ("sparse", "densified", "dense input")
MB = 1024 * 1024


def build(
  rows: int, features: int, touched: int, seed: int = 0, id_sets: int = 4, dense_input: bool = True
):
  """Parameters, optimizer, the three jitted steps and their inputs.

  The "dense input" variant gets one precomputed table-sized gradient (built only
  when `dense_input`), reused at every step.
  """
  tx = optadam.adam(learning_rate=1e-3)
  # A cheap fused formula (jax.random.normal would hold several table-sized temporaries).
  params = jax.jit(
    lambda: (
      0.05
      * jnp.sin(jnp.arange(rows * features, dtype=jnp.float32) * 0.37 + seed).reshape(
        rows, features
      )
    )
  )()
  rng = np.random.default_rng(seed)
  inputs = [
    (
      jnp.asarray(rng.normal(size=(touched, features)), jnp.float32),
      jnp.asarray(rng.integers(0, rows, size=touched), jnp.int32),
    )
    for _ in range(id_sets)
  ]

  apply = harness.train_step(tx, optadam.apply_updates)

  def sparse_step(p, s, values, ids):
    return apply(p, s, optadam.IndexedSlices(values, ids, (rows, features)))

  def densified_step(p, s, values, ids):
    return apply(p, s, jnp.zeros((rows, features), values.dtype).at[ids].add(values))

  def dense_input_step(p, s, g):
    return apply(p, s, g)

  steps = {
    "sparse": jax.jit(sparse_step, donate_argnums=(0, 1)),
    "densified": jax.jit(densified_step, donate_argnums=(0, 1)),
    "dense input": jax.jit(dense_input_step, donate_argnums=(0, 1)),
  }
  dense_grad = (
    jax.jit(lambda v, i: jnp.zeros((rows, features)).at[i].add(v))(*inputs[0])
    if dense_input
    else None
  )

  def args_for(name, i):
    return (dense_grad,) if name == "dense input" else inputs[i % len(inputs)]

  return tx, params, steps, args_for


def fresh(params, tx):
  p = jnp.array(params, copy=True)
  return p, tx.init(p)


def compiled_memory(steps, params, state, args_for):
  out = {}
  for name, step in steps.items():
    mem = harness.xla_memory(step.lower(params, state, *args_for(name, 0)).compile())
    if mem is None:
      out[name] = None
      continue
    out[name] = {"peak": harness.xla_peak(mem), "temp": mem["temp"], "args": mem["argument"]}
  return out


def _blocked(step, *args):
  """``step(*args)``, once its results are ready."""
  return jax.block_until_ready(step(*args))


def time_steps(tx, params, steps, args_for, rounds: int, per_round: int):
  """Median step time per variant, variants interleaved round by round."""
  states = {name: fresh(params, tx) for name in steps}
  for name, step in steps.items():  # compile + one warm step
    p, s = states[name]
    states[name] = jax.block_until_ready(step(p, s, *args_for(name, 0)))
  counter = itertools.count(1)  # which of the id sets a step gets

  def one_round(name: str) -> list[float]:
    p, s = states[name]
    out = []
    for _ in range(per_round):
      args = args_for(name, next(counter))
      jax.block_until_ready(args)
      (p, s), dt = harness.timed(_blocked, steps[name], p, s, *args)
      out.append(dt)
    states[name] = (p, s)
    return out

  timers = {name: lambda name=name: one_round(name) for name in steps}
  rounds_ = harness.interleaved_rounds(timers, rounds)
  times = {name: [t for r in rs for t in r] for name, rs in rounds_.items()}
  return harness.medians(times), times


def agreement(tx, params, steps, args_for, n: int = 2) -> float:
  """max |sparse - densified| / max |densified| of the parameters after `n` steps."""
  out = {}
  for name in ("sparse", "densified"):
    p, s = fresh(params, tx)
    for i in range(n):
      p, s = steps[name](p, s, *args_for(name, i))
    out[name] = np.asarray(p, np.float64)
  return float(np.max(np.abs(out["sparse"] - out["densified"])) / np.max(np.abs(out["densified"])))


def measure_one(variant: str, rows: int, features: int, touched: int) -> dict:
  """In a fresh process: peak RSS / device bytes of setup alone or of setup + 3 steps."""
  tx, params, steps, args_for = build(rows, features, touched, dense_input=variant == "dense input")
  p, s = jax.block_until_ready((params, tx.init(params)))
  del params
  if variant != "baseline":
    for i in range(3):
      p, s = jax.block_until_ready(steps[variant](p, s, *args_for(variant, i)))
  stats = jax.devices()[0].memory_stats() or {}
  return {"rss": harness.peak_rss(), "device_peak": stats.get("peak_bytes_in_use")}


def measure_in_subprocess(variant: str, args) -> dict:
  """`measure_one` in a fresh process (``--measure VARIANT``)."""
  sizes = ["--rows", str(args.rows), "--features", str(args.features)]
  cmd = ["--measure", variant, *sizes, "--touched", str(args.touched)]
  return harness.run_child("benchmarks.sparse_embedding", cmd)


LABELS = {
  "sparse": "sparse (`optadam.IndexedSlices`)",
  "densified": "densified in the step (`zeros.at[ids].add`)",
  "dense input": "dense table-sized gradient passed in",
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--features", type=int, default=64)
  parser.add_argument("--touched", type=int, default=4096)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--per-round", type=int, default=3)
  parser.add_argument("--no-subprocess", action="store_true", help="skip the RSS measurements")
  parser.add_argument("--output", default=harness.results_path("RESULTS_sparse.md"))
  parser.add_argument("--measure", choices=("baseline",) + VARIANTS, help=argparse.SUPPRESS)
  return parser


def _table(medians: dict, memory: dict, process: dict, proc_key: str, proc_label: str) -> str:
  header = ["gradient", "median step (ms)", "vs sparse", "compiled peak (MB)", "compiled temp (MB)"]
  if process:
    header += [f"{proc_label} (MB)", f"{proc_label} over setup (MB)"]
  rows = []
  for name in VARIANTS:
    row = [LABELS[name], f"{medians[name] * 1e3:.1f}", f"{medians[name] / medians['sparse']:.2f}x"]
    mem = memory.get(name)
    row += [f"{mem['peak'] / MB:.0f}", f"{mem['temp'] / MB:.1f}"] if mem else ["n/a", "n/a"]
    if process:
      value, base = process[name].get(proc_key), process["baseline"].get(proc_key)
      row += (
        [f"{value / MB:.0f}", f"{(value - base) / MB:.0f}"] if value and base else ["n/a", "n/a"]
      )
    rows.append(row)
  return harness.md_table(header, rows)


def _notes(args, process: dict, proc_label: str, agree: float, elapsed: float) -> list[str]:
  device = jax.devices()[0]
  table_mb = args.rows * args.features * 4 / MB
  return [
    f"Table {args.rows:,} x {args.features} float32 ({table_mb:.0f} MB; params, m and v: "
    f"{3 * table_mb:.0f} MB), {args.touched} looked-up rows per step (with repeats), "
    f"`optadam.adam(1e-3)` under `jax.jit`, params and state donated.",
    f"Median of {args.rounds * args.per_round} steps per variant, {args.rounds} interleaved rounds "
    f"of {args.per_round}. Compiled peak = arguments + outputs + temporaries - donated aliases "
    "(`compiled.memory_analysis()`).",
    f"{proc_label}: a fresh process per variant (compile + 3 steps); 'over setup' subtracts a "
    "process that only builds the table and the optimizer state. The dense-input process also "
    "holds its precomputed gradient."
    if process
    else "",
    f"Sparse and densified parameters after 2 steps agree to {agree:.1e} (max abs diff / max abs).",
    f"Device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
    f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
    f"{datetime.date.today().isoformat()}; {elapsed:.0f} s.",
  ]


def main() -> None:
  args = _parser().parse_args()
  if args.measure:
    harness.emit(harness.RESULT, measure_one(args.measure, args.rows, args.features, args.touched))
    return

  t_start = time.perf_counter()
  process = {}  # first, while this process is still small
  if not args.no_subprocess:
    for variant in ("baseline",) + VARIANTS:
      process[variant] = measure_in_subprocess(variant, args)
  tx, params, steps, args_for = build(args.rows, args.features, args.touched)
  p, s = fresh(params, tx)
  memory = compiled_memory(steps, p, s, args_for)
  del p, s
  medians, _ = time_steps(tx, params, steps, args_for, args.rounds, args.per_round)
  agree = agreement(tx, params, steps, args_for)

  on_gpu = jax.devices()[0].platform != "cpu"
  proc_key, proc_label = ("device_peak", "device peak") if on_gpu else ("rss", "peak RSS")
  table = _table(medians, memory, process, proc_key, proc_label)
  command = harness.options_command(
    "python -m benchmarks.sparse_embedding",
    (
      ("rows", args.rows),
      ("features", args.features),
      ("touched", args.touched),
      ("rounds", args.rounds),
      ("per_round", args.per_round),
    ),
  )
  notes = _notes(args, process, proc_label, agree, time.perf_counter() - t_start)
  report = (
    "## Sparse embedding gradients (`optadam.IndexedSlices`)\n\n"
    f"Command: `{command}`\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes if n) + "\n"
  )
  print(report)
  harness.write_text(args.output, report)
  print(f"written to {args.output}")


if __name__ == "__main__":
  main()
