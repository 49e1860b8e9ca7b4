"""The cost of `optadam.loss_scale_optimizer` over the plain `optadam.adam` step (issue 14).

    python -m benchmarks.loss_scale [--sizes 1e7] [--rounds 15]
        [--out benchmarks/RESULTS_loss_scale.md]

Each implementation runs the step a user's training loop runs, jitted with donation::

    updates, opt_state = tx.update(grads, opt_state, params)
    params = optadam.apply_updates(params, updates)

on float32 parameters split over 4 leaves. The implementations are timed side by side in
the same process, in interleaved rounds (plain, keras2, keras3, plain, ...), each round a batch
of steps ended by ``block_until_ready``; the table shows the median per-step time over the
rounds and its ratio to the plain step's median. The gradients are finite (no skipped steps):
the wrapper's cost is then one global finiteness reduction over the gradients (a read of
4 bytes per parameter, against Adam's 40), with the unscaling and the select of the new state
fused by XLA into Adam's kernels. The last row is the ``lax.cond`` path that any inner other
than ``optadam.adam`` takes (on CPU the conditional copies the state in and out).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

import optax

import optadam
from benchmarks import harness

IMPLS = {
  "optadam.adam": lambda: optadam.adam(1e-3),
  "loss_scale_optimizer(adam), keras2": lambda: optadam.loss_scale_optimizer(optadam.adam(1e-3)),
  "loss_scale_optimizer(adam), keras3": lambda: optadam.loss_scale_optimizer(
    optadam.adam(1e-3), style="keras3"
  ),
  # Any inner that is not optadam.adam's own (here the same Adam, hidden) takes the cond path.
  "loss_scale_optimizer(other inner: cond), keras2": lambda: optadam.loss_scale_optimizer(
    _hidden(optadam.adam(1e-3))
  ),
}


def _hidden(tx):
  return optax.GradientTransformationExtraArgs(tx.init, tx.update)


def make_data(n: int, seed: int = 0):
  sizes = [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8]
  rng = np.random.RandomState(seed)
  params = {
    f"p{i}": jnp.asarray(rng.normal(size=s).astype(np.float32)) for i, s in enumerate(sizes)
  }
  grads = {
    k: jnp.asarray(rng.normal(size=v.shape).astype(np.float32) * 2.0**15) for k, v in params.items()
  }
  return params, grads


class _Run:
  """One implementation's jitted, donated step, applied in place to its own copy of the data."""

  def __init__(self, name: str, params, grads):
    tx = IMPLS[name]()
    self.fn = jax.jit(harness.train_step(tx, optadam.apply_updates), donate_argnums=(0, 1))
    self.params = jax.tree.map(jnp.copy, params)
    self.state = tx.init(self.params)
    self.grads = grads

  def step(self) -> None:
    self.params, self.state = self.fn(self.params, self.state, self.grads)

  def sync(self) -> None:
    jax.block_until_ready(self.params)


def bench(n: int, rounds: int, batch_s: float) -> dict[str, float]:
  params0, grads = make_data(n)
  runs = {name: _Run(name, params0, grads) for name in IMPLS}
  for r in runs.values():  # compile and warm up
    for _ in range(3):
      r.step()
    r.sync()
  # steps per batch from the plain step's time
  plain = runs["optadam.adam"]
  batch = max(1, int(batch_s / harness.seconds_per_call(plain.step, 5, plain.sync)))
  timers = {
    name: lambda r=r: harness.seconds_per_call(r.step, batch, r.sync) for name, r in runs.items()
  }
  return harness.medians(harness.interleaved_rounds(timers, rounds))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", nargs="*", default=["1e7"])
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--batch-s", type=float, default=0.3, help="seconds per timed batch")
  ap.add_argument("--out", default=harness.results_path("RESULTS_loss_scale.md"))
  args = ap.parse_args(argv)
  lines = [
    "# Loss scaling: cost over the plain optadam.adam step",
    "",
    f"Made by `{harness.command_line('benchmarks.loss_scale', argv)}`"
    f" on {datetime.date.today()}: JAX {jax.__version__}, backend {jax.default_backend()} "
    f"({jax.devices()[0].device_kind}), {platform.machine()}, {os.cpu_count()} CPUs. Median "
    f"per-step time over {args.rounds} interleaved rounds; float32 parameters in 4 leaves; "
    "finite gradients. See the module docstring for the method.",
    "",
  ]
  rows = []
  for size in args.sizes:
    n = int(float(size))
    med = bench(n, args.rounds, args.batch_s)
    base = med["optadam.adam"]
    for name, t in med.items():
      rows.append([f"{n:.0e}", name, f"{t * 1e3:.3f}", f"{t / base:.3f}"])
      print(f"{n:.0e}  {name:40s} {t * 1e3:8.3f} ms  x{t / base:.3f}", flush=True)
  header = ["parameters", "implementation", "step (ms)", "ratio to optadam.adam"]
  harness.write_lines(args.out, lines + [harness.md_table(header, rows, align="rlrr")])
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
