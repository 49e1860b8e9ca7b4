#!/usr/bin/env python3
"""Golden trajectories from the real Keras 2 ``tf.keras.mixed_precision.LossScaleOptimizer``.

TF 2.15.1 (Keras 2.15) wraps ``tf.keras.optimizers.Adam`` in its ``LossScaleOptimizer``
(dynamic loss scaling). Each step is Keras 2's custom-loop recipe inside one ``tf.function``::

    grads = lso.get_unscaled_gradients(scaled_grads)
    lso.apply_gradients(zip(grads, variables))

where ``scaled_grads`` are the gradients of the scaled loss: a fixed float64 "raw" gradient times
the loss scale the optimizer holds before that step, cast to the parameter dtype (what
``tape.gradient(lso.get_scaled_loss(loss), ...)`` gives), with an inf or NaN put into
``dense/kernel[1, 2]`` on the scenario's bad steps. Those exact arrays are stored, so a test feeds
optadam the same gradients TF got.

Run by ``make golden`` after ``tools/make_keras2_golden.py`` (same ``.venv-tf``), or::

    .venv-tf/bin/python tools/make_loss_scale_golden.py [--out tests/golden] [--only NAME ...]
    .venv-tf/bin/python tools/make_loss_scale_golden.py --list

Files: ``tests/golden/loss_scale_<name>.{json,npz}``; the format is in tools/README.md.
Deterministic (fixed numpy seeds, no TF randomness).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import jsonable as _jsonable, scenario_names, store as _store

PREFIX = "loss_scale_"
K_STEPS = 10
PARAMS = [("dense/kernel", (4, 3)), ("dense/bias", (3,))]
POISON = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}


@dataclasses.dataclass
class Scenario:
  name: str  # without the prefix
  description: str
  adam: Callable[[], dict]  # fresh Adam kwargs (schedules are TF objects: built lazily)
  initial_scale: float
  growth_steps: int
  steps: int
  bad: dict  # step -> "inf" | "-inf" | "nan" (in dense/kernel[1, 2])
  dtype: str = "float32"
  seed: int = 0
  magnitude: tuple = (-3.0, 0.0)  # log10 range of the per-step raw gradient magnitude
  none_steps: dict = dataclasses.field(default_factory=dict)  # param name -> [steps]


def _kw(**kw):
  return lambda: dict(kw)


def _schedule_kw(**kw):
  def make():
    import tensorflow as tf

    out = dict(kw)
    out["learning_rate"] = tf.keras.optimizers.schedules.ExponentialDecay(0.01, 5, 0.5)
    return out

  return make


SCENARIOS = {
  sc.name: sc
  for sc in [
    Scenario(
      "basic",
      "Adam(lr=0.01), initial_scale=2**8, growth 3; inf/nan/-inf/nan on steps 5, 6, 13, 30.",
      _kw(learning_rate=0.01),
      2.0**8,
      3,
      40,
      {5: "inf", 6: "nan", 13: "-inf", 30: "nan"},
    ),
    Scenario(
      "floor",
      "initial_scale=4, growth 2; NaN on steps 3-14 (12 in a row): the scale stops at 1.",
      _kw(learning_rate=0.01),
      4.0,
      2,
      30,
      {s: "nan" for s in range(3, 15)},
      seed=1,
    ),
    Scenario(
      "initial_below_one",
      "initial_scale=0.25 (reciprocal 4), growth 2; NaN on step 2: max(0.125, 1) lifts it to 1.",
      _kw(learning_rate=0.01),
      0.25,
      2,
      12,
      {2: "nan"},
      seed=2,
    ),
    Scenario(
      "growth_cap",
      "initial_scale=2**126, growth 1, epsilon=1e-20, raw gradients ~1e-15: the doubling to "
      "2**128 = inf is not taken, the scale stays 2**127.",
      _kw(learning_rate=0.01, epsilon=1e-20),
      2.0**126,
      1,
      6,
      {},
      seed=3,
      magnitude=(-15.0, -15.0),
    ),
    Scenario(
      "non_power_of_two",
      "initial_scale=1000 (1/1000 inexact in float32: g * f32(1/1000) != g / 1000), growth 4; "
      "NaN on step 7.",
      _kw(learning_rate=0.01),
      1000.0,
      4,
      20,
      {7: "nan"},
      seed=4,
    ),
    Scenario(
      "ema_amsgrad_clipnorm_schedule",
      "amsgrad, clipnorm=0.5, use_ema (0.9, overwrite every 3), ExponentialDecay(0.01, 5, 0.5); "
      "initial 2**10, growth 4; bad steps 2, 3, 9, 16: iterations still advance on them.",
      _schedule_kw(
        amsgrad=True, clipnorm=0.5, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3
      ),
      2.0**10,
      4,
      30,
      {2: "inf", 3: "inf", 9: "nan", 16: "inf"},
      seed=5,
    ),
    Scenario(
      "weight_decay_global_clipnorm",
      "weight_decay=0.02, global_clipnorm=1.0, lr 0.01; initial 2**10, growth 4; bad 4, 12.",
      _kw(learning_rate=0.01, weight_decay=0.02, global_clipnorm=1.0),
      2.0**10,
      4,
      24,
      {4: "nan", 12: "inf"},
      seed=6,
    ),
    Scenario(
      "none_grads",
      "dense/bias None on steps 0, 3, 8, 9 (ignored by the finiteness check); kernel inf on "
      "steps 3 and 11; initial 2**6, growth 2.",
      _kw(learning_rate=0.01),
      2.0**6,
      2,
      20,
      {3: "inf", 11: "inf"},
      seed=7,
      none_steps={"dense/bias": [0, 3, 8, 9]},
    ),
    Scenario(
      "float16",
      "float16 parameters and gradients, initial 2**22, growth 1, raw gradients ~1e-6: the "
      "scale grows until g * scale overflows float16 (then halves); above 2**24 Keras 2's "
      "float16 reciprocal rounds to 0, so those steps apply zero gradients.",
      _kw(learning_rate=0.01),
      2.0**22,
      1,
      24,
      {},
      dtype="float16",
      seed=8,
      magnitude=(-6.0, -6.0),
    ),
  ]
}


def raw_gradients(sc: Scenario) -> tuple[list, list]:
  """(initial values, raw float64 gradients per step; None where a gradient is None)."""
  rng = np.random.RandomState(sc.seed)
  inits = [rng.standard_normal(shape) for _, shape in PARAMS]
  grads = []
  for s in range(sc.steps):
    mag = 10.0 ** rng.uniform(*sc.magnitude)
    step = []
    for name, shape in PARAMS:
      g = rng.standard_normal(shape) * mag
      step.append(None if s in sc.none_steps.get(name, ()) else g)
    grads.append(step)
  return inits, grads


def run(sc: Scenario) -> tuple[dict, dict]:
  import tensorflow as tf

  tf.config.run_functions_eagerly(False)
  dtype = getattr(tf, sc.dtype)
  inits, raws = raw_gradients(sc)
  variables = [
    tf.Variable(tf.cast(tf.constant(v, tf.float64), dtype), name=name)
    for (name, _), v in zip(PARAMS, inits)
  ]
  adam_kwargs = sc.adam()
  lso = tf.keras.mixed_precision.LossScaleOptimizer(
    tf.keras.optimizers.Adam(**adam_kwargs),
    initial_scale=sc.initial_scale,
    dynamic_growth_steps=sc.growth_steps,
  )

  @tf.function
  def step(scaled):
    grads = lso.get_unscaled_gradients(scaled)
    lso.apply_gradients(zip(grads, variables))

  arrays = {f"param_{i}_init": _store(v) for i, v in enumerate(variables)}
  arrays["scale_init"] = np.float32(lso.loss_scale.numpy())
  for s, raw in enumerate(raws):
    scale = float(lso.loss_scale.numpy())
    scaled = []
    for i, r in enumerate(raw):
      if r is None:
        scaled.append(None)
        continue
      g = tf.cast(tf.constant(r * scale, tf.float64), dtype).numpy()
      if i == 0 and s in sc.bad:
        g = g.copy()
        g[1, 2] = POISON[sc.bad[s]]
      arrays[f"grad_{s}_{i}"] = _store(g)
      scaled.append(tf.constant(g))
    step(scaled)
    for i, v in enumerate(variables):
      arrays[f"param_{s}_{i}"] = _store(v)
    arrays[f"scale_{s}"] = np.float32(lso.loss_scale.numpy())
    arrays[f"counter_{s}"] = np.int64(lso.dynamic_counter.numpy())
    arrays[f"iterations_{s}"] = np.int64(lso.iterations.numpy())
    if s + 1 == K_STEPS and sc.steps > K_STEPS:
      for j, ov in enumerate(lso.variables):
        arrays[f"optvarK_{j}"] = _store(ov)
      arrays["scaleK"] = np.float32(lso.loss_scale.numpy())
      arrays["counterK"] = np.int64(lso.dynamic_counter.numpy())
  for j, ov in enumerate(lso.variables):
    arrays[f"optvar_{j}"] = _store(ov)
  if adam_kwargs.get("use_ema"):
    lso.finalize_variable_values(variables)
    for i, v in enumerate(variables):
      arrays[f"final_{i}"] = _store(v)

  ser = {
    k: tf.keras.optimizers.schedules.serialize(v)
    if isinstance(v, tf.keras.optimizers.schedules.LearningRateSchedule)
    else v
    for k, v in adam_kwargs.items()
  }
  meta = {
    "scenario": PREFIX + sc.name,
    "description": sc.description,
    "adam_kwargs": _jsonable(ser),
    "initial_scale": sc.initial_scale,
    "dynamic_growth_steps": sc.growth_steps,
    "config": _jsonable(lso.get_config()),
    "serialized": _jsonable(tf.keras.optimizers.serialize(lso)),
    "param_names": [n for n, _ in PARAMS],
    "param_shapes": [list(shape) for _, shape in PARAMS],
    "param_dtypes": [sc.dtype] * len(PARAMS),
    "steps": sc.steps,
    "K": K_STEPS if sc.steps > K_STEPS else None,
    "bad_steps": {str(k): v for k, v in sorted(sc.bad.items())},
    "none_grad_steps": sc.none_steps,
    "variables_names": [v.name for v in lso.variables],
    "scales": [float(arrays[f"scale_{s}"]) for s in range(sc.steps)],
    "tf_version": tf.__version__,
    "keras_version": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
    "numpy_version": np.__version__,
    "execution": {
      "mode": "function",
      "step": "lso.get_unscaled_gradients + lso.apply_gradients in one tf.function",
      "optimizer_class": type(lso).__name__,
      "seed": sc.seed,
    },
  }
  return arrays, meta


def write(out: str, name: str, arrays: dict, meta: dict) -> None:
  os.makedirs(out, exist_ok=True)
  np.savez_compressed(os.path.join(out, f"{PREFIX}{name}.npz"), **arrays)
  with open(os.path.join(out, f"{PREFIX}{name}.json"), "w") as f:
    json.dump(meta, f, indent=1, allow_nan=True)
    f.write("\n")


def main(argv: Optional[list] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument(
    "--out",
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"),
  )
  ap.add_argument("--only", nargs="*", help="scenario names without the prefix (default: all)")
  ap.add_argument("--list", action="store_true", help="list scenarios and exit")
  args = ap.parse_args(argv)
  names = scenario_names(ap, args, SCENARIOS, prefix=PREFIX, width=44)
  if args.list:
    return 0
  import tensorflow as tf

  tf.get_logger().setLevel("ERROR")
  out = os.path.normpath(args.out)
  for n in names:
    arrays, meta = run(SCENARIOS[n])
    write(out, n, arrays, meta)
    print(f"wrote {os.path.join(out, PREFIX + n)}.{{npz,json}}  scales: {meta['scales']}")
  if not args.only:  # full regeneration: drop loss-scale goldens no longer registered
    for fn in sorted(os.listdir(out)):
      stem, ext = os.path.splitext(fn)
      if ext == ".json" and stem.startswith(PREFIX) and stem[len(PREFIX) :] not in SCENARIOS:
        for e in (".json", ".npz"):
          os.remove(os.path.join(out, stem + e))
          print(f"removed stale {os.path.join(out, stem + e)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
