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
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.hlo import leaf_traffic

# ----------------------------------------------------------------------------------------------
# What is measured
# ----------------------------------------------------------------------------------------------

LR, WD, CLIP, OVERWRITE = 1e-3, 0.004, 1.0, 100

# name -> (kind, minimum bytes moved per float32 parameter, matched optax baseline)
IMPLS: dict[str, tuple[str, int, str | None]] = {
  "optax.adam": ("jax", 28, None),
  "optadam.adam": ("jax", 28, "optax.adam"),
  "optax.amsgrad": ("jax", 36, None),
  "optadam amsgrad": ("jax", 36, "optax.amsgrad"),
  "optax clip+adamw": ("jax", 32, None),
  "optadam wd+clipnorm": ("jax", 32, "optax clip+adamw"),
  "optadam ema": ("jax", 36, "optax.adam"),
  "optadam ema+overwrite": ("jax", 36, "optax.adam"),
  "optax all-on": ("jax", 40, None),
  "optadam all-on": ("jax", 48, "optax all-on"),
  "optax.adam mismatched": ("jax", 28, None),
  "keras3 Adam": ("keras", 28, None),
  "torch foreach": ("torch", 28, None),
  "torch fused": ("torch", 28, None),
  "triad jax": ("roof", 12, None),
  "in-place jax": ("roof", 12, None),
  "triad torch": ("roof", 12, None),
  "in-place torch": ("roof", 12, None),
}
MIN_BYTES = {k: v[1] for k, v in IMPLS.items()}

DESCRIPTIONS = {
  "optax.adam": "`optax.adam(1e-3)`",
  "optadam.adam": "`optadam.adam(1e-3)` (defaults)",
  "optax.amsgrad": "`optax.amsgrad(1e-3)`",
  "optadam amsgrad": "`optadam.adam(1e-3, amsgrad=True)`",
  "optax clip+adamw": (
    "`optax.chain(optax.clip_by_block_rms(1.0), optax.adamw(1e-3, weight_decay=0.004))`"
  ),
  "optadam wd+clipnorm": "`optadam.adam(1e-3, weight_decay=0.004, clipnorm=1.0)`",
  "optadam ema": "`optadam.adam(1e-3, use_ema=True)`",
  "optadam ema+overwrite": "`optadam.adam(1e-3, use_ema=True, ema_overwrite_frequency=100)`",
  "optax all-on": (
    "`optax.chain(clip_by_block_rms(1.0), scale_by_amsgrad(), "
    "add_decayed_weights(0.004), scale_by_learning_rate(1e-3))` (optax has no "
    "parameter EMA)"
  ),
  "optadam all-on": (
    "`optadam.adam(1e-3, amsgrad=True, weight_decay=0.004, clipnorm=1.0, "
    "use_ema=True, ema_overwrite_frequency=100)`"
  ),
  "optax.adam mismatched": (
    "`optax.adam`, train step `step(opt_state, params, grads) -> "
    "(params, opt_state)`: donated inputs in another order than the "
    "outputs (the anti-pattern of the issue)"
  ),
  "keras3 Adam": "Keras 3 `keras.optimizers.Adam(1e-3)`, JAX backend, `stateless_apply` under jit",
  "torch foreach": "`torch.optim.Adam(lr=1e-3, foreach=True)`",
  "torch fused": "`torch.optim.Adam(lr=1e-3, fused=True)`",
  "triad jax": "`a = b + s*c`, jit, `a` donated (12 B/element)",
  "in-place jax": "`x = x + s*y`, jit, `x` donated (12 B/element)",
  "triad torch": "`torch.add(b, c, alpha=s, out=a)` (12 B/element)",
  "in-place torch": "`x.add_(y, alpha=s)` (12 B/element)",
}

ROOF = [k for k, v in IMPLS.items() if v[0] == "roof"]
STEP_IMPLS = [k for k, v in IMPLS.items() if v[0] != "roof"]
PLOT_IMPLS = [
  "optax.adam",
  "optadam.adam",
  "optadam amsgrad",
  "optadam ema",
  "optadam all-on",
  "keras3 Adam",
  "torch foreach",
  "torch fused",
]
# implementations whose peak memory is measured (one fresh subprocess each)
MEMORY_IMPLS = [
  "optax.adam",
  "optadam.adam",
  "optax.amsgrad",
  "optadam amsgrad",
  "optadam ema",
  "optadam ema+overwrite",
  "optadam all-on",
  "keras3 Adam",
  "torch foreach",
  "torch fused",
]
COMPILE_IMPLS = ["optax.adam", "optadam.adam", "optax all-on", "optadam all-on"]


def make_tx(name: str):
  """The optax GradientTransformation of a JAX implementation."""
  import optax  # pylint: disable=import-outside-toplevel
  import optadam  # pylint: disable=import-outside-toplevel

  factories: dict[str, Callable[[], Any]] = {
    "optax.adam": lambda: optax.adam(LR),
    "optax.adam mismatched": lambda: optax.adam(LR),
    "optadam.adam": lambda: optadam.adam(LR),
    "optax.amsgrad": lambda: optax.amsgrad(LR),
    "optadam amsgrad": lambda: optadam.adam(LR, amsgrad=True),
    "optax clip+adamw": lambda: optax.chain(
      optax.clip_by_block_rms(CLIP), optax.adamw(LR, weight_decay=WD)
    ),
    "optadam wd+clipnorm": lambda: optadam.adam(LR, weight_decay=WD, clipnorm=CLIP),
    "optadam ema": lambda: optadam.adam(LR, use_ema=True),
    "optadam ema+overwrite": lambda: optadam.adam(
      LR, use_ema=True, ema_overwrite_frequency=OVERWRITE
    ),
    "optax all-on": lambda: optax.chain(
      optax.clip_by_block_rms(CLIP),
      optax.scale_by_amsgrad(),
      optax.add_decayed_weights(WD),
      optax.scale_by_learning_rate(LR),
    ),
    "optadam all-on": lambda: optadam.adam(
      LR,
      amsgrad=True,
      weight_decay=WD,
      clipnorm=CLIP,
      use_ema=True,
      ema_overwrite_frequency=OVERWRITE,
    ),
  }
  return factories[name]()


# ----------------------------------------------------------------------------------------------
# Parameter trees
# ----------------------------------------------------------------------------------------------


def _block(prefix: str, d: int, ff: int) -> dict[str, tuple[int, ...]]:
  """One transformer layer: 16 leaves."""
  leaves = {}
  for n in ("query", "key", "value", "out"):
    leaves[f"{prefix}/attn/{n}/kernel"] = (d, d)
    leaves[f"{prefix}/attn/{n}/bias"] = (d,)
  for n in ("ln1", "ln2"):
    leaves[f"{prefix}/{n}/scale"] = (d,)
    leaves[f"{prefix}/{n}/bias"] = (d,)
  leaves[f"{prefix}/mlp/up/kernel"] = (d, ff)
  leaves[f"{prefix}/mlp/up/bias"] = (ff,)
  leaves[f"{prefix}/mlp/down/kernel"] = (ff, d)
  leaves[f"{prefix}/mlp/down/bias"] = (d,)
  return leaves


def tree_spec(name: str) -> dict[str, tuple[int, ...]]:
  """Leaf path -> shape of a named parameter tree.

  ``leaf:N``: one leaf of N parameters. ``transformer300``: a 300-leaf BERT-like
  tree (18 layers, d=256, ff=1024, vocab 5000; 15.8M parameters). ``tiny50``: 50
  leaves of 15-64 parameters (dispatch overhead). ``tree:K``: K leaves of a
  transformer with d=64, ff=256 (compile time; ~3K parameters per leaf).
  """
  if name.startswith("leaf:"):
    return {"w": (int(float(name[5:])),)}
  if name == "transformer300":
    d, ff, vocab = 256, 1024, 5000
    spec = {
      "embed/token": (vocab, d),
      "embed/position": (512, d),
      "embed/type": (2, d),
      "embed/ln/scale": (d,),
      "embed/ln/bias": (d,),
    }
    for i in range(18):
      spec.update(_block(f"layer_{i:02d}", d, ff))
    spec.update(
      {
        "final_ln/scale": (d,),
        "final_ln/bias": (d,),
        "pooler/kernel": (d, d),
        "pooler/bias": (d,),
        "cls/transform/kernel": (d, d),
        "cls/transform/bias": (d,),
        "cls/bias": (vocab,),
      }
    )
    assert len(spec) == 300, len(spec)
    return spec
  if name == "tiny50":
    shapes = [(16,), (4, 8), (32,), (8, 8), (3, 5)]
    return {f"p{i:02d}": shapes[i % len(shapes)] for i in range(50)}
  if name.startswith("tree:"):
    k = int(name[5:])
    spec = {}
    for i in range(k // 16):
      spec.update(_block(f"layer_{i:04d}", 64, 256))
    for i in range(k - len(spec)):
      spec[f"extra/{i}"] = (64,)
    return spec
  raise ValueError(f"unknown tree {name!r}")


def n_params(spec: dict[str, tuple[int, ...]]) -> int:
  return sum(math.prod(s) for s in spec.values())


def case_label(tree: str) -> str:
  if tree.startswith("leaf:"):
    return f"1 leaf, {float(tree[5:]):.0e} params".replace("e+0", "e")
  if tree == "transformer300":
    return "300-leaf transformer, 15.8M"
  if tree == "tiny50":
    return "50 tiny leaves"
  return tree


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}} (a pytree with named paths)."""
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


# ----------------------------------------------------------------------------------------------
# Implementations (inside a worker)
# ----------------------------------------------------------------------------------------------


class _Impl:
  compile_s: float | None = None

  def step(self) -> None:
    raise NotImplementedError

  def sync(self) -> None:
    pass


class _JaxStep(_Impl):
  """``jax.jit(step, donate_argnums=(0, 1))`` of an optax transformation."""

  def __init__(self, name: str, np_params: dict[str, Any], grads: Any):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    import optadam  # pylint: disable=import-outside-toplevel

    self._jax = jax
    self.mismatched = name.endswith("mismatched")
    tx = make_tx(name)
    apply = optadam.apply_updates if name.startswith("optadam") else optax.apply_updates
    params = _nest({k: jnp.array(v) for k, v in np_params.items()})
    state = tx.init(params)
    self.grads = grads
    if name.endswith("mismatched"):

      def step(s, p, g):
        u, s = tx.update(g, s, p)
        return apply(p, u), s

      self.args = [state, params]
    else:

      def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply(p, u), s

      self.args = [params, state]
    self.fn = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    out = self.fn(*self.args, self.grads)  # trace + compile + one step
    jax.block_until_ready(out)
    self.compile_s = time.perf_counter() - t0
    self._set(out)

  def _set(self, out) -> None:
    p, s = out
    self.args = [s, p] if self.mismatched else [p, s]

  def step(self) -> None:
    self._set(self.fn(*self.args, self.grads))

  def sync(self) -> None:
    self._jax.block_until_ready(self.args)


class _KerasStep(_Impl):
  """Keras 3 Adam (JAX backend): ``stateless_apply`` under jit, donated."""

  def __init__(self, np_params: dict[str, Any], grads: Any):
    import jax  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    self._jax = jax
    # in the order of jax.tree.leaves(grads) (sorted paths)
    leaves = jax.tree.leaves(_nest(dict(np_params)))
    variables = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(leaves)]
    self.opt = keras.optimizers.Adam(learning_rate=LR)
    self.opt.build(variables)
    self.params = [v.value for v in variables]
    self.state = [v.value for v in self.opt.variables]
    self.grads = list(jax.tree.leaves(grads))
    opt = self.opt

    def step(p, s, g):
      return opt.stateless_apply(s, g, p)

    self.fn = jax.jit(step, donate_argnums=(0, 1))
    del variables
    t0 = time.perf_counter()
    self.params, self.state = self.fn(self.params, self.state, self.grads)
    jax.block_until_ready(self.params)
    self.compile_s = time.perf_counter() - t0

  def step(self) -> None:
    self.params, self.state = self.fn(self.params, self.state, self.grads)

  def sync(self) -> None:
    self._jax.block_until_ready((self.params, self.state))


class _TorchStep(_Impl):
  """``torch.optim.Adam`` with ``foreach=True`` or ``fused=True``."""

  def __init__(self, name: str, np_params: dict[str, Any], torch_grads: list[Any]):
    import torch  # pylint: disable=import-outside-toplevel

    self.params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in np_params.values()]
    for p, g in zip(self.params, torch_grads):
      p.grad = g
    kw = {"fused": True} if name == "torch fused" else {"foreach": True}
    self.opt = torch.optim.Adam(self.params, lr=LR, **kw)
    t0 = time.perf_counter()
    self.opt.step()  # creates the state
    self.compile_s = time.perf_counter() - t0

  def step(self) -> None:
    self.opt.step()


class _JaxRoof(_Impl):
  """Triad ``a = b + s*c`` or in-place ``x = x + s*y`` over the tree, jit, donated."""

  def __init__(self, name: str, np_params: dict[str, Any], grads: Any):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    self._jax = jax
    self.b = grads
    s = 1e-3
    if name == "triad jax":
      self.a = jax.tree.map(jnp.zeros_like, grads)
      self.c = _nest({k: jnp.array(v) for k, v in np_params.items()})
      # keep_unused: `a` is only the donated output buffer (jit would prune it, and then
      # allocate -- and page-fault -- a fresh output at every call)
      self.fn = jax.jit(
        lambda a, b, c: jax.tree.map(lambda b_, c_: b_ + s * c_, b, c),
        donate_argnums=(0,),
        keep_unused=True,
      )
      self._call = lambda: self.fn(self.a, self.b, self.c)
    else:
      self.a = _nest({k: jnp.array(v) for k, v in np_params.items()})
      self.fn = jax.jit(
        lambda x, y: jax.tree.map(lambda x_, y_: x_ + s * y_, x, y), donate_argnums=(0,)
      )
      self._call = lambda: self.fn(self.a, self.b)
    self.a = self._call()
    jax.block_until_ready(self.a)

  def step(self) -> None:
    self.a = self._call()

  def sync(self) -> None:
    self._jax.block_until_ready(self.a)


class _TorchRoof(_Impl):
  """Triad / in-place update with torch (intra-op parallel over the cores)."""

  def __init__(self, name: str, np_params: dict[str, Any], torch_grads: list[Any]):
    import torch  # pylint: disable=import-outside-toplevel

    self.b = torch_grads
    self.x = [torch.from_numpy(v.copy()) for v in np_params.values()]
    if name == "triad torch":
      self.a = [torch.empty_like(t) for t in self.x]

      def call():
        for a, b, c in zip(self.a, self.b, self.x):
          torch.add(b, c, alpha=1e-3, out=a)
    else:

      def call():
        torch._foreach_add_(self.x, self.b, alpha=1e-3)  # pylint: disable=protected-access

    self.step = call  # type: ignore[method-assign]
    call()


def _have(module: str) -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel

  return importlib.util.find_spec(module) is not None


def _available(names: list[str]) -> tuple[list[str], list[str]]:
  have_torch, have_keras = _have("torch"), _have("keras")
  ok, skipped = [], []
  for n in names:
    kind = IMPLS[n][0]
    needs_torch = kind == "torch" or n.endswith("torch")
    if (needs_torch and not have_torch) or (kind == "keras" and not have_keras):
      skipped.append(n)
    else:
      ok.append(n)
  return ok, skipped


def _make_data(spec: dict[str, tuple[int, ...]], seed: int = 0):
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  params = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.05) for k, s in spec.items()}
  grads = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for k, s in spec.items()}
  return params, grads


def _build(name: str, np_params, jax_grads, torch_grads) -> _Impl:
  kind = IMPLS[name][0]
  if kind == "jax":
    return _JaxStep(name, np_params, jax_grads)
  if kind == "keras":
    return _KerasStep(np_params, jax_grads)
  if kind == "torch":
    return _TorchStep(name, np_params, torch_grads)
  if name.endswith("jax"):
    return _JaxRoof(name, np_params, jax_grads)
  return _TorchRoof(name, np_params, torch_grads)


# ----------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# ----------------------------------------------------------------------------------------------


def _uses_torch(name: str) -> bool:
  return IMPLS[name][0] == "torch" or name.endswith("torch")


class _Bench:
  """The implementations of one process on one tree: built, warmed up, timed round by round."""

  def __init__(self, tree: str, impls: list[str], batch_s: float):
    spec = tree_spec(tree)
    np_params, np_grads = _make_data(spec)
    jax_grads = torch_grads = None
    if any(not _uses_torch(n) for n in impls):  # (jaxlib is never loaded next to torch)
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

      jax_grads = _nest({k: jnp.array(v) for k, v in np_grads.items()})
    if any(_uses_torch(n) for n in impls):
      import torch  # pylint: disable=import-outside-toplevel

      torch.set_num_threads(os.cpu_count() or 1)
      torch_grads = [torch.from_numpy(v) for v in np_grads.values()]
    self.built: dict[str, _Impl] = {}
    for name in impls:
      self.built[name] = _build(name, np_params, jax_grads, torch_grads)
    del np_params
    gc.collect()
    # warm-up, and batches of enough steps to last about batch_s
    self.reps = {}
    for name, impl in self.built.items():
      for _ in range(2):
        impl.step()
      impl.sync()
      t0 = time.perf_counter()
      impl.step()
      impl.sync()
      dt = time.perf_counter() - t0
      self.reps[name] = max(1, min(2000, int(batch_s / max(dt, 1e-7))))

  def round(self, r: int) -> dict[str, float]:
    """One timed batch of every implementation, in an order rotated by `r`; seconds per step."""
    order = list(self.built)
    k = r % len(order)
    out = {}
    gc.disable()
    try:
      for name in order[k:] + order[:k]:
        impl, n = self.built[name], self.reps[name]
        impl.sync()
        t0 = time.perf_counter()
        for _ in range(n):
          impl.step()
        impl.sync()
        out[name] = (time.perf_counter() - t0) / n
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
  bench = _Bench(tree, impls, batch_s)
  first = {n: i.compile_s for n, i in bench.built.items()}
  print("@@READY " + json.dumps({"reps": bench.reps, "first_call_s": first}), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      break
    print("@@ROUND " + json.dumps(bench.round(int(cmd[1]))), flush=True)


def _status_kb(field: str) -> int:
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return -1


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")  # resets VmHWM (the peak resident set) to the current RSS
    return True
  except OSError:
    return False


def _memory_once(name: str, n: int, steps: int) -> dict[str, Any]:
  kind = IMPLS[name][0]
  out: dict[str, Any] = {"impl": name, "n": n}
  gc.collect()
  base = _status_kb("VmRSS")
  if kind == "torch":
    import torch  # pylint: disable=import-outside-toplevel

    kw = {"fused": True} if name == "torch fused" else {"foreach": True}
    params = [torch.nn.Parameter(torch.full((n,), 0.05))]
    params[0].grad = torch.full((n,), 1e-3)
    opt = torch.optim.Adam(params, lr=LR, **kw)
    opt.step()  # lazily creates exp_avg, exp_avg_sq
    impl: Any = opt
    sync = lambda: None
  else:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    grads = {"w": jnp.full((n,), 1e-3, jnp.float32)}
    if kind == "keras":
      impl = _KerasStep({"w": jnp.full((n,), 0.05, jnp.float32)}, grads)
      out["compiled"] = None
    else:
      import optax  # pylint: disable=import-outside-toplevel

      tx = make_tx(name)
      params = {"w": jnp.full((n,), 0.05, jnp.float32)}
      state = tx.init(params)

      def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

      compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
      ma = compiled.memory_analysis()
      out["compiled"] = (
        None
        if ma is None
        else {
          "argument": ma.argument_size_in_bytes,
          "output": ma.output_size_in_bytes,
          "alias": ma.alias_size_in_bytes,
          "temp": ma.temp_size_in_bytes,
        }
      )

      class _C(_Impl):
        def __init__(self, p, s):
          self.p, self.s = p, s

        def step(self):
          self.p, self.s = compiled(self.p, self.s, grads)

        def sync(self):
          jax.block_until_ready((self.p, self.s))

      impl = _C(params, state)
      del params, state
      impl.step()
    sync = impl.sync
    sync()
  gc.collect()
  out["reset"] = _reset_peak()
  for _ in range(steps):
    impl.step()
  sync()
  out["peak_kb"] = _status_kb("VmHWM")
  out["end_kb"] = _status_kb("VmRSS")
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
  params = _nest({k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in spec.items()})
  t0 = time.perf_counter()
  tx = make_tx(name)
  state = jax.eval_shape(tx.init, params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  t1 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  text = compiled.as_text() or ""
  entry = text[text.find("\nENTRY") :]
  return {
    "impl": name,
    "tree": tree,
    "n_leaves": len(spec),
    "init_s": t1 - t0,
    "lower_s": t2 - t1,
    "compile_s": t3 - t2,
    "total_s": t3 - t1,
    "stablehlo_lines": lowered.as_text().count("\n"),
    "kernels": len(re.findall(r" fusion\(", entry)),
  }


# -- HLO analysis --------------------------------------------------------------------------------

HLO_SHAPES = {"a": (256, 512), "b": (65536,), "c": (32, 32, 24)}


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

      def step(s, p, g):
        u, s = tx.update(g, s, p)  # noqa: B023 (compiled in this iteration)
        return optax.apply_updates(p, u), s

      args = (state, params, grads)
    else:

      def step(p, s, g):
        u, s = tx.update(g, s, p)  # noqa: B023 (compiled in this iteration)
        return optax.apply_updates(p, u), s

      args = (params, state, grads)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
    text = compiled.as_text()
    per_leaf = {k: leaf_traffic(text, s) for k, s in HLO_SHAPES.items()}
    ma = compiled.memory_analysis()
    out[name] = {
      "per_leaf": per_leaf,
      "temp_bytes": ma.temp_size_in_bytes,
      "param_bytes": sum(4 * math.prod(s) for s in HLO_SHAPES.values()),
    }
  return out


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _worker_main(spec: dict[str, Any]) -> None:
  kind = spec.pop("kind")
  if kind == "serve":
    worker_serve(**spec)
    return
  fn = {"memory": worker_memory, "compile": worker_compile, "hlo": worker_hlo}[kind]
  result = fn(**spec)
  print("@@RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------


def _worker_env() -> tuple[dict[str, str], str]:
  env = dict(os.environ)
  env.setdefault("KERAS_BACKEND", "jax")  # before keras is imported in the worker
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  return env, root


def _worker_cmd(spec: dict[str, Any]) -> list[str]:
  return [sys.executable, "-m", "benchmarks.step", "--worker", json.dumps(spec)]


def _run_worker(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any] | None:
  env, root = _worker_env()
  try:
    proc = subprocess.run(
      _worker_cmd(spec),
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )
  except subprocess.TimeoutExpired:
    _log(f"  worker timed out: {spec}")
    return None
  for line in proc.stdout.splitlines():
    if line.startswith("@@RESULT "):
      return json.loads(line[len("@@RESULT ") :])
  _log(f"  worker failed ({proc.returncode}): {spec}\n{proc.stderr[-3000:]}")
  return None


def _read_tagged(proc: subprocess.Popen, tag: str) -> dict[str, Any] | None:
  for line in proc.stdout:  # type: ignore[union-attr]
    if line.startswith(tag + " "):
      return json.loads(line[len(tag) + 1 :])
  return None


def time_case(tree: str, impls: list[str], rounds: int, batch_s: float) -> dict[str, Any] | None:
  """Interleaved rounds over `impls` on `tree`: JAX and PyTorch in two served processes."""
  impls, skipped = _available(impls)
  groups = [
    g for g in ([n for n in impls if not _uses_torch(n)], [n for n in impls if _uses_torch(n)]) if g
  ]
  env, root = _worker_env()
  procs, ready = [], {"reps": {}, "first_call_s": {}}
  logs = []

  def failed(i: int) -> None:
    logs[i].seek(0)
    _log(f"  worker failed: {logs[i].read()[-3000:]}")

  try:
    for g in groups:  # built one after the other: compilation does not overlap timing
      logs.append(tempfile.TemporaryFile("w+"))  # noqa: SIM115 (closed with the servers)
      proc = subprocess.Popen(
        _worker_cmd({"kind": "serve", "tree": tree, "impls": g, "batch_s": batch_s}),
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=logs[-1],
        text=True,
        bufsize=1,
      )
      procs.append(proc)
      info = _read_tagged(proc, "@@READY")
      if info is None:
        failed(len(procs) - 1)
        return None
      for k in ready:
        ready[k].update(info[k])
    times: dict[str, list[float]] = {n: [] for n in impls}
    for r in range(rounds):
      order = list(range(len(procs)))
      for i in order if r % 2 == 0 else order[::-1]:
        procs[i].stdin.write(f"round {r}\n")  # type: ignore[union-attr]
        procs[i].stdin.flush()  # type: ignore[union-attr]
        got = _read_tagged(procs[i], "@@ROUND")
        if got is None:
          failed(i)
          return None
        for k, v in got.items():
          times[k].append(v)
  finally:
    for proc in procs:
      try:
        proc.stdin.write("quit\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
      except (BrokenPipeError, OSError):
        pass
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
    for f in logs:
      f.close()
  spec = tree_spec(tree)
  return {
    "tree": tree,
    "n_params": n_params(spec),
    "n_leaves": len(spec),
    "times": times,
    "reps": ready["reps"],
    "first_call_s": ready["first_call_s"],
    "skipped": skipped,
  }


def _median(xs: list[float]) -> float:
  return statistics.median(xs)


def _paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
  """Median, min and max over rounds of a[r] / b[r]."""
  rs = [x / y for x, y in zip(a, b)]
  return _median(rs), min(rs), max(rs)


def _fmt_t(s: float) -> str:
  if s >= 1:
    return f"{s:.2f} s"
  if s >= 1e-3:
    return f"{s * 1e3:.3g} ms"
  return f"{s * 1e6:.3g} µs"


def _roofline(case: dict[str, Any]) -> tuple[float | None, float | None]:
  """(best triad GB/s, best in-place GB/s) measured in this case."""
  n = case["n_params"]
  best = {}
  for kind in ("triad", "in-place"):
    vals = [12 * n / _median(case["times"][k]) / 1e9 for k in case["times"] if k.startswith(kind)]
    best[kind] = max(vals) if vals else None
  return best["triad"], best["in-place"]


def machine_info() -> dict[str, str]:
  info = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "cpus": str(os.cpu_count()),
  }
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      m = re.search(r"model name\s*:\s*(.*)", f.read())
      info["cpu"] = m.group(1).strip() if m else "?"
    with open("/proc/meminfo", encoding="utf-8") as f:
      m = re.search(r"MemTotal:\s*(\d+)", f.read())
      info["memory"] = f"{int(m.group(1)) / 2**20:.1f} GiB" if m else "?"
  except OSError:
    pass
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    caches = re.findall(r"^(L\d\w?) cache:\s*(.*)$", out, re.M)
    info["caches"] = ", ".join(f"{k} {v}" for k, v in caches)
  except OSError:
    pass
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  for pkg in ("jax", "jaxlib", "optax", "numpy", "keras", "torch", "optadam"):
    try:
      info[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      info[pkg] = "not installed"
  return info


def _md_table(header: list[str], rows: list[list[str]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(out)


def report(results: dict[str, Any], args: argparse.Namespace, command: str) -> str:
  """RESULTS.md text."""
  info = results["machine"]
  lines = [
    "# optadam step benchmark (issue 8)",
    "",
    "Generated by `benchmarks/step.py`; see `benchmarks/README.md` for the method and for the "
    "analysis of these numbers. **Ratios** are medians of per-round ratios (each round runs every "
    "implementation once, back to back, in a rotating order) and are the numbers to compare; "
    "absolute times on this shared 2-core machine move by ±20% between runs.",
    "",
    f"- command: `{command}`",
    f"- date: {info['date']}",
    f"- machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, {info.get('memory', '?')} RAM; "
    f"{info.get('caches', '')}; {info['platform']}",
    f"- software: Python {info['python']}, jax {info['jax']}, jaxlib {info['jaxlib']}, "
    f"optax {info['optax']}, numpy {info['numpy']}, keras {info['keras']}, torch {info['torch']}",
    f"- rounds per case: {results['rounds']}; each timing is a batch of steps lasting about "
    f"{results['batch_s'] * 1e3:.0f} ms, ended by `block_until_ready`",
    "",
  ]
  cases = [c for c in results["cases"] if c]
  # ---- roofline
  lines += [
    "## Bandwidth roofline (same process, same sizes)",
    "",
    "GB/s at 12 bytes per element; the step tables use the best triad of each case as "
    "its roofline.",
    "",
  ]
  rows = []
  for c in cases:
    if not any(k in c["times"] for k in ROOF):
      continue
    row = [case_label(c["tree"])]
    for k in ROOF:
      row.append(
        f"{12 * c['n_params'] / _median(c['times'][k]) / 1e9:.1f}" if k in c["times"] else "–"
      )
    rows.append(row)
  lines += [_md_table(["case"] + ROOF, rows), ""]
  # ---- summary of ratios
  lines += [
    "## Ratios to optax (step time; < 1 is faster)",
    "",
    "Median over rounds of the per-round ratio (both measured back to back), and in "
    "parentheses the ratio of the two fastest rounds (less sensitive to other load on "
    "the machine). First table: against `optax.adam` defaults; second: against the "
    "optax chain with the same options (see the implementation list below).",
    "",
  ]
  head = ["implementation"] + [case_label(c["tree"]) for c in cases]
  for against in ("optax.adam", "matched"):
    rows = []
    for name in STEP_IMPLS:
      base = "optax.adam" if against == "optax.adam" else IMPLS[name][2]
      if (
        not base
        or name == base
        or not any(name in c["times"] for c in cases)
        or (against == "matched" and base == "optax.adam")
      ):
        continue
      row = [name if against == "optax.adam" else f"{name} vs {base}"]
      for c in cases:
        t = c["times"]
        if name not in t or base not in t:
          row.append("–")
          continue
        row.append(f"{_paired(t[name], t[base])[0]:.2f} ({min(t[name]) / min(t[base]):.2f})")
      rows.append(row)
    lines += [_md_table(head, rows), ""]
  # ---- per-case tables
  lines += [
    "## Step time per case",
    "",
    "`GB/s`: the implementation's minimum traffic (`B/p`, bytes per parameter) over its "
    "median time; `roofline`: that over the case's best triad GB/s (median); `vs "
    "optax.adam`: per-round ratio, median [min–max] over rounds; `min/min`: ratio of "
    "the fastest rounds.",
    "",
  ]
  for c in cases:
    triad, inplace = _roofline(c)
    lines += [f"### {case_label(c['tree'])} ({c['n_leaves']} leaves, {c['n_params']:,} params)", ""]
    if triad:
      lines += [f"Triad roofline {triad:.1f} GB/s, in-place update {inplace:.1f} GB/s.", ""]
    rows = []
    t = c["times"]
    for name in STEP_IMPLS:
      if name not in t:
        continue
      med = _median(t[name])
      b = MIN_BYTES[name]
      gbs = b * c["n_params"] / med / 1e9
      ratio, minratio = "–", "–"
      if "optax.adam" in t:
        m, lo, hi = _paired(t[name], t["optax.adam"])
        ratio = f"{m:.2f} [{lo:.2f}–{hi:.2f}]"
        minratio = f"{min(t[name]) / min(t['optax.adam']):.2f}"
      rows.append(
        [
          name,
          _fmt_t(med),
          f"{_fmt_t(min(t[name]))} – {_fmt_t(max(t[name]))}",
          str(b),
          f"{gbs:.1f}",
          f"{gbs / triad:.2f}" if triad else "–",
          ratio,
          minratio,
        ]
      )
    lines += [
      _md_table(
        [
          "implementation",
          "median",
          "min – max",
          "B/p",
          "GB/s",
          "roofline",
          "vs optax.adam",
          "min/min",
        ],
        rows,
      ),
      "",
    ]
    if c.get("skipped"):
      lines += [f"Skipped (not installed): {', '.join(c['skipped'])}.", ""]
  # ---- compile
  comp = [r for r in results.get("compile", []) if r]
  if comp:
    lines += [
      "## jit compile time",
      "",
      "Each measurement in a fresh process (no JAX caches): `jax.jit(step, "
      "donate_argnums=(0, 1)).lower(...)` on abstract arrays (trace + lower) and "
      "`.compile()` (XLA); `total` = the two; median over repetitions, interleaved. "
      "`init` (building the optimizer, `eval_shape` of its init) is not included. "
      "`kernels`: fusions in the optimized ENTRY computation.",
      "",
    ]
    for tree in sorted({r["tree"] for r in comp}):
      rs = [r for r in comp if r["tree"] == tree]
      base = [r["total_s"] for r in rs if r["impl"] == "optax.adam"]
      rows = []
      for name in COMPILE_IMPLS:
        mine = [r for r in rs if r["impl"] == name]
        if not mine:
          continue
        tot = _median([r["total_s"] for r in mine])
        rows.append(
          [
            name,
            f"{_median([r['lower_s'] for r in mine]):.2f}",
            f"{_median([r['compile_s'] for r in mine]):.2f}",
            f"{tot:.2f}",
            f"{tot / _median(base):.2f}" if base else "–",
            f"{_median([r['init_s'] for r in mine]):.2f}",
            str(len(mine)),
            str(mine[0]["stablehlo_lines"]),
            str(mine[0]["kernels"]),
          ]
        )
      lines += [
        f"{rs[0]['n_leaves']} leaves (`{tree}`):",
        "",
        _md_table(
          [
            "implementation",
            "trace+lower s",
            "XLA compile s",
            "total s",
            "vs optax.adam",
            "init s",
            "reps",
            "StableHLO lines",
            "kernels",
          ],
          rows,
        ),
        "",
      ]
  # ---- memory
  mem = [r for r in results.get("memory", []) if r]
  if mem:
    n = mem[0]["n"]
    lines += [
      "## Peak memory per parameter",
      "",
      f"One leaf of {n:.0e} float32 parameters, each implementation alone in a fresh "
      "process. `peak`: high-water mark of the resident set during 3 steps (VmHWM reset "
      "after allocation, init and compilation) minus the resident set before any "
      "array existed, per parameter. `minimum`: params + grads + optimizer state. "
      "`XLA`: the compiled step's `memory_analysis()` (arguments + outputs − aliased "
      "+ temporaries) per parameter.",
      "",
    ]
    rows = []
    for r in mem:
      name = r["impl"]
      minimum = {
        "optax.adam": 16,
        "optadam.adam": 16,
        "optax.amsgrad": 20,
        "optadam amsgrad": 20,
        "optax clip+adamw": 16,
        "optadam wd+clipnorm": 16,
        "optadam ema": 20,
        "optadam ema+overwrite": 20,
        "optax all-on": 20,
        "optadam all-on": 24,
        "keras3 Adam": 16,
        "torch foreach": 16,
        "torch fused": 16,
      }.get(name)
      xla = "–"
      if r.get("compiled"):
        cm = r["compiled"]
        xla = f"{(cm['argument'] + cm['output'] - cm['alias'] + cm['temp']) / n:.1f}"
        xla += f" (temp {cm['temp'] / n:.1f})"
      rows.append([name, f"{r['peak_bytes_per_param']:.1f}", str(minimum), xla])
    lines += [
      _md_table(["implementation", "peak B/param", "minimum B/param", "XLA B/param"], rows),
      "",
    ]
  # ---- HLO
  hlo = results.get("hlo")
  if hlo:
    lines += [
      "## Optimized HLO per leaf",
      "",
      "Kernels (ENTRY instructions other than parameters, constants, tuples) that touch a "
      f"leaf's full-size arrays, for a 3-leaf tree {tuple(HLO_SHAPES.values())} under "
      "`jax.jit(step, donate_argnums=(0, 1))`; identical for the three leaves unless "
      "shown. `B/param`: (reads + writes) × 4; `temp`: compiled temporaries relative "
      "to the parameters' size.",
      "",
    ]
    rows = []
    for name, h in hlo.items():
      per = list(h["per_leaf"].values())
      p = per[0]
      same = all(x == p for x in per)
      rows.append(
        [
          name,
          str(p["kernels"]),
          str(p["writes"]),
          str(p["reads"]),
          str(p["copies"]),
          str(4 * (p["reads"] + p["writes"])) + ("" if same else " (first leaf)"),
          f"{h['temp_bytes'] / h['param_bytes']:.2f}",
        ]
      )
    lines += [
      _md_table(
        ["implementation", "kernels", "writes", "reads", "copies", "B/param", "temp"], rows
      ),
      "",
    ]
  # ---- targets
  lines += ["## Targets (issue 8)", ""] + targets(results) + [""]
  lines += ["## Implementations", ""] + [f"- **{k}**: {DESCRIPTIONS[k]}" for k in IMPLS] + [""]
  return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
  """The targets of issue 8, checked against this run (medians of per-round ratios)."""
  cases = [c for c in results["cases"] if c]
  hlo = results.get("hlo") or {}

  def verdict(ok: bool | None, near: bool = False) -> str:
    if ok is None:
      return "–"
    return "met" if ok else ("≈ within ±5% run-to-run noise" if near else "**missed**")

  def hlo_bytes(name: str) -> int | None:
    if name not in hlo:
      return None
    st = next(iter(hlo[name]["per_leaf"].values()))
    return 4 * (st["reads"] + st["writes"])

  rows = []
  # 1. default optadam <= 1.0x optax.adam everywhere
  vals = []
  for c in cases:
    t = c["times"]
    if "optadam.adam" in t and "optax.adam" in t:
      m, _, _ = _paired(t["optadam.adam"], t["optax.adam"])
      vals.append((case_label(c["tree"]), m, min(t["optadam.adam"]) / min(t["optax.adam"])))
  if vals:
    worst = max(v[1] for v in vals)
    same = hlo_bytes("optadam.adam") is not None and hlo_bytes("optadam.adam") == hlo_bytes(
      "optax.adam"
    )
    rows.append(
      [
        "default `optadam.adam` ≤ 1.0× `optax.adam` (every case)",
        ", ".join(f"{x[0]}: {x[1]:.2f} ({x[2]:.2f})" for x in vals)
        + ("; identical per-leaf kernels and traffic in the HLO" if same else ""),
        verdict(worst <= 1.0, worst <= 1.05),
      ]
    )
  # 2. >= 0.9 of triad roofline at >= 1e7
  vals = []
  for c in cases:
    if c["n_params"] >= 1e7 and c["tree"].startswith("leaf:") and "optadam.adam" in c["times"]:
      triad, inplace = _roofline(c)
      if triad:
        t = _median(c["times"]["optadam.adam"])
        vals.append(
          (
            case_label(c["tree"]),
            28 * c["n_params"] / t / 1e9 / triad,
            (hlo_bytes("optadam.adam") or 28) * c["n_params"] / t / 1e9 / inplace,
          )
        )
  if vals:
    rows.append(
      [
        "`optadam.adam` ≥ 0.9 of the triad roofline at ≥ 1e7 params (28 B/param)",
        ", ".join(f"{v[0]}: {v[1]:.2f}" for v in vals)
        + f"; XLA:CPU moves {hlo_bytes('optadam.adam')} B/param (HLO), at "
        + ", ".join(f"{v[2]:.2f}" for v in vals)
        + " of the in-place roofline",
        verdict(min(v[1] for v in vals) >= 0.9),
      ]
    )
  # 3. AMSGrad / EMA <= 1.3x optax.adam
  for name in ("optadam amsgrad", "optadam ema", "optadam ema+overwrite"):
    vals = [
      (case_label(c["tree"]), _paired(c["times"][name], c["times"]["optax.adam"])[0])
      for c in cases
      if name in c["times"] and "optax.adam" in c["times"] and c["n_params"] >= 1e6
    ]
    if vals:
      note = ""
      if hlo_bytes(name) and hlo_bytes("optax.adam"):
        note = (
          f"; HLO traffic {hlo_bytes(name)}/{hlo_bytes('optax.adam')} = "
          f"{hlo_bytes(name) / hlo_bytes('optax.adam'):.2f}"
        )
        base = IMPLS[name][2]
        if base and base != "optax.adam" and hlo_bytes(base):
          note += f" ({base}: {hlo_bytes(base) / hlo_bytes('optax.adam'):.2f})"
      worst = max(v[1] for v in vals)
      rows.append(
        [
          f"`{name}` ≤ 1.3× `optax.adam` (≥ 1e6 params)",
          ", ".join(f"{v[0]}: {v[1]:.2f}" for v in vals) + note,
          verdict(worst <= 1.3, worst <= 1.3 * 1.05),
        ]
      )
  # 4. compile all-on <= 1.2x optax.adam at 2000 leaves
  comp = [r for r in results.get("compile", []) if r]
  for tree in sorted({r["tree"] for r in comp}):
    tot = {
      n: _median(
        [r["total_s"] for r in comp if r["tree"] == tree and r["impl"] == n] or [float("nan")]
      )
      for n in COMPILE_IMPLS
    }
    if not math.isnan(tot["optadam all-on"]) and not math.isnan(tot["optax.adam"]):
      ratio = tot["optadam all-on"] / tot["optax.adam"]
      extra = (
        f"; optax's own chain with clipping, AMSGrad and weight decay: "
        f"{tot['optax all-on'] / tot['optax.adam']:.2f}"
        if not math.isnan(tot["optax all-on"])
        else ""
      )
      if not math.isnan(tot["optadam.adam"]):
        extra += f"; `optadam.adam` defaults: {tot['optadam.adam'] / tot['optax.adam']:.2f}"
      rows.append(
        [
          f"compile `optadam all-on` ≤ 1.2× `optax.adam` ({tree})",
          f"{tot['optadam all-on']:.1f} s / {tot['optax.adam']:.1f} s = {ratio:.2f}" + extra,
          verdict(ratio <= 1.2),
        ]
      )
  # 5. within 1.3x of torch fused at >= 1e7
  vals = [
    (case_label(c["tree"]), _paired(c["times"]["optadam.adam"], c["times"]["torch fused"])[0])
    for c in cases
    if c["n_params"] >= 1e7 and "optadam.adam" in c["times"] and "torch fused" in c["times"]
  ]
  if vals:
    rows.append(
      [
        "`optadam.adam` ≤ 1.3× `torch fused` at ≥ 1e7 params",
        ", ".join(f"{v[0]}: {v[1]:.2f}" for v in vals)
        + f"; traffic {hlo_bytes('optadam.adam')} B/param (XLA:CPU) vs 28 (one fused pass)",
        verdict(max(v[1] for v in vals) <= 1.3),
      ]
    )
  return [_md_table(["target", "measured", "verdict"], rows)]


def plot(results: dict[str, Any], path: str) -> bool:
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    _log("matplotlib not installed: no plot")
    return False
  cases = sorted(
    [c for c in results["cases"] if c and c["tree"].startswith("leaf:")],
    key=lambda c: c["n_params"],
  )
  if not cases:
    return False
  fig, ax = plt.subplots(figsize=(7.5, 5.2))
  for name in PLOT_IMPLS:
    pts = [
      (c["n_params"], _median(c["times"][name]), min(c["times"][name]), max(c["times"][name]))
      for c in cases
      if name in c["times"]
    ]
    if pts:
      xs, ys, lo, hi = zip(*pts)
      style = "-o" if name.startswith("optadam") else ("--s" if name.startswith("optax") else ":^")
      ax.errorbar(
        xs,
        [y * 1e3 for y in ys],
        yerr=[[(y - l) * 1e3 for y, l in zip(ys, lo)], [(h - y) * 1e3 for y, h in zip(ys, hi)]],
        fmt=style,
        label=name,
        capsize=2,
        ms=4,
        lw=1.2,
      )
  roof = [(c["n_params"], _roofline(c)[0]) for c in cases]
  roof = [(n, r) for n, r in roof if r]
  if roof:
    xs = [n for n, _ in roof]
    ax.plot(
      xs,
      [28 * n / (r * 1e9) * 1e3 for n, r in roof],
      "k-",
      lw=2,
      alpha=0.35,
      label="28 B/param at triad roofline",
    )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("parameters (one float32 leaf)")
  ax.set_ylabel("step time (ms), median and min–max")
  ax.set_title(
    f"One Adam step, {results['machine'].get('cpu', 'CPU')[:40]}, "
    f"{results['machine']['cpus']} cores"
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


def _parse_sizes(values: list[str]) -> list[int]:
  out = []
  for v in values:
    out += [int(float(x)) for x in v.split(",") if x]
  return out


def main(argv: list[str] | None = None) -> int:
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
  args = parser.parse_args(argv)
  if args.worker:
    _worker_main(json.loads(args.worker))
    return 0

  here = os.path.dirname(os.path.abspath(__file__))
  quick = args.quick
  sizes = (
    _parse_sizes(args.sizes)
    if args.sizes is not None
    else ([10**5, 10**6] if quick else [10**5, 10**6, 10**7, 5 * 10**7])
  )
  trees = (
    args.trees
    if args.trees is not None
    else (["tiny50"] if quick else ["transformer300", "tiny50"])
  )
  rounds = args.rounds or (5 if quick else 9)
  batch_s = (args.batch_ms or (20 if quick else 30)) / 1e3
  impls = args.impls or list(IMPLS)
  unknown = [n for n in impls if n not in IMPLS]
  if unknown:
    parser.error(f"unknown implementations {unknown}; known: {list(IMPLS)}")
  mem_n = int(args.memory_size or (1e6 if quick else 1e7))
  mem_impls = [
    n
    for n in (
      ["optax.adam", "optadam.adam", "optadam all-on", "torch fused"] if quick else MEMORY_IMPLS
    )
    if n in impls
  ]
  comp_leaves = args.compile_leaves or (300 if quick else 2000)
  comp_reps = args.compile_reps or (1 if quick else 2)
  out_md = args.out or os.path.join(here, "RESULTS.md")
  out_png = args.plot or os.path.join(here, "step_time.png")
  command = "python -m benchmarks.step " + " ".join(argv if argv is not None else sys.argv[1:])

  def other_results() -> str:
    """The sparse and scale benchmarks' tables (separate scripts), kept in this file too."""
    parts = []
    for name in ("RESULTS_sparse.md", "RESULTS_scale.md"):
      path = os.path.join(here, name)
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          parts.append(f.read().replace("\n# ", "\n### ").replace("# ", "### ", 1))
    if not parts:
      return ""
    return (
      "\n## Other benchmarks (their own scripts; copied from "
      "`RESULTS_sparse.md` and `RESULTS_scale.md`)\n\n" + "\n".join(parts)
    )

  if args.from_json:
    with open(args.from_json, encoding="utf-8") as f:
      results = json.load(f)
    text = report(results, args, results.get("command", "?"))
    text += f"\nTotal benchmark wall time: {results['wall_s']:.0f} s.\n" + other_results()
    with open(out_md, "w", encoding="utf-8") as f:
      f.write(text)
    plot(results, out_png)
    _log(f"wrote {out_md} and {out_png} from {args.from_json}")
    return 0

  t_start = time.perf_counter()
  results: dict[str, Any] = {
    "machine": machine_info(),
    "rounds": rounds,
    "batch_s": batch_s,
    "cases": [],
    "memory": [],
    "compile": [],
    "command": command,
  }
  _log("HLO analysis ...")
  results["hlo"] = _run_worker({"kind": "hlo", "names": [n for n in impls if IMPLS[n][0] == "jax"]})
  for tree in [f"leaf:{n}" for n in sizes] + trees:
    case_impls = [n for n in impls if not (tree == "tiny50" and IMPLS[n][0] == "roof")]
    if tree == f"leaf:{5 * 10**7}" or (tree.startswith("leaf:") and int(tree[5:]) > 2 * 10**7):
      case_impls = [n for n in case_impls if n != "optax.adam mismatched"]  # RAM: skip the extra
    _log(f"timing {case_label(tree)} ({len(case_impls)} implementations) ...")
    t0 = time.perf_counter()
    res = time_case(tree, case_impls, rounds, batch_s)
    results["cases"].append(res)
    _log(f"  {time.perf_counter() - t0:.0f} s")
  if not args.no_compile:
    tree = f"tree:{comp_leaves}"
    for rep in range(comp_reps):
      for name in COMPILE_IMPLS if rep % 2 == 0 else COMPILE_IMPLS[::-1]:
        if name not in impls:
          continue
        _log(f"compile time {name} on {comp_leaves} leaves (rep {rep + 1}/{comp_reps}) ...")
        r = _run_worker({"kind": "compile", "name": name, "tree": tree})
        if r:
          _log(f"  {r['total_s']:.1f} s")
        results["compile"].append(r)
  if not args.no_memory:
    for name in mem_impls:
      ok, _ = _available([name])
      if not ok:
        continue
      _log(f"peak memory {name} ...")
      results["memory"].append(_run_worker({"kind": "memory", "name": name, "n": mem_n}))
  results["wall_s"] = time.perf_counter() - t_start
  text = report(results, args, command)
  text += f"\nTotal benchmark wall time: {results['wall_s']:.0f} s.\n" + other_results()
  with open(out_md, "w", encoding="utf-8") as f:
    f.write(text)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  plotted = plot(results, out_png)
  print(text)
  _log(
    f"wrote {out_md}" + (f" and {out_png}" if plotted else "") + f" in {results['wall_s']:.0f} s"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
