"""`optadam.add_decayed_weights` in `optadam.adam`: exclusion patterns on Flax paths, masks, and
masks with None gradients (docs/semantics.md, weight decay).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from helpers import run_optadam, worst_relative
from reference import make_grads, make_params, reference_adam


def test_flax_style_paths_match_exclusion():
  params = {
    "params": {
      "Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
      "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    }
  }
  mask = optadam.exclusion_mask(["bias", "LayerNorm"])(params)
  assert mask == {
    "params": {
      "Dense_0": {"kernel": True, "bias": False},
      "LayerNorm_0": {"scale": False, "bias": False},
    }
  }
  tx = optadam.adam(
    learning_rate=0.1, weight_decay=0.5, exclude_from_weight_decay=["bias", "LayerNorm"]
  )
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # zero gradient: only weight decay moves kernel; excluded leaves do not move
  np.testing.assert_allclose(
    updates["params"]["Dense_0"]["kernel"], -0.05 * np.ones((2, 2)), rtol=1e-6
  )
  np.testing.assert_array_equal(updates["params"]["Dense_0"]["bias"], np.zeros(2))
  np.testing.assert_array_equal(updates["params"]["LayerNorm_0"]["scale"], np.zeros(2))


def test_weight_decay_mask_combines_with_exclusion():
  params = {"a": jnp.ones(2), "b": jnp.ones(2), "bias": jnp.ones(2)}
  tx = optadam.adam(
    learning_rate=1.0,
    weight_decay=0.5,
    exclude_from_weight_decay=["bias"],
    weight_decay_mask={"a": True, "b": False, "bias": True},
  )
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -0.5 * np.ones(2))
  np.testing.assert_array_equal(updates["b"], np.zeros(2))
  np.testing.assert_array_equal(updates["bias"], np.zeros(2))


# --- weight-decay masks with None gradients ----------------------------------------------

WD_SHAPES = {
  "dense/kernel": (3, 2),
  "dense/bias": (2,),
  "conv/kernel": (2, 2, 2),
  "frozen/kernel": (2, 2),
}
# optadam.adam's mask arguments, and the exclusion patterns that give the reference the same mask
WD_MASKS = {
  "exclude": (dict(exclude_from_weight_decay=["bias"]), ("bias",)),
  "callable": (dict(weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)), ("bias",)),
  "both": (
    dict(
      exclude_from_weight_decay=["bias"],
      weight_decay_mask=lambda p: {k: "conv" not in k for k in p},
    ),
    ("bias", "conv"),
  ),
}


def _without_frozen(tree: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in tree.items() if k != "frozen/kernel"}


def _first_adam_step(g: Any, lr: float) -> np.ndarray:
  """Keras's first Adam step (float64): ``-alpha m / (sqrt(v) + eps)``, m = 0.1 g, v = 0.001 g^2.

  ``alpha = lr sqrt(1 - b2) / (1 - b1)`` with lr and the betas' powers in float32 (Keras).
  """
  f32 = lambda x: float(np.float32(x))
  g = np.asarray(g, np.float64)
  alpha = f32(lr) * np.sqrt(1 - f32(0.999)) / (1 - f32(0.9))
  return -alpha * (0.1 * g) / (np.sqrt(0.001 * g * g) + 1e-7)


def _assert_bitwise(a: Any, b: Any) -> None:
  np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


@pytest.mark.parametrize(
  "jit_compile, outer_jit", [(True, True), (True, False), (False, True), (False, False)]
)
@pytest.mark.parametrize("mask", sorted(WD_MASKS))
def test_weight_decay_masks_with_a_none_gradient(mask, jit_compile, outer_jit):
  """A leaf whose gradient is always None: never moved, the others as if it were absent."""
  kw, exclude = WD_MASKS[mask]
  kwargs = dict(learning_rate=0.1, weight_decay=0.5, jit_compile=jit_compile, **kw)
  params0 = make_params(WD_SHAPES)
  grads = make_grads(WD_SHAPES, 4, none=lambda s, k: k == "frozen/kernel")
  tx = optadam.adam(**kwargs)
  update = jax.jit(tx.update) if outer_jit else tx.update
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  first = {k: None if g is None else jnp.asarray(g) for k, g in grads[0].items()}
  updates, _ = update(first, tx.init(params), params)
  assert updates["frozen/kernel"] is None
  assert all(updates[k] is not None for k in _without_frozen(updates))

  ours, state = run_optadam(tx, params0, grads, jit=outer_jit)
  alone, alone_state = run_optadam(
    optadam.adam(**kwargs), _without_frozen(params0), [_without_frozen(g) for g in grads], outer_jit
  )
  for step, step_alone in zip(ours, alone, strict=True):
    _assert_bitwise(step["frozen/kernel"], params0["frozen/kernel"])
    for k in step_alone:
      _assert_bitwise(step[k], step_alone[k])
  for field in ("mu", "nu"):
    moments, moments_alone = getattr(state.adam, field), getattr(alone_state.adam, field)
    np.testing.assert_array_equal(moments["frozen/kernel"], np.zeros((2, 2), np.float32))
    for k in moments_alone:
      _assert_bitwise(moments[k], moments_alone[k])
  # The numbers: Keras's decay of the masked-in leaves only (the float64 reference) ...
  ref, _ = reference_adam(
    params0, grads, learning_rate=0.1, weight_decay=0.5, exclude_from_weight_decay=exclude
  )
  assert worst_relative(ours, ref) < 1e-6
  # ... which is not decaying everything: the mask took effect.
  everything, _ = reference_adam(params0, grads, learning_rate=0.1, weight_decay=0.5)
  assert worst_relative(ours, everything) > 1e-2
  # By hand, step 1: an excluded leaf takes the plain Adam step, a decayed one x - 0.05 x first.
  x, g = params0["dense/bias"], grads[0]["dense/bias"]
  np.testing.assert_allclose(ours[0]["dense/bias"], x + _first_adam_step(g, 0.1), rtol=1e-6)
  x, g = params0["dense/kernel"], grads[0]["dense/kernel"]
  expected = (x - 0.05 * x) + _first_adam_step(g, 0.1)
  np.testing.assert_allclose(ours[0]["dense/kernel"], expected, rtol=1e-6)


@pytest.mark.parametrize("mask", sorted(WD_MASKS))
def test_weight_decay_masks_with_intermittent_none_gradients(mask):
  """None on some steps (decayed and excluded leaves): state untouched then, Keras's numbers."""
  kw, exclude = WD_MASKS[mask]
  tx = optadam.adam(learning_rate=0.1, weight_decay=0.5, amsgrad=True, **kw)
  missing = {"frozen/kernel": (0, 1, 3, 4), "dense/bias": (1,), "conv/kernel": (3,)}
  params0 = make_params(WD_SHAPES)
  grads = make_grads(WD_SHAPES, 5, none=lambda s, k: s in missing.get(k, ()))
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)
  history = []
  for g in grads:
    g = {k: None if v is None else jnp.asarray(v) for k, v in g.items()}
    updates, new_state = tx.update(g, state, params)
    for k, gk in g.items():
      assert (updates[k] is None) == (gk is None)
      if gk is None:
        for field in ("mu", "nu", "nu_max"):
          _assert_bitwise(getattr(new_state.adam, field)[k], getattr(state.adam, field)[k])
    params, state = optadam.apply_updates(params, updates), new_state
    history.append({k: np.asarray(v) for k, v in params.items()})
  np.testing.assert_array_equal(history[1]["frozen/kernel"], params0["frozen/kernel"])
  assert not np.array_equal(history[2]["frozen/kernel"], params0["frozen/kernel"])
  ref, _ = reference_adam(
    params0,
    grads,
    learning_rate=0.1,
    weight_decay=0.5,
    amsgrad=True,
    exclude_from_weight_decay=exclude,
  )
  assert worst_relative(history, ref) < 1e-6


def test_weight_decay_mask_is_called_on_the_params():
  """A callable mask sees the parameters' paths and shapes, not the gradients' (None, sparse)."""
  seen = []

  def mask(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    seen.append({optadam._tree.path_str(path): np.shape(x) for path, x in flat})
    return jax.tree.map(lambda x: x.ndim > 1, tree)

  params = {k: jnp.asarray(v) for k, v in make_params(WD_SHAPES).items()}
  grads = {
    "dense/kernel": optadam.IndexedSlices(jnp.full((1, 2), 0.3), jnp.array([1]), (3, 2)),
    "dense/bias": jnp.full((2,), 0.2),
    "conv/kernel": jnp.full((2, 2, 2), -0.1),
    "frozen/kernel": None,
  }
  tx = optadam.adam(learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert len(seen) == 2  # init, update (traced once)
  assert all(s == {k: v.shape for k, v in params.items()} for s in seen)
  assert updates["frozen/kernel"] is None
  x = np.asarray(params["dense/kernel"], np.float64)
  # decayed (all rows, as Keras decays the whole variable); row 1 also takes the Adam step
  step = np.zeros((3, 2))
  step[1] = _first_adam_step(np.full(2, 0.3), 0.1)
  np.testing.assert_allclose(updates["dense/kernel"], -0.05 * x + step, rtol=1e-5, atol=1e-7)
  # ndim 1: not decayed, the plain Adam step
  np.testing.assert_allclose(
    updates["dense/bias"], _first_adam_step(np.full(2, 0.2), 0.1), rtol=1e-6
  )
