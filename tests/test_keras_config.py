"""`optadam.get_config` and `optadam.from_keras_config` (docs/migration.md): the TF 2.15 goldens'
and Keras 3's configs round trip, malformed configs are refused, callables are written out.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import optadam
from golden import SCENARIOS, Golden

OTHERS = os.path.join(
  os.path.dirname(__file__), "fixtures", "keras_files", "other_optimizer_configs.json"
)
with open(OTHERS, encoding="utf-8") as _f:
  OTHER_CONFIGS = json.load(
    _f
  )  # get_config() / serialize() of every optimizer, TF 2.15 and Keras 3
FAMILY = ("Adam", "AdamW", "legacy.Adam")
CONFIGS = [
  (version, cls, form)
  for version in ("tf215", "keras3")
  for cls, forms in OTHER_CONFIGS[version]["defaults"].items()
  for form in forms
  if form != "error"
]


def test_configs_round_trip():
  for name in SCENARIOS:
    cfg = Golden(name).meta["config"]
    tx = optadam.from_keras_config(cfg)
    out = optadam.get_config(tx)
    assert json.loads(json.dumps(out)) == out
    assert out == cfg, name
    wrapped = {
      "module": "keras.optimizers",
      "class_name": "Adam",
      "config": cfg,
      "registered_name": None,
    }
    assert optadam.get_config(optadam.from_keras_config(wrapped)) == cfg


def test_keras3_config_round_trip():
  import keras  # pylint: disable=import-outside-toplevel

  k3 = keras.optimizers.Adam(
    learning_rate=0.01,
    amsgrad=True,
    weight_decay=0.004,
    clipnorm=1.0,
    use_ema=True,
    ema_overwrite_frequency=3,
    loss_scale_factor=128.0,
    gradient_accumulation_steps=2,
  )
  cfg = json.loads(json.dumps(k3.get_config()))
  tx = optadam.from_keras_config(cfg)
  assert optadam.get_config(tx, keras_version=3) == cfg
  assert (
    optadam.from_keras_config(json.loads(json.dumps(keras.optimizers.serialize(k3)))).keras_args[
      "gradient_accumulation_steps"
    ]
    == 2
  )


@pytest.mark.parametrize(
  "bad,error,word",
  [
    ({"class_name": "SGD", "config": {}}, ValueError, "SGD"),
    ({"class_name": "Adam"}, ValueError, "config"),
    ({"learning_rate": 0.1, "momentum": 0.9}, ValueError, "momentum"),
    (
      {"learning_rate": {"class_name": "NoSuchDecay", "config": {}}, "amsgrad": False},
      ValueError,
      "NoSuchDecay",
    ),
    ({"learning_rate": "fast", "amsgrad": False}, ValueError, "learning_rate"),
    ({"beta_1": 1.2, "amsgrad": False}, ValueError, "beta_1"),
    ({"beta_1": 0.9, "beta_2": 0.999}, ValueError, "amsgrad"),
    ({"is_legacy_optimizer": True}, ValueError, "legacy"),
    ([("learning_rate", 0.1)], TypeError, "dict"),
  ],
)
def test_malformed_configs(bad, error, word):
  with pytest.raises(error, match=word):
    optadam.from_keras_config(bad)


def test_get_config_of_callables():
  assert optadam.get_config(optadam.adam(learning_rate=lambda: 0.5))["learning_rate"] == 0.5
  with pytest.raises(TypeError, match="schedule"):
    optadam.get_config(optadam.adam(learning_rate=lambda step: 0.1 / (1 + step)))
  sched = optadam.schedules.ExponentialDecay(0.1, 10, 0.5)
  cfg = optadam.get_config(optadam.adam(learning_rate=sched))
  assert cfg["learning_rate"]["class_name"] == "ExponentialDecay"


@pytest.mark.parametrize("version,cls,form", CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_every_keras_optimizer_config(version, cls, form):
  """The Adam family builds (as the right member); every other optimizer is refused, by name."""
  config = OTHER_CONFIGS[version]["defaults"][cls][form]
  if cls in FAMILY:
    tx = optadam.from_keras_config(config)
    assert tx.config.keras_class == cls
    return
  name = cls.split(".")[-1]
  clue = name if form != "bare" else "|".join([name.lower(), "amsgrad", "keys of another"])
  with pytest.raises(ValueError, match=f"(?i)({clue}).*optadam continues Keras's Adam and AdamW"):
    optadam.from_keras_config(config)


@pytest.mark.parametrize("version", ["tf215", "keras3"])
def test_family_configs_round_trip(version):
  """AdamW and the legacy Adam come back as the configs Keras wrote, bare and serialized."""
  keras_version = 2 if version == "tf215" else 3
  written = dict(OTHER_CONFIGS[version]["defaults"])
  written.update(OTHER_CONFIGS[version]["non_defaults"])
  for what, forms in written.items():
    if what.startswith("LossScaleOptimizer") or "clipvalue=0.5, clipnorm=1.0" in what:
      continue
    if what.split("(")[0] not in FAMILY or "error" in forms:
      continue
    for form in ("bare", "serialized"):
      tx = optadam.from_keras_config(forms[form])
      out = optadam.get_config(tx, keras_version=keras_version, serialized=form == "serialized")
      expected = forms[form]
      if what.startswith("legacy.Adam"):  # its variables' float32 values, as after a step
        expected = _float32_hyperparameters(expected)
      assert json.loads(json.dumps(out)) == expected, (what, form)


def _float32_hyperparameters(config: dict) -> dict:
  """A legacy config as TF writes it once its hyperparameter variables exist (float32)."""
  if "config" in config:
    return dict(config, config=_float32_hyperparameters(config["config"]))
  out = dict(config)
  for key in ("learning_rate", "beta_1", "beta_2"):
    if isinstance(out.get(key), float):
      out[key] = float(np.float32(out[key]))
  return out


def test_adamw():
  """AdamW: weight_decay 0.004 by default, None refused (as Keras), class AdamW in configs."""
  tx = optadam.adamw(0.01)
  assert tx.config.weight_decay == 0.004 and tx.config.keras_class == "AdamW"
  assert optadam.get_config(tx, serialized=True)["class_name"] == "AdamW"
  assert optadam.get_config(tx)["name"] == "AdamW"
  with pytest.raises(ValueError, match="Missing value of `weight_decay`"):
    optadam.adamw(weight_decay=None)
  with pytest.raises(TypeError, match=r"optadam\.adamw"):
    optadam.adamw(nesterov=True)
  # The same numbers as optadam.adam with that weight decay.
  params = {"w": np.linspace(-1.0, 1.0, 6, dtype=np.float32)}
  grads = {"w": np.linspace(0.5, -0.5, 6, dtype=np.float32)}
  a, b = optadam.adamw(0.01), optadam.adam(0.01, weight_decay=0.004)
  ua, _ = a.update(grads, a.init(params), params)
  ub, _ = b.update(grads, b.init(params), params)
  np.testing.assert_array_equal(ua["w"], ub["w"])
  lso = optadam.loss_scale_optimizer(tx)
  assert optadam.get_config(lso)["inner_optimizer"]["class_name"] == "AdamW"


def test_legacy_adam_config():
  """TF's legacy Adam: LegacyDecay learning rate, float32 betas, epsilon 0 -> 1e-7; two
  clipping rules (applied one after the other by TF) are refused."""
  legacy = OTHER_CONFIGS["tf215"]["non_defaults"]
  cfg = legacy["legacy.Adam(learning_rate=0.01, decay=0.05) after one step"]["bare"]
  tx = optadam.from_keras_config(cfg)
  rule = tx.config.learning_rate
  assert isinstance(rule, optadam.LegacyDecay) and rule.decay == 0.05
  assert isinstance(tx.config.beta_1, np.float32)
  lr3 = np.float32(cfg["learning_rate"]) / (np.float32(1) + np.float32(0.05) * np.float32(3))
  assert float(rule(3)) == float(lr3)
  assert optadam.get_config(tx) == cfg
  eps0 = optadam.from_keras_config(legacy["legacy.Adam(epsilon=0.0)"]["bare"])
  assert eps0.config.epsilon == 1e-7
  both = legacy["legacy.Adam(amsgrad=True, clipvalue=0.5, clipnorm=1.0) after one step"]["bare"]
  with pytest.raises(ValueError, match=r"clipnorm and clipvalue.*cannot continue"):
    optadam.from_keras_config(both)
  with pytest.raises(ValueError, match="legacy Adam has no weight_decay"):
    optadam.from_keras_config(cfg, weight_decay=0.1)
