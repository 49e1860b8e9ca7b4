"""Shared helpers for running optadam and Keras 3 side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

import optadam


def run_optadam(
  tx,
  params0: dict[str, np.ndarray],
  grads: Sequence[dict[str, Any]],
  jit: bool = True,
  donate: bool = False,
) -> tuple[list[dict[str, np.ndarray]], Any]:
  """Runs `tx` over the gradient sequence; returns params after every step and the state.

  Gradient leaves may be numpy arrays, None, or sparse (IndexedSlices, BCOO: passed as they are).
  """
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  history = []
  for g in grads:
    g = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in g.items()}
    params, state = step(params, state, g)
    history.append({k: np.asarray(v) for k, v in params.items()})
  return history, state


def run_keras3(
  kwargs: dict[str, Any],
  params0: dict[str, np.ndarray],
  grads: Sequence[dict[str, Any]],
  exclude: Optional[Sequence[str]] = None,
):
  """Runs Keras 3's `keras.optimizers.Adam` (JAX backend); returns params after every step."""
  import keras  # pylint: disable=import-outside-toplevel

  variables = {k: keras.Variable(v, name=k.replace("/", "_")) for k, v in params0.items()}
  opt = keras.optimizers.Adam(**kwargs)
  if exclude:
    opt.exclude_from_weight_decay(var_names=list(exclude))
  history = []
  for g in grads:
    pairs = [(jnp.asarray(gk), variables[k]) for k, gk in g.items() if gk is not None]
    opt.apply_gradients(pairs)
    history.append({k: np.asarray(var.value) for k, var in variables.items()})
  return history, opt, variables


def worst_relative(a: Sequence[dict[str, np.ndarray]], b: Sequence[dict[str, np.ndarray]]) -> float:
  """max over steps and params of max|a - b| / max(1, max|b|)."""
  worst = 0.0
  for sa, sb in zip(a, b, strict=True):
    for k in sb:
      ref = np.asarray(sb[k], np.float64)
      diff = np.max(np.abs(np.asarray(sa[k], np.float64) - ref), initial=0.0)
      worst = max(worst, diff / max(1.0, np.max(np.abs(ref), initial=0.0)))
  return worst


def worst_ulps(a: Sequence[dict[str, np.ndarray]], b: Sequence[dict[str, np.ndarray]]) -> float:
  """Largest difference in float32 ulps at each tensor's scale (the spacing at max|b|)."""
  worst = 0.0
  for sa, sb in zip(a, b, strict=True):
    for k in sb:
      ref = np.asarray(sb[k], np.float64)
      ulp = float(np.spacing(np.float32(max(np.max(np.abs(ref), initial=0.0), 1e-30))))
      diff = np.max(np.abs(np.asarray(sa[k], np.float64) - ref), initial=0.0)
      worst = max(worst, diff / ulp)
  return worst


def checkpoint_keys(checkpointer: Any, path: str) -> set[str]:
  """The "/"-joined key paths of the tree an Orbax checkpointer saved at `path`."""
  meta = checkpointer.metadata(path)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta  # older orbax: it
  return {
    jax.tree_util.keystr(p, simple=True, separator="/")
    for p, _ in jax.tree_util.tree_leaves_with_path(tree)
  }
