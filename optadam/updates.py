"""Applying updates that may hold None (parameters skipped this step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def apply_updates(params: optax.Params, updates: optax.Updates) -> optax.Params:
  """``params + updates``, leaf by leaf, cast to each parameter's dtype.

  The same arithmetic as ``optax.apply_updates``, except that a ``None`` update
  (a parameter whose gradient was None, which Keras skips) leaves its parameter
  unchanged instead of failing.
  """
  return jax.tree.map(
    lambda p, u: p if p is None or u is None else jnp.asarray(p + u).astype(jnp.asarray(p).dtype),
    params,
    updates,
    is_leaf=lambda x: x is None,
  )
