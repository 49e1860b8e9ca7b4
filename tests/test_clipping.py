"""`optadam.clipping`: per-tensor and global norms, and the packed norms of grouped small leaves
(docs/semantics.md, gradient clipping).

With ``group_small_leaves`` and clipnorm, a group is laid out in rows, tiny leaves apart; each
leaf's norm is a segmented sum of squares over the packed buffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from optadam import clipping
from optadam import grouping


def test_global_clipnorm_nonfinite_gives_nan():
  """Keras: a non-finite global norm turns every gradient into NaN (kept)."""
  tx = optadam.clip_by_keras_global_norm(1.0)
  g = {"a": jnp.array([1.0, jnp.inf]), "b": jnp.array([2.0])}
  out, _ = tx.update(g, tx.init(g))
  assert np.all(np.isnan(out["a"])) and np.all(np.isnan(out["b"]))


def test_clipnorm_zero_gradient_stays_zero():
  tx = optadam.clip_by_tensor_norm(1.0)
  out, _ = tx.update({"a": jnp.zeros(3)}, optax.EmptyState())
  np.testing.assert_array_equal(out["a"], np.zeros(3))


def test_clipnorm_values():
  tx = optadam.clip_by_tensor_norm(1.0)
  out, _ = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}, optax.EmptyState())
  np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-7)
  np.testing.assert_array_equal(out["b"], np.array([0.3, 0.4], np.float32))


# --- packed norms of grouped small leaves ---------------------------------------------


def _member_sizes_layout(sizes):
  params = {f"l{i:02d}": jax.ShapeDtypeStruct((s,), jnp.float32) for i, s in enumerate(sizes)}
  layout = grouping.make_layout(params, max_size=10_000, rows=True)
  return params, layout


@pytest.mark.parametrize(
  "sizes",
  [
    [33, 64, 100, 31 + 32, 1000, 45],  # rows split at every member boundary, a tail
    [32, 64, 96],  # boundaries on rows, no tail
    [1, 3, 2, 7, 5],  # tiny members: rows of one element
    [4096, 40, 4096],
  ],
)
def test_segment_sums_of_squares_match_each_leaf(sizes):
  """The segmented sums of squares equal each member's own, to float32 summation error."""
  _, layout = _member_sizes_layout(sizes)
  r = np.random.RandomState(len(sizes))
  for group in layout.groups:
    flat = r.randn(group.size).astype(np.float32)
    got = np.asarray(jax.jit(lambda x, g=group: clipping.segment_sums_of_squares(g, x))(flat))
    want = [
      np.sum(np.square(flat[m.offset : m.offset + m.size], dtype=np.float64)) for m in group.members
    ]
    np.testing.assert_allclose(got, want, rtol=2e-6)
    # A non-finite element poisons its own member's sum only.
    for m in group.members[:3]:
      for bad, expect in ((np.inf, np.isposinf), (np.nan, np.isnan)):
        poisoned = flat.copy()
        poisoned[m.offset + m.size - 1] = bad
        out = np.asarray(clipping.segment_sums_of_squares(group, jnp.asarray(poisoned)))
        assert expect(out[group.members.index(m)])
        others = [i for i, x in enumerate(group.members) if x is not m]
        np.testing.assert_allclose(out[others], np.asarray(want)[others], rtol=2e-6)


def test_clipnorm_groups_tiny_leaves_apart():
  """With clipnorm, leaves under grouping.ROW elements are grouped apart (others: rows of 32)."""
  sizes = [5, 64, 7, 100, 20, 40]
  params, layout = _member_sizes_layout(sizes)
  grouped_sizes = [sorted(m.size for m in g.members) for g in layout.groups]
  assert sorted(grouped_sizes) == [[5, 7, 20], [40, 64, 100]]
  plain = grouping.make_layout(params, max_size=10_000)
  assert [sorted(m.size for m in g.members) for g in plain.groups] == [sorted(sizes)]
