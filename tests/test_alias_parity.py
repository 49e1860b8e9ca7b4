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
