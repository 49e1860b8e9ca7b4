"""`optadam.get_config` and `optadam.from_keras_config` (docs/migration.md): the TF 2.15 goldens'
and Keras 3's configs round trip, malformed configs are refused, callables are written out.
"""

from __future__ import annotations

import json

import pytest

import optadam
from golden import SCENARIOS, Golden


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
    ({"learning_rate": {"class_name": "NoSuchDecay", "config": {}}}, ValueError, "NoSuchDecay"),
    ({"learning_rate": "fast"}, ValueError, "learning_rate"),
    ({"beta_1": 1.2}, ValueError, "beta_1"),
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
