"""The Keras 2 Adam golden scenarios, as data (run by ``make_keras2_golden.py``).

Every scenario names its own numpy seed, from which its initial values and gradients are drawn
(``golden_problem.py``). Adding, removing or reordering scenarios therefore changes no other
golden. A new scenario takes a seed no other scenario uses (checked at import).
"""

from __future__ import annotations

import dataclasses
import re

from golden_common import Schedule

DENSE = (  # (name, shape)
  ("dense/kernel", (5, 3)),
  ("dense/bias", (3,)),
  ("conv/kernel", (2, 2, 2)),
  ("layer_norm/gamma", ()),
)
EMBED = (
  ("embedding/embeddings", (10, 4)),
  ("dense/kernel", (4, 3)),
)
SPARSE_DESC = {  # the json's "sparse" entry of the sparse scenarios
  "embedding/embeddings": {
    "type": "IndexedSlices",
    "dense_shape": [10, 4],
    "description": "3-7 rows per step drawn with replacement from rows "
    "[1,2,3,4,6,7,8]; at least one duplicate each step, never sorted; "
    "rows 0, 5, 9 never receive a gradient",
    "never_touched_rows": [0, 5, 9],
  }
}


@dataclasses.dataclass(frozen=True)
class Grads:
  """How a scenario's gradients are drawn (see ``golden_problem.gradients``).

  Dense gradients are ``N(0,1) * 10**U(-2, 0.5)`` per step and parameter, with an elementwise
  ``10**U(-0.5, 0.5)`` jitter. With ``sparse`` the first parameter (the embedding) gets an
  IndexedSlices gradient instead.
  """

  sparse: bool = False
  big_steps: tuple = ()  # steps whose gradients are multiplied by `big`
  big: float = 30.0
  zero_steps: tuple = ()  # steps whose gradients are all zeros
  shrink: tuple | None = None  # (a, r): magnitude a * r**s instead (amsgrad)
  tiny: float | None = None  # magnitude tiny * 10**U(-0.5, 0.5) instead
  inf_at: tuple | None = None  # (step, param, index): +inf put into that gradient


@dataclasses.dataclass(frozen=True)
class Scenario:
  name: str
  description: str
  seed: int  # np.random.RandomState(seed) draws the initial values and the gradients
  kwargs: dict = dataclasses.field(default_factory=dict)  # tf.keras.optimizers.Adam(**kwargs)
  params: tuple = DENSE
  dtype: str = "float32"
  steps: int = 30
  grads: Grads = Grads()
  exclude: list | None = None  # optimizer.exclude_from_weight_decay(var_names=exclude)
  none_steps: dict = dataclasses.field(default_factory=dict)  # param name -> steps with None

  @property
  def sparse(self) -> dict:
    return SPARSE_DESC if self.grads.sparse else {}


CLIP = Grads(zero_steps=(4,), big_steps=(2, 7, 11, 19, 23))
INF = Grads(inf_at=(2, 0, (1, 2)))
SHRINK = Grads(shrink=(3.0, 0.8))
NONE_STEPS = {"dense/bias": [0, 3, 4, 10, 17, 29], "layer_norm/gamma": list(range(5, 15))}
SPARSE_BIG = Grads(sparse=True, big_steps=(2, 7, 11, 19))
RESTARTS = Schedule(
  "CosineDecayRestarts",
  dict(initial_learning_rate=0.01, first_decay_steps=6, t_mul=2.0, m_mul=0.5, alpha=0.1),
)


def _exponential(decay_steps, decay_rate, staircase):
  config = dict(initial_learning_rate=0.01, decay_steps=decay_steps, decay_rate=decay_rate)
  return Schedule("ExponentialDecay", dict(config, staircase=staircase))


def _polynomial(decay_steps, end_learning_rate, power, cycle):
  config = dict(initial_learning_rate=0.01, decay_steps=decay_steps)
  config.update(end_learning_rate=end_learning_rate, power=power, cycle=cycle)
  return Schedule("PolynomialDecay", config)


SCENARIOS = (
  Scenario("defaults", "Adam() with all defaults, dense float32 params.", seed=1000),
  Scenario(
    "epsilon_1", "epsilon=1.0 (epsilon dominates sqrt(v)).", seed=1017, kwargs=dict(epsilon=1.0)
  ),
  Scenario("epsilon_0p1", "epsilon=0.1.", seed=1034, kwargs=dict(epsilon=0.1)),
  Scenario(
    "epsilon_1em3_tiny_grads",
    "epsilon=1e-3 with 1e-4-scale gradients (epsilon-hat regime; shows that "
    "epsilon is outside the sqrt and not bias corrected).",
    seed=1051,
    kwargs=dict(epsilon=1e-3),
    grads=Grads(tiny=1e-4),
  ),
  Scenario(
    "amsgrad",
    "amsgrad=True with gradients shrinking over time "
    "(magnitude 3*0.8**s) so vhat = max(v) matters.",
    seed=1068,
    kwargs=dict(amsgrad=True),
    grads=SHRINK,
  ),
  Scenario(
    "weight_decay", "weight_decay=0.01 alone (lr 0.001).", seed=1085, kwargs=dict(weight_decay=0.01)
  ),
  Scenario(
    "weight_decay_exclude_bias",
    "weight_decay=0.05, lr=0.01, exclude_from_weight_decay(var_names=['bias']) "
    "(regex re.search on the variable name 'dense/bias:0').",
    seed=1102,
    kwargs=dict(weight_decay=0.05, learning_rate=0.01),
    exclude=["bias"],
  ),
  Scenario(
    "clipnorm",
    "clipnorm=1.0; steps 2,7,11,19,23 have gradients x30 (clipped); step 4 is all zeros.",
    seed=1119,
    kwargs=dict(clipnorm=1.0),
    grads=CLIP,
  ),
  Scenario(
    "global_clipnorm",
    "global_clipnorm=2.0; steps 2,7,11,19,23 x30 (clipped); step 4 all zeros (global norm 0).",
    seed=1136,
    kwargs=dict(global_clipnorm=2.0),
    grads=CLIP,
  ),
  Scenario(
    "clipvalue",
    "clipvalue=0.5; steps 2,7,11,19,23 x30; step 4 zeros.",
    seed=1153,
    kwargs=dict(clipvalue=0.5),
    grads=CLIP,
  ),
  Scenario(
    "global_clipnorm_inf",
    "global_clipnorm=1.0; step 2 has +inf in dense/kernel[1,2]: the global norm is "
    "inf and Keras turns EVERY gradient into NaN (all params NaN from step 2 on).",
    seed=1170,
    kwargs=dict(global_clipnorm=1.0),
    steps=5,
    grads=INF,
  ),
  Scenario(
    "clipnorm_inf",
    "clipnorm=1.0; step 2 has +inf in dense/kernel[1,2]: per-tensor norm is inf, "
    "only that tensor is affected (the inf entry becomes NaN, the others 0).",
    seed=1187,
    kwargs=dict(clipnorm=1.0),
    steps=5,
    grads=INF,
  ),
  # EMA
  Scenario(
    "ema_freq_none",
    "use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=None (never overwrite).",
    seed=1204,
    kwargs=dict(use_ema=True, ema_momentum=0.9),
    steps=25,
  ),
  Scenario(
    "ema_freq_1",
    "use_ema=True, default ema_momentum=0.99, ema_overwrite_frequency=1 (overwrite every step).",
    seed=1221,
    kwargs=dict(use_ema=True, ema_overwrite_frequency=1),
    steps=25,
  ),
  Scenario(
    "ema_freq_3_amsgrad",
    "use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3, amsgrad=True, "
    "lr=0.01 (overwrite after steps 2, 5, 8, ... 0-based).",
    seed=1238,
    kwargs=dict(
      use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3, amsgrad=True, learning_rate=0.01
    ),
    steps=25,
    grads=Grads(shrink=(3.0, 0.85)),
  ),
  Scenario(
    "ema_freq_7_weight_decay",
    "use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=7, weight_decay=0.02, "
    "lr=0.01 (overwrite after steps 6, 13, 20, 0-based).",
    seed=1255,
    kwargs=dict(
      use_ema=True,
      ema_momentum=0.8,
      ema_overwrite_frequency=7,
      weight_decay=0.02,
      learning_rate=0.01,
    ),
    steps=25,
  ),
  # learning-rate schedules
  Scenario(
    "schedule_exponential_decay",
    "ExponentialDecay(0.01, decay_steps=7, decay_rate=0.5, staircase=True): "
    "lr halves at steps 7, 14, 21, 28.",
    seed=1272,
    kwargs=dict(learning_rate=_exponential(7, 0.5, staircase=True)),
  ),
  Scenario(
    "schedule_exponential_decay_smooth",
    "ExponentialDecay(0.01, decay_steps=10, decay_rate=0.3, staircase=False).",
    seed=1289,
    kwargs=dict(learning_rate=_exponential(10, 0.3, staircase=False)),
  ),
  Scenario(
    "schedule_piecewise_constant",
    "PiecewiseConstantDecay(boundaries=[5, 12, 20], values=[0.01, 0.005, 0.002, "
    "0.0005]); upper bounds inclusive (step 5 still 0.01, step 6 0.005).",
    seed=1306,
    kwargs=dict(
      learning_rate=Schedule(
        "PiecewiseConstantDecay",
        dict(boundaries=[5, 12, 20], values=[0.01, 0.005, 0.002, 0.0005]),
      )
    ),
  ),
  Scenario(
    "schedule_polynomial_decay",
    "PolynomialDecay(0.01, decay_steps=20, end_learning_rate=1e-4, power=2.0, "
    "cycle=False): constant 1e-4 from step 20 on.",
    seed=1323,
    kwargs=dict(learning_rate=_polynomial(20, 1e-4, power=2.0, cycle=False)),
  ),
  Scenario(
    "schedule_polynomial_decay_cycle",
    "PolynomialDecay(0.01, decay_steps=8, end_learning_rate=1e-3, power=1.0, "
    "cycle=True): decay_steps is multiplied by ceil(step/8) (1 at step 0).",
    seed=1340,
    kwargs=dict(learning_rate=_polynomial(8, 1e-3, power=1.0, cycle=True)),
  ),
  Scenario(
    "schedule_inverse_time_decay",
    "InverseTimeDecay(0.01, decay_steps=5, decay_rate=0.5, staircase=True).",
    seed=1357,
    kwargs=dict(
      learning_rate=Schedule(
        "InverseTimeDecay",
        dict(initial_learning_rate=0.01, decay_steps=5, decay_rate=0.5, staircase=True),
      )
    ),
  ),
  Scenario(
    "schedule_cosine_decay_warmup",
    "CosineDecay(0.001, decay_steps=20, alpha=0.1, warmup_target=0.01, "
    "warmup_steps=5): linear warmup 0.001->0.01 over steps 0..5, cosine decay to "
    "alpha*warmup_target over steps 5..25, then constant.",
    seed=1374,
    kwargs=dict(
      learning_rate=Schedule(
        "CosineDecay",
        dict(
          initial_learning_rate=0.001,
          decay_steps=20,
          alpha=0.1,
          warmup_target=0.01,
          warmup_steps=5,
        ),
      )
    ),
  ),
  Scenario(
    "schedule_cosine_decay_restarts",
    "CosineDecayRestarts(0.01, first_decay_steps=6, t_mul=2.0, m_mul=0.5, "
    "alpha=0.1): restarts at steps 6 and 18.",
    seed=1391,
    kwargs=dict(learning_rate=RESTARTS),
  ),
  # None gradients
  Scenario(
    "none_grads",
    "dense/bias and layer_norm/gamma get gradient None on some steps (passed as "
    "(None, var) pairs): Keras 2 skips them that step entirely (no moment "
    "decay, no update) but the iteration counter still advances.",
    seed=1408,
    none_steps=NONE_STEPS,
  ),
  Scenario(
    "none_grads_everything",
    "As none_grads with amsgrad, weight_decay=0.05, global_clipnorm=2.0, "
    "use_ema (momentum 0.9, overwrite every 4 steps), lr 0.01: weight decay, EMA "
    "update and EMA overwrite are all skipped for a None-gradient parameter, and "
    "the global norm is over the present gradients only.",
    seed=1425,
    kwargs=dict(
      amsgrad=True,
      weight_decay=0.05,
      global_clipnorm=2.0,
      use_ema=True,
      ema_momentum=0.9,
      ema_overwrite_frequency=4,
      learning_rate=0.01,
    ),
    steps=25,
    grads=Grads(big_steps=(2, 11), big=10),
    none_steps=NONE_STEPS,
  ),
  # sparse gradients
  Scenario(
    "sparse",
    "Embedding table (10x4) with IndexedSlices gradients "
    "(duplicate, out-of-order indices) plus dense params; defaults.",
    seed=1442,
    params=EMBED,
    grads=Grads(sparse=True),
  ),
  Scenario(
    "sparse_amsgrad",
    "sparse with amsgrad=True (shrinking gradients).",
    seed=1459,
    kwargs=dict(amsgrad=True),
    params=EMBED,
    grads=Grads(sparse=True, shrink=(3.0, 0.8)),
  ),
  Scenario(
    "sparse_clipnorm",
    "sparse with clipnorm=1.0; steps 2,7,11,19 x30. The norm is over the raw "
    "IndexedSlices values (before duplicates are summed).",
    seed=1476,
    kwargs=dict(clipnorm=1.0),
    params=EMBED,
    grads=SPARSE_BIG,
  ),
  Scenario(
    "sparse_clipvalue",
    "sparse with clipvalue=0.5; steps 2,7,11,19 x30. Clipping is on raw values, "
    "so a summed duplicate row can exceed 0.5.",
    seed=1493,
    kwargs=dict(clipvalue=0.5),
    params=EMBED,
    grads=SPARSE_BIG,
  ),
  # dtypes
  Scenario(
    "float64", "Defaults with float64 parameters and gradients.", seed=1510, dtype="float64"
  ),
  Scenario(
    "float16",
    "Defaults with float16 parameters and gradients (all Keras arithmetic in float16).",
    seed=1527,
    dtype="float16",
  ),
  Scenario(
    "bfloat16",
    "Defaults with bfloat16 parameters: beta_2=0.999 rounds to "
    "1.0 in bfloat16, alpha == 0 and the params never move.",
    seed=1544,
    dtype="bfloat16",
  ),
  # combinations
  Scenario(
    "everything_on",
    "amsgrad + weight_decay=0.01 (bias excluded) + clipnorm=1.0 + use_ema "
    "(momentum 0.9, overwrite every 5 steps) + CosineDecayRestarts(0.01, 6, "
    "t_mul=2, m_mul=0.5, alpha=0.1) + epsilon 1e-6; big steps 3, 9, 16.",
    seed=1561,
    kwargs=dict(
      learning_rate=RESTARTS,
      amsgrad=True,
      weight_decay=0.01,
      clipnorm=1.0,
      use_ema=True,
      ema_momentum=0.9,
      ema_overwrite_frequency=5,
      epsilon=1e-6,
    ),
    exclude=["bias"],
    grads=Grads(big_steps=(3, 9, 16), big=20),
  ),
  Scenario("large_lr", "learning_rate=0.1.", seed=1578, kwargs=dict(learning_rate=0.1)),
  Scenario(
    "betas_custom",
    "beta_1=0.5, beta_2=0.9, learning_rate=0.01 (non-default betas).",
    seed=1595,
    kwargs=dict(beta_1=0.5, beta_2=0.9, learning_rate=0.01),
  ),
)

BY_NAME = {sc.name: sc for sc in SCENARIOS}
assert len(BY_NAME) == len(SCENARIOS), "scenario names must be unique"
assert len({sc.seed for sc in SCENARIOS}) == len(SCENARIOS), "scenario seeds must be unique"
assert all(re.fullmatch(r"[a-z0-9_]+", name) for name in BY_NAME), "names: [a-z0-9_]+"
