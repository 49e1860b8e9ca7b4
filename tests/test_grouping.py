"""`optadam.adam(..., group_small_leaves=N)` (issue 13): same numbers, packed state, few kernels.

The grouped mode must give, bit for bit, the parameters and the state (read per
parameter path with `optadam.ungroup_state`) of the ungrouped optimizer, for
every feature: clipping (per tensor, global, value), weight decay with
exclusions, AMSGrad, EMA with overwrite, None gradients (a whole group, part of
a group), 16-bit parameters with float32 moments, schedules, a large (ungrouped)
leaf with a sparse gradient. It also pins the number of kernels of a many-leaf
step, so that per-leaf kernels cannot silently come back. (The packed norms of the clips are
in tests/test_clipping.py.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from benchmarks.hlo import _FREE_OPS, entry_instructions
from helpers import checkpoint_keys

THRESHOLD = 256  # leaves with at most this many elements are grouped here


def make_params(dtype: Any = np.float32) -> dict[str, Any]:
  r = np.random.RandomState(0)
  small = {f"layer{i}": {"w": r.randn(4 + i, 5), "b": r.randn(5 + i)} for i in range(6)}
  return {
    "blocks": {k: {n: np.asarray(v, dtype) for n, v in d.items()} for k, d in small.items()},
    "big": np.asarray(r.randn(40, 20), dtype),  # 800 elements: stays a leaf of its own
    "norm": {"scale": np.asarray(r.randn(7), np.float32)},  # another dtype when dtype != f32
  }


def make_grads(params: dict[str, Any], steps: int, seed: int = 1) -> list[dict[str, Any]]:
  r = np.random.RandomState(seed)
  out = []
  for _ in range(steps):
    out.append(jax.tree.map(lambda p: np.asarray(r.randn(*p.shape), p.dtype), params))
  return out


def drop(grads: dict[str, Any], paths: list[str]) -> dict[str, Any]:
  """`grads` with the leaves at the "/"-joined `paths` set to None."""

  def f(path, g):
    return None if optadam._tree.path_str(path) in paths else g

  return jax.tree_util.tree_map_with_path(f, grads)


def run(tx, params0, grads_seq):
  params = jax.tree.map(jnp.asarray, params0)
  state = tx.init(params)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optadam.apply_updates(p, u), s, u

  history = []
  for g in grads_seq:
    g = jax.tree.map(lambda x: x if x is None else jnp.asarray(x), g, is_leaf=lambda x: x is None)
    params, state, updates = step(params, state, g)
    history.append((jax.tree.map(np.asarray, params), updates))
  return history, state


def assert_close_updates(a: Any, b: Any) -> None:
  """Updates: None exactly where expected, values within an ulp or two.

  The updates a jitted step returns are extra outputs whose fusion XLA may
  choose differently (a slice of the packed update vs a per-leaf kernel), so
  they are not pinned bit for bit (atol 2.5e-7: two ulps of the O(1) parameters, in
  configurations where those may differ; the
  weight-decay placement ((x - x*wd*lr) + u) - x cancels); the parameters and the state are.
  """
  la, ta = jax.tree.flatten(a, is_leaf=lambda x: x is None)
  lb, tb = jax.tree.flatten(b, is_leaf=lambda x: x is None)
  assert ta == tb
  for x, y in zip(la, lb):
    assert (x is None) == (y is None)
    if x is not None:
      np.testing.assert_allclose(
        np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-6, atol=2.5e-7
      )


def assert_within_ulps(a: Any, b: Any, ulps: float = 4) -> None:
  """Same structure and dtypes; each tensor within `ulps` float32 ulps at its own scale."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    if x.dtype != np.float32:
      np.testing.assert_array_equal(x, y)
      continue
    ref = np.asarray(y, np.float64)
    spacing = float(np.spacing(np.float32(max(np.max(np.abs(ref), initial=0.0), 1e-30))))
    worst = np.max(np.abs(np.asarray(x, np.float64) - ref), initial=0.0) / spacing
    assert worst <= ulps, worst


def assert_bitwise(a: Any, b: Any) -> None:
  la, ta = jax.tree.flatten(a, is_leaf=lambda x: x is None)
  lb, tb = jax.tree.flatten(b, is_leaf=lambda x: x is None)
  assert ta == tb
  for x, y in zip(la, lb):
    if x is None or y is None:
      assert x is None and y is None
      continue
    x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


CONFIGS = {
  "defaults": {},
  "amsgrad": dict(amsgrad=True),
  "clipnorm_wd_exclude": dict(
    clipnorm=0.5, weight_decay=0.1, exclude_from_weight_decay=["/b$", "norm"]
  ),
  "global_clipnorm_ema": dict(global_clipnorm=1.0, use_ema=True, ema_momentum=0.9),
  "everything": dict(
    amsgrad=True,
    weight_decay=0.004,
    clipnorm=1.0,
    use_ema=True,
    ema_overwrite_frequency=3,
  ),
  "clipvalue_schedule_mask": dict(
    learning_rate=optax.exponential_decay(1e-2, 2, 0.5),
    clipvalue=0.3,
    weight_decay=0.02,
    weight_decay_mask=jax.tree.map(lambda x: x.ndim > 1, make_params()),
  ),
  "accumulation": dict(gradient_accumulation_steps=2, weight_decay=0.01),
  "callable_mask": dict(  # evaluated on the params, also where gradients are None (DROPS)
    weight_decay=0.05,
    weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
  ),
}

# XLA:CPU contracts a*b + c into a fused multiply-add within a kernel; where the packing moves
# a product into another kernel (EMA overwrite: the average is written from p + u recomputed on
# the packed buffer, not from the stored parameters; weight decay next to a clipped leaf) a
# value can differ by an ulp of its tensor's scale. The norms of clipnorm and global_clipnorm
# are summed from the packed buffers (segment sums: another summation order), so the clip
# factor can differ in its last bit; the moments carry it (nu = g**2: twice the relative
# difference, accumulated over the steps). Measured: <= 1 ulp (params), EMA <= 4, moments <= 5.
NOT_BITWISE = {"everything", "clipnorm_wd_exclude", "global_clipnorm_ema"}

# Step 2: a whole group without gradients (every bias of the float32 group), step 3: part of a
# group (two weights), step 4: the large leaf.
DROPS = {
  2: [f"blocks/layer{i}/b" for i in range(6)],
  3: ["blocks/layer1/w", "blocks/layer4/w"],
  4: ["big"],
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_grouped_is_bitwise_equal_to_ungrouped(name):
  params = make_params()
  kw = CONFIGS[name]
  grads = [drop(g, DROPS.get(i, [])) for i, g in enumerate(make_grads(params, 7))]
  plain_hist, plain_state = run(optadam.adam(**kw), params, grads)
  tx = optadam.adam(**kw, group_small_leaves=THRESHOLD)
  hist, state = run(tx, params, grads)
  same = assert_within_ulps if name in NOT_BITWISE else assert_bitwise
  for (p, u), (pp, pu) in zip(hist, plain_hist):
    same(p, pp)
    assert_close_updates(u, pu)  # None updates where the gradient was None
  if name in NOT_BITWISE:
    assert_within_ulps(optadam.ungroup_state(state), plain_state, ulps=8)
  else:
    assert_bitwise(optadam.ungroup_state(state), plain_state)
  # The state really is packed: 2 groups (weights, biases: distinct decay masks or not,
  # at most MAX_MEMBERS each) hold the 12 small float32 leaves; "big" stays a leaf.
  inner = state.inner if hasattr(state, "inner") else state
  mu = inner.adam.mu
  assert isinstance(mu, optadam.LeafGroups)
  assert sum(g.size for g in mu.groups) == sum(
    np.size(x) for x in jax.tree.leaves(params["blocks"])
  ) + np.size(params["norm"]["scale"])
  assert mu.leaves["big"].shape == (40, 20)
  assert mu.leaves["blocks"]["layer0"]["w"] is None


def test_grouped_callable_mask_and_exclusion_with_none_gradients():
  """Patterns and a callable mask together, None gradients: the ungrouped parameters, bit for bit.

  (The state is not compared: grouped, both masks are one ``optax.masked``, ungrouped two.)
  """
  params = make_params()
  kw = dict(
    weight_decay=0.05,
    weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
    exclude_from_weight_decay=["layer[0-2]/"],
  )
  grads = [drop(g, DROPS.get(i, [])) for i, g in enumerate(make_grads(params, 6))]
  plain_hist, plain_state = run(optadam.adam(**kw), params, grads)
  hist, state = run(optadam.adam(**kw, group_small_leaves=THRESHOLD), params, grads)
  for (p, u), (pp, pu) in zip(hist, plain_hist):
    assert_bitwise(p, pp)
    assert_close_updates(u, pu)
  assert_bitwise(optadam.ungroup_state(state).adam, plain_state.adam)
  # step 3 (index 2) has no bias gradients: the biases did not move, decayed or not
  for i in range(6):
    b = f"blocks/layer{i}/b".split("/")
    assert np.array_equal(hist[2][0][b[0]][b[1]][b[2]], hist[1][0][b[0]][b[1]][b[2]])
  # the excluded small weights were not decayed: step 1 equals the run without weight decay
  no_wd_hist, _ = run(optadam.adam(), params, grads[:1])
  w0, w5 = hist[0][0]["blocks"]["layer0"]["w"], hist[0][0]["blocks"]["layer5"]["w"]
  assert_bitwise(w0, no_wd_hist[0][0]["blocks"]["layer0"]["w"])
  assert not np.array_equal(w5, no_wd_hist[0][0]["blocks"]["layer5"]["w"])


def test_grouped_bfloat16_with_float32_moments_and_mixed_dtypes():
  params = make_params(jnp.bfloat16)  # bfloat16 blocks, a float32 norm scale: two dtypes
  grads = [drop(g, DROPS.get(i, [])) for i, g in enumerate(make_grads(params, 5))]
  kw = dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32, weight_decay=0.01, use_ema=True)
  plain_hist, plain_state = run(optadam.adam(**kw), params, grads)
  hist, state = run(optadam.adam(**kw, group_small_leaves=THRESHOLD), params, grads)
  for (p, u), (pp, pu) in zip(hist, plain_hist):
    assert_bitwise(p, pp)
    assert_close_updates(u, pu)
  assert_bitwise(optadam.ungroup_state(state), plain_state)
  assert {g.dtype for g in state.adam.mu.groups} == {jnp.dtype(jnp.float32)}
  assert {g.dtype for g in state.ema.ema.groups} == {jnp.dtype(jnp.bfloat16)}


def test_sparse_gradient_on_a_large_leaf_and_error_on_a_grouped_one():
  params = make_params()
  grads = make_grads(params, 3)
  r = np.random.RandomState(3)
  for g in grads:
    g["big"] = optadam.IndexedSlices(
      jnp.asarray(r.randn(3, 20), jnp.float32), jnp.asarray([1, 7, 1]), (40, 20)
    )
  kw = dict(clipnorm=1.0, weight_decay=0.01)
  plain_hist, plain_state = run(optadam.adam(**kw), params, grads)
  hist, state = run(optadam.adam(**kw, group_small_leaves=THRESHOLD), params, grads)
  for (p, _), (pp, _) in zip(hist, plain_hist):
    assert_bitwise(p, pp)
  assert_within_ulps(optadam.ungroup_state(state), plain_state)  # see NOT_BITWISE
  bad = dict(grads[0])
  bad["norm"] = {
    "scale": optadam.IndexedSlices(jnp.ones((1,), jnp.float32), jnp.asarray([2]), (7,))
  }
  with pytest.raises(TypeError, match="grouped"):
    run(optadam.adam(group_small_leaves=THRESHOLD), params, [bad])


def test_ungroup_regroup_round_trip_and_abstract_state():
  params = jax.tree.map(jnp.asarray, make_params())
  tx = optadam.adam(amsgrad=True, use_ema=True, group_small_leaves=THRESHOLD)
  state = tx.init(params)
  _, state = run(tx, make_params(), make_grads(params, 2))
  per_path = optadam.ungroup_state(state)
  assert per_path.adam.mu["blocks"]["layer3"]["w"].shape == (7, 5)
  assert_bitwise(optadam.regroup_state(per_path, state), state)
  abstract = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  shapes = optadam.ungroup_state(abstract)
  assert shapes.adam.nu_max["blocks"]["layer5"]["b"].shape == (10,)
  assert jax.tree.structure(shapes) == jax.tree.structure(per_path)


def test_tree_map_params_state_shardings_and_ema_helpers():
  params = jax.tree.map(jnp.asarray, make_params())
  tx = optadam.adam(amsgrad=True, use_ema=True, group_small_leaves=THRESHOLD)
  _, state = run(tx, make_params(), make_grads(params, 2))
  cast = optax.tree_map_params(tx, lambda p: p.astype(jnp.bfloat16), state)
  for tree in (cast.adam.mu, cast.adam.nu, cast.adam.nu_max, cast.ema.ema):
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(tree))
  assert cast.adam.count.dtype == jnp.int32
  # Shardings: every leaf of the state gets one; jit(init, out_shardings=...) accepts them.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  # With the optimizer, the layout needs the parameters' shapes (ShapeDtypeStructs or arrays);
  # with the state, bare shardings do.
  param_sh = jax.tree.map(lambda _: sharding, params)
  abstract = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=sharding), params
  )
  state_sh = optadam.state_shardings(tx, abstract)
  assert jax.tree.structure(state_sh) == jax.tree.structure(state)
  assert jax.tree.structure(optadam.state_shardings(state, param_sh)) == jax.tree.structure(state)
  with pytest.raises(ValueError, match="ShapeDtypeStructs"):
    optadam.state_shardings(tx, param_sh)
  placed = jax.jit(tx.init, out_shardings=state_sh)(params)
  assert_bitwise(placed, tx.init(params))
  specs = optadam.state_shardings(
    state, jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
  )
  assert all(s == jax.sharding.PartitionSpec() for s in jax.tree.leaves(specs))
  # EMA helpers read per path.
  avg = optadam.ema_params(state)
  assert jax.tree.structure(avg) == jax.tree.structure(params)
  np.testing.assert_array_equal(
    avg["blocks"]["layer2"]["b"], optadam.ungroup_state(state).ema.ema["blocks"]["layer2"]["b"]
  )
  final = optadam.finalize_variable_values(params, state)
  np.testing.assert_array_equal(final["big"], avg["big"])


def test_state_from_keras_gives_the_grouped_layout():
  params = jax.tree.map(jnp.asarray, make_params())
  leaves = jax.tree.leaves(params)
  r = np.random.RandomState(5)
  n = len(leaves)
  variables = [np.asarray(4)] + [r.randn(*np.shape(p)).astype(np.float32) for p in leaves]
  mv = []
  for p in leaves:
    mv += [r.randn(*np.shape(p)).astype(np.float32), r.rand(*np.shape(p)).astype(np.float32)]
  variables = variables + mv
  assert len(variables) == 1 + 3 * n
  plain = optadam.state_from_keras(optadam.adam(use_ema=True), variables, params)
  tx = optadam.adam(use_ema=True, group_small_leaves=THRESHOLD)
  grouped = optadam.state_from_keras(tx, variables, params)
  assert isinstance(grouped.adam.mu, optadam.LeafGroups)
  assert_bitwise(optadam.ungroup_state(grouped), plain)


def test_orbax_checkpoint_of_a_grouped_state(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  params = jax.tree.map(jnp.asarray, make_params())
  tx = optadam.adam(amsgrad=True, use_ema=True, group_small_leaves=THRESHOLD)
  _, state = run(tx, make_params(), make_grads(params, 2))
  path = str(tmp_path / "ckpt")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, state)
  with ocp.StandardCheckpointer() as ckptr:
    keys = checkpoint_keys(ckptr, path)
    assert {"adam/mu/groups/0", "adam/mu/leaves/big", "ema/ema/groups/0"} <= keys, sorted(keys)
    restored = ckptr.restore(path, jax.eval_shape(tx.init, params))
  assert_bitwise(restored, state)


def test_validation():
  with pytest.raises(ValueError, match="group_small_leaves"):
    optadam.adam(group_small_leaves=0)
  with pytest.raises(ValueError, match="group_small_leaves"):
    optadam.adam(group_small_leaves=True)
  with pytest.raises(ValueError, match="keras3"):
    optadam.adam(use_ema=True, ema_style="keras3", group_small_leaves=10)


def _step_kernels(tx, params) -> int:
  grads = jax.tree.map(lambda p: p * 0.5, params)
  state = tx.init(params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optadam.apply_updates(p, u), s

  text = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile().as_text()
  return sum(1 for _, _, op, _ in entry_instructions(text) if op not in _FREE_OPS)


def test_many_leaf_step_kernel_count():
  """64 small leaves: one kernel per leaf (its update) plus a few per group, with every feature.

  Measured (jaxlib 0.10, XLA:CPU): grouped defaults 76, everything on 97, global_clipnorm 84
  (the norms are segment sums over the packed buffers; before them, everything on was 156:
  a norm per leaf). The bounds leave room for a few kernels per group, not for a second one
  per leaf.
  """
  r = np.random.RandomState(0)
  n = 64
  params = {f"l{i:02d}": jnp.asarray(r.randn(3 + i % 5, 4 + i % 7), jnp.float32) for i in range(n)}
  with jax.default_device(jax.devices("cpu")[0]):
    plain = _step_kernels(optadam.adam(), params)
    grouped = _step_kernels(optadam.adam(group_small_leaves=1024), params)
    everything = _step_kernels(
      optadam.adam(
        amsgrad=True,
        weight_decay=0.004,
        clipnorm=1.0,
        use_ema=True,
        ema_overwrite_frequency=5,
        group_small_leaves=1024,
      ),
      params,
    )
    global_clip = _step_kernels(optadam.adam(global_clipnorm=1.0, group_small_leaves=1024), params)
  assert plain >= 3 * n
  assert grouped <= n + 16, grouped
  assert everything <= n + 48, everything
  assert global_clip <= n + 32, global_clip


def test_layout_is_decided_from_what_init_is_given():
  """init decides the layout from its parameters only (never from earlier calls): eager, jit
  and eval_shape agree on one device; `with_group_layout` fixes a layout for every init.

  On a mesh a traced init sees no shardings, so there the layout is fixed from the sharded
  structs (tests/integration/test_sharded_training.py, 2x4 mesh).
  """
  params = jax.tree.map(jnp.asarray, make_params())
  tx = optadam.adam(clipnorm=1.0, use_ema=True, group_small_leaves=THRESHOLD)
  traced_first = jax.eval_shape(tx.init, params)
  eager = tx.init(params)
  assert jax.tree.structure(traced_first) == jax.tree.structure(eager)
  assert_bitwise(jax.jit(tx.init)(params), eager)
  assert tx.group_layout is None
  # A layout fixed from other "parameters" (here: every leaf of at most 8 elements) is used by
  # every init, whatever the threshold would decide from the parameters given.
  small = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params)
  fixed = optadam.adam(clipnorm=1.0, use_ema=True, group_small_leaves=8).with_group_layout(small)
  assert fixed.group_layout is not None
  fixed_state = fixed.init(params)
  assert jax.tree.structure(jax.eval_shape(fixed.init, params)) == jax.tree.structure(fixed_state)
  assert fixed_state.adam.mu.layout == fixed.group_layout
  with pytest.raises(ValueError, match="tree structure"):
    fixed.init({"other": jnp.zeros(3)})
  with pytest.raises(ValueError, match="group_small_leaves"):
    optadam.adam().with_group_layout(params)
  # Python scalars and NumPy leaves are fine too (their dtype is read without tracing).
  mixed = {"a": np.ones(3, np.float32), "b": np.zeros(5, np.float32), "c": 0.5}
  state = optadam.adam(group_small_leaves=8).init(mixed)
  assert len(state.adam.mu.groups) == 1


def test_inject_hyperparams_multisteps_and_vmap():
  """Grouped under optax.inject_hyperparams (clipnorm injected: traced), MultiSteps and vmap.

  `group_small_leaves` shapes the state, so it is a static argument of inject_hyperparams
  (an array is refused with a message saying so).
  """
  params = jax.tree.map(jnp.asarray, make_params())
  grads = [jax.tree.map(jnp.asarray, g) for g in make_grads(params, 3)]
  kw = dict(amsgrad=True, weight_decay=0.01, clipnorm=0.5, use_ema=True)
  static = ("group_small_leaves", "ema_overwrite_frequency")

  def injected(**extra):
    return optax.inject_hyperparams(optadam.adam, static_args=static)(
      learning_rate=1e-2, **kw, ema_overwrite_frequency=2, **extra
    )

  outs = []
  for tx in (injected(group_small_leaves=THRESHOLD), injected()):
    state, us = tx.init(params), []
    for g in grads:
      u, state = jax.jit(tx.update)(g, state, params)
      us.append(u)
    outs.append(us)
  for u, pu in zip(*outs):
    assert_close_updates(u, pu)
  with pytest.raises(ValueError, match="static_args"):
    optax.inject_hyperparams(optadam.adam)(group_small_leaves=THRESHOLD).init(params)
  with pytest.raises(ValueError, match="static_args=\\('gradient_accumulation_steps'"):
    optax.inject_hyperparams(optadam.adam)(gradient_accumulation_steps=2).init(params)

  ms = optax.MultiSteps(optadam.adam(1e-2, **kw, group_small_leaves=THRESHOLD), every_k_schedule=2)
  plain_ms = optax.MultiSteps(optadam.adam(1e-2, **kw), every_k_schedule=2)
  s, ps = ms.init(params), plain_ms.init(params)
  for g in grads + grads[:1]:
    u, s = jax.jit(ms.update)(g, s, params)
    pu, ps = jax.jit(plain_ms.update)(g, ps, params)
    assert_close_updates(u, pu)

  tx = optadam.adam(1e-2, **kw, group_small_leaves=THRESHOLD)
  batch = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
  gbatch = jax.tree.map(lambda g: jnp.stack([g, -g]), grads[0])
  u, _ = jax.vmap(tx.update)(gbatch, jax.vmap(tx.init)(batch), batch)
  double, negated = jax.tree.map(lambda x: 2 * x, params), jax.tree.map(lambda x: -x, grads[0])
  for i, (p, g) in enumerate(((params, grads[0]), (double, negated))):
    single, _ = tx.update(g, tx.init(p), p)
    assert_close_updates(jax.tree.map(lambda x, i=i: x[i], u), single)
