"""The randomized differential suite: whole random configurations against Keras 3 and the reference.

Each case is drawn from its seed (`random_configs.draw`), so a failure is reproduced by its id
alone. Per case:

* against Keras 3 in process (``ema_style="keras3"``): optadam eagerly (``jit_compile=False``)
  and inside a user's ``jax.jit``, step by step, params and EMA averages;
* against the float64 reference of Keras 2's arithmetic (`reference.reference_adam`), in
  float64 (jax x64), with sparse gradients on some leaves;
* every schedule, at random arguments and at random, restart and boundary steps: under ``jit``
  against its eager value, and against Keras 3's.

``make test`` runs `CASES` of each (about two minutes); ``make test-random`` runs many more
(``OPTADAM_RANDOM_CASES``, default 1000 there). Where optadam deliberately differs from Keras,
the comparison says so by name (`DEPARTURES`) instead of widening a tolerance.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
import random_configs
from reference import reference_adam

CASES = int(os.environ.get("OPTADAM_RANDOM_CASES", "40"))
# Per step, of each tensor's scale: float32 (XLA fuses differently from Keras's op-by-op
# arithmetic: an ulp or a few per step) and float64.
RTOL = {"float32": 1e-6, "float64": 1e-13}
# A schedule under jit, or Keras 3's (its ops.cond branches are compiled), against optadam's
# eager value: XLA's fused exp/log/pow/cos round unlike the op-by-op ones.
SCHEDULE_ULPS = 16

# Where optadam deliberately differs from Keras 3 (each checked where it applies, never hidden).
DEPARTURES = {
  # (and "keras3-x64-schedule": under jax x64 Keras 3 evaluates schedules in float64, so the
  # float64 problems take a constant rate; shown by test_departure_keras3_x64_schedules)
  "additive-overwrite": (
    "An optax update is added to the parameters: on an EMA overwrite step they land on "
    "`x + (avg - x)`, which rounds by up to an ulp of |x| when |avg| is far smaller, where Keras "
    "assigns `avg` itself (optadam.parameter_ema stores the landed value as the average)."
  ),
  "keras3-jax-blend": (
    "Keras 3's JAX backend overwrites with `avg * flag + var * (1 - flag)` on every call, which "
    "turns an infinite parameter or average into NaN; optadam assigns the average, as TF 2.15 "
    "and Keras 3's other backends do (docs/semantics.md, parameter EMA)."
  ),
}


def _keras3(problem: random_configs.Problem):
  """Keras 3's params after every step and its final averages (JAX backend, in process)."""
  import keras  # pylint: disable=import-outside-toplevel

  kwargs = dict(problem.kwargs)
  if problem.schedule is not None:
    name, kw = problem.schedule
    kwargs["learning_rate"] = getattr(keras.optimizers.schedules, name)(**kw)
  variables = {k: keras.Variable(v, dtype=str(v.dtype), name=k) for k, v in problem.params0.items()}
  opt = getattr(keras.optimizers, problem.optimizer)(**kwargs)
  opt.build(list(variables.values()))  # all of them, also those whose first gradient is None
  history = []
  for g in problem.grads:
    pairs = [(jnp.asarray(gk), variables[k]) for k, gk in g.items() if gk is not None]
    if pairs:
      opt.apply_gradients(pairs)
    history.append({k: np.asarray(var.value) for k, var in variables.items()})
  averages = None
  if problem.kwargs.get("use_ema"):
    averages = {
      k: np.asarray(avg.value)
      for k, avg in zip(variables, opt._model_variables_moving_average)  # pylint: disable=protected-access
    }
  return history, averages


def _optadam(problem: random_configs.Problem, jit: bool):
  kwargs = dict(problem.kwargs)
  if problem.schedule is not None:
    name, kw = problem.schedule
    kwargs["learning_rate"] = getattr(optadam.schedules, name)(**kw)
  build = optadam.adamw if problem.optimizer == "AdamW" else optadam.adam
  tx = build(**kwargs, ema_style="keras3", jit_compile=False)
  params = {k: jnp.asarray(v) for k, v in problem.params0.items()}
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optadam.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step)
  history = []
  for g in problem.grads:
    g = {k: None if v is None else jnp.asarray(v) for k, v in g.items()}
    params, state = step(params, state, g)
    history.append({k: np.asarray(v) for k, v in params.items()})
  averages = optadam.ema_params(state) if problem.kwargs.get("use_ema") else None
  return history, averages


def _mismatch(ours: np.ndarray, theirs: np.ndarray, rtol: float) -> np.ndarray:
  """Positions where `ours` differs from `theirs`: beyond `rtol` of the tensor's scale where
  both are finite, or non-finite on one side only or with another value."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  both = np.isfinite(ours) & np.isfinite(theirs)
  scale = max(1.0, float(np.max(np.abs(theirs[both]), initial=0.0)))
  close = np.abs(ours - theirs) <= rtol * scale
  same_nonfinite = (np.isnan(ours) & np.isnan(theirs)) | (ours == theirs)
  return ~np.where(both, close, same_nonfinite)


def _blend_departure(problem, ours, theirs, bad) -> bool:
  """Keras 3's JAX blend made NaN where optadam kept a non-finite (or its finite) value."""
  freq = problem.kwargs.get("ema_overwrite_frequency")
  return bool(problem.kwargs.get("use_ema") and freq) and bool(
    np.all(np.isnan(np.asarray(theirs, np.float64))[bad])
  )


def _precision(problem, leaf: np.ndarray) -> str:
  """The dtype whose rounding a leaf's values carry: its own, or with ``global_clipnorm`` the
  least precise of the tree (every leaf is scaled by one norm summed over all of them)."""
  if problem.kwargs.get("global_clipnorm"):
    return max((p.dtype.name for p in problem.params0.values()), key=RTOL.__getitem__)
  return np.asarray(leaf).dtype.name


def _additive_overwrite(problem, before, ours, theirs, bad) -> bool:
  """An overwrite step landed on `x + (avg - x)`: within two ulps of the parameters before it."""
  if not (problem.kwargs.get("use_ema") and problem.kwargs.get("ema_overwrite_frequency")):
    return False
  before = np.abs(np.asarray(before, np.float64))
  ulp = np.spacing(np.asarray(before, np.asarray(theirs).dtype)).astype(np.float64)
  diff = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
  return bool(np.all((diff <= 2 * ulp)[bad]))


def _compare(problem, ours_hist, theirs_hist, what):
  departures = set()
  for step, (ours, theirs) in enumerate(zip(ours_hist, theirs_hist)):
    for k in theirs:
      rtol = RTOL[_precision(problem, theirs[k])] * (step + 1)
      bad = _mismatch(ours[k], theirs[k], rtol)
      if not bad.any():
        continue
      if _blend_departure(problem, ours[k], theirs[k], bad):
        departures.add("keras3-jax-blend")
        return departures  # Keras's NaN spreads from here on: nothing further to compare
      before = ours_hist[step - 1][k] if step else problem.params0[k]
      if _additive_overwrite(problem, before, ours[k], theirs[k], bad):
        departures.add("additive-overwrite")
        return departures  # the averages now differ by that rounding: compared up to here
      raise AssertionError(
        f"{problem.describe()}\n{what}: step {step}, {k}: optadam {ours[k][bad][:5]} vs "
        f"{theirs[k][bad][:5]} (at {np.argwhere(bad)[:5].tolist()})"
      )
  return departures


@pytest.mark.parametrize("seed", range(CASES), ids=lambda s: f"case{s:04d}")
def test_random_config_against_keras3(seed, report):
  problem = random_configs.draw(seed)
  with jax.enable_x64(problem.float64):
    theirs, their_avg = _keras3(problem)
    seen = set()
    for jit in (False, True):
      ours, our_avg = _optadam(problem, jit)
      label = "jit" if jit else "eager"
      seen |= _compare(problem, ours, theirs, f"keras3 / {label}")
      if their_avg is not None and not seen:
        _compare(problem, [our_avg] * len(ours), [their_avg] * len(ours), f"averages {label}")
  for name in seen:
    report(f"random / departure {name}", DEPARTURES[name][:60] + "...")


def _reference_kwargs(problem: random_configs.Problem) -> dict:
  """Keras 2's arguments of the problem (no Keras 3 extras), for optadam and the reference."""
  keep = ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay")
  keep += ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum")
  keep += ("ema_overwrite_frequency",)
  return {k: v for k, v in problem.kwargs.items() if k in keep}


@pytest.mark.parametrize("seed", range(CASES), ids=lambda s: f"case{s:04d}")
def test_random_config_against_the_float64_reference(seed, report):
  """optadam in float64 (Keras 2's EMA, sparse rows on some leaves) against the float64
  transcription of Keras 2's arithmetic: the same formulas, so float64 rounding only."""
  problem = random_configs.draw(seed)
  rng = np.random.default_rng([seed, 64])
  kwargs = _reference_kwargs(problem)
  lr = kwargs["learning_rate"]
  if problem.schedule is not None:
    name, kw = problem.schedule
    lr = getattr(optadam.schedules, name)(**kw)  # evaluated op by op in both
  params0 = {k: v.astype(np.float64) for k, v in problem.params0.items()}
  with jax.enable_x64(True):
    grads64 = [
      {k: None if v is None else np.asarray(v, np.float64) for k, v in g.items()}
      for g in problem.grads
    ]
    grads = [random_configs.sparsify(rng, g) for g in grads64]
    reference, ref_avg = reference_adam(
      params0, grads, **dict(kwargs, learning_rate=(lambda s: lr(s)) if callable(lr) else lr)
    )
    build = optadam.adamw if problem.optimizer == "AdamW" else optadam.adam
    seen = set()
    # Under jit a schedule's float32 value rounds unlike its eager one (test_random_schedule
    # bounds that): a float64 run then follows it, so jit is compared at a constant rate.
    for jit in (False, True) if problem.schedule is None else (False,):
      tx = build(**dict(kwargs, learning_rate=lr), jit_compile=jit)
      params, ours = {k: jnp.asarray(v) for k, v in params0.items()}, []
      state = tx.init(params)
      for g in grads:
        updates, state = tx.update(g, state, params)
        params = optadam.apply_updates(params, updates)
        ours.append({k: np.asarray(v) for k, v in params.items()})
      label = "jit" if jit else "eager"
      seen |= _compare(problem, ours, reference, f"float64 reference / {label}")
      if kwargs.get("use_ema") and not seen:
        avg = [optadam.ema_params(state)] * len(ours)
        _compare(problem, avg, [ref_avg] * len(ours), f"float64 reference averages / {label}")
  for name in seen:
    report(f"random / departure {name}", DEPARTURES[name][:60] + "...")


@pytest.mark.parametrize("seed", range(CASES), ids=lambda s: f"case{s:04d}")
def test_random_schedule(seed, report):
  """A schedule at random arguments, at random, restart and boundary steps: under jit within a
  few float32 ulp of its eager value (XLA fuses and folds), and of Keras 3's."""
  import keras  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng([seed, 8])
  name, kw = random_configs.draw_schedule(rng)
  steps = random_configs.schedule_steps(rng, name, kw)
  ours = getattr(optadam.schedules, name)(**kw)
  theirs = getattr(keras.optimizers.schedules, name)(**kw)
  eager = np.array([np.float32(ours(jnp.int32(s))) for s in steps])
  jitted = np.asarray(jax.jit(jax.vmap(ours))(jnp.asarray(steps, jnp.int32)))
  keras3 = np.array([np.float32(theirs(jnp.int32(s))) for s in steps])
  scale = np.float32(kw["initial_learning_rate"] if "values" not in kw else max(kw["values"]))
  for what, values in (("jit", jitted), ("Keras 3", keras3)):
    np.testing.assert_allclose(
      values,
      eager,
      rtol=SCHEDULE_ULPS * 2**-23,
      atol=4 * float(np.spacing(scale)),
      err_msg=f"{name}({kw}): {what} vs eager at steps {steps}",
    )


# --- the departures, each shown where it applies ------------------------------------------------


def test_departure_keras3_jax_blend():
  """DEPARTURES["keras3-jax-blend"]: with an overwrite frequency, Keras 3 (JAX backend) blends
  `avg * flag + var * (1 - flag)` on every call, so an infinite parameter becomes NaN at once;
  optadam keeps it (as TF 2.15, and Keras 3's TF backend, which assign)."""
  problem = random_configs.Problem(
    seed=-1,
    optimizer="Adam",
    kwargs=dict(learning_rate=0.1, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3),
    schedule=None,
    params0={"w": np.asarray([np.inf, 1.0], np.float32)},
    grads=[{"w": np.zeros(2, np.float32)}] * 4,
  )
  theirs, _ = _keras3(problem)
  ours, _ = _optadam(problem, jit=True)
  assert np.isnan(theirs[0]["w"][0]) and theirs[0]["w"][1] == 1.0
  assert ours[-1]["w"][0] == np.inf and ours[-1]["w"][1] == 1.0
  assert _compare(problem, ours, theirs, "keras3") == {"keras3-jax-blend"}


def test_departure_keras3_x64_schedules():
  """Under jax x64, Keras 3 evaluates a schedule in float64; optadam (and TF 2.15, and Keras 3
  without x64) in float32. So the suite's float64 problems take a constant learning rate."""
  import keras  # pylint: disable=import-outside-toplevel

  kw = dict(initial_learning_rate=0.003, decay_steps=21, end_learning_rate=0.0015, power=0.5)
  with jax.enable_x64(True):
    theirs = keras.optimizers.schedules.PolynomialDecay(**kw)(jnp.int32(3))
    ours = optadam.schedules.PolynomialDecay(**kw)(jnp.int32(3))
  assert theirs.dtype == jnp.float64 and ours.dtype == jnp.float32
  assert float(theirs) != float(ours) and float(theirs) == pytest.approx(float(ours), rel=1e-7)
  assert not any(
    random_configs.draw(s).float64 and random_configs.draw(s).schedule for s in range(50)
  )


def test_departure_additive_overwrite():
  """DEPARTURES["additive-overwrite"]: the parameters land on x + (avg - x), which is avg only
  up to an ulp of |x|. Here x = 1e8 and avg = 0.0103 (momentum 1: the average stays the initial
  value): Keras assigns 0.0103; the additive update lands on 0.0, and the average follows."""
  tx = optax.chain(optax.sgd(1.0), optadam.parameter_ema(1.0, 2))
  params = jnp.asarray([0.0103], jnp.float32)
  state = tx.init(params)
  for g in (-1e8, 0.0):  # step 1: x = 1e8; step 2: the overwrite
    updates, state = tx.update(jnp.asarray([g], jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  assert float(params[0]) == 0.0 and float(optadam.ema_params(state)[0]) == 0.0
