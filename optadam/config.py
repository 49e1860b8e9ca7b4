"""`AdamConfig`: Keras's Adam arguments, validated once, in one frozen object.

`optadam.adam` builds an `AdamConfig` from its arguments and turns it into a chain
(`optadam.alias`); `optadam.get_config` writes its `keras_args`, and
`optadam.state_from_keras` reads its layout flags (``amsgrad``, ``use_ema``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np

from optadam import _keras_classes
from optadam import clipping
from optadam import ema
from optadam import hyperparams
from optadam import keras3
from optadam import learning_rate as learning_rate_lib
from optadam import scale
from optadam import weight_decay as weight_decay_lib

# Hyperparameters that optax.inject_hyperparams may pass as (possibly complex) arrays.
_NUMERIC = (
  "learning_rate",
  "beta_1",
  "beta_2",
  "epsilon",
  "weight_decay",
  "clipnorm",
  "clipvalue",
  "global_clipnorm",
  "ema_momentum",
  "ema_overwrite_frequency",
  "loss_scale_factor",
)
# The arguments that Keras's get_config() writes (Keras 3 adds the last two).
KERAS_ARGS = (
  "learning_rate",
  "beta_1",
  "beta_2",
  "epsilon",
  "amsgrad",
  "weight_decay",
  "clipnorm",
  "clipvalue",
  "global_clipnorm",
  "use_ema",
  "ema_momentum",
  "ema_overwrite_frequency",
  "jit_compile",
  "name",
  "loss_scale_factor",
  "gradient_accumulation_steps",
)


@dataclasses.dataclass(frozen=True)
class AdamConfig:
  """The validated arguments of `optadam.adam` (see there for each one's meaning).

  Built by `optadam.adam` (and `optadam.adamw`); read back as ``tx.config``.
  Construction validates every value that is concrete (traced or injected arrays
  pass) and canonicalises: array hyperparameters that ``optax.inject_hyperparams``
  made complex become their real part, and ``exclude_from_weight_decay`` a tuple.

  Attributes:
    keras_class: the Keras optimizer this configuration reproduces, which
      `optadam.get_config` writes and `optadam.state_from_keras` reads:
      ``"Adam"``, ``"AdamW"`` (``weight_decay`` must be set) or ``"legacy.Adam"``
      (TF's legacy Adam: the learning rate is an `optadam.LegacyDecay`, and none of
      the new optimizer's options (weight decay, EMA, Keras 3's) is set).
  """

  learning_rate: hyperparams.Hyperparam = 0.001
  beta_1: hyperparams.Hyperparam = 0.9
  beta_2: hyperparams.Hyperparam = 0.999
  epsilon: float = 1e-7
  amsgrad: bool = False
  weight_decay: Optional[float] = None
  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None
  use_ema: bool = False
  ema_momentum: float = 0.99
  ema_overwrite_frequency: Optional[int] = None
  jit_compile: bool = True
  name: str = "Adam"
  mu_dtype: Optional[Any] = None
  nu_dtype: Optional[Any] = None
  exclude_from_weight_decay: Optional[Sequence[str]] = None
  weight_decay_mask: Optional[Any] = None
  ema_dtype: Optional[Any] = None
  ema_style: str = "keras2"
  loss_scale_factor: Optional[float] = None
  gradient_accumulation_steps: Optional[int] = None
  group_small_leaves: Optional[int] = None
  keras_class: str = "Adam"

  def __post_init__(self):
    for name in _NUMERIC:  # inject_hyperparams on complex params gives complex arrays
      object.__setattr__(self, name, hyperparams.real_part(name, getattr(self, name)))
    self._check_flags()
    self._check_keras_class()
    clipping.keras_clip(self.clipnorm, self.clipvalue, self.global_clipnorm)
    keras3.check_accumulation_steps(self.gradient_accumulation_steps)
    _check_group_small_leaves(self.group_small_leaves, self.ema_style, self.use_ema)
    if self.loss_scale_factor is not None:
      keras3.check_loss_scale_factor(self.loss_scale_factor)
    scale.check_args(self.beta_1, self.beta_2, self.epsilon, self.mu_dtype, self.nu_dtype)
    hyperparams.check_number("learning_rate", self.learning_rate)
    if self.weight_decay is not None:
      patterns = weight_decay_lib.check_args(self.weight_decay, self.exclude_from_weight_decay)
      object.__setattr__(self, "exclude_from_weight_decay", tuple(patterns) or None)
    if self.use_ema:
      ema.check_ema_args(self.ema_momentum, self.ema_overwrite_frequency, self.ema_style)
      hyperparams.as_dtype("ema_dtype", self.ema_dtype, allow_complex=True)

  def _check_flags(self) -> None:
    for name in ("amsgrad", "use_ema", "jit_compile"):
      value = getattr(self, name)
      if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False; got {hyperparams.describe(value)}.")
    if not isinstance(self.name, str):
      raise TypeError(f"`name` must be a string; got {hyperparams.describe(self.name)}.")
    decay_options = self.exclude_from_weight_decay or self.weight_decay_mask is not None
    if self.weight_decay is None and decay_options:
      raise ValueError(
        "`exclude_from_weight_decay` / `weight_decay_mask` need `weight_decay` to be "
        "set; got weight_decay=None."
      )

  def _check_keras_class(self) -> None:
    if self.keras_class not in _keras_classes.FAMILY:
      raise ValueError(
        f"`keras_class` must be one of {_keras_classes.FAMILY}; got {self.keras_class!r}."
      )
    if self.keras_class == "AdamW" and self.weight_decay is None:
      raise ValueError(
        "Missing value of `weight_decay`, which AdamW needs (a float; Keras's default is "
        "0.004); got None. For Adam without weight decay use optadam.adam."
      )
    if self.keras_class != "legacy.Adam":
      return
    if not isinstance(self.learning_rate, learning_rate_lib.LegacyDecay):
      raise TypeError(
        "The legacy Adam's learning rate is an optadam.LegacyDecay(learning_rate, decay); "
        f"got {hyperparams.describe(self.learning_rate)}."
      )
    new_options = {
      "weight_decay": self.weight_decay,
      "use_ema": self.use_ema or None,
      "loss_scale_factor": self.loss_scale_factor,
      "gradient_accumulation_steps": self.gradient_accumulation_steps,
    }
    given = [name for name, value in new_options.items() if value is not None]
    if given:
      raise ValueError(
        f"TF's legacy Adam has no {', '.join(given)} (options of the new optimizer); got "
        f"{', '.join(f'{n}={getattr(self, n)!r}' for n in given)}."
      )

  @property
  def keras_args(self) -> dict[str, Any]:
    """The arguments that Keras's ``get_config()`` writes, by Keras's names."""
    return {name: getattr(self, name) for name in KERAS_ARGS}

  @property
  def has_array_hyperparams(self) -> bool:
    """True when a hyperparameter is an array: ``inject_hyperparams`` (or a trace) built this."""
    return any(isinstance(getattr(self, name), jax.Array) for name in _NUMERIC)

  @property
  def needs_params(self) -> bool:
    """``update`` needs the parameters (weight decay or EMA)."""
    return self.weight_decay is not None or self.use_ema

  @property
  def decay_masked(self) -> bool:
    """Some parameters are excluded from weight decay (by pattern or mask)."""
    return bool(self.exclude_from_weight_decay) or self.weight_decay_mask is not None

  def decay_mask_fn(self) -> Optional[Any]:
    """The combined weight-decay mask of the parameters (excluded by a pattern or by the mask)."""
    if not self.decay_masked:
      return None
    fns = []
    if self.exclude_from_weight_decay:
      fns.append(weight_decay_lib.exclusion_mask(list(self.exclude_from_weight_decay)))
    mask = self.weight_decay_mask
    if mask is not None:
      fns.append(mask if callable(mask) else (lambda params: mask))

    def combined(params):
      trees = [fn(params) for fn in fns]
      return jax.tree.map(lambda *ms: all(bool(m) for m in ms), *trees)

    return combined

  def learning_rate_per_update(self) -> hyperparams.Hyperparam:
    """The learning rate as the chain sees it: a schedule is given the raw call count under
    gradient accumulation (Keras 3), where the chain counts real updates."""
    lr, k = self.learning_rate, self.gradient_accumulation_steps
    if k and callable(lr) and not hyperparams.takes_no_arguments(lr):
      return keras3.raw_count_schedule(lr, k)
    return lr


def _check_group_small_leaves(value: Any, ema_style: str, use_ema: bool) -> None:
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    hint = (
      " It shapes the state, so it cannot be a hyperparameter array: with "
      "optax.inject_hyperparams, pass static_args=('group_small_leaves',)."
      if isinstance(value, (jax.Array, np.ndarray))
      else ""
    )
    raise ValueError(
      "`group_small_leaves` must be None (off) or an int >= 1 (the largest number of "
      f"elements of a grouped leaf); got {hyperparams.describe(value)}.{hint}"
    )
  if use_ema and ema_style == "keras3":
    raise ValueError(
      "`group_small_leaves` does not support ema_style='keras3' (which averages parameters "
      "without a gradient); use ema_style='keras2' or group_small_leaves=None."
    )


_DEPRECATED_KWARGS = ("gradient_aggregator", "gradient_transformers")
_IGNORED_KWARGS = ("is_legacy_optimizer", "mesh")


def check_keras_kwargs(kwargs: dict[str, Any], who: str = "optadam.adam") -> None:
  """Keras's legacy keywords: ``lr`` and the deprecated ones are errors, two are ignored."""
  if isinstance(kwargs.get("kwargs"), dict):  # optax.inject_hyperparams binds **kwargs as `kwargs=`
    kwargs = {**kwargs["kwargs"], **{k: v for k, v in kwargs.items() if k != "kwargs"}}
  for key in kwargs:
    if key == "lr":
      raise ValueError(
        f"`lr` is not an argument of {who}: pass `learning_rate=` instead "
        "(Keras 2 silently ignores `lr`)."
      )
    if key == "decay":
      raise ValueError(
        f"`decay` is an argument of TF's legacy Adam, not of {who}; that optimizer is "
        "optadam.adam(learning_rate=optadam.LegacyDecay(learning_rate, "
        f"decay={kwargs['decay']!r}), beta_1=np.float32(beta_1), beta_2=np.float32(beta_2)) "
        "(see optadam.LegacyDecay); for the new optimizer use a learning-rate schedule."
      )
    if key in _DEPRECATED_KWARGS:
      raise ValueError(
        f"`{key}` is deprecated in the new Keras optimizer and not supported by "
        f"{who}; use an optax transform in your own chain instead."
      )
    if key not in _IGNORED_KWARGS:
      raise TypeError(
        f"{who}() got an unexpected keyword argument `{key}`. Keras's Adam "
        "arguments are: learning_rate, beta_1, beta_2, epsilon, amsgrad, "
        "weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, "
        "ema_overwrite_frequency, jit_compile, name."
      )
