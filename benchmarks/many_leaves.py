"""Many-leaf benchmark (issue 13): compile time, tiny-leaf step time, large-leaf no-regression.

Ratios to ``optax.adam`` defaults (and, for the grouped mode, to today's
optadam), all measured in the same process, interleaved, medians::

  python -m benchmarks.many_leaves [--leaves 1000,2000] [--rounds 3] [--out FILE]
      [--compile-impls "optax.adam,optadam grouped,..."] [--skip compile,step,large]

* compile: the donated ``step(params, state, grads)`` of K leaves of 8-64 x 8-64
  (seeded), ``jax.jit(...).lower(...).compile()`` on abstract arrays, a fresh
  optimizer and step function (and ``jax.clear_caches()``) per measurement;
  also the optimized HLO's kernels (ENTRY instructions that are not free) per leaf.
* step: 50 tiny leaves (16x16), donated step, time per step.
* large: one 1e7 leaf and the 300-leaf 15.8M transformer tree of
  `benchmarks.step`, grouped vs ungrouped optadam.

"everything on" is amsgrad, weight_decay=0.004, clipnorm=1.0, EMA with
overwrite every 10 steps. The grouped mode is ``group_small_leaves=THRESHOLD``.
Writes a Markdown table to ``benchmarks/RESULTS_many_leaves.md``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optadam
from benchmarks import harness
from benchmarks.hlo import _FREE_OPS, entry_instructions
from benchmarks.trees import case_label, tree_spec

THRESHOLD = 4096  # all of the 8-64 x 8-64 leaves; in the 300-leaf tree, biases and norms
EVERYTHING = dict(amsgrad=True, weight_decay=0.004, clipnorm=1.0, use_ema=True)

IMPLS: dict[str, Callable[[], Any]] = {
  "optax.adam": lambda: optax.adam(1e-3),
  "optadam": lambda: optadam.adam(),
  "optadam grouped": lambda: optadam.adam(group_small_leaves=THRESHOLD),
  "optadam everything": lambda: optadam.adam(**EVERYTHING, ema_overwrite_frequency=10),
  "optadam everything grouped": lambda: optadam.adam(
    **EVERYTHING, ema_overwrite_frequency=10, group_small_leaves=THRESHOLD
  ),
}


def small_tree(k: int, seed: int = 0) -> dict[str, tuple[int, ...]]:
  r = np.random.RandomState(seed)
  return {f"l{i:04d}": (int(r.randint(8, 65)), int(r.randint(8, 65))) for i in range(k)}


def _kernels(text: str) -> int:
  return sum(1 for _, _, op, _ in entry_instructions(text) if op not in _FREE_OPS)


def compile_once(name: str, spec: dict[str, tuple[int, ...]]) -> tuple[float, int]:
  jax.clear_caches()
  gc.collect()
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in spec.items()}
  tx = IMPLS[name]()
  state = jax.eval_shape(tx.init, params)
  step = harness.train_step(tx, optax.apply_updates)
  compile_ = lambda: jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  compiled, seconds = harness.timed(compile_)
  return seconds, _kernels(compiled.as_text())


class Stepper:
  """A donated train step of `tx` on concrete data, timed per step."""

  def __init__(self, tx: Any, spec: dict[str, tuple[int, ...]], seed: int = 0):
    r = np.random.RandomState(seed)
    self.params = {k: jnp.asarray(r.randn(*s).astype(np.float32)) for k, s in spec.items()}
    self.grads = {k: jnp.asarray(r.randn(*s).astype(np.float32) * 0.1) for k, s in spec.items()}
    self.state = tx.init(self.params)
    self.step = jax.jit(harness.train_step(tx, optax.apply_updates), donate_argnums=(0, 1))
    for _ in range(3):
      self.run(1)

  def _advance(self) -> None:
    self.params, self.state = self.step(self.params, self.state, self.grads)

  def _sync(self) -> None:
    jax.block_until_ready((self.params, self.state))

  def run(self, n: int) -> float:
    """Seconds per step over `n` steps."""
    return harness.seconds_per_call(self._advance, n, self._sync)


def time_steps(
  makers: dict[str, Callable[[], Any]], spec: dict[str, tuple[int, ...]], rounds: int, n: int
) -> dict[str, float]:
  steppers = {name: Stepper(make(), spec) for name, make in makers.items()}
  timers = {name: lambda s=s: s.run(n) for name, s in steppers.items()}
  return harness.medians(harness.interleaved_rounds(timers, rounds))


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser()
  ap.add_argument("--leaves", default="1000,2000")
  ap.add_argument("--compile-rounds", type=int, default=1)
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--skip", default="", help="comma list of: compile,step,large")
  ap.add_argument("--large-configs", default="defaults,everything")
  ap.add_argument(
    "--compile-impls",
    default="optadam,optadam grouped,optadam everything grouped",
    help="comma list of the implementations whose compile is timed (optax.adam always is; "
    '"optadam everything" ungrouped takes ~10 min at 1000 leaves, ~30 at 2000)',
  )
  ap.add_argument("--out", default="benchmarks/RESULTS_many_leaves.md")
  return ap


Measured = dict[tuple[str, ...], float]  # ratios, for the targets table


def _compile_section(args: argparse.Namespace, lines: list[str], measured: Measured) -> None:
  """Compile time and kernels of each implementation per tree size; appended to `lines`."""
  lines += ["## Compile time of the donated step (8-64 x 8-64 leaves, seeded)", ""]
  header = ["leaves", "implementation", "compile s", "ratio to optax.adam", "kernels", "per leaf"]
  lines.append(harness.md_table(header, []))
  for k in [int(x) for x in args.leaves.split(",") if x]:
    spec = small_tree(k)
    names = ["optax.adam"] + [
      n for n in args.compile_impls.split(",") if n in IMPLS and n != "optax.adam"
    ]
    res: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
    for _ in range(args.compile_rounds):
      for name in names:
        res[name].append(compile_once(name, spec))
        print(f"[compile] {k} {name}: {res[name][-1]}", flush=True)
    base = statistics.median(t for t, _ in res["optax.adam"])
    for name in names:
      t = statistics.median(x for x, _ in res[name])
      kern = res[name][0][1]
      cells = [str(k), name, f"{t:.1f}", f"{t / base:.2f}x", str(kern), f"{kern / k:.2f}"]
      lines.append(harness.md_row(cells))
      measured[("compile", str(k), name)] = t / base
    harness.write_lines(args.out, lines)


def _step_section(args: argparse.Namespace, lines: list[str], measured: Measured) -> None:
  """Step time on 50 tiny leaves; appended to `lines`."""
  spec = {f"p{i:02d}": (16, 16) for i in range(50)}
  t = time_steps(IMPLS, spec, args.rounds, 200)
  base = t["optax.adam"]
  lines += ["", "## Step time, 50 tiny leaves (16x16), donated", ""]
  lines.append(harness.md_table(["implementation", "us/step", "ratio to optax.adam"], []))
  for name, v in t.items():
    lines.append(harness.md_row([name, f"{v * 1e6:.0f}", f"{v / base:.2f}x"]))
    measured[("step", name)] = v / base
    print(f"[step] {name}: {v * 1e6:.0f} us ({v / base:.2f}x)", flush=True)
  harness.write_lines(args.out, lines)


def _large_section(args: argparse.Namespace, lines: list[str], measured: Measured) -> None:
  """Grouped vs ungrouped step time on large leaves; appended to `lines`."""
  lines += ["", "## Large leaves: grouped vs today's optadam (no regression)", ""]
  header = ["tree", "config", "ungrouped ms", "grouped ms", "ratio"]
  lines.append(harness.md_table(header, []))
  for tree in ("leaf:1e7", "transformer300"):
    spec = tree_spec(tree)
    configs = (("defaults", {}), ("everything", EVERYTHING))
    for label, kw in [c for c in configs if c[0] in args.large_configs.split(",")]:
      makers = {
        "ungrouped": lambda kw=kw: optadam.adam(**kw),
        "grouped": lambda kw=kw: optadam.adam(**kw, group_small_leaves=THRESHOLD),
      }
      t = time_steps(makers, spec, max(5, args.rounds // 2), 5)
      r = t["grouped"] / t["ungrouped"]
      ms = [f"{t['ungrouped'] * 1e3:.2f}", f"{t['grouped'] * 1e3:.2f}"]
      lines.append(harness.md_row([case_label(tree), label, *ms, f"{r:.3f}x"]))
      print(f"[large] {tree} {label}: {r:.3f}x", flush=True)
      measured[("large", tree, label)] = r
      harness.write_lines(args.out, lines)


def main() -> None:
  args = _parser().parse_args()
  skip = set(filter(None, args.skip.split(",")))
  measured: Measured = {}
  lines = ["# Many-leaf benchmark (issue 13)", ""]
  lines.append(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}")
  lines.append(f"grouped = `optadam.adam(..., group_small_leaves={THRESHOLD})`; everything = ")
  lines.append(f"`{EVERYTHING}` + `ema_overwrite_frequency=10`. Ratios to optax.adam, same run.")
  lines.append("")
  if "compile" not in skip:
    _compile_section(args, lines, measured)
  if "step" not in skip:
    _step_section(args, lines, measured)
  if "large" not in skip:
    _large_section(args, lines, measured)
  lines += _targets(measured)
  harness.write_lines(args.out, lines)


# (what, wanted ratio, key of `measured`); ratios to optax.adam except "large" (to ungrouped).
TARGETS = [
  ("compile, 1000 leaves, defaults (grouped)", 0.5, ("compile", "1000", "optadam grouped")),
  ("compile, 2000 leaves, defaults (grouped)", 0.5, ("compile", "2000", "optadam grouped")),
  (
    "compile, 1000 leaves, everything on (grouped)",
    0.8,
    ("compile", "1000", "optadam everything grouped"),
  ),
  (
    "compile, 2000 leaves, everything on (grouped)",
    0.8,
    ("compile", "2000", "optadam everything grouped"),
  ),
  ("step, 50 tiny leaves, defaults (grouped)", 0.6, ("step", "optadam grouped")),
  ("step, 50 tiny leaves, everything (grouped)", 0.9, ("step", "optadam everything grouped")),
  ("one 1e7 leaf, defaults, vs ungrouped", 1.02, ("large", "leaf:1e7", "defaults")),
  ("one 1e7 leaf, everything, vs ungrouped", 1.02, ("large", "leaf:1e7", "everything")),
  ("300-leaf tree, defaults, vs ungrouped", 1.02, ("large", "transformer300", "defaults")),
  ("300-leaf tree, everything, vs ungrouped", 1.02, ("large", "transformer300", "everything")),
]


def _targets(measured: dict[tuple[str, ...], float]) -> list[str]:
  """The issue's targets with this run's ratios: reached, or by how much not."""
  rows = []
  for what, wanted, key in TARGETS:
    if key not in measured:
      continue
    got = measured[key]
    verdict = "yes" if got <= wanted else f"**no**, by {got - wanted:.2f}x"
    rows.append([what, f"<= {wanted}x", f"{got:.2f}x", verdict])
  header = ["target", "wanted", "measured", "reached?"]
  return ["", "## Targets (this run)", "", harness.md_table(header, rows)]


if __name__ == "__main__":
  main()
