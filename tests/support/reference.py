"""A float64 NumPy transcription of Keras 2's Adam, used as the reference.

The update of docs/semantics.md (one step, the order of one update, learning rate and betas,
parameter EMA, sparse gradients), written to be read next to it, one line per formula; no JAX
here. Parameters are a dict ``{path: array}``; a gradient of None skips that parameter for the
step (no moment decay, no weight decay, no EMA), and a step whose gradients are all None is no
step; a sparse gradient (an object with ``indices`` and ``values``, e.g. `optadam.IndexedSlices`)
takes Keras 2's sparse update.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np


def reference_adam(
  params: dict[str, np.ndarray],
  grads: Sequence[dict[str, Optional[np.ndarray]]],
  *,
  learning_rate: Any = 0.001,
  beta_1: float = 0.9,
  beta_2: float = 0.999,
  epsilon: float = 1e-7,
  amsgrad: bool = False,
  weight_decay: Optional[float] = None,
  exclude_from_weight_decay: Sequence[str] = (),
  clipnorm: Optional[float] = None,
  clipvalue: Optional[float] = None,
  global_clipnorm: Optional[float] = None,
  use_ema: bool = False,
  ema_momentum: float = 0.99,
  ema_overwrite_frequency: Optional[int] = None,
  dtype: Any = np.float64,
) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
  """Runs Keras 2's Adam; returns (params after every step, final EMA averages)."""
  x = {k: np.asarray(v, dtype).copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in x.items()}
  v = {k: np.zeros_like(v) for k, v in x.items()}
  vhat = {k: np.zeros_like(v) for k, v in x.items()}
  avg = {k: val.copy() for k, val in x.items()}  # EMA starts as a copy (Keras 2)
  history = []
  it = -1
  for step_grads in grads:
    # 0. a step without any gradient is no step (Keras 3 returns; Keras 2 raises).
    if all(gk is None for gk in step_grads.values()):
      history.append({k: val.copy() for k, val in x.items()})
      continue
    it += 1
    # 1. learning rate for this step; Keras holds a float lr in a float32 variable.
    lr = learning_rate(it) if callable(learning_rate) else learning_rate
    lr = float(np.float32(lr))
    # 2. parameters without a gradient are skipped entirely; sparse rows stay (rows, values).
    g = {k: _leaf(gk, dtype) for k, gk in step_grads.items() if gk is not None}
    # 3. clipping (of a sparse gradient: its raw values, duplicate rows included)
    values = {k: gk[1] if isinstance(gk, tuple) else gk for k, gk in g.items()}
    if clipnorm:
      values = {
        k: gk * clipnorm / max(np.sqrt(np.sum(gk * gk)), clipnorm) for k, gk in values.items()
      }
    elif global_clipnorm:
      n = np.sqrt(sum(np.sum(gk * gk) for gk in values.values()))
      with np.errstate(divide="ignore"):
        scale = global_clipnorm * min(1.0 / n, 1.0 / global_clipnorm) + (n - n)
      values = {k: gk * scale for k, gk in values.items()}
    elif clipvalue:
      values = {k: np.clip(gk, -clipvalue, clipvalue) for k, gk in values.items()}
    g = {k: (gk[0], values[k]) if isinstance(gk, tuple) else values[k] for k, gk in g.items()}
    t = it + 1
    # Keras 2 casts the Python betas with tf.cast, which goes through a float32 tensor.
    b1, b2 = float(np.float32(beta_1)), float(np.float32(beta_2))
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    for k, gk in g.items():
      # 4. decoupled weight decay on the pre-update value
      if weight_decay is not None and not any(re.search(p, k) for p in exclude_from_weight_decay):
        x[k] = x[k] - x[k] * float(np.float32(weight_decay)) * lr  # tf.cast: via float32
      # 5. the Adam step, epsilon-hat outside the root, AMSGrad over the raw v
      if isinstance(gk, tuple):  # Keras 2's sparse update: decay all rows, add at the rows
        m[k], v[k] = _sparse_moments(m[k], v[k], *gk, 1 - beta_1, 1 - beta_2)
      else:
        m[k] = m[k] + (gk - m[k]) * (1 - beta_1)
        v[k] = v[k] + (gk * gk - v[k]) * (1 - beta_2)
      vhat[k] = np.maximum(vhat[k], v[k])
      v_used = vhat[k] if amsgrad else v[k]
      x[k] = x[k] - alpha * m[k] / (np.sqrt(v_used) + epsilon)
      # 6. EMA of the post-update value, overwrite after every freq-th update
      if use_ema:
        avg[k] = ema_momentum * avg[k] + (1 - ema_momentum) * x[k]
        if ema_overwrite_frequency and (it + 1) % ema_overwrite_frequency == 0:
          x[k] = avg[k].copy()
    history.append({k: val.copy() for k, val in x.items()})
  return history, avg


def _leaf(gk: Any, dtype: Any) -> Any:
  """A dense gradient as an array; a sparse one (`.indices`, `.values`) as (rows, values)."""
  if hasattr(gk, "indices") and hasattr(gk, "values"):
    return np.asarray(gk.indices), np.asarray(gk.values, dtype)
  return np.asarray(gk, dtype)


def _sparse_moments(m, v, rows, values, c1, c2):
  """Keras 2's ``_resource_apply_sparse``: duplicate rows summed, then
  ``m - m*c1`` with ``summed*c1`` added at the rows (and ``v`` with ``summed**2``)."""
  unique = np.unique(rows)
  summed = np.zeros((len(m),) + m.shape[1:], m.dtype)
  np.add.at(summed, rows, values)
  m = m - m * c1
  v = v - v * c2
  m[unique] += summed[unique] * c1
  v[unique] += summed[unique] * summed[unique] * c2
  return m, v


def make_grads(
  shapes: dict[str, tuple[int, ...]],
  steps: int,
  seed: int = 0,
  scale: Any = 1.0,
  zero_steps: Sequence[int] = (),
  none: Optional[Callable[[int, str], bool]] = None,
) -> list[dict[str, Optional[np.ndarray]]]:
  """Deterministic float32 gradients; `scale` may be a function of the step."""
  rng = np.random.default_rng(seed)
  out = []
  for s in range(steps):
    c = scale(s) if callable(scale) else scale
    step = {}
    for k, shape in shapes.items():
      gk = (rng.normal(size=shape) * c).astype(np.float32)
      if s in zero_steps:
        gk = np.zeros(shape, np.float32)
      step[k] = None if none is not None and none(s, k) else gk
    out.append(step)
  return out


def make_params(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
