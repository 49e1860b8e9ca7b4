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

The scenarios are data in ``loss_scale_scenarios.py``, each with its own numpy seed. Files:
``tests/golden/loss_scale_<name>.{json,npz}``; the format is in tools/README.md. Byte-for-byte
reproducible (per-scenario numpy seeds, no TF randomness).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from golden_common import (
  K_STEPS,
  jsonable,
  parser,
  remove_stale,
  scenario_names,
  serialized_kwargs,
  store,
  tf_kwargs,
  write_golden,
)
from loss_scale_scenarios import BY_NAME, PARAMS, PREFIX, Scenario

POISON = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}


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


def _scaled_gradients(sc: Scenario, s: int, raw: list, scale: float, arrays: dict) -> list:
  """Step ``s``'s gradients of the scaled loss as TF gets them (stored into ``arrays``)."""
  import tensorflow as tf

  scaled = []
  for i, r in enumerate(raw):
    if r is None:
      scaled.append(None)
      continue
    g = tf.cast(tf.constant(r * scale, tf.float64), getattr(tf, sc.dtype)).numpy()
    if i == 0 and s in sc.bad:
      g = g.copy()
      g[1, 2] = POISON[sc.bad[s]]
    arrays[f"grad_{s}_{i}"] = store(g)
    scaled.append(tf.constant(g))
  return scaled


def _store_step(sc: Scenario, arrays: dict, s: int, lso, variables: list) -> None:
  """The parameters, loss scale, counter and iterations after step ``s`` (and K's state)."""
  for i, v in enumerate(variables):
    arrays[f"param_{s}_{i}"] = store(v)
  arrays[f"scale_{s}"] = np.float32(lso.loss_scale.numpy())
  arrays[f"counter_{s}"] = np.int64(lso.dynamic_counter.numpy())
  arrays[f"iterations_{s}"] = np.int64(lso.iterations.numpy())
  if s + 1 == K_STEPS and sc.steps > K_STEPS:
    for j, ov in enumerate(lso.variables):
      arrays[f"optvarK_{j}"] = store(ov)
    arrays["scaleK"] = np.float32(lso.loss_scale.numpy())
    arrays["counterK"] = np.int64(lso.dynamic_counter.numpy())


def run(sc: Scenario) -> tuple[dict, dict]:
  import tensorflow as tf

  tf.config.run_functions_eagerly(False)
  dtype = getattr(tf, sc.dtype)
  inits, raws = raw_gradients(sc)
  variables = [
    tf.Variable(tf.cast(tf.constant(v, tf.float64), dtype), name=name)
    for (name, _), v in zip(PARAMS, inits)
  ]
  adam_kwargs = tf_kwargs(sc.adam)
  lso = tf.keras.mixed_precision.LossScaleOptimizer(
    tf.keras.optimizers.Adam(**adam_kwargs),
    initial_scale=sc.initial_scale,
    dynamic_growth_steps=sc.growth_steps,
  )

  @tf.function
  def step(scaled):
    grads = lso.get_unscaled_gradients(scaled)
    lso.apply_gradients(zip(grads, variables))

  arrays = {f"param_{i}_init": store(v) for i, v in enumerate(variables)}
  arrays["scale_init"] = np.float32(lso.loss_scale.numpy())
  for s, raw in enumerate(raws):
    step(_scaled_gradients(sc, s, raw, float(lso.loss_scale.numpy()), arrays))
    _store_step(sc, arrays, s, lso, variables)
  for j, ov in enumerate(lso.variables):
    arrays[f"optvar_{j}"] = store(ov)
  if adam_kwargs.get("use_ema"):
    lso.finalize_variable_values(variables)
    for i, v in enumerate(variables):
      arrays[f"final_{i}"] = store(v)
  return arrays, _meta(sc, adam_kwargs, lso, arrays)


def _meta(sc: Scenario, adam_kwargs: dict, lso, arrays: dict) -> dict:
  import tensorflow as tf

  return {
    "scenario": PREFIX + sc.name,
    "description": sc.description,
    "adam_kwargs": serialized_kwargs(adam_kwargs),
    "initial_scale": sc.initial_scale,
    "dynamic_growth_steps": sc.growth_steps,
    "config": jsonable(lso.get_config()),
    "serialized": jsonable(tf.keras.optimizers.serialize(lso)),
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


def main(argv: Optional[list] = None) -> int:
  ap = parser(__doc__.split("\n")[0], only_help="scenario names without the prefix (default: all)")
  args = ap.parse_args(argv)
  names = scenario_names(ap, args, BY_NAME, prefix=PREFIX, width=44)
  if args.list:
    return 0
  import tensorflow as tf

  tf.get_logger().setLevel("ERROR")
  out = os.path.normpath(args.out)
  for n in names:
    arrays, meta = run(BY_NAME[n])
    write_golden(out, PREFIX + n, arrays, json.dumps(meta, indent=1, allow_nan=True))
    print(f"wrote {os.path.join(out, PREFIX + n)}.{{npz,json}}  scales: {meta['scales']}")
  if not args.only:  # full regeneration: drop loss-scale goldens no longer registered
    remove_stale(out, lambda stem: stem.startswith(PREFIX), {PREFIX + n for n in BY_NAME})
  return 0


if __name__ == "__main__":
  sys.exit(main())
