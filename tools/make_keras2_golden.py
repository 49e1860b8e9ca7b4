#!/usr/bin/env python3
"""Golden trajectories from the real Keras 2 ``tf.keras.optimizers.Adam`` (TF 2.15).

Regenerate with ``make golden`` (creates ``.venv-tf`` with ``tensorflow-cpu==2.15.1`` and
``numpy<2``, then runs this script), or directly::

    .venv-tf/bin/python tools/make_keras2_golden.py [--out tests/golden] [--only NAME ...]
    .venv-tf/bin/python tools/make_keras2_golden.py --list
    .venv-tf/bin/python tools/make_keras2_golden.py --compare-modes   # eager vs graph vs XLA

tools/README.md has the scenario table and what TF 2.15 was observed to do. This script needs
TensorFlow; the JAX tests that read its output need only numpy. The output is
deterministic (fixed numpy seeds; no TF randomness is used).

How each scenario is run
------------------------
* ``tf.config.run_functions_eagerly(False)``; one ``tf.function`` per scenario calls
  ``optimizer.apply_gradients(list(zip(grads, vars)))`` (the gradients are passed as
  ``tf.function`` arguments, so nothing is constant-folded), exactly like the body of
  Keras's ``train_function``.
* The optimizer is the new (non-legacy) ``tf.keras.optimizers.Adam`` constructed with the
  scenario's kwargs and the default ``jit_compile=True``. On a machine without a GPU Keras
  itself turns that into ``jit_compile=False`` (see ``config["jit_compile"]`` in the json);
  ``--compare-modes`` shows whether forcing XLA changes any number.
* A gradient that is ``None`` on a step is passed as a ``(None, var)`` pair (what
  ``tape.gradient`` produces); Keras 2 filters such pairs out of that step entirely.
* Sparse gradients are ``tf.IndexedSlices(values, indices, dense_shape)``.

File format (the contract read by the JAX tests; also in tools/README.md)
--------------------------------------------------------------------------
For each scenario ``<name>`` there are two files in the output directory.

``<name>.json`` -- a JSON object with keys:
  scenario            str, == <name>
  description         str, what the scenario exercises
  kwargs              dict, the exact keyword arguments given to ``tf.keras.optimizers.Adam``;
                      a learning-rate schedule appears as
                      ``tf.keras.optimizers.schedules.serialize(schedule)``, i.e.
                      ``{"module": "keras.optimizers.schedules", "class_name": ..., "config": {...},
                      "registered_name": null}``
  exclude_from_weight_decay  list of str given to
                      ``optimizer.exclude_from_weight_decay(var_names=...)`` before the first
                      step, or null (not called)
  config              ``optimizer.get_config()`` after the last step, JSON-safe (numpy scalars ->
                      Python numbers)
  param_names         list of str, the names given to ``tf.Variable(..., name=...)`` in order
                      (TF appends ":0": the variable's ``.name`` is ``param_names[i] + ":0"``, and
                      that is what ``exclude_from_weight_decay`` regexes are matched against)
  param_shapes        list of lists of int
  param_dtypes        list of str: "float32", "float64", "float16" or "bfloat16"
  steps               int N, number of ``apply_gradients`` calls
  K                   int 10: ``optvarK_*`` is the state after the first K steps; null if N <= K
  sparse              {param_name: {...}} for parameters whose gradient is an IndexedSlices, or {}
  none_grad_steps     {param_name: [step, ...]} steps (0-based) on which that parameter's
                      gradient is None, or {}
  schedule            bool, true when the learning rate is a schedule (then ``lr_<s>`` exist)
  variables_names     ``[v.name for v in optimizer.variables]`` after the last step
                      (order: "iteration:0", ["Adam/average/<p>:0" per param if EMA],
                      "Adam/m/<p>:0", "Adam/v/<p>:0" interleaved per param,
                      ["Adam/vhat/<p>:0" per param if amsgrad])
  variables_dtypes    list of str, dtypes of ``optimizer.variables``
  observations        dict of free-form notes on what TF did in this scenario (may be {})
  tf_version, keras_version, numpy_version   str
  execution           dict: how the steps were run (tf.function, jit_compile, ...)

``<name>.npz`` -- ``np.savez_compressed`` arrays (i = parameter index, s = 0-based step,
j = index into ``optimizer.variables``):
  param_<i>_init            initial value of parameter i
  grad_<s>_<i>              dense gradient of parameter i at step s (absent when None or sparse)
  grad_<s>_<i>_values       \\
  grad_<s>_<i>_indices       > IndexedSlices gradient (raw: duplicates and order kept as given
  grad_<s>_<i>_dense_shape  /  to Keras; indices int32, dense_shape int64)
  param_<s>_<i>             value of parameter i after step s
  lr_<s>                    float32 scalar, the learning rate used at step s (schedules only;
                            read from the optimizer's ``current_learning_rate`` variable)
  optvarK_<j>               ``optimizer.variables[j]`` after the first K=10 steps
                            (iteration == 10); only when N > K
  optvar_<j>                ``optimizer.variables[j]`` after the last step
  final_<i>                 parameter i after ``optimizer.finalize_variable_values(vars)``
                            following the last step (EMA scenarios only)
Shapes are the parameter shapes (scalars are 0-d arrays). float32/float64 values are stored
in their own dtype; float16 and bfloat16 values (params, grads, optimizer variables) are stored
exactly as float32, the original dtype being in ``param_dtypes`` / ``variables_dtypes``.
The iteration counter ``optvar*_0`` is int64.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

K_STEPS = 10

# --------------------------------------------------------------------------------------
# scenario registry (pure numpy; TF is imported lazily)
# --------------------------------------------------------------------------------------

DENSE_PARAMS = [  # (name, shape)
  ("dense/kernel", (5, 3)),
  ("dense/bias", (3,)),
  ("conv/kernel", (2, 2, 2)),
  ("layer_norm/gamma", ()),
]
EMBED_PARAMS = [
  ("embedding/embeddings", (10, 4)),
  ("dense/kernel", (4, 3)),
]


@dataclasses.dataclass
class Sparse:
  """A sparse (IndexedSlices) gradient given as raw values and indices."""

  values: np.ndarray
  indices: np.ndarray
  dense_shape: tuple


@dataclasses.dataclass
class Scenario:
  name: str
  description: str
  make_kwargs: Callable[[], dict]  # fresh Adam kwargs (schedules are objects: lazy TF)
  params: list  # [(name, shape)]
  dtype: str = "float32"
  steps: int = 30
  seed: int = 0
  # grad_fn(rng, step, params, dtype) -> list of np.ndarray | Sparse | None
  grad_fn: Callable = None
  exclude: list | None = None
  none_steps: dict = dataclasses.field(default_factory=dict)  # name -> [steps]
  sparse: dict = dataclasses.field(default_factory=dict)  # name -> description
  init_scale: float = 1.0


SCENARIOS: dict[str, Scenario] = {}


def register(sc: Scenario) -> Scenario:
  assert sc.name not in SCENARIOS, sc.name
  assert re.fullmatch(r"[a-z0-9_]+", sc.name), sc.name
  SCENARIOS[sc.name] = sc
  return sc


def init_values(sc: Scenario, rng: np.random.RandomState) -> list:
  out = []
  for _, shape in sc.params:
    mag = 10 ** rng.uniform(-1, 0.3, size=shape)
    out.append(sc.init_scale * rng.standard_normal(shape) * mag)
  return out


def varied_grads(
  lo=-2.0, hi=0.5, zero_steps=(), big_steps=(), big=30.0, shrink=None, tiny=None, none_steps=None
):
  """Dense gradients of varied magnitude.

  Per step and parameter: ``N(0,1) * 10**U(lo, hi)`` with an elementwise 10**U(-0.5, 0.5)
  jitter; ``big_steps`` are multiplied by ``big``; ``zero_steps`` are all zeros;
  ``shrink=(a, r)`` uses magnitude ``a * r**s`` instead (amsgrad); ``tiny`` fixes the scale.
  ``none_steps`` maps a parameter index to the steps on which its gradient is None.
  """
  none_steps = none_steps or {}

  def fn(rng, s, params, dtype):
    grads = []
    for i, (_, shape) in enumerate(params):
      if shrink is not None:
        a, r = shrink
        scale = a * r**s * 10 ** rng.uniform(-0.15, 0.15)
      elif tiny is not None:
        scale = tiny * 10 ** rng.uniform(-0.5, 0.5)
      else:
        scale = 10 ** rng.uniform(lo, hi)
      jitter = 10 ** rng.uniform(-0.5, 0.5, size=shape)
      g = rng.standard_normal(shape) * jitter * scale
      if s in big_steps:
        g = g * big
      if s in zero_steps:
        g = np.zeros(shape)
      grads.append(None if s in none_steps.get(i, ()) else g)
    return grads

  return fn


def with_inf(base, step, param, index, value=np.inf):
  def fn(rng, s, params, dtype):
    grads = base(rng, s, params, dtype)
    if s == step:
      g = np.array(grads[param], dtype=np.float64)
      g[index] = value
      grads[param] = g
    return grads

  return fn


# Rows 0, 5 and 9 of the 10x4 embedding table never receive a gradient.
SPARSE_ROWS = np.array([1, 2, 3, 4, 6, 7, 8])


def sparse_grads(big_steps=(), big=30.0, shrink=None):
  """Embedding gradient as IndexedSlices (duplicate, out-of-order indices), others dense."""
  dense = varied_grads(big_steps=big_steps, big=big, shrink=shrink)

  def fn(rng, s, params, dtype):
    grads = dense(rng, s, params, dtype)
    shape = params[0][1]
    k = rng.randint(3, 8)
    idx = rng.choice(SPARSE_ROWS, size=k, replace=True)
    if len(set(idx.tolist())) == k:  # make sure there is a duplicate every step
      idx[-1] = idx[0]
    if np.all(np.diff(idx) >= 0):  # and that the order is not sorted
      idx = idx[::-1].copy()
    if shrink is not None:
      a, r = shrink
      scale = a * r**s
    else:
      scale = 10 ** rng.uniform(-2, 0.5) * (big if s in big_steps else 1.0)
    vals = rng.standard_normal((k,) + tuple(shape[1:])) * scale
    grads[0] = Sparse(vals, idx.astype(np.int32), tuple(shape))
    return grads

  return fn


def _sched(cls_name, **kw):
  def make():
    import tensorflow as tf

    return getattr(tf.keras.optimizers.schedules, cls_name)(**kw)

  return make


def _kw(**kw):
  """kwargs factory; values that are callables (schedule factories) are called."""

  def make():
    return {k: (v() if callable(v) else v) for k, v in kw.items()}

  return make


def _build_registry():
  seed = iter(range(1000, 100000, 17))
  P = DENSE_PARAMS
  reg = lambda **kw: register(Scenario(seed=next(seed), **kw))

  reg(
    name="defaults",
    description="Adam() with all defaults, dense float32 params.",
    make_kwargs=_kw(),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="epsilon_1",
    description="epsilon=1.0 (epsilon dominates sqrt(v)).",
    make_kwargs=_kw(epsilon=1.0),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="epsilon_0p1",
    description="epsilon=0.1.",
    make_kwargs=_kw(epsilon=0.1),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="epsilon_1em3_tiny_grads",
    description="epsilon=1e-3 with 1e-4-scale gradients (epsilon-hat regime; shows that "
    "epsilon is outside the sqrt and not bias corrected).",
    make_kwargs=_kw(epsilon=1e-3),
    params=P,
    grad_fn=varied_grads(tiny=1e-4),
  )
  reg(
    name="amsgrad",
    description="amsgrad=True with gradients shrinking over time "
    "(magnitude 3*0.8**s) so vhat = max(v) matters.",
    make_kwargs=_kw(amsgrad=True),
    params=P,
    grad_fn=varied_grads(shrink=(3.0, 0.8)),
  )
  reg(
    name="weight_decay",
    description="weight_decay=0.01 alone (lr 0.001).",
    make_kwargs=_kw(weight_decay=0.01),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="weight_decay_exclude_bias",
    description="weight_decay=0.05, lr=0.01, exclude_from_weight_decay(var_names=['bias']) "
    "(regex re.search on the variable name 'dense/bias:0').",
    make_kwargs=_kw(weight_decay=0.05, learning_rate=0.01),
    params=P,
    grad_fn=varied_grads(),
    exclude=["bias"],
  )
  clip_kw = dict(zero_steps=(4,), big_steps=(2, 7, 11, 19, 23))
  reg(
    name="clipnorm",
    description="clipnorm=1.0; steps 2,7,11,19,23 have gradients x30 "
    "(clipped); step 4 is all zeros.",
    make_kwargs=_kw(clipnorm=1.0),
    params=P,
    grad_fn=varied_grads(**clip_kw),
  )
  reg(
    name="global_clipnorm",
    description="global_clipnorm=2.0; steps 2,7,11,19,23 x30 "
    "(clipped); step 4 all zeros (global norm 0).",
    make_kwargs=_kw(global_clipnorm=2.0),
    params=P,
    grad_fn=varied_grads(**clip_kw),
  )
  reg(
    name="clipvalue",
    description="clipvalue=0.5; steps 2,7,11,19,23 x30; step 4 zeros.",
    make_kwargs=_kw(clipvalue=0.5),
    params=P,
    grad_fn=varied_grads(**clip_kw),
  )
  reg(
    name="global_clipnorm_inf",
    description="global_clipnorm=1.0; step 2 has +inf in dense/kernel[1,2]: the global norm is "
    "inf and Keras turns EVERY gradient into NaN (all params NaN from step 2 on).",
    make_kwargs=_kw(global_clipnorm=1.0),
    params=P,
    steps=5,
    grad_fn=with_inf(varied_grads(), step=2, param=0, index=(1, 2)),
  )
  reg(
    name="clipnorm_inf",
    description="clipnorm=1.0; step 2 has +inf in dense/kernel[1,2]: per-tensor norm is inf, "
    "only that tensor is affected (the inf entry becomes NaN, the others 0).",
    make_kwargs=_kw(clipnorm=1.0),
    params=P,
    steps=5,
    grad_fn=with_inf(varied_grads(), step=2, param=0, index=(1, 2)),
  )

  # EMA
  reg(
    name="ema_freq_none",
    description="use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=None (never overwrite).",
    make_kwargs=_kw(use_ema=True, ema_momentum=0.9),
    params=P,
    steps=25,
    grad_fn=varied_grads(),
  )
  reg(
    name="ema_freq_1",
    description="use_ema=True, default ema_momentum=0.99, "
    "ema_overwrite_frequency=1 (overwrite every step).",
    make_kwargs=_kw(use_ema=True, ema_overwrite_frequency=1),
    params=P,
    steps=25,
    grad_fn=varied_grads(),
  )
  reg(
    name="ema_freq_3_amsgrad",
    description="use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3, amsgrad=True, "
    "lr=0.01 (overwrite after steps 2, 5, 8, ... 0-based).",
    make_kwargs=_kw(
      use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3, amsgrad=True, learning_rate=0.01
    ),
    params=P,
    steps=25,
    grad_fn=varied_grads(shrink=(3.0, 0.85)),
  )
  reg(
    name="ema_freq_7_weight_decay",
    description="use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=7, weight_decay=0.02, "
    "lr=0.01 (overwrite after steps 6, 13, 20, 0-based).",
    make_kwargs=_kw(
      use_ema=True,
      ema_momentum=0.8,
      ema_overwrite_frequency=7,
      weight_decay=0.02,
      learning_rate=0.01,
    ),
    params=P,
    steps=25,
    grad_fn=varied_grads(),
  )

  # learning-rate schedules
  S = _sched
  reg(
    name="schedule_exponential_decay",
    description="ExponentialDecay(0.01, decay_steps=7, decay_rate=0.5, staircase=True): "
    "lr halves at steps 7, 14, 21, 28.",
    make_kwargs=_kw(
      learning_rate=S(
        "ExponentialDecay",
        initial_learning_rate=0.01,
        decay_steps=7,
        decay_rate=0.5,
        staircase=True,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_exponential_decay_smooth",
    description="ExponentialDecay(0.01, decay_steps=10, decay_rate=0.3, staircase=False).",
    make_kwargs=_kw(
      learning_rate=S(
        "ExponentialDecay",
        initial_learning_rate=0.01,
        decay_steps=10,
        decay_rate=0.3,
        staircase=False,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_piecewise_constant",
    description="PiecewiseConstantDecay(boundaries=[5, 12, 20], values=[0.01, 0.005, 0.002, "
    "0.0005]); upper bounds inclusive (step 5 still 0.01, step 6 0.005).",
    make_kwargs=_kw(
      learning_rate=S(
        "PiecewiseConstantDecay", boundaries=[5, 12, 20], values=[0.01, 0.005, 0.002, 0.0005]
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_polynomial_decay",
    description="PolynomialDecay(0.01, decay_steps=20, end_learning_rate=1e-4, power=2.0, "
    "cycle=False): constant 1e-4 from step 20 on.",
    make_kwargs=_kw(
      learning_rate=S(
        "PolynomialDecay",
        initial_learning_rate=0.01,
        decay_steps=20,
        end_learning_rate=1e-4,
        power=2.0,
        cycle=False,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_polynomial_decay_cycle",
    description="PolynomialDecay(0.01, decay_steps=8, end_learning_rate=1e-3, power=1.0, "
    "cycle=True): decay_steps is multiplied by ceil(step/8) (1 at step 0).",
    make_kwargs=_kw(
      learning_rate=S(
        "PolynomialDecay",
        initial_learning_rate=0.01,
        decay_steps=8,
        end_learning_rate=1e-3,
        power=1.0,
        cycle=True,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_inverse_time_decay",
    description="InverseTimeDecay(0.01, decay_steps=5, decay_rate=0.5, staircase=True).",
    make_kwargs=_kw(
      learning_rate=S(
        "InverseTimeDecay",
        initial_learning_rate=0.01,
        decay_steps=5,
        decay_rate=0.5,
        staircase=True,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_cosine_decay_warmup",
    description="CosineDecay(0.001, decay_steps=20, alpha=0.1, warmup_target=0.01, "
    "warmup_steps=5): linear warmup 0.001->0.01 over steps 0..5, cosine decay to "
    "alpha*warmup_target over steps 5..25, then constant.",
    make_kwargs=_kw(
      learning_rate=S(
        "CosineDecay",
        initial_learning_rate=0.001,
        decay_steps=20,
        alpha=0.1,
        warmup_target=0.01,
        warmup_steps=5,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="schedule_cosine_decay_restarts",
    description="CosineDecayRestarts(0.01, first_decay_steps=6, t_mul=2.0, m_mul=0.5, "
    "alpha=0.1): restarts at steps 6 and 18.",
    make_kwargs=_kw(
      learning_rate=S(
        "CosineDecayRestarts",
        initial_learning_rate=0.01,
        first_decay_steps=6,
        t_mul=2.0,
        m_mul=0.5,
        alpha=0.1,
      )
    ),
    params=P,
    grad_fn=varied_grads(),
  )

  # None gradients
  none_steps = {1: [0, 3, 4, 10, 17, 29], 3: [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]}
  named_none = {P[i][0]: v for i, v in none_steps.items()}
  reg(
    name="none_grads",
    description="dense/bias and layer_norm/gamma get gradient None on some steps (passed as "
    "(None, var) pairs): Keras 2 skips them that step entirely (no moment "
    "decay, no update) but the iteration counter still advances.",
    make_kwargs=_kw(),
    params=P,
    grad_fn=varied_grads(none_steps=none_steps),
    none_steps=named_none,
  )
  reg(
    name="none_grads_everything",
    description="As none_grads with amsgrad, weight_decay=0.05, global_clipnorm=2.0, "
    "use_ema (momentum 0.9, overwrite every 4 steps), lr 0.01: weight decay, EMA "
    "update and EMA overwrite are all skipped for a None-gradient parameter, and "
    "the global norm is over the present gradients only.",
    make_kwargs=_kw(
      amsgrad=True,
      weight_decay=0.05,
      global_clipnorm=2.0,
      use_ema=True,
      ema_momentum=0.9,
      ema_overwrite_frequency=4,
      learning_rate=0.01,
    ),
    params=P,
    steps=25,
    none_steps=named_none,
    grad_fn=varied_grads(none_steps=none_steps, big_steps=(2, 11), big=10),
  )

  # sparse gradients
  sp_desc = {
    "embedding/embeddings": {
      "type": "IndexedSlices",
      "dense_shape": [10, 4],
      "description": "3-7 rows per step drawn with replacement from rows "
      "[1,2,3,4,6,7,8]; at least one duplicate each step, never sorted; "
      "rows 0, 5, 9 never receive a gradient",
      "never_touched_rows": [0, 5, 9],
    }
  }
  reg(
    name="sparse",
    description="Embedding table (10x4) with IndexedSlices gradients "
    "(duplicate, out-of-order indices) plus dense params; defaults.",
    make_kwargs=_kw(),
    params=EMBED_PARAMS,
    grad_fn=sparse_grads(),
    sparse=sp_desc,
  )
  reg(
    name="sparse_amsgrad",
    description="sparse with amsgrad=True (shrinking gradients).",
    make_kwargs=_kw(amsgrad=True),
    params=EMBED_PARAMS,
    grad_fn=sparse_grads(shrink=(3.0, 0.8)),
    sparse=sp_desc,
  )
  reg(
    name="sparse_clipnorm",
    description="sparse with clipnorm=1.0; steps 2,7,11,19 x30. The norm is over the raw "
    "IndexedSlices values (before duplicates are summed).",
    make_kwargs=_kw(clipnorm=1.0),
    params=EMBED_PARAMS,
    grad_fn=sparse_grads(big_steps=(2, 7, 11, 19)),
    sparse=sp_desc,
  )
  reg(
    name="sparse_clipvalue",
    description="sparse with clipvalue=0.5; steps 2,7,11,19 x30. Clipping is on raw values, "
    "so a summed duplicate row can exceed 0.5.",
    make_kwargs=_kw(clipvalue=0.5),
    params=EMBED_PARAMS,
    grad_fn=sparse_grads(big_steps=(2, 7, 11, 19)),
    sparse=sp_desc,
  )

  # dtypes
  reg(
    name="float64",
    description="Defaults with float64 parameters and gradients.",
    make_kwargs=_kw(),
    params=P,
    dtype="float64",
    grad_fn=varied_grads(),
  )
  reg(
    name="float16",
    description="Defaults with float16 parameters and gradients (all Keras arithmetic in float16).",
    make_kwargs=_kw(),
    params=P,
    dtype="float16",
    grad_fn=varied_grads(),
  )
  reg(
    name="bfloat16",
    description="Defaults with bfloat16 parameters: beta_2=0.999 rounds to "
    "1.0 in bfloat16, alpha == 0 and the params never move.",
    make_kwargs=_kw(),
    params=P,
    dtype="bfloat16",
    grad_fn=varied_grads(),
  )

  # combinations
  reg(
    name="everything_on",
    description="amsgrad + weight_decay=0.01 (bias excluded) + clipnorm=1.0 + use_ema "
    "(momentum 0.9, overwrite every 5 steps) + CosineDecayRestarts(0.01, 6, "
    "t_mul=2, m_mul=0.5, alpha=0.1) + epsilon 1e-6; big steps 3, 9, 16.",
    make_kwargs=_kw(
      learning_rate=S(
        "CosineDecayRestarts",
        initial_learning_rate=0.01,
        first_decay_steps=6,
        t_mul=2.0,
        m_mul=0.5,
        alpha=0.1,
      ),
      amsgrad=True,
      weight_decay=0.01,
      clipnorm=1.0,
      use_ema=True,
      ema_momentum=0.9,
      ema_overwrite_frequency=5,
      epsilon=1e-6,
    ),
    params=P,
    exclude=["bias"],
    grad_fn=varied_grads(big_steps=(3, 9, 16), big=20),
  )
  reg(
    name="large_lr",
    description="learning_rate=0.1.",
    make_kwargs=_kw(learning_rate=0.1),
    params=P,
    grad_fn=varied_grads(),
  )
  reg(
    name="betas_custom",
    description="beta_1=0.5, beta_2=0.9, learning_rate=0.01 (non-default betas).",
    make_kwargs=_kw(beta_1=0.5, beta_2=0.9, learning_rate=0.01),
    params=P,
    grad_fn=varied_grads(),
  )


_build_registry()


# --------------------------------------------------------------------------------------
# running with TensorFlow
# --------------------------------------------------------------------------------------


def _np_dtype(dtype: str):
  return np.float32 if dtype in ("float16", "bfloat16") else np.dtype(dtype)


def _store(x) -> np.ndarray:
  """Tensor/array -> numpy for storage (16-bit floats as float32, exactly)."""
  a = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
  if a.dtype == np.float16 or a.dtype.name == "bfloat16":
    a = a.astype(np.float32)
  return np.asarray(a)


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.bool_,)):
    return bool(x)
  if hasattr(x, "numpy"):
    return _jsonable(x.numpy())
  return x


def make_problem(sc: Scenario):
  """Deterministic numpy data: initial values and the per-step gradients (float64/int)."""
  rng = np.random.RandomState(sc.seed)
  inits = init_values(sc, rng)
  grads = [sc.grad_fn(rng, s, sc.params, sc.dtype) for s in range(sc.steps)]
  return inits, grads


def run_scenario(sc: Scenario, mode: str = "function", densify: bool = False):
  """Run one scenario in TF. mode: 'function' (default, the golden), 'eager', 'xla'.

  ``densify=True`` (diagnostic only) converts IndexedSlices gradients to dense tensors with
  ``tf.convert_to_tensor`` before handing them to the optimizer.

  Returns (arrays: dict, meta: dict).
  """
  import tensorflow as tf

  tf.config.run_functions_eagerly(False)
  tfdt = getattr(tf, sc.dtype)
  inits, grads = make_problem(sc)

  variables = [
    tf.Variable(
      tf.constant(init, dtype=tf.float64)
      if sc.dtype == "float64"
      else tf.cast(tf.constant(init, dtype=tf.float64), tfdt),
      name=name,
    )
    for (name, _), init in zip(sc.params, inits)
  ]
  kwargs = sc.make_kwargs()
  opt = tf.keras.optimizers.Adam(**kwargs)
  if mode == "xla":
    opt.jit_compile = True  # force the _update_step_xla path even without a GPU
  if sc.exclude is not None:
    opt.exclude_from_weight_decay(var_names=sc.exclude)

  def to_tf(g):
    if g is None:
      return None
    if isinstance(g, Sparse):
      sl = tf.IndexedSlices(
        tf.cast(tf.constant(g.values, dtype=tf.float64), tfdt),
        tf.constant(g.indices, dtype=tf.int32),
        tf.constant(g.dense_shape, dtype=tf.int64),
      )
      return tf.convert_to_tensor(sl) if densify else sl
    return tf.cast(tf.constant(g, dtype=tf.float64), tfdt)

  def step(gs):
    opt.apply_gradients(list(zip(gs, variables)))

  step_fn = step if mode == "eager" else tf.function(step)

  arrays: dict[str, np.ndarray] = {}
  for i, v in enumerate(variables):
    arrays[f"param_{i}_init"] = _store(v)
  is_schedule = isinstance(
    kwargs.get("learning_rate"), tf.keras.optimizers.schedules.LearningRateSchedule
  )
  for s in range(sc.steps):
    gs = [to_tf(g) for g in grads[s]]
    for i, g in enumerate(gs):
      if g is None:
        continue
      if isinstance(g, tf.IndexedSlices):
        arrays[f"grad_{s}_{i}_values"] = _store(g.values)
        arrays[f"grad_{s}_{i}_indices"] = g.indices.numpy()
        arrays[f"grad_{s}_{i}_dense_shape"] = g.dense_shape.numpy()
      else:
        arrays[f"grad_{s}_{i}"] = _store(g)
    step_fn(gs)
    for i, v in enumerate(variables):
      arrays[f"param_{s}_{i}"] = _store(v)
    if is_schedule:
      arrays[f"lr_{s}"] = np.asarray(opt.learning_rate.numpy(), dtype=np.float32)
    if s + 1 == K_STEPS and sc.steps > K_STEPS:
      for j, ov in enumerate(opt.variables):
        arrays[f"optvarK_{j}"] = _store(ov)
  for j, ov in enumerate(opt.variables):
    arrays[f"optvar_{j}"] = _store(ov)
  if kwargs.get("use_ema"):
    opt.finalize_variable_values(variables)
    for i, v in enumerate(variables):
      arrays[f"final_{i}"] = _store(v)

  ser_kwargs = {
    k: (
      tf.keras.optimizers.schedules.serialize(v)
      if isinstance(v, tf.keras.optimizers.schedules.LearningRateSchedule)
      else v
    )
    for k, v in kwargs.items()
  }
  meta = {
    "scenario": sc.name,
    "description": sc.description,
    "kwargs": _jsonable(ser_kwargs),
    "exclude_from_weight_decay": sc.exclude,
    "config": _jsonable(opt.get_config()),
    "param_names": [n for n, _ in sc.params],
    "param_shapes": [list(shape) for _, shape in sc.params],
    "param_dtypes": [sc.dtype] * len(sc.params),
    "steps": sc.steps,
    "K": K_STEPS if sc.steps > K_STEPS else None,
    "sparse": sc.sparse,
    "none_grad_steps": {k: [t for t in v if t < sc.steps] for k, v in sc.none_steps.items()},
    "schedule": bool(is_schedule),
    "variables_names": [v.name for v in opt.variables],
    "variables_dtypes": [v.dtype.name for v in opt.variables],
    "observations": {},
    "tf_version": tf.__version__,
    "keras_version": _keras_version(),
    "numpy_version": np.__version__,
    "execution": {
      "mode": mode,
      "run_functions_eagerly": False,
      "apply_gradients_in_tf_function": mode != "eager",
      "jit_compile_requested": kwargs.get("jit_compile", True),
      "jit_compile_effective": bool(opt.jit_compile),
      "gpus": len(tf.config.list_physical_devices("GPU")),
      "none_gradients_passed_as": "(None, var) pairs",
      "seed": sc.seed,
    },
  }
  return arrays, meta


def _prev(arrays, s, i):
  return arrays[f"param_{s - 1}_{i}"] if s > 0 else arrays[f"param_{i}_init"]


def _ulp(a: np.ndarray, dtype: str) -> np.ndarray:
  """One unit in the last place of |a| in the scenario's parameter dtype (as float64)."""
  a = np.abs(np.asarray(a, dtype=np.float64))
  if dtype == "bfloat16":
    return np.spacing(a.astype(np.float32)).astype(np.float64) * 2.0**16
  return np.spacing(a.astype(dtype)).astype(np.float64)


def _keras_version():
  try:
    import keras

    return keras.__version__
  except Exception:  # pragma: no cover
    return None


def observe(sc: Scenario, arrays: dict, meta: dict) -> dict:
  """Scenario-specific notes (numbers) recorded into the json's "observations"."""
  obs = {}
  n = sc.steps
  names = [p for p, _ in sc.params]
  lr0 = meta["config"]["learning_rate"]
  if sc.dtype in ("float16", "bfloat16"):
    lr = lr0 if isinstance(lr0, float) else None
    obs["params_moved_at_all"] = [
      bool(np.any(arrays[f"param_{n - 1}_{i}"] != arrays[f"param_{i}_init"]))
      for i in range(len(names))
    ]
    if lr:
      obs["max_abs_update_over_lr_per_step"] = [
        round(
          max(
            float(np.max(np.abs(arrays[f"param_{s}_{i}"].astype(np.float64) - _prev(arrays, s, i))))
            for i in range(len(names))
          )
          / lr,
          3,
        )
        for s in range(n)
      ]
      d0 = [
        np.abs(arrays[f"param_0_{i}"].astype(np.float64) - arrays[f"param_{i}_init"])
        for i in range(len(names))
      ]
      obs["elements_with_update_over_10lr_at_step0"] = [int((d > 10 * lr).sum()) for d in d0]
    import tensorflow as tf

    consts = [0.9, 0.999, 1e-7, 1 - 0.9, 1 - 0.999, 0.001, 0.01]
    cast = tf.cast(tf.constant(consts, tf.float64), getattr(tf, sc.dtype)).numpy()
    obs["constants_in_param_dtype"] = {
      "beta_1": float(cast[0]),
      "beta_2": float(cast[1]),
      "epsilon": float(cast[2]),
      "1-beta_1": float(cast[3]),
      "1-beta_2": float(cast[4]),
      "lr_0.001": float(cast[5]),
      "lr_0.01": float(cast[6]),
    }
  if sc.none_steps:
    for name, steps in meta["none_grad_steps"].items():
      i = names.index(name)
      obs[f"{name}: bit-identical to previous value on each None step"] = [
        bool(np.array_equal(_prev(arrays, s, i), arrays[f"param_{s}_{i}"])) for s in steps
      ]
      # first real update of a parameter whose gradient is None on step 0
      if 0 in steps and isinstance(lr0, float):
        first = next(s for s in range(n) if s not in steps)
        d = np.abs(arrays[f"param_{first}_{i}"].astype(np.float64) - _prev(arrays, first, i))
        obs[f"{name}: first update at step {first} (t={first + 1}), max |dparam|/lr"] = round(
          float(d.max()) / lr0, 4
        )
  if "inf" in sc.name:
    obs["nan_count_per_step_per_param"] = [
      [int(np.isnan(arrays[f"param_{s}_{i}"]).sum()) for i in range(len(names))] for s in range(n)
    ]
  if sc.sparse:
    emb_init = arrays["param_0_init"]
    obs["never_touched_rows_moved"] = [
      bool(np.any(arrays[f"param_{n - 1}_0"][r] != emb_init[r])) for r in (0, 5, 9)
    ]
    seen, moved_without_grad, total = set(), 0, 0
    for s in range(n):
      idx = set(arrays[f"grad_{s}_0_indices"].tolist())
      for r in sorted(seen - idx):
        total += 1
        moved_without_grad += bool(np.any(arrays[f"param_{s}_0"][r] != _prev(arrays, s, 0)[r]))
      seen |= idx
    obs["rows_with_earlier_grad_but_none_this_step_that_moved"] = (
      f"{moved_without_grad} of {total} (row, step) pairs"
    )
    dense, _ = run_scenario(sc, densify=True)
    worst = 0.0
    for s in range(n):
      a, b = arrays[f"param_{s}_0"], dense[f"param_{s}_0"]
      worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b) / _ulp(a, sc.dtype))))
    obs[
      "embedding vs same run with tf.convert_to_tensor(IndexedSlices) dense grads: "
      "max ulp difference"
    ] = worst
  if sc.make_kwargs().get("use_ema"):
    freq = meta["config"]["ema_overwrite_frequency"]
    over = [s for s in range(n) if freq and (s + 1) % freq == 0]
    obs["overwrite_steps_0based"] = over
    # with EMA momentum mu, between overwrites avg_s = mu*avg_{s-1} + (1-mu)*param_s, and
    # on an overwrite step param_s == avg_s; check that against the final average
    mu = meta["config"]["ema_momentum"]
    ok = True
    for i, name in enumerate(names):
      avg = arrays[f"param_{i}_init"].astype(np.float64)
      for s in range(n):
        if s in sc.none_steps.get(name, ()):
          continue
        if s in over:
          avg = arrays[f"param_{s}_{i}"].astype(np.float64)
        else:
          avg = mu * avg + (1 - mu) * arrays[f"param_{s}_{i}"]
      ok &= bool(np.allclose(avg, arrays[f"final_{i}"], rtol=1e-4, atol=1e-6))
    obs["final_average_consistent_with_that_recurrence"] = ok
  return obs


def _dump_json(obj) -> str:
  """Indented JSON with lists of scalars kept on one line."""
  text = json.dumps(obj, indent=1, allow_nan=True)
  return re.sub(
    r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text
  )


def write(sc: Scenario, out: str, arrays: dict, meta: dict):
  os.makedirs(out, exist_ok=True)
  np.savez_compressed(os.path.join(out, f"{sc.name}.npz"), **arrays)
  with open(os.path.join(out, f"{sc.name}.json"), "w") as f:
    f.write(_dump_json(meta) + "\n")


def compare_modes(names):
  """Run scenarios eagerly, in tf.function and with forced XLA; print the differences.

  Differences are in ulp of the parameter dtype at the tf.function value, over all stored
  float arrays (params, optimizer variables, lr).
  """
  for name in names:
    sc = SCENARIOS[name]
    ref, _ = run_scenario(sc, "function")
    for mode in ("eager", "xla"):
      try:
        other, _ = run_scenario(sc, mode)
      except Exception as e:  # pragma: no cover - diagnostic only
        print(f"{name:36s} {mode:6s} ERROR {type(e).__name__}: {str(e)[:100]}")
        continue
      worst, nd, first = 0.0, 0, None
      for k, a in ref.items():
        b = other[k]
        if a.dtype.kind != "f":
          nd += int(not np.array_equal(a, b))
          continue
        ok = (a == b) | (np.isnan(a) & np.isnan(b))
        if not ok.all():
          nd += 1
          dt = "float32" if k.startswith("lr_") else sc.dtype
          d = np.abs(a.astype(np.float64) - b) / _ulp(a, dt)
          worst = max(worst, float(np.nanmax(np.where(ok, 0, d))))
          m = re.match(r"param_(\d+)_\d+$", k)
          if m and (first is None or int(m.group(1)) < first):
            first = int(m.group(1))
      print(
        f"{name:36s} {mode:6s} arrays differing: {nd:4d}/{len(ref)}  "
        f"max {worst:7.1f} ulp  first differing step: {first}"
      )
    sys.stdout.flush()


def scenario_names(ap, args, scenarios, prefix="", width=36):
  """The scenarios `--only` names (default: all); `--list` prints them. Unknown ones: an error."""
  names = args.only or list(scenarios)
  unknown = [n for n in names if n not in scenarios]
  if unknown:
    ap.error(f"unknown scenarios: {unknown}")
  if args.list:
    for n in names:
      print(f"{prefix + n:{width}s} {scenarios[n].description}")
  return names


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument(
    "--out",
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"),
  )
  ap.add_argument("--only", nargs="*", help="scenario names (default: all)")
  ap.add_argument("--list", action="store_true", help="list scenarios and exit")
  ap.add_argument(
    "--compare-modes",
    action="store_true",
    help="diagnostic: compare tf.function vs eager vs forced XLA; writes nothing",
  )
  args = ap.parse_args(argv)

  names = scenario_names(ap, args, SCENARIOS)
  if args.list:
    return 0
  if args.compare_modes:
    compare_modes(names)
    return 0

  import tensorflow as tf

  tf.get_logger().setLevel("ERROR")
  out = os.path.normpath(args.out)
  for n in names:
    sc = SCENARIOS[n]
    arrays, meta = run_scenario(sc)
    meta["observations"] = observe(sc, arrays, meta)
    write(sc, out, arrays, meta)
    print(f"wrote {os.path.join(out, n)}.{{npz,json}}  ({sc.steps} steps, {len(arrays)} arrays)")
  if not args.only:  # full regeneration: drop golden files of scenarios no longer registered
    for fn in sorted(os.listdir(out)):
      stem, ext = os.path.splitext(fn)
      if stem.startswith("loss_scale_"):
        continue  # written by tools/make_loss_scale_golden.py
      if ext == ".json" and stem not in SCENARIOS:
        with open(os.path.join(out, fn)) as f:
          try:
            is_golden = "scenario" in json.load(f)
          except ValueError:
            is_golden = False
        if is_golden:
          for e in (".json", ".npz"):
            if os.path.exists(os.path.join(out, stem + e)):
              os.remove(os.path.join(out, stem + e))
              print(f"removed stale {os.path.join(out, stem + e)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
