"""Keras's three gradient-clipping rules: per-tensor norm, global norm, value.

Sparse `optadam.IndexedSlices` gradients are clipped on their raw values, before
duplicate rows are summed (what Keras does: its norms are over the raw values).

Complex gradients: the norms are over the moduli, ``||g||^2 = sum |g|^2`` (a
complex number counts as its two real parts), and the norm clips scale both parts
by the same real factor, so they keep the gradient's phase. ``clipvalue`` clips
the real and imaginary parts separately to ``[-clipvalue, clipvalue]`` (the
gradient seen as pairs of reals, the only reading of "value" that needs no
ordering of complex numbers); use ``clipnorm`` to bound moduli instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optadam import _tree
from optadam import hyperparams
from optadam import sparse


def _check_threshold(name: str, value: Any) -> None:
  hyperparams.check_number(
    name,
    value,
    allow_callable=False,
    low=0.0,
    allowed="in optadam.adam, None or 0 means no clipping",
  )
  if hyperparams.concrete_number(value) == 0.0:
    raise ValueError(
      f"`{name}` must be > 0 for this transform (in `optadam.adam`, "
      f"None or 0 means 'no clipping'); got {value!r}."
    )


def _sum_of_squares(g: Any) -> jax.Array:
  """sum(|g|**2) over the raw values, accumulated in at least float32 (real)."""
  values = sparse.values_of(g)
  acc_dtype = jnp.promote_types(values.dtype, jnp.float32)
  if _tree.is_complex(values.dtype):
    return jnp.sum(_tree.complex_abs_sq(values, _tree.real_dtype(acc_dtype)))
  return jnp.sum(jnp.square(values.astype(acc_dtype)))


def clip_by_tensor_norm(clipnorm: float) -> optax.GradientTransformation:
  """Clips each gradient tensor to L2 norm `clipnorm` (Keras's ``clipnorm``).

  ``g <- (g * clipnorm) / max(||g||_2, clipnorm)``, tensor by tensor (Keras's
  formula, with its rounding). A zero gradient stays zero.

  Differs from ``optax.clip_by_global_norm`` (one norm over the whole tree) and
  ``optax.clip_by_block_rms`` (RMS, not norm). The norm of a 16-bit tensor is
  accumulated in float32. A complex tensor's norm is over its moduli, and both
  parts are divided by the same real number (the phase is kept).

  Args:
    clipnorm: the largest L2 norm a gradient tensor may have (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  _check_threshold("clipnorm", clipnorm)

  def clip(g):
    norm = jnp.sqrt(_sum_of_squares(g))
    values = sparse.values_of(g)
    dtype = jnp.promote_types(values.dtype, jnp.float32)
    clipped = _tree.divide_by_real(values.astype(dtype) * clipnorm, jnp.maximum(norm, clipnorm))
    return sparse.with_values(g, clipped.astype(values.dtype))

  def update_fn(updates, state, params=None):
    del params
    return _tree.map_grads(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_keras_global_norm(global_clipnorm: float) -> optax.GradientTransformation:
  """Scales all gradients so that their global L2 norm is at most `global_clipnorm`.

  With ``n`` the L2 norm over every (non-None) gradient,
  ``g <- g * (c * min(1/n, 1/c) + (n - n))`` — Keras's factor. Below the
  threshold that factor can differ from 1 by an ulp, and a non-finite ``n``
  turns every gradient into NaN; both are what Keras does, and kept.

  Differs from ``optax.clip_by_global_norm``, which leaves gradients untouched
  below the threshold and multiplies by ``c / n`` above it. Complex gradients
  count with their moduli in ``n``; both parts are multiplied by the real factor.

  Args:
    global_clipnorm: the largest global norm (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  _check_threshold("global_clipnorm", global_clipnorm)

  def update_fn(updates, state, params=None):
    del params
    leaves = [g for g in _tree.flatten_grads(updates)[0] if g is not None]
    if not leaves:
      return updates, state
    norm = jnp.sqrt(jnp.sum(jnp.stack([_sum_of_squares(g) for g in leaves])))
    scale = _keras_global_scale(norm, global_clipnorm)
    return _tree.map_grads(lambda g: _scale_by_real(g, scale), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _keras_global_scale(norm: jax.Array, global_clipnorm: Any) -> jax.Array:
  """Keras's global-clip factor ``c * min(1/n, 1/c) + (n - n)`` (NaN when `norm` is not finite)."""
  scale = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
  return scale + (norm - norm)


def _scale_by_real(g: Any, scale: jax.Array) -> Any:
  """`g` (dense or sparse values) times the real `scale`; a complex `g` part by part."""
  values = sparse.values_of(g)
  if _tree.is_complex(values.dtype):  # both parts times the real factor
    part_scale = scale.astype(_tree.real_dtype(values.dtype))
    return sparse.with_values(
      g, jax.lax.complex(jnp.real(values) * part_scale, jnp.imag(values) * part_scale)
    )
  return sparse.with_values(g, values * scale.astype(values.dtype))


def clip_by_value(clipvalue: float) -> optax.GradientTransformation:
  """Clips every gradient element to ``[-clipvalue, clipvalue]`` (Keras's ``clipvalue``).

  The same numbers as ``optax.clip``; written here because ``optax.clip`` would
  also clip the integer row indices of a sparse `optadam.IndexedSlices` gradient.
  A complex gradient has its real and imaginary parts clipped separately
  (``optax.clip`` and ``jnp.clip`` refuse complex values).

  Args:
    clipvalue: the largest absolute value of a gradient element (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  _check_threshold("clipvalue", clipvalue)

  def clip_real(x):
    return jnp.clip(x, -clipvalue, clipvalue)

  def clip(g):
    values = sparse.values_of(g)
    if _tree.is_complex(values.dtype):
      return sparse.with_values(
        g, jax.lax.complex(clip_real(jnp.real(values)), clip_real(jnp.imag(values)))
      )
    return sparse.with_values(g, clip_real(values))

  def update_fn(updates, state, params=None):
    del params
    return _tree.map_grads(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
