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
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import optax

import optadam

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


def build(name: str, params):
  tx = IMPLS[name]()

  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optadam.apply_updates(params, updates), opt_state

  step = jax.jit(step, donate_argnums=(0, 1))
  params = jax.tree.map(jnp.copy, params)
  return step, params, tx.init(params)


def bench(n: int, rounds: int, batch_s: float) -> dict[str, float]:
  params0, grads = make_data(n)
  runs = {name: list(build(name, params0)) for name in IMPLS}
  for r in runs.values():  # compile and warm up
    for _ in range(3):
      r[1], r[2] = r[0](r[1], r[2], grads)
    jax.block_until_ready(r[1])
  # steps per batch from the plain step's time
  step, p, s = runs["optadam.adam"]
  t = time.perf_counter()
  for _ in range(5):
    p, s = step(p, s, grads)
  jax.block_until_ready(p)
  runs["optadam.adam"][1:] = [p, s]
  per = (time.perf_counter() - t) / 5
  batch = max(1, int(batch_s / per))
  times = {name: [] for name in IMPLS}
  for _ in range(rounds):
    for name, r in runs.items():
      t = time.perf_counter()
      for _ in range(batch):
        r[1], r[2] = r[0](r[1], r[2], grads)
      jax.block_until_ready(r[1])
      times[name].append((time.perf_counter() - t) / batch)
  return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", nargs="*", default=["1e7"])
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--batch-s", type=float, default=0.3, help="seconds per timed batch")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS_loss_scale.md"))
  args = ap.parse_args(argv)
  lines = [
    "# Loss scaling: cost over the plain optadam.adam step",
    "",
    f"Made by `python -m benchmarks.loss_scale {' '.join(sys.argv[1:] if argv is None else argv)}`"
    f" on {datetime.date.today()}: JAX {jax.__version__}, backend {jax.default_backend()} "
    f"({jax.devices()[0].device_kind}), {platform.machine()}, {os.cpu_count()} CPUs. Median "
    f"per-step time over {args.rounds} interleaved rounds; float32 parameters in 4 leaves; "
    "finite gradients. See the module docstring for the method.",
    "",
    "| parameters | implementation | step (ms) | ratio to optadam.adam |",
    "|---:|---|---:|---:|",
  ]
  for size in args.sizes:
    n = int(float(size))
    med = bench(n, args.rounds, args.batch_s)
    base = med["optadam.adam"]
    for name, t in med.items():
      lines.append(f"| {n:.0e} | {name} | {t * 1e3:.3f} | {t / base:.3f} |")
      print(f"{n:.0e}  {name:40s} {t * 1e3:8.3f} ms  x{t / base:.3f}", flush=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
