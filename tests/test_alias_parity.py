"""Step-by-step parity of `optadam.adam` with Keras 3's Adam and with the float64 reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from helpers import run_keras3, run_optadam, worst_relative, worst_ulps
from reference import make_grads, make_params, reference_adam

SHAPES = {"dense/kernel": (5, 3), "dense/bias": (3,), "conv/kernel": (2, 2, 2), "scale": ()}


def shrinking(s):
  return 4.0 * 0.75**s


@dataclasses.dataclass
class Case:
  name: str
  kwargs: dict[str, Any]
  steps: int = 30
  scale: Any = 1.0
  zero_steps: tuple[int, ...] = ()
  exclude: Optional[tuple[str, ...]] = None
  keras_schedule: Optional[Callable[[], Any]] = None  # builds a Keras 3 schedule
  ref_lr: Optional[Callable[[int], float]] = None  # the same schedule for the reference


def _keras_exp_decay():
  import keras  # pylint: disable=import-outside-toplevel

  return keras.optimizers.schedules.ExponentialDecay(
    0.01, decay_steps=7, decay_rate=0.5, staircase=True
  )


CASES = [
  Case("defaults", {}),
  Case("epsilon=1.0", {"epsilon": 1.0}),
  Case("epsilon=0.1", {"epsilon": 0.1}),
  Case("epsilon=1e-3, tiny grads", {"epsilon": 1e-3}, scale=1e-4),
  Case(
    "amsgrad, shrinking grads", {"amsgrad": True, "learning_rate": 0.01}, steps=40, scale=shrinking
  ),
  Case(
    "amsgrad, beta_2=0.9",
    {"amsgrad": True, "beta_2": 0.9, "learning_rate": 0.01},
    steps=40,
    scale=shrinking,
  ),
  Case(
    "amsgrad, epsilon=0.1",
    {"amsgrad": True, "epsilon": 0.1, "learning_rate": 0.01},
    steps=40,
    scale=shrinking,
  ),
  Case("weight_decay", {"weight_decay": 0.05, "learning_rate": 0.01}),
  Case(
    "weight_decay + exclusion",
    {"weight_decay": 0.05, "learning_rate": 0.01},
    exclude=("bias", "scale"),
  ),
  Case("clipnorm", {"clipnorm": 0.5}, scale=10.0, zero_steps=(4,)),
  Case("global_clipnorm", {"global_clipnorm": 0.5}, scale=10.0, zero_steps=(4,)),
  Case("global_clipnorm above norm", {"global_clipnorm": 1e3}),
  Case("clipvalue", {"clipvalue": 0.1}, scale=10.0, zero_steps=(4,)),
  Case("lr=0.1", {"learning_rate": 0.1}),
  Case(
    "schedule (Keras ExponentialDecay)",
    {},
    keras_schedule=_keras_exp_decay,
    ref_lr=lambda s: 0.01 * 0.5 ** (s // 7),
  ),
  Case(
    "all on",
    {"amsgrad": True, "weight_decay": 0.01, "clipnorm": 1.0, "epsilon": 0.01},
    steps=40,
    scale=shrinking,
    exclude=("bias",),
    keras_schedule=_keras_exp_decay,
    ref_lr=lambda s: 0.01 * 0.5 ** (s // 7),
  ),
]


def _setup(case: Case):
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, case.steps, scale=case.scale, zero_steps=case.zero_steps)
  return params0, grads


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_keras3(case: Case, report):
  params0, grads = _setup(case)
  kwargs = dict(case.kwargs)
  if case.keras_schedule is not None:
    kwargs["learning_rate"] = case.keras_schedule()
  keras_hist, _, _ = run_keras3(kwargs, params0, grads, exclude=case.exclude)
  tx = optadam.adam(**kwargs, exclude_from_weight_decay=case.exclude)
  ours, _ = run_optadam(tx, params0, grads)
  err, ulps = worst_relative(ours, keras_hist), worst_ulps(ours, keras_hist)
  report(f"keras3 / {case.name}", f"max rel err {err:.2e}  ({ulps:.1f} ulp at tensor scale)")
  assert err <= 1e-6, f"{case.name}: {err}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_float64_reference(case: Case, report):
  params0, grads = _setup(case)
  ref_kwargs = {k: v for k, v in case.kwargs.items()}
  if case.ref_lr is not None:
    ref_kwargs["learning_rate"] = case.ref_lr
  ref, _ = reference_adam(
    params0, grads, exclude_from_weight_decay=case.exclude or (), **ref_kwargs
  )
  # optadam in float32 against the float64 reference: float32 rounding only.
  kwargs = dict(case.kwargs)
  if case.ref_lr is not None:
    kwargs["learning_rate"] = case.ref_lr
  ours32, _ = run_optadam(
    optadam.adam(**kwargs, exclude_from_weight_decay=case.exclude), params0, grads
  )
  err32 = worst_relative(ours32, ref)
  lr = kwargs.get("learning_rate", 1e-3)
  assert err32 <= 5e-4 * (lr if isinstance(lr, float) else 1e-2), (
    f"{case.name}: float32 vs float64 reference {err32}"
  )
  # optadam in float64 against the float64 reference: the same formulas.
  with jax.enable_x64(True):
    p64 = {k: v.astype(np.float64) for k, v in params0.items()}
    g64 = [{k: v.astype(np.float64) for k, v in g.items()} for g in grads]
    ours64, state = run_optadam(
      optadam.adam(**kwargs, exclude_from_weight_decay=case.exclude), p64, g64
    )
    assert state.adam.mu["dense/kernel"].dtype == jnp.float64
  err64 = worst_relative(ours64, ref)
  report(f"float64 ref / {case.name}", f"f32 {err32:.2e}   f64 {err64:.2e}")
  assert err64 <= 1e-13, f"{case.name}: float64 vs float64 reference {err64}"


def test_tolerance_tells_epsilon_hat_from_epsilon():
  """The parity tolerance is tight enough to reject textbook epsilon (optax.adam)."""
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 30, scale=1e-4)
  ref, _ = reference_adam(params0, grads, epsilon=1e-3)
  textbook, _ = run_optadam(optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-3), params0, grads)
  assert worst_relative(textbook, ref) > 1e-4
  ref_ams, _ = reference_adam(
    params0, make_grads(SHAPES, 40, scale=shrinking), amsgrad=True, epsilon=0.1, learning_rate=0.01
  )
  optax_ams, _ = run_optadam(
    optax.amsgrad(0.01, eps=0.1), params0, make_grads(SHAPES, 40, scale=shrinking)
  )
  assert worst_relative(optax_ams, ref_ams) > 1e-4


def test_amsgrad_max_matters():
  """With shrinking gradients the AMSGrad max changes the trajectory (the case is meaningful)."""
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 40, scale=shrinking)
  kw = {"learning_rate": 0.01, "beta_2": 0.9}
  with_max, _ = reference_adam(params0, grads, amsgrad=True, **kw)
  without, _ = reference_adam(params0, grads, amsgrad=False, **kw)
  assert worst_relative(with_max, without) > 1e-3


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
