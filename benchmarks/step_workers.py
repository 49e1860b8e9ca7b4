"""The measurements of `benchmarks.step`, each run in its own process (``--worker SPEC``).

* ``serve``: builds implementations on one tree and times one interleaved round per
  request read from stdin (`worker_serve`);
* ``memory``: peak resident memory of one implementation's steps (`worker_memory`);
* ``compile``: trace + lower and XLA compile time of the donated step (`worker_compile`);
* ``hlo``: the optimized HLO's traffic per leaf (`worker_hlo`).

The result goes to stdout as a tagged JSON line (`harness.emit`).
"""

from __future__ import annotations

import gc
import math
import os
import re
import sys
from typing import Any

from benchmarks import harness
from benchmarks.hlo import leaf_traffic
from benchmarks.step_impls import CompiledStep, Impl, KerasStep, build, make_data, mismatched_step
from benchmarks.step_peers import HLO_SHAPES, IMPLS, LR, make_tx, uses_torch
from benchmarks.trees import nest, tree_spec

# ----------------------------------------------------------------------------------------------
# Step time
# ----------------------------------------------------------------------------------------------


class Bench:
  """The implementations of one process on one tree: built, warmed up, timed round by round."""

  def __init__(self, tree: str, impls: list[str], batch_s: float):
    spec = tree_spec(tree)
    np_params, np_grads = make_data(spec)
    jax_grads = torch_grads = None
    if any(not uses_torch(n) for n in impls):  # (jaxlib is never loaded next to torch)
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

      jax_grads = nest({k: jnp.array(v) for k, v in np_grads.items()})
    if any(uses_torch(n) for n in impls):
      import torch  # pylint: disable=import-outside-toplevel

      torch.set_num_threads(os.cpu_count() or 1)
      torch_grads = [torch.from_numpy(v) for v in np_grads.values()]
    self.built: dict[str, Impl] = {}
    for name in impls:
      self.built[name] = build(name, np_params, jax_grads, torch_grads)
    del np_params
    gc.collect()
    # warm-up, and batches of enough steps to last about batch_s
    self.reps = {}
    for name, impl in self.built.items():
      for _ in range(2):
        impl.step()
      impl.sync()
      dt = harness.seconds_per_call(impl.step, 1, impl.sync)
      self.reps[name] = max(1, min(2000, int(batch_s / max(dt, 1e-7))))

  def round(self, r: int) -> dict[str, float]:
    """One timed batch of every implementation, in an order rotated by `r`; seconds per step."""
    order = list(self.built)
    k = r % len(order)
    out = {}
    gc.disable()
    try:
      for name in order[k:] + order[:k]:
        impl = self.built[name]
        impl.sync()
        out[name] = harness.seconds_per_call(impl.step, self.reps[name], impl.sync)
    finally:
      gc.enable()
    return out


def worker_serve(tree: str, impls: list[str], batch_s: float) -> None:
  """Builds `impls` on `tree`, then times one round per ``round R`` line read from stdin.

  The orchestrator runs the JAX/Keras implementations and the PyTorch ones in two
  such processes and alternates their rounds: measurements stay side by side in
  time, while the two runtimes' thread pools (XLA's and PyTorch's OpenMP) do not
  share a process. (In one process on this 2-core machine, PyTorch's OpenMP steps
  ran up to 30x slower once jaxlib was loaded.)
  """
  bench = Bench(tree, impls, batch_s)
  first = {n: i.compile_s for n, i in bench.built.items()}
  harness.emit("@@READY", {"reps": bench.reps, "first_call_s": first})
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      break
    harness.emit("@@ROUND", bench.round(int(cmd[1])))


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------


def _torch_memory_impl(name: str, n: int) -> Any:
  """`torch.optim.Adam` on one leaf of `n` parameters, after its first step (the state)."""
  import torch  # pylint: disable=import-outside-toplevel

  kw = {"fused": True} if name == "torch fused" else {"foreach": True}
  params = [torch.nn.Parameter(torch.full((n,), 0.05))]
  params[0].grad = torch.full((n,), 1e-3)
  opt = torch.optim.Adam(params, lr=LR, **kw)
  opt.step()  # lazily creates exp_avg, exp_avg_sq
  return opt


def _jax_memory_impl(name: str, n: int, out: dict[str, Any]) -> Impl:
  """A JAX step on one leaf of `n` parameters after its first step; ``out["compiled"]``: XLA's."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  grads = {"w": jnp.full((n,), 1e-3, jnp.float32)}
  if IMPLS[name][0] == "keras":
    out["compiled"] = None
    return KerasStep({"w": jnp.full((n,), 0.05, jnp.float32)}, grads)
  tx = make_tx(name)
  params = {"w": jnp.full((n,), 0.05, jnp.float32)}
  state = tx.init(params)
  step = harness.train_step(tx, optax.apply_updates)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  out["compiled"] = harness.xla_memory(compiled)
  impl = CompiledStep(compiled, params, state, grads)
  del params, state
  impl.step()
  return impl


def _memory_once(name: str, n: int, steps: int) -> dict[str, Any]:
  out: dict[str, Any] = {"impl": name, "n": n}
  gc.collect()
  base = harness.proc_status_kb("VmRSS")
  if IMPLS[name][0] == "torch":
    impl: Any = _torch_memory_impl(name, n)
    sync = lambda: None
  else:
    impl = _jax_memory_impl(name, n, out)
    sync = impl.sync
    sync()
  gc.collect()
  out["reset"] = harness.reset_peak_rss()
  for _ in range(steps):
    impl.step()
  sync()
  out["peak_kb"] = harness.proc_status_kb("VmHWM")
  out["end_kb"] = harness.proc_status_kb("VmRSS")
  out["base_kb"] = base
  out["peak_bytes_per_param"] = (out["peak_kb"] - base) * 1024 / n
  return out


def worker_memory(name: str, n: int, steps: int = 3) -> dict[str, Any]:
  """Peak resident memory of `name`'s steps on one leaf of `n` parameters, alone in this process.

  The whole procedure first runs once on 65536 parameters (so that the runtime,
  the compiler and the allocator have grown to their working size), then on `n`:
  the baseline is the resident set before any array of size `n` exists; the peak
  (VmHWM) is reset after allocation, init, compilation and one step, and read
  after `steps` more, so it is the high-water mark of the train steps: params +
  grads + optimizer state + whatever a step allocates (+ the compiled code).
  """
  if IMPLS[name][0] == "torch":
    import torch  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(os.cpu_count() or 1)
  _memory_once(name, 65536, steps)
  return _memory_once(name, n, steps)


# ----------------------------------------------------------------------------------------------
# Compile time and HLO
# ----------------------------------------------------------------------------------------------


def worker_compile(name: str, tree: str) -> dict[str, Any]:
  """Trace + lower and XLA compile time of the donated train step, on abstract arrays.

  ``init_s`` (building the optimizer and ``jax.eval_shape`` of its init) is kept
  apart: it is not part of the train step's compilation.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  jax.block_until_ready(jnp.zeros(8) + 1)
  spec = tree_spec(tree)
  params = nest({k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in spec.items()})

  def init():
    tx = make_tx(name)
    return tx, jax.eval_shape(tx.init, params)

  (tx, state), init_s = harness.timed(init)
  step = harness.train_step(tx, optax.apply_updates)
  lower = lambda: jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
  lowered, lower_s = harness.timed(lower)
  compiled, compile_s = harness.timed(lowered.compile)
  text = compiled.as_text() or ""
  entry = text[text.find("\nENTRY") :]
  return {
    "impl": name,
    "tree": tree,
    "n_leaves": len(spec),
    "init_s": init_s,
    "lower_s": lower_s,
    "compile_s": compile_s,
    "total_s": lower_s + compile_s,
    "stablehlo_lines": lowered.as_text().count("\n"),
    "kernels": len(re.findall(r" fusion\(", entry)),
  }


def worker_hlo(names: list[str]) -> dict[str, Any]:
  """Optimized-HLO traffic per leaf of each JAX implementation on a 3-leaf tree."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  out = {}
  for name in names:
    if IMPLS[name][0] != "jax":
      continue
    tx = make_tx(name)
    params = {k: jnp.ones(s, jnp.float32) for k, s in HLO_SHAPES.items()}
    grads = {k: jnp.full(s, 0.5, jnp.float32) for k, s in HLO_SHAPES.items()}
    state = tx.init(params)
    if name.endswith("mismatched"):
      step, args = mismatched_step(tx, optax.apply_updates), (state, params, grads)
    else:
      step, args = harness.train_step(tx, optax.apply_updates), (params, state, grads)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
    text = compiled.as_text()
    out[name] = {
      "per_leaf": {k: leaf_traffic(text, s) for k, s in HLO_SHAPES.items()},
      "temp_bytes": harness.xla_memory(compiled)["temp"],
      "param_bytes": sum(4 * math.prod(s) for s in HLO_SHAPES.values()),
    }
  return out


def worker_main(spec: dict[str, Any]) -> None:
  """Runs the worker that ``spec["kind"]`` names with the rest of `spec` as its arguments."""
  kind = spec.pop("kind")
  if kind == "serve":
    worker_serve(**spec)
    return
  fn = {"memory": worker_memory, "compile": worker_compile, "hlo": worker_hlo}[kind]
  harness.emit(harness.RESULT, fn(**spec))
