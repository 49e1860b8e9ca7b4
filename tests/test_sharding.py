"""`optadam.state_shardings` on one device, with PartitionSpecs over an abstract (2, 4) mesh.

Training on 8 fake CPU devices (in a subprocess) is tests/integration/test_sharded_training.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

import optadam

MESH = AbstractMesh((2, 4), ("data", "model"))
SHAPES = {"w": (8, 16), "b": (16,), "odd": (3, 5), "s": ()}
SPECS = {"w": P(None, "model"), "b": P("model"), "odd": P(), "s": P()}


def _abstract_params():
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()}


def test_state_shardings_specs_for_every_params_shaped_part():
  tx = optadam.adam(amsgrad=True, use_ema=True, weight_decay=0.1)
  out = optadam.state_shardings(tx, SPECS)
  assert isinstance(out, optadam.AdamState)
  for tree in (out.adam.mu, out.adam.nu, out.adam.nu_max, out.ema.ema):
    assert tree == SPECS
  assert out.adam.count == P() and out.learning_rate.count == P() and out.ema.count == P()
  # From a state instead of the optimizer: the same tree.
  state = jax.eval_shape(tx.init, _abstract_params())
  assert optadam.state_shardings(state, SPECS) == out
  # optax.tree_map_params agrees.
  assert (
    optax.tree_map_params(tx, lambda _, s: s, state, SPECS, transform_non_params=lambda _: P())
    == out
  )


def test_state_shardings_zero1_rule():
  tx = optadam.adam(use_ema=True)
  state = jax.eval_shape(tx.init, _abstract_params())
  out = optadam.state_shardings(state, SPECS, zero1_axis="data", mesh=MESH)
  # First dimension that is unsharded and divisible by the axis size (2) gets "data".
  expected = {"w": P("data", "model"), "b": P("model"), "odd": P(), "s": P()}
  assert out.adam.mu == expected and out.adam.nu == expected and out.ema.ema == expected
  assert out.adam.count == P()
  # A tuple of axes: size 8; w's (8) and b's (16) first dimensions divide, odd's (3, 5) don't.
  out = optadam.state_shardings(
    state, {k: P() for k in SPECS}, zero1_axis=("data", "model"), mesh=MESH
  )
  assert out.adam.mu == {"w": P(("data", "model")), "b": P(("data", "model")), "odd": P(), "s": P()}
  # Already split over the axis: unchanged.
  specs = dict(SPECS, w=P("data", None))
  out = optadam.state_shardings(state, specs, zero1_axis="data", mesh=MESH)
  assert out.adam.mu["w"] == P("data", None)


def test_state_shardings_errors():
  tx = optadam.adam()
  with pytest.raises(ValueError, match="needs the parameters' shapes"):
    optadam.state_shardings(tx, SPECS, zero1_axis="data", mesh=MESH)
  state = jax.eval_shape(tx.init, _abstract_params())
  with pytest.raises(ValueError, match="no axis 'batch'"):
    optadam.state_shardings(state, SPECS, zero1_axis="batch", mesh=MESH)
  with pytest.raises(ValueError, match="needs `mesh=`"):
    optadam.state_shardings(state, SPECS, zero1_axis="data")
  with pytest.raises(TypeError, match=r"must be a jax.sharding.Sharding"):
    optadam.state_shardings(tx, {"w": 3})


def test_state_shardings_with_real_shardings_masked_and_partitioned():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  params = {"w": jnp.ones((4, 2)), "b": jnp.ones(2)}
  shardings = {"w": sh, "b": rep}
  masked = optax.masked(optadam.adam(use_ema=True), {"w": True, "b": False})
  state = masked.init(params)
  # A pytree mask: the placeholder cannot be masked, so the abstract state is matched.
  abstract = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in params.items()
  }
  out = optadam.state_shardings(masked, abstract)
  assert out.inner_state.adam.mu["w"] == sh
  assert isinstance(out.inner_state.adam.mu["b"], optax.MaskedNode)
  assert out.inner_state.adam.count == rep
  assert optadam.state_shardings(state, shardings) == out
  # jit(init, out_shardings=...) accepts it.
  jax.jit(masked.init, out_shardings=out)(params)

  part = optax.partition(
    {"train": optadam.adam(use_ema=True), "frozen": optax.set_to_zero()},
    {"w": "train", "b": "frozen"},
  )
  out = optadam.state_shardings(part, abstract)
  inner = out.inner_states["train"].inner_state
  assert inner.adam.mu["w"] == sh and isinstance(inner.ema.ema["b"], optax.MaskedNode)
  jax.jit(part.init, out_shardings=out)(params)

  # A single array as the parameters.
  out = optadam.state_shardings(
    optadam.adam(), jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sh)
  )
  assert out.adam.mu == sh and out.adam.count == rep


@pytest.mark.parametrize(
  "wrapper", ["inject_hyperparams", "multisteps", "apply_if_finite", "named_chain"]
)
def test_state_shardings_through_optax_wrappers(wrapper):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = {"w": jax.device_put(jnp.ones((4, 2)), sh), "b": jax.device_put(jnp.ones(2), rep)}
  tx = {
    "inject_hyperparams": lambda: optax.inject_hyperparams(optadam.adam)(
      learning_rate=0.1, use_ema=True
    ),
    "multisteps": lambda: optax.MultiSteps(optadam.adam(use_ema=True), 4),
    "apply_if_finite": lambda: optax.apply_if_finite(optadam.adam(amsgrad=True), 3),
    "named_chain": lambda: optax.named_chain(
      ("clip", optax.clip(1.0)), ("adam", optadam.adam(amsgrad=True))
    ),
  }[wrapper]()
  for arg in (jax.tree.map(lambda p: p.sharding, params), params):
    out = optadam.state_shardings(tx, arg)
    state = jax.jit(tx.init, out_shardings=out)(params)
    inner = [
      x
      for x in jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, optadam.AdamState))
      if isinstance(x, optadam.AdamState)
    ]
    assert len(inner) == 1
    assert inner[0].adam.mu == {"w": sh, "b": rep} and inner[0].adam.count == rep
    s_leaves = jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    assert len(s_leaves) == len(jax.tree.leaves(state))
    assert all(leaf.sharding == s for leaf, s in zip(jax.tree.leaves(state), s_leaves))
