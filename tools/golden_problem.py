"""A Keras 2 Adam scenario's numbers: initial values and gradients, drawn from its own seed.

Pure numpy (float64 values, int indices); ``golden_run.py`` casts them for TF. The draws of one
scenario depend only on its record in ``golden_scenarios.py``, never on the other scenarios.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from golden_scenarios import Grads, Scenario

# Rows 0, 5 and 9 of the 10x4 embedding table never receive a gradient.
SPARSE_ROWS = np.array([1, 2, 3, 4, 6, 7, 8])


@dataclasses.dataclass
class Sparse:
  """A sparse (IndexedSlices) gradient given as raw values and indices."""

  values: np.ndarray
  indices: np.ndarray
  dense_shape: tuple


def initial_values(params, rng: np.random.RandomState) -> list:
  out = []
  for _, shape in params:
    mag = 10 ** rng.uniform(-1, 0.3, size=shape)
    out.append(rng.standard_normal(shape) * mag)
  return out


def _dense(g: Grads, rng, s: int, shape) -> np.ndarray:
  """One dense gradient: ``N(0,1)`` times a per-step magnitude times an elementwise jitter."""
  if g.shrink is not None:
    a, r = g.shrink
    scale = a * r**s * 10 ** rng.uniform(-0.15, 0.15)
  elif g.tiny is not None:
    scale = g.tiny * 10 ** rng.uniform(-0.5, 0.5)
  else:
    scale = 10 ** rng.uniform(-2.0, 0.5)
  jitter = 10 ** rng.uniform(-0.5, 0.5, size=shape)
  grad = rng.standard_normal(shape) * jitter * scale
  if s in g.big_steps:
    grad = grad * g.big
  if s in g.zero_steps:
    grad = np.zeros(shape)
  return grad


def _sparse(g: Grads, rng, s: int, shape) -> Sparse:
  """An IndexedSlices gradient of the embedding: duplicate, out-of-order indices."""
  k = rng.randint(3, 8)
  idx = rng.choice(SPARSE_ROWS, size=k, replace=True)
  if len(set(idx.tolist())) == k:  # make sure there is a duplicate every step
    idx[-1] = idx[0]
  if np.all(np.diff(idx) >= 0):  # and that the order is not sorted
    idx = idx[::-1].copy()
  if g.shrink is not None:
    a, r = g.shrink
    scale = a * r**s
  else:
    scale = 10 ** rng.uniform(-2, 0.5) * (g.big if s in g.big_steps else 1.0)
  vals = rng.standard_normal((k,) + tuple(shape[1:])) * scale
  return Sparse(vals, idx.astype(np.int32), tuple(shape))


def gradients(sc: Scenario, rng: np.random.RandomState, s: int) -> list:
  """Step ``s``'s gradients: np.ndarray, ``Sparse`` (first parameter) or None, per parameter.

  Every parameter's dense gradient is drawn (so None steps and the sparse parameter use up the
  same random numbers as a dense one) before it is replaced.
  """
  grads = []
  for name, shape in sc.params:
    grad = _dense(sc.grads, rng, s, shape)
    grads.append(None if s in sc.none_steps.get(name, ()) else grad)
  if sc.grads.sparse:
    grads[0] = _sparse(sc.grads, rng, s, sc.params[0][1])
  if sc.grads.inf_at is not None and s == sc.grads.inf_at[0]:
    _, param, index = sc.grads.inf_at
    grads[param] = np.array(grads[param], dtype=np.float64)
    grads[param][index] = np.inf
  return grads


def make_problem(sc: Scenario) -> tuple[list, list]:
  """Deterministic numpy data: initial values and the per-step gradients (float64/int)."""
  rng = np.random.RandomState(sc.seed)
  inits = initial_values(sc.params, rng)
  grads = [gradients(sc, rng, s) for s in range(sc.steps)]
  return inits, grads
