"""Random whole configurations for the differential suite (integration/test_random_configs.py).

`draw(seed)` gives one `Problem`, deterministic from its seed: Keras's arguments drawn from the
whole argument space and its edges (betas of exactly 0, epsilon 0 or 1e-45, EMA momentum 0 or 1,
an overwrite every step, tiny clip thresholds, Keras 3's loss scale and accumulation, AdamW), a
tree (scalars, zero-size and rank-4 leaves; float32, float64 or both), and a gradient stream
(zero steps, spikes, dead elements, tiny values, None). `draw_schedule(seed)` gives one of
Keras's six learning-rate schedules with random arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

SHAPES = [(), (0,), (1,), (3,), (2, 3), (4, 5), (1, 2, 1, 3), (7,)]
SCHEDULES = (
  "ExponentialDecay",
  "PiecewiseConstantDecay",
  "PolynomialDecay",
  "InverseTimeDecay",
  "CosineDecay",
  "CosineDecayRestarts",
)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One configuration, tree and gradient stream."""

  seed: int
  optimizer: str  # "Adam" or "AdamW"
  kwargs: dict[str, Any]  # Keras's arguments (the learning rate as a number)
  schedule: Optional[tuple[str, dict[str, Any]]]  # the learning rate, when a schedule
  params0: dict[str, np.ndarray]
  grads: list[dict[str, Optional[np.ndarray]]]

  def describe(self) -> str:
    dtypes = sorted({str(p.dtype) for p in self.params0.values()})
    shapes = {k: p.shape for k, p in self.params0.items()}
    sched = f" schedule={self.schedule}" if self.schedule else ""
    return f"seed {self.seed}: {self.optimizer}({self.kwargs}){sched} {shapes} {dtypes}"

  @property
  def float64(self) -> bool:
    return any(p.dtype == np.float64 for p in self.params0.values())


def _pick(rng: np.random.Generator, options: list[Any]) -> Any:
  return options[int(rng.integers(len(options)))]


def _f32(x: Any) -> Any:
  return None if x is None else float(np.float32(x))


def draw_kwargs(rng: np.random.Generator, float64: bool) -> tuple[str, dict[str, Any]]:
  """Keras's arguments, edges included; with float64 leaves, betas and weight decay are float32
  numbers (optadam, like TF 2.15, rounds them through float32; Keras 3 does not)."""
  optimizer = _pick(rng, ["Adam", "Adam", "AdamW"])
  kw: dict[str, Any] = {
    "learning_rate": _pick(rng, [0.001, 0.01, 0.1, 1e-5, 0.3]),
    "beta_1": _pick(rng, [0.9, 0.0, 0.5, 0.99, 0.75, 0.9]),
    "beta_2": _pick(rng, [0.999, 0.0, 0.9, 0.5, 0.99, 0.999]),
    "epsilon": _pick(rng, [1e-7, 1e-7, 0.0, 1e-45, 1e-3, 1.0]),
    "amsgrad": bool(rng.random() < 0.4),
  }
  wd = _pick(rng, [None, None, 0.0, 0.004, 0.1])
  if optimizer == "AdamW" and wd is None:
    wd = 0.004
  kw["weight_decay"] = wd
  clip = _pick(rng, [None, None, "clipnorm", "clipvalue", "global_clipnorm"])
  if clip is not None:
    kw[clip] = _pick(rng, [1e-6, 0.1, 1.0, 100.0])
  if rng.random() < 0.45:
    kw["use_ema"] = True
    kw["ema_momentum"] = _pick(rng, [0.0, 1.0, 0.5, 0.9, 0.99, 0.3])
    kw["ema_overwrite_frequency"] = _pick(rng, [None, 1, 2, 3, 5])
  kw["loss_scale_factor"] = _pick(rng, [None, None, None, 2.0, 128.0, 3.0])
  kw["gradient_accumulation_steps"] = _pick(rng, [None, None, None, 2, 3])
  if float64:
    for key in ("beta_1", "beta_2", "weight_decay"):
      kw[key] = _f32(kw[key])
  return optimizer, kw


def draw_tree(rng: np.random.Generator) -> dict[str, np.ndarray]:
  mode = _pick(rng, ["float32"] * 7 + ["float64"] * 2 + ["mixed"])
  params = {}
  for i in range(int(rng.integers(1, 5))):
    dtype = mode if mode != "mixed" else _pick(rng, ["float32", "float64"])
    shape = _pick(rng, SHAPES)
    params[f"l{i}"] = (rng.normal(size=shape) * _pick(rng, [1.0, 0.01, 100.0])).astype(dtype)
  return params


def draw_grads(
  rng: np.random.Generator, params: dict[str, np.ndarray], steps: int
) -> list[dict[str, Optional[np.ndarray]]]:
  """Gradients: normal of a random scale, with zero steps, spikes, dead elements, tiny values
  and None leaves."""
  dead = {k: rng.random(p.shape) < 0.2 if rng.random() < 0.3 else None for k, p in params.items()}
  out = []
  for _ in range(steps):
    kind = _pick(rng, ["normal"] * 6 + ["zero", "spike", "tiny"])
    step: dict[str, Optional[np.ndarray]] = {}
    for k, p in params.items():
      if rng.random() < 0.1:
        step[k] = None
        continue
      scale = {"normal": _pick(rng, [1.0, 1e-3, 10.0]), "zero": 0.0, "spike": 1e4, "tiny": 1e-30}
      g = rng.normal(size=p.shape) * scale[kind]
      if dead[k] is not None:
        g = np.where(dead[k], 0.0, g)
      step[k] = g.astype(p.dtype)
    out.append(step)
  return out


def draw_schedule(rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
  """One of Keras's six schedules with random (valid) arguments."""
  name = _pick(rng, list(SCHEDULES))
  lr = _pick(rng, [0.1, 0.01, 0.003, 1.0])
  steps = int(rng.integers(1, 30))
  if name == "ExponentialDecay":
    kw = dict(decay_steps=steps, decay_rate=_pick(rng, [0.5, 0.96, 0.1, 1.5]))
    kw["staircase"] = bool(rng.random() < 0.5)
  elif name == "PiecewiseConstantDecay":
    bounds = sorted(set(int(b) for b in rng.integers(1, 40, size=int(rng.integers(1, 4)))))
    return name, dict(boundaries=bounds, values=[lr * 0.5**i for i in range(len(bounds) + 1)])
  elif name == "PolynomialDecay":
    kw = dict(decay_steps=steps, end_learning_rate=lr * _pick(rng, [0.0, 0.01, 0.5]))
    kw.update(power=_pick(rng, [1.0, 0.5, 2.0, 1.7]), cycle=bool(rng.random() < 0.5))
  elif name == "InverseTimeDecay":
    kw = dict(decay_steps=steps, decay_rate=_pick(rng, [0.5, 0.05, 2.0]))
    kw["staircase"] = bool(rng.random() < 0.5)
  elif name == "CosineDecay":
    kw = dict(decay_steps=steps, alpha=_pick(rng, [0.0, 0.1, 0.5]))
    if rng.random() < 0.5:
      kw.update(warmup_target=lr * 2, warmup_steps=int(rng.integers(0, 10)))
  else:
    kw = dict(first_decay_steps=steps, t_mul=_pick(rng, [1.0, 2.0, 1.5, 1.69509, 0.9, 3.0]))
    kw.update(m_mul=_pick(rng, [1.0, 0.5, 0.9]), alpha=_pick(rng, [0.0, 0.1]))
  return name, dict(initial_learning_rate=lr, **kw)


def schedule_steps(rng: np.random.Generator, name: str, kw: dict[str, Any]) -> list[int]:
  """Random steps plus every boundary (and its neighbours) of the schedule's first periods."""
  steps = {0, 1, 2} | {int(s) for s in rng.integers(0, 500, size=12)}
  if name == "PiecewiseConstantDecay":
    marks = list(kw["boundaries"])
  elif name == "CosineDecayRestarts":
    t, first, marks, total = kw["t_mul"], kw["first_decay_steps"], [], 0.0
    for i in range(12):
      total += first * t**i
      marks.append(total)
      if total > 5000:
        break
  elif name == "CosineDecay":
    marks = [kw["decay_steps"] + kw.get("warmup_steps", 0), kw.get("warmup_steps", 0)]
  else:
    marks = [kw["decay_steps"] * i for i in range(1, 6)]
  for m in marks:
    steps |= {int(np.floor(m)) - 1, int(np.floor(m)), int(np.ceil(m)), int(np.ceil(m)) + 1}
  return sorted(s for s in steps if 0 <= s < 2**31 - 1)


def draw(seed: int) -> Problem:
  """The problem of `seed` (the same on every machine and run)."""
  rng = np.random.default_rng([20261206, seed])
  params0 = draw_tree(rng)
  float64 = any(p.dtype == np.float64 for p in params0.values())
  optimizer, kwargs = draw_kwargs(rng, float64)
  # Keras 3 under jax x64 evaluates a schedule in float64 (optadam and TF 2.15: float32), so a
  # float64 problem gets a constant rate (test_random_configs: the departure test).
  schedule = draw_schedule(rng) if rng.random() < 0.3 and not float64 else None
  grads = draw_grads(rng, params0, int(rng.integers(4, 11)))
  return Problem(seed, optimizer, kwargs, schedule, params0, grads)


def sparsify(rng: np.random.Generator, grads: dict[str, Any]) -> dict[str, Any]:
  """Some leaves' gradients as `optadam.IndexedSlices` (duplicate rows included) of the same
  dense value's rows: the rows are split into pieces that sum back to them."""
  import optadam  # pylint: disable=import-outside-toplevel

  out = {}
  for k, g in grads.items():
    if g is None or g.ndim == 0 or g.shape[0] < 2 or rng.random() < 0.6:
      out[k] = g
      continue
    rows = rng.integers(0, g.shape[0], size=g.shape[0] + 2)
    values = np.zeros((len(rows),) + g.shape[1:], g.dtype)
    for r in range(g.shape[0]):  # each row of g split over the entries that name it
      hits = np.nonzero(rows == r)[0]
      if len(hits):
        values[hits[0]] = g[r]
    out[k] = optadam.IndexedSlices(values, rows.astype(np.int32), g.shape)
  return out
