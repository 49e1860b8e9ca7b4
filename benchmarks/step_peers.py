"""The implementations that `benchmarks.step` times: names, traffic, descriptions, optimizers.

Standard library at import time: the optimizers are built by `make_tx` inside a worker,
and a PyTorch worker never imports jax.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from typing import Any

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
# the 3-leaf tree of the HLO analysis (distinct shapes)
HLO_SHAPES = {"a": (256, 512), "b": (65536,), "c": (32, 32, 24)}


def roofline(case: dict[str, Any]) -> tuple[float | None, float | None]:
  """(best triad GB/s, best in-place GB/s) measured in a timed case of `benchmarks.step`."""
  n = case["n_params"]
  best = {}
  for kind in ("triad", "in-place"):
    times = case["times"]
    vals = [12 * n / statistics.median(times[k]) / 1e9 for k in times if k.startswith(kind)]
    best[kind] = max(vals) if vals else None
  return best["triad"], best["in-place"]


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


# params + grads + optimizer state, bytes per float32 parameter (the memory table's minimum)
MIN_MEMORY_BYTES = {
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
}


def uses_torch(name: str) -> bool:
  """Whether `name` runs on PyTorch (a step or a roofline kernel)."""
  return IMPLS[name][0] == "torch" or name.endswith("torch")


def _have(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def available(names: list[str]) -> tuple[list[str], list[str]]:
  """(the `names` whose framework is installed, the others)."""
  have_torch, have_keras = _have("torch"), _have("keras")
  ok, skipped = [], []
  for n in names:
    kind = IMPLS[n][0]
    if (uses_torch(n) and not have_torch) or (kind == "keras" and not have_keras):
      skipped.append(n)
    else:
      ok.append(n)
  return ok, skipped
