"""Small pytree helpers shared by optadam's transforms (private).

Gradient trees may hold ``None`` leaves (Keras: "this parameter got no gradient this
step, skip it entirely") and sparse leaves (``optadam.IndexedSlices``); both are
treated as leaves here, so a gradient tree can be walked side by side with the
parameter-shaped state trees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _is_sparse(x: Any) -> bool:
  # Resolved lazily so that this module does not import the sparse module.
  from optadam import sparse  # pylint: disable=import-outside-toplevel

  return sparse.is_sparse(x)


def is_grad_leaf(x: Any) -> bool:
  """`is_leaf` for gradient trees: None and sparse gradients are leaves."""
  return x is None or _is_sparse(x)


def flatten_grads(updates: Any) -> tuple[list[Any], Any]:
  """Flattens a gradient tree, keeping None and sparse leaves as leaves."""
  return jax.tree.flatten(updates, is_leaf=is_grad_leaf)


def leaves_like(treedef: Any, tree: Any) -> list[Any]:
  """The leaves of a parameter-shaped `tree`, in the order of `treedef`."""
  return treedef.flatten_up_to(tree)


def map_grads(fn: Callable[..., Any], updates: Any, *rest: Any) -> Any:
  """Maps `fn(g, *r)` over the non-None gradient leaves; None stays None."""
  return jax.tree.map(
    lambda g, *r: None if g is None else fn(g, *r), updates, *rest, is_leaf=is_grad_leaf
  )


def path_str(path: tuple[Any, ...]) -> str:
  """A key path joined with "/", e.g. ``params/Dense_0/bias``."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def zeros_like(p: Any, dtype: Any = None) -> jax.Array:
  """Zeros with the shape (and sharding) of `p`, in `dtype` (default: p's).

  Outside a trace, `jnp.zeros_like` already follows a concrete array's
  sharding. Under `jax.jit(init)` the zeros would have no data dependence on
  `p`, and XLA's sharding propagation would leave them unsharded; deriving them
  from `p` (`where(isfinite(p), |p * 0|, 0)`, which XLA does not fold) makes
  them inherit p's sharding at the cost of one read of p at init.
  """
  dtype = jnp.asarray(p).dtype if dtype is None else dtype
  if not isinstance(p, jax.core.Tracer):
    return jnp.zeros_like(p, dtype=dtype)
  if not jnp.issubdtype(p.dtype, jnp.inexact):
    return jnp.zeros(p.shape, dtype)
  zero = jnp.abs(p * 0)
  return jnp.where(jnp.isfinite(p), zero, jnp.zeros_like(zero)).astype(dtype)
