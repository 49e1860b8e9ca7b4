"""Sparse gradient leaves: `optadam.IndexedSlices` and ``jax.experimental.sparse.BCOO``.

Keras receives ``tf.IndexedSlices`` gradients (row ``indices``, ``values`` of shape
``[k, *dense_shape[1:]]``) from gathers and embedding lookups. Keras 2
(docs: :ref:`sparse-gradients`)

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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optadam import _tree
from optadam import hyperparams
from optadam._indexed_slices import _INT32_MAX, IndexedSlices
from optadam._tree import is_sparse


def _is_bcoo(x: Any) -> bool:
  return is_sparse(x) and not isinstance(x, IndexedSlices)


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
    return _tree.bcoo_type()(
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
