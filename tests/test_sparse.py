"""Sparse gradients: optadam.IndexedSlices and BCOO equal the dense step, Keras's way.

As docs/semantics.md (sparse gradients) describes them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import sparse as jsparse

import optadam
from helpers import run_optadam, worst_relative
from reference import reference_adam

V, D = 12, 3
TOUCHED = 9  # rows TOUCHED..V-1 of "emb" never get a gradient
SHAPES = {"emb": (V, D), "vec": (9,), "bias": (D,)}
SPARSE = ("emb", "vec")


# --- gradient sequences: raw (values, ids) pairs, converted to each form --------------------


def make_raw_grads(
  steps: int,
  seed: int = 0,
  *,
  dup: bool = True,
  scale: float = 1.0,
  none_at: tuple[tuple[int, str], ...] = (),
) -> list[dict[str, Any]]:
  """Per step: "emb" and "vec" as (values, ids), out-of-order (and duplicate) ids; "bias" dense."""
  rng = np.random.default_rng(seed)
  out = []
  for s in range(steps):
    if dup:
      ids = rng.integers(0, TOUCHED, size=6)
      ids[3] = ids[0]  # at least one duplicate every step
      vids = rng.integers(0, 6, size=5)
      vids[4] = vids[1]
    else:
      ids = rng.choice(TOUCHED, size=6, replace=False)
      vids = rng.choice(6, size=5, replace=False)
    if np.all(np.diff(ids) >= 0):
      ids = ids[::-1].copy()  # never sorted
    step = {
      "emb": ((rng.normal(size=(6, D)) * scale).astype(np.float32), ids.astype(np.int32)),
      "vec": ((rng.normal(size=5) * scale).astype(np.float32), vids.astype(np.int32)),
      "bias": (rng.normal(size=D) * scale).astype(np.float32),
    }
    for at, key in none_at:
      if at == s:
        step[key] = None
    out.append(step)
  return out


def densify(raw: dict[str, Any], shapes=SHAPES) -> dict[str, Optional[np.ndarray]]:
  out = {}
  for k, g in raw.items():
    if isinstance(g, tuple):
      dense = np.zeros(shapes[k], g[0].dtype)
      np.add.at(dense, g[1], g[0])
      g = dense
    out[k] = g
  return out


def as_indexed_slices(raw: dict[str, Any], shapes=SHAPES) -> dict[str, Any]:
  return {
    k: optadam.IndexedSlices(g[0], g[1], shapes[k]) if isinstance(g, tuple) else g
    for k, g in raw.items()
  }


def as_bcoo_rows(raw: dict[str, Any], shapes=SHAPES) -> dict[str, Any]:
  """BCOO with indices [nse, 1] (row sparsity; n_dense = trailing dims)."""
  return {
    k: jsparse.BCOO((jnp.asarray(g[0]), jnp.asarray(g[1])[:, None]), shape=shapes[k])
    if isinstance(g, tuple)
    else g
    for k, g in raw.items()
  }


def as_bcoo_elements(raw: dict[str, Any], shapes=SHAPES) -> dict[str, Any]:
  """Full COO: one entry per element, indices [nse, ndim]."""
  out = {}
  for k, g in raw.items():
    if isinstance(g, tuple):
      values, ids = g
      trailing = values.shape[1:]
      pos = (
        np.stack(np.meshgrid(*[np.arange(n) for n in trailing], indexing="ij"), -1).reshape(
          -1, len(trailing)
        )
        if trailing
        else np.zeros((1, 0), np.int64)
      )
      idx = np.concatenate([np.repeat(ids, len(pos))[:, None], np.tile(pos, (len(ids), 1))], 1)
      g = jsparse.BCOO(
        (jnp.asarray(values.reshape(-1)), jnp.asarray(idx, jnp.int32)), shape=shapes[k]
      )
    out[k] = g
  return out


def keras_clip_raw(raw_steps, *, clipnorm=None, global_clipnorm=None, clipvalue=None):
  """Keras's clipping on the RAW values (duplicates not summed), in float64."""
  out = []
  for step in raw_steps:
    vals = {
      k: np.asarray(g[0] if isinstance(g, tuple) else g, np.float64)
      for k, g in step.items()
      if g is not None
    }
    if clipnorm:
      vals = {k: v * clipnorm / max(np.sqrt(np.sum(v * v)), clipnorm) for k, v in vals.items()}
    elif global_clipnorm:
      n = np.sqrt(sum(np.sum(v * v) for v in vals.values()))
      vals = {
        k: v * (global_clipnorm * min(1.0 / n, 1.0 / global_clipnorm)) for k, v in vals.items()
      }
    elif clipvalue:
      vals = {k: np.clip(v, -clipvalue, clipvalue) for k, v in vals.items()}
    new = {}
    for k, g in step.items():
      if g is None:
        new[k] = None
      elif isinstance(g, tuple):
        new[k] = (vals[k].astype(np.float32), g[1])
      else:
        new[k] = vals[k].astype(np.float32)
    out.append(new)
  return out


def make_params(shapes=SHAPES, seed: int = 1) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


run = run_optadam  # accepts IndexedSlices / BCOO / None gradient leaves


# --- sparse == dense through optadam.adam --------------------------------------------------


@dataclasses.dataclass
class Case:
  name: str
  kwargs: dict[str, Any]
  dup: bool = True
  scale: float = 1.0
  none_at: tuple[tuple[int, str], ...] = ()
  clip: bool = False  # clipping on: the dense run gets Keras's raw-value clipping
  bcoo: bool = False  # also run the two BCOO forms


CASES = [
  Case("defaults", {}),
  Case(
    "lr=0.1, epsilon=1e-3, beta schedules",
    {
      "learning_rate": 0.1,
      "epsilon": 1e-3,
      "beta_1": lambda step: 0.9,
      "beta_2": lambda step: 0.99,
    },
  ),
  Case("amsgrad", {"amsgrad": True, "learning_rate": 0.01}, bcoo=True),
  Case("weight_decay", {"weight_decay": 0.05, "learning_rate": 0.01}),
  Case("clipnorm", {"clipnorm": 0.5}, scale=10.0, clip=True, bcoo=True),
  Case("global_clipnorm", {"global_clipnorm": 0.5}, scale=10.0, clip=True),
  Case("clipvalue", {"clipvalue": 0.3}, scale=3.0, clip=True),
  Case("clipnorm, no duplicates", {"clipnorm": 0.5}, dup=False, scale=10.0),
  Case(
    "ema, overwrite every 3",
    {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 3, "learning_rate": 0.01},
  ),
  Case("None mixed in", {"learning_rate": 0.01}, none_at=((2, "emb"), (4, "bias"), (4, "vec"))),
  Case(
    "all on",
    {
      "amsgrad": True,
      "weight_decay": 0.01,
      "clipnorm": 1.0,
      "use_ema": True,
      "ema_overwrite_frequency": 3,
      "learning_rate": 0.01,
    },
    scale=3.0,
    clip=True,
    none_at=((5, "emb"),),
  ),
]


def _dense_run(case: Case, params0, raw):
  if (
    case.clip
  ):  # Keras clips the raw values before summing duplicates: clip here, not in the dense tx
    clip_kw = {
      k: case.kwargs[k] for k in ("clipnorm", "global_clipnorm", "clipvalue") if k in case.kwargs
    }
    kwargs = {k: v for k, v in case.kwargs.items() if k not in clip_kw}
    raw = keras_clip_raw(raw, **clip_kw)
  else:
    kwargs = case.kwargs
  return run(optadam.adam(**kwargs), params0, [densify(g) for g in raw])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sparse_equals_dense(case: Case, report):
  """25 jitted steps: IndexedSlices (and BCOO) gradients == their densified gradients."""
  params0 = make_params()
  raw = make_raw_grads(25, dup=case.dup, scale=case.scale, none_at=case.none_at)
  dense, dense_state = _dense_run(case, params0, raw)
  tx = optadam.adam(**case.kwargs)
  sparse, sparse_state = run(tx, params0, [as_indexed_slices(g) for g in raw], donate=True)
  err = worst_relative(sparse, dense)
  report(f"sparse vs dense / {case.name}", f"{err:.2e}")
  assert err <= 1e-6, f"{case.name}: {err}"
  np.testing.assert_allclose(
    np.asarray(sparse_state.adam.nu["emb"]),
    np.asarray(dense_state.adam.nu["emb"]),
    rtol=1e-5,
    atol=1e-12,
  )
  # Rows without a gradient this step still move (momentum); rows never touched do not.
  if raw[-1]["emb"] is not None:
    idle = sorted(set(range(TOUCHED)) - set(raw[-1]["emb"][1].tolist()))
    assert idle and np.all(sparse[-1]["emb"][idle] != sparse[-2]["emb"][idle])
  if not case.kwargs.get("weight_decay") and not case.kwargs.get("use_ema"):
    np.testing.assert_array_equal(sparse[-1]["emb"][TOUCHED:], params0["emb"][TOUCHED:])
  if case.bcoo:
    for convert in (as_bcoo_rows, as_bcoo_elements):
      via_bcoo, _ = run(tx, params0, [convert(g) for g in raw])
      err = worst_relative(via_bcoo, dense)
      assert err <= 1e-6, f"{case.name} / {convert.__name__}: {err}"


def test_eager_equals_jit():
  params0 = {"emb": make_params()["emb"]}
  raw = [{"emb": g["emb"]} for g in make_raw_grads(2)]
  jitted, _ = run(optadam.adam(learning_rate=0.01), params0, [as_indexed_slices(g) for g in raw])
  eager, _ = run(
    optadam.adam(learning_rate=0.01, jit_compile=False),
    params0,
    [as_indexed_slices(g) for g in raw],
    jit=False,
  )
  assert worst_relative(eager, jitted) <= 1e-6


@hypothesis.settings(
  max_examples=6,
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
@hypothesis.given(
  rows=st.integers(1, 10),
  trailing=st.sampled_from([(), (1,), (3,), (2, 2)]),
  ids=st.lists(st.integers(0, 9), min_size=0, max_size=12),
  form=st.sampled_from(["indexed_slices", "bcoo_rows", "bcoo_elements"]),
  amsgrad=st.booleans(),
  seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_and_index_patterns(rows, trailing, ids, form, amsgrad, seed):
  shape = (rows,) + trailing
  ids = np.asarray([i % rows for i in ids], np.int32)
  rng = np.random.default_rng(seed)
  shapes = {"t": shape}
  params0 = make_params(shapes, seed)
  raw = [
    {
      "t": (
        rng.normal(size=(len(ids),) + trailing).astype(np.float32),
        rng.permutation(ids).astype(np.int32),
      )
    }
    for _ in range(3)
  ]
  convert = {
    "indexed_slices": as_indexed_slices,
    "bcoo_rows": as_bcoo_rows,
    "bcoo_elements": as_bcoo_elements,
  }[form]
  tx = optadam.adam(learning_rate=0.05, amsgrad=amsgrad)
  dense, _ = run(tx, params0, [densify(g, shapes) for g in raw])
  sparse, _ = run(tx, params0, [convert(g, shapes) for g in raw])
  assert worst_relative(sparse, dense) <= 1e-6


# --- Keras's duplicate handling and clipping order -----------------------------------------


def test_duplicates_are_summed_before_squaring():
  """Rows 1 and 7 on the same index: v gets (1-b2)*8**2 (Keras), not (1-b2)*(1+49)."""
  tx = optadam.scale_by_keras_adam()
  state = tx.init(jnp.zeros((4, 1)))
  g = optadam.IndexedSlices(jnp.array([[1.0], [7.0]]), jnp.array([2, 2]), (4, 1))
  _, state = tx.update(g, state)
  np.testing.assert_array_equal(
    np.asarray(state.nu)[:, 0], np.float32([0, 0, np.float32(1.0 - 0.999) * 64, 0])
  )
  np.testing.assert_array_equal(
    np.asarray(state.mu)[:, 0], np.float32([0, 0, np.float32(1.0 - 0.9) * 8, 0])
  )


def test_keras_rounding_form_of_the_sparse_moments():
  """m = m - m*(1-b1), then m[rows] += s*(1-b1): Keras 2's sparse branch, bit for bit."""
  rng = np.random.default_rng(3)
  m0 = rng.normal(size=(5, 2)).astype(np.float32)
  v0 = np.abs(rng.normal(size=(5, 2))).astype(np.float32)
  values = rng.normal(size=(3, 2)).astype(np.float32)
  g = optadam.IndexedSlices(values, np.array([4, 0, 4]), (5, 2))
  m, v = jax.jit(optadam.sparse.keras_moments, static_argnums=(3, 4))(
    g, jnp.asarray(m0), jnp.asarray(v0), 1.0 - 0.9, 1.0 - 0.999
  )
  c1, c2 = np.float32(1.0 - 0.9), np.float32(1.0 - 0.999)
  s = np.zeros((5, 2), np.float32)
  np.add.at(s, [4, 0, 4], values)
  want_m = m0 - m0 * c1
  want_v = v0 - v0 * c2
  for r in (0, 4):
    want_m[r] = want_m[r] + s[r] * c1
    want_v[r] = want_v[r] + (s[r] * s[r]) * c2
  np.testing.assert_array_equal(np.asarray(m), want_m)
  np.testing.assert_array_equal(np.asarray(v), want_v)


@pytest.mark.parametrize(
  "kwargs, first_moment",
  [
    ({"clipvalue": 2.0}, 1.0 + 2.0),  # Keras clips 1 and 7 first; dense would give clip(8) = 2
    ({"clipnorm": 1.0}, 8.0 / np.sqrt(50.0)),  # norm over the raw values, sqrt(1 + 49)
    ({"global_clipnorm": 1.0}, 8.0 / np.sqrt(50.0)),
  ],
)
def test_clipping_uses_the_raw_values(kwargs, first_moment):
  tx = optadam.adam(**kwargs)
  state = tx.init({"t": jnp.zeros((3, 1))})
  g = optadam.IndexedSlices(jnp.array([[1.0], [7.0]]), jnp.array([1, 1]), (3, 1))
  _, state = tx.update({"t": g}, state)
  np.testing.assert_allclose(
    np.asarray(state.adam.mu["t"])[:, 0], [0.0, (1.0 - 0.9) * first_moment, 0.0], rtol=1e-6
  )


def test_clip_transforms_keep_indexed_slices():
  g = optadam.IndexedSlices(jnp.array([[3.0, 0.0], [0.0, 4.0]]), jnp.array([0, 2]), (3, 2))
  for tx, want in [
    (optadam.clip_by_tensor_norm(1.0), [[0.6, 0.0], [0.0, 0.8]]),
    (optadam.clip_by_keras_global_norm(1.0), [[0.6, 0.0], [0.0, 0.8]]),
    (optadam.clip_by_value(1.0), [[1.0, 0.0], [0.0, 1.0]]),
  ]:
    out, _ = jax.jit(tx.update)({"g": g, "none": None}, tx.init(None))
    assert isinstance(out["g"], optadam.IndexedSlices) and out["none"] is None
    np.testing.assert_allclose(np.asarray(out["g"].values), want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["g"].indices), [0, 2])
    assert out["g"].dense_shape == (3, 2)


# --- float64 reference -----------------------------------------------------------------------


def test_matches_float64_reference():
  kwargs = {
    "learning_rate": 0.01,
    "amsgrad": True,
    "weight_decay": 0.02,
    "use_ema": True,
    "ema_overwrite_frequency": 4,
  }
  params0 = make_params()
  raw = make_raw_grads(15, none_at=((3, "emb"),))
  raw64 = [
    {
      k: None
      if g is None
      else (g[0].astype(np.float64), g[1].astype(np.int64))
      if isinstance(g, tuple)
      else g.astype(np.float64)
      for k, g in s.items()
    }
    for s in raw
  ]
  ref, _ = reference_adam(
    params0, [densify(g) for g in raw64], **kwargs
  )  # duplicates summed in f64
  ours32, _ = run(optadam.adam(**kwargs), params0, [as_indexed_slices(g) for g in raw])
  assert worst_relative(ours32, ref) <= 5e-4 * kwargs["learning_rate"]
  with jax.enable_x64(True):
    p64 = {k: v.astype(np.float64) for k, v in params0.items()}
    ours64, state = run(optadam.adam(**kwargs), p64, [as_indexed_slices(g) for g in raw64])
    assert state.adam.mu["emb"].dtype == jnp.float64
  assert worst_relative(ours64, ref) <= 1e-13


# --- an embedding model in Flax whose lookup gradient is an IndexedSlices -------------------


@jax.custom_vjp
def embedding_lookup(table, ids, row_tap):
  """``table[ids]``. Its VJP sends the row cotangents to `row_tap` (zeros of the rows' shape)
  and nothing to the table, so differentiating w.r.t. `row_tap` gives the rows' gradients."""
  del row_tap
  return jnp.take(table, ids, axis=0)


def _lookup_fwd(table, ids, row_tap):
  return embedding_lookup(table, ids, row_tap), None


def _lookup_bwd(_, row_cotangent):
  return None, None, row_cotangent  # no (dense) cotangent for the table


embedding_lookup.defvjp(_lookup_fwd, _lookup_bwd)


def test_flax_embedding_model_trains_like_dense():
  import flax.linen as nn  # flax is not at the floor: `make test-min` deselects this test

  class Recommender(nn.Module):
    vocab: int
    features: int

    @nn.compact
    def __call__(self, ids, row_tap=None):
      table = self.param("embedding", nn.initializers.normal(0.5), (self.vocab, self.features))
      if row_tap is None:  # the plain lookup: jax.grad gives a dense table gradient
        rows = jnp.take(table, ids, axis=0)
      else:
        rows = embedding_lookup(table, ids, row_tap)
      h = nn.tanh(nn.Dense(8)(rows.mean(axis=1)))
      return nn.Dense(1)(h)[:, 0]

  vocab, features, batch, length = 50, 4, 8, 5
  model = Recommender(vocab, features)
  rng = np.random.default_rng(0)
  data = [
    (
      jnp.asarray(rng.integers(0, vocab - 10, size=(batch, length)), jnp.int32),
      jnp.asarray(rng.normal(size=batch), jnp.float32),
    )
    for _ in range(6)
  ]
  params0 = model.init(jax.random.key(0), data[0][0])["params"]
  tx = optadam.adam(learning_rate=0.01, weight_decay=0.01)

  def mse(pred, y):
    return jnp.mean((pred - y) ** 2)

  @jax.jit
  def dense_step(params, state, ids, y):
    grads = jax.grad(lambda p: mse(model.apply({"params": p}, ids), y))(params)
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  @jax.jit
  def sparse_step(params, state, ids, y):
    table = params["embedding"]
    rest = {k: v for k, v in params.items() if k != "embedding"}

    def loss(rest, row_tap):
      return mse(model.apply({"params": {**rest, "embedding": table}}, ids, row_tap), y)

    tap = jnp.zeros(ids.shape + (features,), table.dtype)
    g_rest, g_rows = jax.grad(loss, argnums=(0, 1))(rest, tap)
    grads = {
      **g_rest,
      "embedding": optadam.IndexedSlices(
        g_rows.reshape(-1, features), ids.reshape(-1), table.shape
      ),
    }
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  results = {}
  for name, step in (("dense", dense_step), ("sparse", sparse_step)):
    params, state = params0, tx.init(params0)
    history = []
    for ids, y in data:
      params, state = step(params, state, ids, y)
      history.append(
        {
          "/".join(map(str, path)): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        }
      )
    results[name] = history
  assert worst_relative(results["sparse"], results["dense"]) <= 1e-6
  # The table moved, including rows no example looked up (momentum).
  assert not np.allclose(
    results["sparse"][-1]["['embedding']"][-10:], np.asarray(params0["embedding"])[-10:]
  )


# --- foreign optax transforms fail loudly ----------------------------------------------------


def _sparse_grads():
  return {"t": optadam.IndexedSlices(jnp.ones((2, 3)), jnp.array([4, 1]), (6, 3))}


@pytest.mark.parametrize(
  "tx, match",
  [
    (optax.scale(0.1), "optadam.IndexedSlices"),
    (optax.clip(1.0), "optadam.IndexedSlices"),
    (optax.scale_by_adam(), "IndexedSlices"),
    (optax.sgd(0.1, momentum=0.9), "IndexedSlices"),
    (optax.chain(optax.scale(-1.0), optadam.adam()), "optadam.IndexedSlices"),
    (optax.clip_by_global_norm(1.0), None),  # optax calls `.real`: JAX's NotImplementedError
  ],
  ids=[
    "scale",
    "clip",
    "scale_by_adam",
    "sgd-momentum",
    "scale-then-optadam",
    "clip_by_global_norm",
  ],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_foreign_optax_transforms_raise(tx, match, jit):
  params = {"t": jnp.zeros((6, 3))}
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises((TypeError, ValueError, NotImplementedError), match=match):
    update(_sparse_grads(), state, params)


def test_rebuilding_with_numeric_indices_raises():
  g = _sparse_grads()
  with pytest.raises(TypeError, match=r"optadam.IndexedSlices.*does not understand sparse"):
    jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.int32), g)
  # Structure-only maps keep working.
  same = jax.tree.map(lambda x: x, g)
  np.testing.assert_array_equal(np.asarray(same["t"].indices), [4, 1])
  zeros = jax.tree.map(jnp.zeros_like, g)
  assert isinstance(zeros["t"], optadam.IndexedSlices)


# --- no dense gradient: memory of the compiled step -----------------------------------------


def test_sparse_step_memory_is_no_larger_than_dense():
  rows, features, k = 100_000, 16, 64
  table_bytes = rows * features * 4
  tx = optadam.adam(learning_rate=0.01)
  params = jax.ShapeDtypeStruct((rows, features), jnp.float32)
  state = jax.eval_shape(tx.init, params)
  ids = jax.ShapeDtypeStruct((k,), jnp.int32)
  values = jax.ShapeDtypeStruct((k, features), jnp.float32)

  def sparse_step(p, s, values, ids):
    g = optadam.IndexedSlices(values, ids, (rows, features))
    u, s = tx.update(g, s, p)
    return optadam.apply_updates(p, u), s

  def dense_step(p, s, g):
    u, s = tx.update(g, s, p)
    return optadam.apply_updates(p, u), s

  def densified_step(p, s, values, ids):  # what a user without IndexedSlices would write
    return dense_step(p, s, jnp.zeros((rows, features)).at[ids].add(values))

  def analyse(fn, *args):
    compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(*args).compile()
    ma = compiled.memory_analysis()
    peak = (
      ma.argument_size_in_bytes
      + ma.output_size_in_bytes
      + ma.temp_size_in_bytes
      - ma.alias_size_in_bytes
    )
    return ma, peak

  sparse_ma, sparse_peak = analyse(sparse_step, params, state, values, ids)
  _dense_ma, dense_peak = analyse(dense_step, params, state, params)
  densified_ma, densified_peak = analyse(densified_step, params, state, values, ids)
  assert sparse_peak <= dense_peak
  assert sparse_peak <= densified_peak
  # No table-sized temporary: only params, m and v (donated, updated in place).
  assert sparse_ma.temp_size_in_bytes < table_bytes // 10
  assert sparse_ma.argument_size_in_bytes < 3 * table_bytes + table_bytes // 10
  # The check can see a densified gradient when there is one.
  assert densified_ma.temp_size_in_bytes >= table_bytes


# --- the IndexedSlices type ------------------------------------------------------------------


def test_indexed_slices_pytree_and_accessors():
  g = optadam.IndexedSlices(np.ones((3, 2), np.float32), [5, 0, 5], (7, 2))
  assert g.dtype == jnp.float32 and g.shape == (7, 2) and g.ndim == 2
  assert g.indices.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(g.indices), [5, 0, 5])
  dense = np.zeros((7, 2), np.float32)
  dense[5], dense[0] = 2.0, 1.0
  np.testing.assert_array_equal(np.asarray(g.to_dense()), dense)
  leaves, _ = jax.tree.flatten(g)
  assert len(leaves) == 2 and leaves[0].shape == (3, 2)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g)]
  assert paths == [".values", ".indices"]
  back = jax.jit(lambda g: g)(g)
  assert isinstance(back, optadam.IndexedSlices) and back.dense_shape == (7, 2)
  np.testing.assert_array_equal(np.asarray(back.indices), [5, 0, 5])
  assert "IndexedSlices" in repr(g)
  assert "IndexedSlices" in optadam.__all__


def test_indexed_slices_validation():
  with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
    optadam.IndexedSlices(np.ones((2, 2)), np.array([1, 4]), (4, 2))
  with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
    optadam.IndexedSlices(np.ones((1, 2)), [-1], (4, 2))
  with pytest.raises(ValueError, match="shape"):
    optadam.IndexedSlices(np.ones((2, 3)), [0, 1], (4, 2))
  with pytest.raises(ValueError, match="one entry per row"):
    optadam.IndexedSlices(np.ones((2, 2)), [0, 1, 2], (4, 2))
  with pytest.raises(TypeError, match="integers"):
    optadam.IndexedSlices(np.ones((2, 2)), [0.0, 1.0], (4, 2))
  with pytest.raises(TypeError, match="floating-point"):
    optadam.IndexedSlices(np.ones((2, 2), np.int32), [0, 1], (4, 2))
  with pytest.raises(TypeError, match="static"):
    jax.jit(lambda n: optadam.IndexedSlices(jnp.ones((1, 2)), jnp.array([0]), (n, 2)))(4)
  tx = optadam.adam()
  state = tx.init(jnp.zeros((5, 2)))
  with pytest.raises(ValueError, match="dense shape"):
    tx.update(optadam.IndexedSlices(jnp.ones((1, 2)), jnp.array([0]), (4, 2)), state)
  batched = jsparse.BCOO.fromdense(jnp.ones((5, 2)), n_batch=1)
  with pytest.raises(ValueError, match="n_batch=0"):
    tx.update(batched, state)


def test_out_of_range_traced_indices_are_dropped():
  """Under jit indices cannot be checked; out-of-range (and negative) rows are dropped."""
  tx = optadam.scale_by_keras_adam()
  state = tx.init(jnp.zeros((4, 1)))

  @jax.jit
  def step(ids):
    g = optadam.IndexedSlices(jnp.ones((3, 1)), ids, (4, 1))
    return tx.update(g, state)[1].mu

  mu = np.asarray(step(jnp.array([2, 9, -1])))
  np.testing.assert_allclose(mu[:, 0], [0, 0, 0.1, 0], rtol=1e-6)


def test_inject_hyperparams_and_16_bit_values():
  table = jnp.asarray(make_params({"t": (10, 3)})["t"])
  values32 = jnp.arange(6.0).reshape(2, 3)
  for tx, values in [
    (optax.inject_hyperparams(optadam.adam)(learning_rate=0.01), values32),
    (optadam.adam(0.01), values32.astype(jnp.bfloat16)),
  ]:
    g = optadam.IndexedSlices(values, jnp.array([4, 4]), (10, 3))
    update = jax.jit(tx.update)
    u_sparse, _ = update(g, tx.init(table), table)
    u_dense, _ = update(g.to_dense(), tx.init(table), table)
    assert u_sparse.dtype == u_dense.dtype == values.dtype
    np.testing.assert_allclose(
      np.asarray(u_sparse, np.float32), np.asarray(u_dense, np.float32), rtol=1e-6
    )


def test_empty_gradient_decays_moments():
  tx = optadam.adam(learning_rate=0.1)
  params = jnp.ones((3, 2))
  state = tx.init(params)
  _, state = tx.update(jnp.ones((3, 2)), state, params)
  g = optadam.IndexedSlices(jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32), (3, 2))
  u_sparse, s_sparse = tx.update(g, state, params)
  u_dense, s_dense = tx.update(jnp.zeros((3, 2)), state, params)
  np.testing.assert_array_equal(np.asarray(u_sparse), np.asarray(u_dense))
  np.testing.assert_array_equal(np.asarray(s_sparse.adam.mu), np.asarray(s_dense.adam.mu))
