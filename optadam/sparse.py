"""Sparse gradient leaves: `optadam.IndexedSlices` and ``jax.experimental.sparse.BCOO``.

Keras receives ``tf.IndexedSlices`` gradients (row ``indices``, ``values`` of shape
``[k, *dense_shape[1:]]``) from gathers and embedding lookups. Keras 2 (SPEC §7)

1. clips them on their raw values (norms over the values, duplicates included),
2. sums the values of repeated indices (``_deduplicate_sparse_grad``),
3. decays ALL of ``m`` and ``v`` and scatter-adds at the unique rows::

     m = m - m * (1 - beta_1);  m[rows] += values * (1 - beta_1)
     v = v - v * (1 - beta_2);  v[rows] += values**2 * (1 - beta_2)

4. and steps every row with the dense formula from ``m`` and ``v`` (rows without a
   gradient keep moving by momentum).

The result equals the dense step on the densified gradient up to rounding (rows
that got no gradient are bit-identical: ``m - m*c`` is ``m + (0 - m)*c``). The
gradient itself is never densified; the update is dense (it is the update of every
row).

This module holds the leaf type and the hooks the core transforms call:
`is_sparse`, `values_of`, `with_values` (clipping) and `keras_moments` (the scaler).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optadam import _tree
from optadam import hyperparams
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

  __slots__ = ("values", "_keys", "dense_shape")

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

  def with_values(self, values: Any) -> "IndexedSlices":
    """The same indices with new ``values`` (same leading size)."""
    return IndexedSlices(values, self._keys, self.dense_shape)

  def __repr__(self) -> str:
    values = getattr(self, "values", None)
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


def _bcoo_type() -> Any:
  # A BCOO can only exist if jax.experimental.sparse was imported; don't import it here.
  module = sys.modules.get("jax.experimental.sparse")
  return getattr(module, "BCOO", None)


def _is_bcoo(x: Any) -> bool:
  bcoo = _bcoo_type()
  return bcoo is not None and isinstance(x, bcoo)


def is_sparse(x: Any) -> bool:
  """True for sparse gradient leaves: `IndexedSlices` and ``jax.experimental.sparse.BCOO``."""
  return isinstance(x, IndexedSlices) or _is_bcoo(x)


def values_of(g: Any) -> Any:
  """The raw values of a gradient leaf (duplicates not summed; the array itself if dense)."""
  if isinstance(g, IndexedSlices):
    return g.values
  if _is_bcoo(g):
    return g.data
  return g


def with_values(g: Any, values: Any) -> Any:
  """`g` with its raw values replaced (`values` itself for a dense gradient)."""
  if isinstance(g, IndexedSlices):
    return g.with_values(values)
  if _is_bcoo(g):
    return _bcoo_type()(
      (values, g.indices),
      shape=g.shape,
      indices_sorted=g.indices_sorted,
      unique_indices=g.unique_indices,
    )
  return values


def _rows(g: Any, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array, int]:
  """(row ids int32 [k], values [k, *trailing], number of rows) of a sparse leaf.

  An n_sparse-dimensional BCOO is seen as row-sparse over its sparse dimensions
  flattened into one (row-major); out-of-range entries (BCOO's padding) get id
  ``num_rows``, which the scatters drop.
  """
  grad_shape = tuple(g.shape)
  if grad_shape != tuple(shape):
    raise ValueError(
      f"A sparse gradient of dense shape {grad_shape} was given for a parameter of "
      f"shape {tuple(shape)}."
    )
  if isinstance(g, IndexedSlices):
    return g._row_ids(), g.values, shape[0]  # pylint: disable=protected-access
  if g.n_batch:
    raise ValueError(
      "optadam accepts BCOO gradients with n_batch=0 only; got n_batch="
      f"{g.n_batch}. Use `bcoo_update_layout(g, n_batch=0)` first."
    )
  sparse_shape = shape[: g.n_sparse]
  num_rows = math.prod(sparse_shape)
  if num_rows > _INT32_MAX - 1:
    raise ValueError(
      f"optadam: a BCOO gradient over {num_rows} sparse positions is not supported "
      f"(at most {_INT32_MAX - 1}); make it row-sparse (n_dense > 0)."
    )
  idx = g.indices.astype(jnp.int32)
  flat = jnp.zeros(idx.shape[:1], jnp.int32)
  valid = jnp.ones(idx.shape[:1], jnp.bool_)
  for d, size in enumerate(sparse_shape):
    col = idx[:, d]
    valid = valid & (col >= 0) & (col < size)
    flat = flat * size + jnp.where(valid, col, 0)
  return jnp.where(valid, flat, num_rows), g.data, num_rows


def sum_duplicates(ids: jax.Array, values: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Sums the values of repeated ids, in a static shape (Keras's ``_deduplicate_sparse_grad``).

  A stable sort of the ``k`` ids, then a segment sum over runs of equal ids::

    order  = argsort(ids);  sorted = ids[order]
    seg    = cumsum(sorted[i] != sorted[i-1]) - 1      # run number of each entry
    summed = segment_sum(values[order], seg)           # [k, ...]

  Returns ``(unique_ids, summed)``, both of length ``k``: the sorted unique ids
  padded with ``num_rows`` (an out-of-bounds row, dropped by the scatters), and
  per unique id the sum of its values (zeros on the padding), accumulated in the
  values' dtype as Keras does.
  """
  k = ids.shape[0]
  order = jnp.argsort(ids, stable=True)
  sorted_ids = ids[order]
  first = jnp.concatenate([jnp.ones((1,), jnp.bool_), sorted_ids[1:] != sorted_ids[:-1]])
  seg = jnp.cumsum(first, dtype=jnp.int32) - 1
  summed = jax.ops.segment_sum(values[order], seg, num_segments=k, indices_are_sorted=True)
  unique = jnp.full((k,), num_rows, ids.dtype).at[seg].set(sorted_ids, indices_are_sorted=True)
  return unique, summed


def keras_moments(
  g: Any, m: jax.Array, v: jax.Array, one_minus_b1: Any, one_minus_b2: Any
) -> tuple[jax.Array, jax.Array]:
  """Keras 2's sparse moment update, in its rounding; returns the new ``(m, v)``.

  With ``s`` the values summed per unique row (`sum_duplicates`)::

    m = m - m * (1 - beta_1);   m[rows] += s * (1 - beta_1)
    v = v - v * (1 - beta_2);   v[rows] += |s|**2 * (1 - beta_2)

  (Keras: ``m.assign_add(-m * (1 - beta_1))`` then ``m.scatter_add(...)``.)
  ``|s|**2`` is ``s * s`` for real values, ``real(s * conj(s))`` for complex ones.
  ``one_minus_b*`` are Python floats (rounded straight to the moment dtype) or
  float32 arrays (cast). The values are cast to each moment's dtype after the
  duplicate sum, as the dense path casts the gradient.
  """
  shape = tuple(m.shape)
  ids, values, num_rows = _rows(g, shape)
  row_shape = (num_rows,) + tuple(values.shape[1:])
  c1 = hyperparams.cast(one_minus_b1, m.dtype)
  c2 = hyperparams.cast(one_minus_b2, v.dtype)
  m_rows = m.reshape(row_shape)
  v_rows = v.reshape(row_shape)
  m_rows = m_rows - m_rows * c1  # == m + (-m * c1), Keras's assign_add
  v_rows = v_rows - v_rows * c2
  if values.shape[0]:
    rows, summed = sum_duplicates(ids, values, num_rows)
    s_m = summed.astype(m.dtype)
    if _tree.is_complex(summed.dtype):  # v follows |s|^2, real
      s_sq = _tree.complex_abs_sq(summed, v.dtype)
    else:
      s_sq = jnp.square(summed.astype(v.dtype))
    m_rows = m_rows.at[rows].add(s_m * c1, mode="drop", indices_are_sorted=True)
    v_rows = v_rows.at[rows].add(s_sq * c2, mode="drop", indices_are_sorted=True)
  return m_rows.reshape(shape), v_rows.reshape(shape)


def check_row_indices(updates: Any) -> None:
  """Raises a ValueError if a concrete `IndexedSlices` row index is outside ``[0, rows)``.

  Walks the gradient tree; indices that are traced (inside a ``jax.jit``) or not
  fully addressable from this process are skipped (they cannot be read here).
  Keras raises for such an index; JAX's scatter would drop the row silently.
  """
  leaves = jax.tree.leaves(updates, is_leaf=_tree.is_grad_leaf)
  if not any(isinstance(g, IndexedSlices) for g in leaves):  # the common, dense case: no paths
    return
  flat, _ = jax.tree_util.tree_flatten_with_path(updates, is_leaf=_tree.is_grad_leaf)
  for path, g in flat:
    if not isinstance(g, IndexedSlices):
      continue
    keys = g._keys  # pylint: disable=protected-access
    if not isinstance(keys, jax.Array) or isinstance(keys, jax.core.Tracer):
      continue
    if not keys.is_fully_addressable:
      continue
    ids = np.asarray(g.indices)
    rows = g.dense_shape[0]
    bad = ids[(ids < 0) | (ids >= rows)]
    if bad.size:
      where = f" at `{_tree.path_str(path)}`" if path else ""
      listed = ", ".join(str(i) for i in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
      raise ValueError(
        f"The IndexedSlices gradient{where} has row index {listed} outside [0, {rows}) of "
        f"its table (dense_shape {g.dense_shape}); Keras raises here too. (Inside your own "
        "jax.jit such rows cannot be checked and are dropped.)"
      )
