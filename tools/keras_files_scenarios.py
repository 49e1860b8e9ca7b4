"""The continuation scenarios of `make_keras_files.py`: optimizers, weights and gradients.

Imports nothing but numpy (the optimizers are built by `make_keras_files.Backend.optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

SAVED_STEPS = 10  # steps before model.save
CONTINUED_STEPS = 10  # Keras's continuation after the save
SHAPES = [(3, 4), (4,), (4, 2), (2,)]  # dense/kernel, dense/bias, dense_1/kernel, dense_1/bias


def _schedule(keras):
  return keras.optimizers.schedules.ExponentialDecay(0.01, 4, 0.7, staircase=True)


class Scenario(NamedTuple):
  description: str
  kwargs: Callable  # keras -> the optimizer's keyword arguments
  exclude: list[str] | None  # exclude_from_weight_decay(var_names=...), None: not called
  majors: tuple[int, ...]  # the Keras major versions that write it
  optimizer: str = "Adam"  # a class of keras.optimizers, or "legacy.Adam" (TF 2.15 only)
  formats: tuple[str, ...] = ("keras", "h5")  # fewer for some, to keep the directory small


_EMA3 = dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3)
# Keras 3 EMA with accumulation (k=2, frequency 3): the weights are overwritten on the k calls
# with (calls // k + 1) % 3 == 0, i.e. calls 5, 6 (before the save), 11, 12, 17, 18 (after).
_EMA_ACC = dict(learning_rate=0.01, **_EMA3, gradient_accumulation_steps=2)

# The seed of a scenario is its position here: append new ones at the end.
SCENARIOS = {
  "defaults": Scenario("Adam() with all defaults", lambda keras: {}, None, (2, 3)),
  "amsgrad_ema": Scenario(
    "amsgrad, EMA momentum 0.9 overwriting every 3 steps, lr 0.01",
    lambda keras: dict(learning_rate=0.01, amsgrad=True, **_EMA3),
    None,
    (2, 3),
  ),
  "schedule_wd_clip": Scenario(
    "ExponentialDecay(0.01, 4, 0.7, staircase) + weight_decay 0.02 (biases excluded) "
    "+ clipnorm 0.5",
    lambda keras: dict(learning_rate=_schedule(keras), weight_decay=0.02, clipnorm=0.5),
    ["bias"],
    (2, 3),
  ),
  "accumulation": Scenario(
    "Keras 3 gradient_accumulation_steps=3, lr 0.01, global_clipnorm 1.0",
    lambda keras: dict(learning_rate=0.01, gradient_accumulation_steps=3, global_clipnorm=1.0),
    None,
    (3,),
  ),
  "adamw_defaults": Scenario(
    "AdamW() with all defaults (weight_decay 0.004)", lambda keras: {}, None, (2, 3), "AdamW"
  ),
  "adamw_amsgrad_ema_clipnorm": Scenario(
    "AdamW: weight_decay 0.01, amsgrad, EMA momentum 0.9 overwriting every 3 steps, "
    "clipnorm 0.5, lr 0.01",
    lambda keras: dict(learning_rate=0.01, weight_decay=0.01, amsgrad=True, clipnorm=0.5, **_EMA3),
    None,
    (2, 3),
    "AdamW",
  ),
  "adamw_schedule_global_clipnorm": Scenario(
    "AdamW: ExponentialDecay(0.01, 4, 0.7, staircase), default weight_decay 0.004 (biases "
    "excluded), global_clipnorm 1.0",
    lambda keras: dict(learning_rate=_schedule(keras), global_clipnorm=1.0),
    ["bias"],
    (2, 3),
    "AdamW",
    ("keras",),
  ),
  "ema_overwrite_accumulation": Scenario(
    "Keras 3 Adam: EMA momentum 0.9, ema_overwrite_frequency 3, gradient_accumulation_steps 2, "
    "lr 0.01: overwrites on calls 5, 6 (before the save), 11, 12, 17, 18",
    lambda keras: dict(_EMA_ACC),
    None,
    (3,),
    "Adam",
    ("keras",),
  ),
  "adamw_ema_overwrite_accumulation": Scenario(
    "Keras 3 AdamW: the settings of ema_overwrite_accumulation, weight_decay 0.004",
    lambda keras: dict(_EMA_ACC),
    None,
    (3,),
    "AdamW",
    ("keras",),
  ),
  "legacy_defaults": Scenario(
    "tf.keras.optimizers.legacy.Adam() with all defaults",
    lambda keras: {},
    None,
    (2,),
    "legacy.Adam",
  ),
  "legacy_decay_amsgrad": Scenario(
    "legacy Adam: lr 0.01, decay 0.05 (lr / (1 + decay * iterations)), amsgrad",
    lambda keras: dict(learning_rate=0.01, decay=0.05, amsgrad=True),
    None,
    (2,),
    "legacy.Adam",
  ),
  "legacy_epsilon_clipnorm_beta1": Scenario(
    "legacy Adam: lr 0.01, epsilon 1e-3, clipnorm 0.5, beta_1 0.8",
    lambda keras: dict(learning_rate=0.01, epsilon=1e-3, clipnorm=0.5, beta_1=0.8),
    None,
    (2,),
    "legacy.Adam",
  ),
  "legacy_schedule_decay": Scenario(
    "legacy Adam: ExponentialDecay(0.01, 4, 0.7, staircase) and decay 0.02 "
    "(schedule(it) / (1 + decay * it))",
    lambda keras: dict(learning_rate=_schedule(keras), decay=0.02),
    None,
    (2,),
    "legacy.Adam",
  ),
}


def init_weights(seed: int) -> list[np.ndarray]:
  rng = np.random.RandomState(seed)
  return [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in SHAPES]


def gradients(seed: int) -> list[list[np.ndarray]]:
  """20 steps of float32 gradients, magnitudes 10**U(-2, 0.5) per step and tensor."""
  rng = np.random.RandomState(1000 + seed)
  out = []
  for _ in range(SAVED_STEPS + CONTINUED_STEPS):
    step = []
    for s in SHAPES:
      scale = 10 ** rng.uniform(-2, 0.5)
      step.append((rng.standard_normal(s) * scale).astype(np.float32))
    out.append(step)
  return out
