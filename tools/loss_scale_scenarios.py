"""The Keras 2 LossScaleOptimizer golden scenarios, as data (run by ``make_loss_scale_golden.py``).

Every scenario names its own numpy seed, from which its initial values and raw gradients are
drawn; a new scenario takes a seed no other scenario uses (checked at import).
"""

from __future__ import annotations

import dataclasses

from golden_common import Schedule

PREFIX = "loss_scale_"  # the goldens are tests/golden/loss_scale_<name>.{json,npz}
PARAMS = (("dense/kernel", (4, 3)), ("dense/bias", (3,)))


@dataclasses.dataclass(frozen=True)
class Scenario:
  name: str  # without the prefix
  description: str
  seed: int  # np.random.RandomState(seed) draws the initial values and the raw gradients
  adam: dict  # tf.keras.optimizers.Adam(**adam) is the inner optimizer
  initial_scale: float
  growth_steps: int
  steps: int
  bad: dict  # step -> "inf" | "-inf" | "nan" (in dense/kernel[1, 2])
  dtype: str = "float32"
  magnitude: tuple = (-3.0, 0.0)  # log10 range of the per-step raw gradient magnitude
  none_steps: dict = dataclasses.field(default_factory=dict)  # param name -> [steps]


LR = dict(learning_rate=0.01)

SCENARIOS = (
  Scenario(
    "basic",
    "Adam(lr=0.01), initial_scale=2**8, growth 3; inf/nan/-inf/nan on steps 5, 6, 13, 30.",
    seed=0,
    adam=LR,
    initial_scale=2.0**8,
    growth_steps=3,
    steps=40,
    bad={5: "inf", 6: "nan", 13: "-inf", 30: "nan"},
  ),
  Scenario(
    "floor",
    "initial_scale=4, growth 2; NaN on steps 3-14 (12 in a row): the scale stops at 1.",
    seed=1,
    adam=LR,
    initial_scale=4.0,
    growth_steps=2,
    steps=30,
    bad={s: "nan" for s in range(3, 15)},
  ),
  Scenario(
    "initial_below_one",
    "initial_scale=0.25 (reciprocal 4), growth 2; NaN on step 2: max(0.125, 1) lifts it to 1.",
    seed=2,
    adam=LR,
    initial_scale=0.25,
    growth_steps=2,
    steps=12,
    bad={2: "nan"},
  ),
  Scenario(
    "growth_cap",
    "initial_scale=2**126, growth 1, epsilon=1e-20, raw gradients ~1e-15: the doubling to "
    "2**128 = inf is not taken, the scale stays 2**127.",
    seed=3,
    adam=dict(learning_rate=0.01, epsilon=1e-20),
    initial_scale=2.0**126,
    growth_steps=1,
    steps=6,
    bad={},
    magnitude=(-15.0, -15.0),
  ),
  Scenario(
    "non_power_of_two",
    "initial_scale=1000 (1/1000 inexact in float32: g * f32(1/1000) != g / 1000), growth 4; "
    "NaN on step 7.",
    seed=4,
    adam=LR,
    initial_scale=1000.0,
    growth_steps=4,
    steps=20,
    bad={7: "nan"},
  ),
  Scenario(
    "ema_amsgrad_clipnorm_schedule",
    "amsgrad, clipnorm=0.5, use_ema (0.9, overwrite every 3), ExponentialDecay(0.01, 5, 0.5); "
    "initial 2**10, growth 4; bad steps 2, 3, 9, 16: iterations still advance on them.",
    seed=5,
    adam=dict(
      amsgrad=True,
      clipnorm=0.5,
      use_ema=True,
      ema_momentum=0.9,
      ema_overwrite_frequency=3,
      learning_rate=Schedule(
        "ExponentialDecay", dict(initial_learning_rate=0.01, decay_steps=5, decay_rate=0.5)
      ),
    ),
    initial_scale=2.0**10,
    growth_steps=4,
    steps=30,
    bad={2: "inf", 3: "inf", 9: "nan", 16: "inf"},
  ),
  Scenario(
    "weight_decay_global_clipnorm",
    "weight_decay=0.02, global_clipnorm=1.0, lr 0.01; initial 2**10, growth 4; bad 4, 12.",
    seed=6,
    adam=dict(learning_rate=0.01, weight_decay=0.02, global_clipnorm=1.0),
    initial_scale=2.0**10,
    growth_steps=4,
    steps=24,
    bad={4: "nan", 12: "inf"},
  ),
  Scenario(
    "none_grads",
    "dense/bias None on steps 0, 3, 8, 9 (ignored by the finiteness check); kernel inf on "
    "steps 3 and 11; initial 2**6, growth 2.",
    seed=7,
    adam=LR,
    initial_scale=2.0**6,
    growth_steps=2,
    steps=20,
    bad={3: "inf", 11: "inf"},
    none_steps={"dense/bias": [0, 3, 8, 9]},
  ),
  Scenario(
    "float16",
    "float16 parameters and gradients, initial 2**22, growth 1, raw gradients ~1e-6: the "
    "scale grows until g * scale overflows float16 (then halves); above 2**24 Keras 2's "
    "float16 reciprocal rounds to 0, so those steps apply zero gradients.",
    seed=8,
    adam=LR,
    initial_scale=2.0**22,
    growth_steps=1,
    steps=24,
    bad={},
    dtype="float16",
    magnitude=(-6.0, -6.0),
  ),
)

BY_NAME = {sc.name: sc for sc in SCENARIOS}
assert len(BY_NAME) == len(SCENARIOS), "scenario names must be unique"
assert len({sc.seed for sc in SCENARIOS}) == len(SCENARIOS), "scenario seeds must be unique"
