"""`optadam.AdamConfig`'s checks of Keras's arguments (docs/semantics.md, other arguments and
validation): what is rejected and with which error, what means "off" or is ignored, and the
standalone transforms' own checks.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import optadam

BAD = [
  (dict(beta_1=1.0), ValueError, "beta_1"),
  (dict(beta_1=-0.1), ValueError, "beta_1"),
  (dict(beta_2=1.5), ValueError, "beta_2"),
  (dict(epsilon=-1e-7), ValueError, "epsilon"),
  (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
  (dict(learning_rate=float("inf")), ValueError, "learning_rate"),
  (dict(learning_rate="0.1"), TypeError, "learning_rate"),
  (dict(learning_rate=jnp.ones(3)), ValueError, "learning_rate"),
  (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
  (dict(weight_decay="x"), TypeError, "weight_decay"),
  (dict(clipnorm=1.0, clipvalue=1.0), ValueError, "clipnorm"),
  (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError, "global_clipnorm"),
  (dict(clipvalue=0.5, global_clipnorm=1.0), ValueError, "clipvalue"),
  (dict(clipnorm=-1.0), ValueError, "clipnorm"),
  (dict(clipvalue=-1.0), ValueError, "clipvalue"),
  (dict(global_clipnorm=-2.0), ValueError, "global_clipnorm"),
  (dict(global_clipnorm=float("nan")), ValueError, "global_clipnorm"),
  (dict(use_ema=True, ema_momentum=1.5), ValueError, "ema_momentum"),
  (dict(use_ema=True, ema_momentum=-0.1), ValueError, "ema_momentum"),
  (dict(use_ema=True, ema_overwrite_frequency=-1), ValueError, "ema_overwrite_frequency"),
  (dict(use_ema=True, ema_overwrite_frequency=2.5), ValueError, "ema_overwrite_frequency"),
  (dict(use_ema=True, ema_overwrite_frequency="3"), ValueError, "ema_overwrite_frequency"),
  (dict(amsgrad="yes"), TypeError, "amsgrad"),
  (dict(use_ema=1), TypeError, "use_ema"),
  (dict(jit_compile=None), TypeError, "jit_compile"),
  (dict(name=3), TypeError, "name"),
  (dict(exclude_from_weight_decay=["bias"]), ValueError, "weight_decay"),
  (
    dict(weight_decay=0.1, exclude_from_weight_decay="bias"),
    TypeError,
    "exclude_from_weight_decay",
  ),
  (
    dict(weight_decay=0.1, exclude_from_weight_decay=["("]),
    ValueError,
    "exclude_from_weight_decay",
  ),
  (dict(lr=0.1), ValueError, "learning_rate"),
  (dict(decay=0.1), ValueError, "decay"),
  (dict(gradient_aggregator=lambda g: g), ValueError, "gradient_aggregator"),
  (dict(gradient_transformers=[]), ValueError, "gradient_transformers"),
  (dict(momentum=0.9), TypeError, "momentum"),
  (dict(mu_dtype="float7"), TypeError, "mu_dtype"),
  (dict(use_ema=True, ema_style="keras4"), ValueError, "ema_style"),
]


def _bad_id(kwargs: dict) -> str:
  """A stable id (pytest-xdist workers must collect the same names): no object addresses."""
  return str({k: (v if not callable(v) else "<callable>") for k, v in kwargs.items()})


@pytest.mark.parametrize("kwargs,error,word", BAD, ids=[_bad_id(b[0]) for b in BAD])
def test_bad_arguments_are_rejected(kwargs, error, word):
  with pytest.raises(error, match=word):
    optadam.adam(**kwargs)


def test_off_values_and_ignored_kwargs():
  # None or 0 means "off" for clipping (Keras); ints are accepted (Keras 2)
  optadam.adam(clipnorm=0, clipvalue=None, global_clipnorm=0.0)
  optadam.adam(learning_rate=1, is_legacy_optimizer=False, mesh=None)
  optadam.adam(use_ema=True, ema_overwrite_frequency=0)
  optadam.adam(use_ema=False, ema_momentum=5.0)  # not validated when EMA is off (Keras)
  optadam.adam(learning_rate=-0.001)  # finite: allowed (Keras runs it)


def test_transforms_validate_on_their_own():
  with pytest.raises(ValueError, match="clipnorm"):
    optadam.clip_by_tensor_norm(0.0)
  with pytest.raises(ValueError, match="global_clipnorm"):
    optadam.clip_by_keras_global_norm(-1.0)
  with pytest.raises(TypeError, match="learning_rate"):
    optadam.scale_by_learning_rate(None)
  with pytest.raises(ValueError, match="ema_momentum"):
    optadam.parameter_ema(2.0)


def test_legacy_decay_keyword_points_to_legacy_decay():
  # `decay=` comes from TF's legacy Adam: the error says how to build that optimizer
  legacy = r"learning_rate=optadam\.LegacyDecay\(learning_rate, decay=0\.1\)"
  with pytest.raises(ValueError, match=legacy):
    optadam.adam(decay=0.1)
  with pytest.raises(ValueError, match=r"optadam\.adamw.*LegacyDecay"):
    optadam.adamw(decay=0.1)
