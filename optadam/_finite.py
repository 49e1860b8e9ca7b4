"""One finiteness decision over many gradient leaves, cheaply (`optadam.loss_scale_optimizer`)."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from optadam import sparse


def _nan_unless_finite(values: jax.Array) -> jax.Array:
  """A float32 scalar: 0 when every element of `values` is finite, NaN otherwise."""
  # x - x is 0 for a finite x and NaN for inf or NaN: one read of the leaf, no temporary (x * 0
  # would make XLA materialise a full-size broadcast of the zero, and isfinite a mask).
  summed = lambda v: jnp.sum(_zero_or_nan(v), dtype=jnp.float32)
  k = _row_length(values)
  if k is None:
    return summed(values)

  def matvec(v):
    # XLA:CPU reduces to a scalar on one thread but runs a matrix-vector product on all of
    # them: each row @ zeros is 0, or NaN where the row holds an inf or a NaN (inf * 0 = nan).
    # Only the last axis is split (into rows of k), so sharded leading axes stay as they are.
    rows = v.reshape(*v.shape[:-1], v.shape[-1] // k, k)
    products = jax.lax.dot_general(
      rows,
      jnp.zeros((k,), v.dtype),
      (((rows.ndim - 1,), (0,)), ((), ())),
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
    )
    return jnp.sum(products)

  return jax.lax.platform_dependent(values, cpu=matvec, default=summed)


def _zero_or_nan(values: jax.Array) -> jax.Array:
  zero_or_nan = values - values
  if jnp.issubdtype(values.dtype, jnp.complexfloating):
    zero_or_nan = zero_or_nan.real + zero_or_nan.imag
  return zero_or_nan


def _row_length(values: jax.Array) -> Optional[int]:
  """The row length for `_nan_unless_finite`'s matrix-vector product, or None (a plain sum)."""
  if values.size < 2**16 or not jnp.issubdtype(values.dtype, jnp.floating):
    return None
  # Long rows run at memory speed (rows of 256 take 3x as long as rows of 8192). Prefer rows
  # whose count (last // k) is a multiple of 8, so that a last axis sharded over up to 8 devices
  # splits into sharded rows and no partial products cross devices.
  last = values.shape[-1]
  ks = [k for k in range(min(last, 8192), 255, -1) if last % k == 0]
  return next((k for k in ks if k >= 1024 and (last // k) % 8 == 0), ks[0] if ks else None)


def all_finite(leaves: list[Any]) -> jax.Array:
  """One boolean for all non-None leaves (a global reduction, also over shards and processes)."""
  sums = [_nan_unless_finite(sparse.values_of(g)) for g in leaves if g is not None]
  if not sums:
    return jnp.asarray(True)
  return jnp.isfinite(sum(sums[1:], sums[0]))


def unscaled_all_finite(leaves: list[Any], unscale: Any, scale: jax.Array) -> jax.Array:
  """``all_finite`` of the unscaled leaves, without forming them at every step."""
  # Times a factor in [0, 1] a value is finite exactly when it was, so with a scale >= 1 (Keras 2
  # never halves it below 1) the leaves themselves are checked; a smaller scale (an initial_scale
  # below 1) checks the products too, in a cond so that they are not formed at every step.
  finite = all_finite(leaves)
  products = lambda leaves: all_finite([None if g is None else unscale(g) for g in leaves])
  return finite & jax.lax.cond(scale >= 1, lambda leaves: jnp.asarray(True), products, leaves)
