"""`IndexedSlices`, the row-sparse gradient leaf (re-exported by `optadam.sparse` and `optadam`).

Its row indices are stored as an array of an extended dtype on which JAX refuses arithmetic, so
that transforms which do not know sparse gradients fail loudly; see the class docstring.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jax_random

_INT32_MAX = int(np.iinfo(np.int32).max)
_TAG = "optadam.IndexedSlices.indices"


def _not_a_key(*args: Any, **kwargs: Any) -> Any:
  del args, kwargs
  raise TypeError(f"{_TAG} holds the row indices of a sparse gradient; it is not a random key.")


# The row indices of an IndexedSlices are stored as an array of this extended dtype
# (`key<optadam.IndexedSlices.indices>`, one uint32 per row): it passes through
# jit, donation, `optax.chain`, `jnp.where` and `zeros_like` like any array, but
# JAX refuses all arithmetic on it. That is what makes a sparse gradient fail
# loudly, instead of giving wrong numbers, in an optax transform that maps over
# every leaf (`optax.scale`, `optax.clip`, `optax.clip_by_global_norm`, ...).
_INDICES_IMPL = jax_random.define_prng_impl(
  key_shape=(1,),
  seed=_not_a_key,
  split=_not_a_key,
  random_bits=_not_a_key,
  fold_in=_not_a_key,
  name=_TAG,
  tag=_TAG,
)

_FOREIGN_TRANSFORM = (
  "The row indices of an optadam.IndexedSlices (a sparse gradient) came back from a "
  "transformation as an array of dtype {dtype}: something that does not understand sparse "
  "gradients mapped a function over every leaf of the gradient tree, indices included. Only "
  "optadam's transforms (optadam.adam, optadam.scale_by_keras_adam, optadam.clip_by_*) accept "
  "optadam.IndexedSlices; call `g.to_dense()` before other optax transforms."
)


def _is_indices_dtype(dtype: Any) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and str(dtype) == f"key<{_TAG}>"


def _is_numeric_dtype(dtype: Any) -> bool:
  try:
    return bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))
  except TypeError:
    return False


def _static_shape(dense_shape: Any) -> tuple[int, ...]:
  try:
    return tuple(int(d) for d in dense_shape)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise TypeError(
      "optadam.IndexedSlices: `dense_shape` must be static (a tuple of Python "
      f"ints, known at trace time); got {dense_shape!r}."
    ) from None


class IndexedSlices:
  r"""A sparse gradient: rows ``indices`` of a ``dense_shape`` tensor, with ``values``.

  The JAX counterpart of ``tf.IndexedSlices``: the densified gradient is
  ``zeros(dense_shape).at[indices].add(values)`` (duplicate indices add up).
  Pass it as a gradient leaf to `optadam.adam` (or `optadam.scale_by_keras_adam`
  and the ``optadam.clip_by_*`` transforms): the result is Keras 2's sparse
  Adam step, equal to the dense step on the densified gradient, and no
  table-sized gradient is ever built::

    clip on the raw values (duplicates included, as Keras)
    s    = values summed per unique index
    m    = m - m * (1 - beta_1);   m[unique] += s * (1 - beta_1)
    v    = v - v * (1 - beta_2);   v[unique] += s**2 * (1 - beta_2)
    out  = the dense Adam update of every row, from m and v

  It is a pytree node with children ``values`` and ``indices`` and static aux
  data ``dense_shape``, so it goes through ``jax.jit`` (also as a donated
  argument) and ``optax.chain``.

  Foreign transforms fail loudly. Inside the pytree the indices are stored as an
  array of the extended dtype ``key<optadam.IndexedSlices.indices>`` (one uint32
  per row), which passes through jit, donation, ``jnp.where`` and ``zeros_like``
  but on which JAX refuses arithmetic. An optax transform that does not know
  sparse gradients and maps over every leaf therefore raises instead of scaling
  the row indices: ``optax.scale`` / ``optax.clip`` give ``TypeError: multiply
  (maximum) does not accept dtypes ..., key<optadam.IndexedSlices.indices>``;
  ``optax.clip_by_global_norm`` gives JAX's ``NotImplementedError`` for ``.real``
  on that array. A transform whose state is shaped like the parameters
  (``optax.scale_by_adam``, ``optax.sgd`` with momentum, ``optax.MultiSteps``)
  raises JAX's pytree structure error naming ``IndexedSlices``. An
  ``IndexedSlices`` rebuilt with numeric indices (e.g. ``jax.tree.map(lambda x:
  jnp.zeros(x.shape), g)``) raises a `TypeError` naming the problem. Use
  ``g.to_dense()`` to feed such transforms. (A BCOO gradient has no such
  guard: its indices are plain integers.)

  Indices must lie in ``[0, dense_shape[0])``; Keras raises otherwise, and so does
  optadam whenever the indices are concrete: NumPy / Python indices when the
  object is built, device arrays when the gradient reaches ``update`` (a
  `ValueError` naming the index, the gradient's path and the table's shape;
  with ``optadam.adam(jit_compile=True)`` this check runs before the internal
  ``jax.jit``, at the cost of reading the indices back to the host). Indices
  that are traced (the gradient is built inside, or passed into, the user's own
  ``jax.jit``) cannot be checked: out-of-range rows are then dropped, as JAX's
  scatter drops them, negative ones included (they do not wrap), so the step is
  that of the gradient without those entries.

  Attributes:
    values: ``[k, *dense_shape[1:]]`` array, the gradient rows.
    indices: ``[k]`` int32 array, the row of each value (a read-only view of the
      stored indices, as given; duplicates and any order allowed).
    dense_shape: tuple of ints, the shape of the dense gradient (the parameter's).

  Example:
    >>> import jax.numpy as jnp, optadam
    >>> table = jnp.zeros((1000, 8))
    >>> tx = optadam.adam(1e-3)
    >>> state = tx.init(table)
    >>> g = optadam.IndexedSlices(jnp.ones((2, 8)), jnp.array([7, 3]), table.shape)
    >>> updates, state = tx.update(g, state)
    >>> table = optadam.apply_updates(table, updates)
  """

  __slots__ = ("_keys", "dense_shape", "values")

  def __init__(self, values: Any, indices: Any, dense_shape: Sequence[int]):
    shape = _static_shape(dense_shape)
    if not shape:
      raise ValueError(
        "optadam.IndexedSlices: `dense_shape` must have at least one dimension (the rows); got ()."
      )
    if shape[0] > _INT32_MAX - 1:
      raise ValueError(
        f"optadam.IndexedSlices: at most {_INT32_MAX - 1} rows are supported; got "
        f"dense_shape={shape}."
      )
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.inexact):
      raise TypeError(
        f"optadam.IndexedSlices: `values` must be a floating-point array; got dtype {values.dtype}."
      )
    if values.ndim != len(shape) or tuple(values.shape[1:]) != shape[1:]:
      raise ValueError(
        f"optadam.IndexedSlices: `values` must have shape [k, *dense_shape[1:]] = "
        f"[k, {', '.join(map(str, shape[1:]))}]; got {tuple(values.shape)} for "
        f"dense_shape={shape}."
      )
    keys = (
      indices if _is_indices_dtype(getattr(indices, "dtype", None)) else _to_keys(indices, shape[0])
    )
    if keys.shape != (values.shape[0],):
      raise ValueError(
        "optadam.IndexedSlices: `indices` must be 1-D with one entry per row of "
        f"`values` ({values.shape[0]}); got shape {tuple(keys.shape)}."
      )
    self.values = values
    self._keys = keys
    self.dense_shape = shape

  # -- the TF-like surface ---------------------------------------------------------

  @property
  def indices(self) -> jax.Array:
    """The row indices, int32 ``[k]``, as given (out-of-range ones included)."""
    return jax.lax.bitcast_convert_type(jax.random.key_data(self._keys)[:, 0], jnp.int32)

  def _row_ids(self) -> jax.Array:
    """The row indices with every out-of-range one (negative ones too) set to
    ``dense_shape[0]``, which the scatters drop."""
    idx = self.indices
    rows = self.dense_shape[0]
    return jnp.where((idx >= 0) & (idx < rows), idx, rows)

  @property
  def dtype(self) -> Any:
    """The dtype of the values (and of the dense gradient)."""
    return self.values.dtype

  @property
  def shape(self) -> tuple[int, ...]:
    """The dense shape (as ``BCOO.shape``)."""
    return self.dense_shape

  @property
  def ndim(self) -> int:
    return len(self.dense_shape)

  def to_dense(self) -> jax.Array:
    """The densified gradient, ``zeros(dense_shape).at[indices].add(values)``."""
    return (
      jnp.zeros(self.dense_shape, self.values.dtype)
      .at[self._row_ids()]
      .add(self.values, mode="drop")
    )

  def with_values(self, values: Any) -> IndexedSlices:
    """The same indices with new ``values`` (same leading size)."""
    return IndexedSlices(values, self._keys, self.dense_shape)

  def __repr__(self) -> str:
    values: Any = getattr(self, "values", None)
    desc = f"{values.dtype}{list(values.shape)}" if hasattr(values, "shape") else repr(values)
    return (
      f"IndexedSlices(values={desc}, indices=int32[{_leading(values)}], "
      f"dense_shape={self.dense_shape})"
    )

  # -- pytree ---------------------------------------------------------------------

  def _tree_flatten_with_keys(self):
    return (
      (
        (jax.tree_util.GetAttrKey("values"), self.values),
        (jax.tree_util.GetAttrKey("indices"), self._keys),
      ),
      self.dense_shape,
    )

  def _tree_flatten(self):
    return (self.values, self._keys), self.dense_shape

  @classmethod
  def _tree_unflatten(cls, dense_shape, children):
    values, keys = children
    dtype = getattr(keys, "dtype", None)
    if dtype is not None and _is_numeric_dtype(dtype):
      raise TypeError(_FOREIGN_TRANSFORM.format(dtype=dtype))
    # No validation: JAX unflattens with tracers, shape structs and placeholders.
    obj = object.__new__(cls)
    obj.values = values
    obj._keys = keys
    obj.dense_shape = dense_shape
    return obj


jax.tree_util.register_pytree_with_keys(
  IndexedSlices,
  IndexedSlices._tree_flatten_with_keys,  # pylint: disable=protected-access
  IndexedSlices._tree_unflatten,
  IndexedSlices._tree_flatten,
)  # pylint: disable=protected-access


def _leading(values: Any) -> str:
  shape = getattr(values, "shape", None)
  return str(shape[0]) if shape else "?"


def _to_keys(indices: Any, num_rows: int) -> jax.Array:
  """Integer row indices -> the stored key array (their int32 bits, as uint32).

  Out-of-range indices are stored as given (beyond the int32 range: clipped to
  it), so that `check_row_indices` can name them; the scatters drop them.
  """
  if not isinstance(indices, (jax.Array, jax.core.Tracer)):
    host = np.asarray(indices)
    if not np.issubdtype(host.dtype, np.integer):
      raise TypeError(f"optadam.IndexedSlices: `indices` must be integers; got dtype {host.dtype}.")
    bad = (host < 0) | (host >= num_rows)
    if host.size and bad.any():
      raise ValueError(
        f"optadam.IndexedSlices: indices must lie in [0, {num_rows}); got {host[bad][:5].tolist()}."
      )
  idx = jnp.asarray(indices)
  if not jnp.issubdtype(idx.dtype, jnp.integer):
    raise TypeError(f"optadam.IndexedSlices: `indices` must be integers; got dtype {idx.dtype}.")
  if idx.ndim != 1:
    raise ValueError(f"optadam.IndexedSlices: `indices` must be 1-D; got shape {idx.shape}.")
  if jnp.issubdtype(idx.dtype, jnp.unsignedinteger) and idx.dtype.itemsize >= 4:
    idx = jnp.minimum(idx, _INT32_MAX)
  elif idx.dtype.itemsize > 4:
    idx = jnp.clip(idx, -_INT32_MAX - 1, _INT32_MAX)
  bits = jax.lax.bitcast_convert_type(idx.astype(jnp.int32), jnp.uint32)
  return jax.random.wrap_key_data(bits[:, None], impl=_INDICES_IMPL)
