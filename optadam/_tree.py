"""Small pytree helpers shared by optadam's transforms (private).

Gradient trees may hold ``None`` leaves (Keras: "this parameter got no gradient this
step, skip it entirely") and sparse leaves (``optadam.IndexedSlices``); both are
treated as leaves here, so a gradient tree can be walked side by side with the
parameter-shaped state trees.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp

from optadam._indexed_slices import IndexedSlices


def bcoo_type() -> Any:
  """``jax.experimental.sparse.BCOO`` if that module was imported, else None (never imports it)."""
  module = sys.modules.get("jax.experimental.sparse")
  return getattr(module, "BCOO", None)


def is_sparse(x: Any) -> bool:
  """True for sparse gradient leaves: `IndexedSlices` and ``jax.experimental.sparse.BCOO``."""
  if isinstance(x, IndexedSlices):
    return True
  bcoo = bcoo_type()
  return bcoo is not None and isinstance(x, bcoo)


def is_grad_leaf(x: Any) -> bool:
  """`is_leaf` for gradient trees: None and sparse gradients are leaves."""
  return x is None or is_sparse(x)


def keep(new: Any, old: Any, finite: Optional[jax.Array]) -> Any:
  """`new`, or `old` where the scalar bool `finite` is False (a tree of arrays); `new` if None.

  The transforms that hold parameter-sized state pass their new state through this
  with the ``finite`` extra argument of ``update`` (`optadam.loss_scale_optimizer`
  skips a step with it): the select fuses into the kernel that writes the state.
  """
  if finite is None:
    return new
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


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


def is_complex(dtype: Any) -> bool:
  """True for a complex dtype (complex64, complex128)."""
  return bool(jnp.issubdtype(dtype, jnp.complexfloating))


def real_dtype(dtype: Any) -> Any:
  """The real dtype of `dtype`'s precision: complex64 -> float32, complex128 -> float64."""
  return jnp.finfo(dtype).dtype if is_complex(dtype) else jnp.dtype(dtype)


def state_dtype(param_dtype: Any, requested: Any = None, *, real: bool = False) -> Any:
  """The dtype of a per-parameter state leaf: `requested`'s precision, the parameter's kind.

  Without `requested` it is the parameter's dtype. A real parameter gets a real
  leaf and a complex one a complex leaf, whichever kind `requested` is:
  ``requested=float32`` gives complex64 for a complex parameter (float64 gives
  complex128; there is no 16-bit complex type, so float16 and bfloat16 give
  complex64), and ``requested=complex64`` gives float32 for a real one. With
  `real` (the second moment ``|g|^2``) the leaf is always real.
  """
  dtype = jnp.dtype(param_dtype if requested is None else requested)
  if real or not is_complex(param_dtype):
    return real_dtype(dtype)
  return jnp.promote_types(dtype, jnp.complex64)


def dtype_of(p: Any) -> Any:
  """The dtype of a parameter leaf: an array, tracer, `jax.ShapeDtypeStruct` or number."""
  dtype = getattr(p, "dtype", None)
  return jnp.asarray(p).dtype if dtype is None else dtype


def complex_abs_sq(g: jax.Array, dtype: Any) -> jax.Array:
  """``|g|^2 = real(g * conj(g))`` of a complex `g`, returned in the real `dtype`.

  The product is formed in the complex type of at least `dtype`'s precision
  (a complex64 gradient with a float64 second moment is squared in complex128).
  """
  g = g.astype(jnp.promote_types(g.dtype, dtype))
  return jnp.real(g * jnp.conj(g)).astype(dtype)


def divide_by_real(x: jax.Array, d: Any) -> jax.Array:
  """``x / d`` for a real `d`; a complex `x` has its real and imaginary parts divided.

  Dividing the parts (rather than by the complex number ``d + 0j``) rounds each
  of them exactly like the real division, so a complex parameter moves like a
  pair of real ones driven by the shared real denominator.
  """
  if is_complex(x.dtype):
    d = jnp.asarray(d).astype(real_dtype(x.dtype))
    return jax.lax.complex(jnp.real(x) / d, jnp.imag(x) / d)
  return x / d


NOT_OPTIMIZABLE = (
  "{who} cannot optimize the parameter {where} of dtype {dtype} and shape {shape}: "
  "only floating-point and complex parameters can be optimized. Keep it out of the "
  "optimizer: label it 'frozen' in `optax.multi_transform({{'adam': tx, 'frozen': "
  "optax.set_to_zero()}}, labels)`, or wrap `optax.masked(tx, mask)` with False at that leaf "
  "(its gradient then passes through unchanged), or in Flax NNX use "
  "`nnx.Optimizer(model, tx, wrt=nnx.Param)` so that only parameters are optimized (not step "
  "counters, RNG keys or other integer state)."
)


def check_params(params: Any, who: str) -> None:
  """Raises a TypeError naming the path of any leaf that is not floating-point or complex.

  Leaves may be arrays, tracers, `jax.ShapeDtypeStruct`s or Python numbers; None
  (and empty nodes such as optax's ``MaskedNode``) have no leaves and pass.
  """

  def check(path, p):
    dtype = dtype_of(p)
    try:
      ok = jnp.issubdtype(dtype, jnp.inexact)
    except TypeError:  # not a NumPy dtype at all
      ok = False
    if not ok:
      where = f"at `{path_str(path)}`" if path else "(the root of the tree)"
      shape = tuple(getattr(p, "shape", ()))
      raise TypeError(NOT_OPTIMIZABLE.format(who=who, where=where, dtype=dtype, shape=shape))

  jax.tree_util.tree_map_with_path(check, params)


def zeros_like(p: Any, dtype: Any = None) -> jax.Array:
  """Zeros with the shape (and sharding) of `p`, in `dtype` (default: p's).

  A `jax.ShapeDtypeStruct` (abstract init, as optax's optimizers allow) gives
  concrete zeros created directly with the struct's ``sharding`` when it has
  one, so a sharded state is never materialised on one device first.

  Outside a trace, `jnp.zeros_like` already follows a concrete array's
  sharding. Under `jax.jit(init)` the zeros would have no data dependence on
  `p`, and XLA's sharding propagation would leave them unsharded; deriving them
  from `p` (`where(isfinite(p), |p * 0|, 0)`, which XLA does not fold) makes
  them inherit p's sharding at the cost of one read of p at init.
  """
  if isinstance(p, jax.ShapeDtypeStruct):
    dtype = p.dtype if dtype is None else dtype
    return jnp.zeros(p.shape, dtype, device=getattr(p, "sharding", None))
  dtype = jnp.asarray(p).dtype if dtype is None else dtype
  if not isinstance(p, jax.core.Tracer):
    return jnp.zeros_like(p, dtype=dtype)
  if not jnp.issubdtype(p.dtype, jnp.inexact):
    return jnp.zeros(p.shape, dtype)
  zero = jnp.abs(p * 0)
  return jnp.where(jnp.isfinite(p), zero, jnp.zeros_like(zero)).astype(dtype)
