"""One optimizer step of `optadam.adam`, measured side by side against its peers (issue 8).

    python -m benchmarks.step            # full run (~10 min on 2 cores), writes RESULTS.md + plot
    python -m benchmarks.step --quick    # smaller sizes, fewer rounds (< 2 min)
    python -m benchmarks.step --sizes 1e6 1e7 --no-memory --no-compile --out /tmp/r.md

An Adam step is memory-bound: in float32 it reads params, grads, m, v and writes
params, m, v, so at least 28 bytes move per parameter (36 with AMSGrad or the
parameter EMA). This harness times one step of each implementation

  * JAX: ``step(params, opt_state, grads) -> (params, opt_state)`` under ``jax.jit``
    with ``donate_argnums=(0, 1)`` and the outputs in the order of the inputs (the
    donation pattern under which XLA updates the buffers in place),
  * Keras 3 ``keras.optimizers.Adam`` on the JAX backend (``stateless_apply`` under
    the same jit and donation),
  * ``torch.optim.Adam`` (foreach and fused),

after warm-up, with ``block_until_ready`` at the end of each batch of steps, in
interleaved rounds (every round runs every implementation once, in a rotating
order, so that the machine's drift hits them all alike); it reports medians and
min/max over rounds, and ratios computed round by round (paired), which stay
meaningful on a shared, noisy machine where absolute times do not.

A STREAM-style triad (``a = b + s*c``, 12 B/element) and an in-place update
(``x = x + s*y``, 12 B/element) measured in the same process give the bandwidth
roofline; a step's "GB/s" is its minimum traffic (28/32/36/48 B per parameter,
see ``MIN_BYTES``) over its median time.

Every case runs in a fresh subprocess (``--worker``), so that arrays of one size do
not stay resident while the next is measured; peak memory and jit compile time
are measured with each implementation alone in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from benchmarks import harness
from benchmarks.step_peers import IMPLS, MEMORY_IMPLS
from benchmarks.step_plot import plot
from benchmarks.step_report import results_file
from benchmarks.step_run import run
from benchmarks.step_workers import worker_main


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--quick", action="store_true", help="small sizes, fewer rounds (< 2 min)")
  parser.add_argument(
    "--sizes",
    nargs="*",
    help="single-leaf sizes, e.g. 1e5 1e6 or 1e5,1e6 (none: no single-leaf cases)",
  )
  parser.add_argument("--trees", nargs="*", help="trees to time (transformer300, tiny50)")
  parser.add_argument("--rounds", type=int, help="interleaved rounds per case")
  parser.add_argument("--batch-ms", type=float, help="length of one timed batch of steps")
  parser.add_argument("--impls", nargs="+", help="implementations (default: all)")
  parser.add_argument("--no-memory", action="store_true")
  parser.add_argument("--no-compile", action="store_true")
  parser.add_argument("--compile-leaves", type=int, help="leaves of the compile-time tree")
  parser.add_argument("--compile-reps", type=int)
  parser.add_argument("--memory-size", type=float)
  parser.add_argument("--out", help="Markdown report (default benchmarks/RESULTS.md)")
  parser.add_argument("--plot", help="PNG plot (default benchmarks/step_time.png)")
  parser.add_argument("--json", help="also write the raw results here")
  parser.add_argument("--from-json", help="only re-render the report and plot from saved results")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  return parser


def _parse_sizes(values: list[str]) -> list[int]:
  out = []
  for v in values:
    out += [int(float(x)) for x in v.split(",") if x]
  return out


def _options(args: argparse.Namespace) -> dict[str, Any]:
  """What to measure: the command line's choices, else the defaults (smaller with --quick)."""
  quick = args.quick
  impls = args.impls or list(IMPLS)
  memory_impls = ["optax.adam", "optadam.adam", "optadam all-on", "torch fused"]
  if args.sizes is not None:
    sizes = _parse_sizes(args.sizes)
  else:
    sizes = [10**5, 10**6] if quick else [10**5, 10**6, 10**7, 5 * 10**7]
  if args.trees is not None:
    trees = args.trees
  else:
    trees = ["tiny50"] if quick else ["transformer300", "tiny50"]
  return {
    "impls": impls,
    "sizes": sizes,
    "trees": trees,
    "rounds": args.rounds or (5 if quick else 9),
    "batch_s": (args.batch_ms or (20 if quick else 30)) / 1e3,
    "memory": not args.no_memory,
    "memory_n": int(args.memory_size or (1e6 if quick else 1e7)),
    "memory_impls": [n for n in (memory_impls if quick else MEMORY_IMPLS) if n in impls],
    "compile": not args.no_compile,
    "compile_leaves": args.compile_leaves or (300 if quick else 2000),
    "compile_reps": args.compile_reps or (1 if quick else 2),
  }


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.worker:
    worker_main(json.loads(args.worker))
    return 0
  opts = _options(args)
  unknown = [n for n in opts["impls"] if n not in IMPLS]
  if unknown:
    parser.error(f"unknown implementations {unknown}; known: {list(IMPLS)}")
  out_md = args.out or harness.results_path("RESULTS.md")
  out_png = args.plot or harness.results_path("step_time.png")
  if args.from_json:
    with open(args.from_json, encoding="utf-8") as f:
      results = json.load(f)
    harness.write_text(out_md, results_file(results, results.get("command", "?")))
    plot(results, out_png)
    harness.log(f"wrote {out_md} and {out_png} from {args.from_json}")
    return 0

  command = harness.command_line("benchmarks.step", argv)
  results = run(opts, command)
  text = results_file(results, command)
  harness.write_text(out_md, text)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  plotted = plot(results, out_png)
  print(text)
  harness.log(
    f"wrote {out_md}" + (f" and {out_png}" if plotted else "") + f" in {results['wall_s']:.0f} s"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
