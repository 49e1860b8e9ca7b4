"""An `AdamConfig` turned into one `optax.chain`: `build`, its `KerasAdam` and `AdamState`.

The chain, in Keras's order (each link a transform of its own module)::

  [divide by loss_scale_factor]                   keras3.divide_by_loss_scale (Keras 3)
  clip (clipnorm | global_clipnorm | clipvalue)   clipping.keras_clip
  -> Keras Adam scaling (epsilon-hat, AMSGrad)     scale.scale_by_keras_adam
  -> -learning_rate                                learning_rate.scale_by_learning_rate
  -> decoupled weight decay (Keras's rounding)     weight_decay.add_decayed_weights
  -> parameter EMA with overwrite                  ema.parameter_ema

With ``group_small_leaves`` the links after the first run on packed small leaves
(`grouping.group_leaves`); with ``gradient_accumulation_steps`` the whole chain runs
every k-th call (`keras3.accumulate_gradients`), except a Keras 3 style EMA, which
Keras 3 updates on every call: it then runs after the accumulation (`_ema_every_call`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import optax

from optadam import clipping
from optadam import ema
from optadam import grouping
from optadam import keras3
from optadam import learning_rate as learning_rate_lib
from optadam import scale
from optadam import sparse
from optadam import weight_decay as weight_decay_lib
from optadam.config import AdamConfig


class AdamState(NamedTuple):
  """State of `optadam.adam`, one field per transform of the chain, in chain order."""

  loss_scale: optax.OptState  # EmptyState: dividing by Keras 3's loss_scale_factor is stateless
  clip: optax.OptState  # EmptyState: clipping is stateless
  adam: scale.ScaleByKerasAdamState  # step count, mu, nu, nu_max
  learning_rate: learning_rate_lib.ScaleByLearningRateState  # step count for schedules
  weight_decay: optax.OptState  # DecayedWeightsState (possibly inside optax.masked's state)
  ema: optax.OptState  # ParameterEmaState with use_ema, else EmptyState


class KerasAdam(optax.GradientTransformationExtraArgs):
  """The `optax.GradientTransformationExtraArgs` returned by `optadam.adam` and `optadam.adamw`.

  ``update(updates, state, params=None, *, finite=None, **extra_args)``: where the
  scalar bool ``finite`` is False, every parameter-sized state (moments, v-hat, EMA
  average, gradient accumulators) keeps its old value; the updates and step counts
  are left to the caller (`optadam.loss_scale_optimizer` skips a step with it,
  without a ``lax.cond``). Other extra keyword arguments are accepted and ignored. An
  update whose gradients are all None is a no-op (the state is returned as it was, not
  counted as a step), as in Keras 3; Keras 2 raises there.

  Attributes:
    config: the validated arguments it was built from (an `optadam.AdamConfig`),
      read by `optadam.get_config` and `optadam.state_from_keras`.
    group_layout: with ``group_small_leaves``, the `optadam.grouping.Layout` that
      ``init`` uses, when it was fixed by `with_group_layout`; None: ``init``
      decides it from the parameters it is given.
  """

  config: AdamConfig
  group_layout: Optional[grouping.Layout]

  def __new__(cls, init, update, config: AdamConfig, group_layout=None):
    self = super().__new__(cls, init, update)
    self.config = config
    self.group_layout = group_layout
    return self

  def __getnewargs__(self):
    return (self.init, self.update, self.config, self.group_layout)

  @property
  def name(self) -> str:
    """The optimizer's name (Keras's ``name``)."""
    return self.config.name

  @property
  def keras_args(self) -> dict[str, Any]:
    """The arguments that Keras's ``get_config()`` writes (`AdamConfig.keras_args`)."""
    return self.config.keras_args

  @property
  def group_small_leaves(self) -> Optional[int]:
    """The grouping threshold (None: off)."""
    return self.config.group_small_leaves

  def skippable_update(self, updates, state, params, finite, **extra_args):
    """``update(updates, state, params, finite=finite)``: see the class docstring."""
    return self.update(updates, state, params, finite=finite, **extra_args)

  def with_group_layout(self, like: Any) -> KerasAdam:
    """This optimizer with its grouped layout decided from `like` (``group_small_leaves``).

    `like` is the parameters, or ``jax.ShapeDtypeStruct``s with their shardings:
    leaves sharded across devices stay out of the groups. ``init`` then uses that
    layout wherever it runs, also traced (``jax.jit(tx.init, out_shardings=...)``,
    ``jax.eval_shape``), where the parameters show no sharding.
    """
    config = self.config
    if config.group_small_leaves is None:
      raise ValueError("with_group_layout needs an optimizer built with group_small_leaves.")
    layout = grouping.make_layout(
      like, config.group_small_leaves, config.decay_mask_fn(), rows=clipping.is_set(config.clipnorm)
    )
    return build(config, layout)


def build(config: AdamConfig, group_layout: Optional[grouping.Layout] = None) -> KerasAdam:
  """The `KerasAdam` of `config`: its chain's ``init`` and ``update`` (compiled unless
  ``jit_compile=False`` or a hyperparameter is an array, e.g. under ``inject_hyperparams``)."""
  chain = _chain(config, group_layout)
  update = _update_fn(chain, config)
  # Array hyperparameters mean inject_hyperparams (or a trace) builds this optimizer at
  # every step; a jit here would then be a fresh function, recompiled at every call.
  if config.jit_compile and not config.has_array_hyperparams:
    update = _checked_jit(update)
  return KerasAdam(chain.init, update, config, group_layout)


def _transforms(config: AdamConfig) -> list[optax.GradientTransformation]:
  """The links of the chain, in `AdamState`'s order."""
  lr = config.learning_rate_per_update()
  lsf = config.loss_scale_factor
  return [
    optax.identity() if lsf is None else keras3.divide_by_loss_scale(lsf),
    clipping.keras_clip(config.clipnorm, config.clipvalue, config.global_clipnorm),
    scale.scale_by_keras_adam(
      config.beta_1,
      config.beta_2,
      config.epsilon,
      config.amsgrad,
      mu_dtype=config.mu_dtype,
      nu_dtype=config.nu_dtype,
    ),
    learning_rate_lib.scale_by_learning_rate(lr),
    _weight_decay(config, lr),
    _ema(config) if config.use_ema else optax.identity(),
  ]


def _ema(config: AdamConfig) -> optax.GradientTransformation:
  return ema.parameter_ema(
    config.ema_momentum,
    config.ema_overwrite_frequency,
    ema_dtype=config.ema_dtype,
    ema_style=config.ema_style,
    gradient_accumulation_steps=config.gradient_accumulation_steps if _every_call(config) else None,
  )


def _every_call(config: AdamConfig) -> bool:
  """Keras 3 updates (and overwrites with) its EMA on every call, also under accumulation."""
  accumulating = config.gradient_accumulation_steps is not None
  return accumulating and config.use_ema and config.ema_style == "keras3"


def _weight_decay(config: AdamConfig, lr: Any) -> optax.GradientTransformation:
  if config.weight_decay is None:
    return optax.identity()
  if config.group_small_leaves is not None:  # packed leaves: the mask values are in the layout
    mask = grouping.decay_mask if config.decay_masked else None
    return weight_decay_lib.add_decayed_weights(
      config.weight_decay, learning_rate=lr, weight_decay_mask=mask
    )
  return weight_decay_lib.add_decayed_weights(
    config.weight_decay,
    learning_rate=lr,
    exclude_from_weight_decay=config.exclude_from_weight_decay,
    weight_decay_mask=config.weight_decay_mask,
  )


def _chain(config: AdamConfig, group_layout: Optional[grouping.Layout]) -> Any:
  """The keyed chain of `_transforms` (grouped, accumulated as configured)."""
  links = _transforms(config)
  ema_link = links[-1]
  if _every_call(config):  # runs after the accumulation, its state kept in AdamState.ema
    links[-1] = optax.identity()
  head, *rest = links
  tail = optax.chain(*rest)
  if config.group_small_leaves is not None:
    tail = grouping.group_leaves(
      tail,
      config.group_small_leaves,
      decay_mask_fn=config.decay_mask_fn(),
      rows=clipping.is_set(config.clipnorm),
      layout=group_layout,
    )
  chain = _keyed(optax.chain(head, tail))
  if config.gradient_accumulation_steps:
    chain = keras3.accumulate_gradients(config.gradient_accumulation_steps, chain)
  if _every_call(config):
    chain = _ema_every_call(chain, ema_link)
  return chain


def _ema_every_call(accumulated: Any, ema_tx: Any) -> optax.GradientTransformationExtraArgs:
  """`accumulated` (whose ``AdamState.ema`` link is the identity), then the EMA on every call.

  Keras 3 averages the parameters (and overwrites them) on every call, also on those that
  only accumulate. The EMA's state stays where it always is, in ``AdamState.ema``: it is
  taken out for `accumulated` (which holds an ``EmptyState`` there) and put back after.
  """

  def init_fn(params):
    state = accumulated.init(params)
    return state._replace(inner=state.inner._replace(ema=ema_tx.init(params)))

  def update_fn(updates, state, params=None, **extra_args):
    ema_state = state.inner.ema
    inner = state.inner._replace(ema=optax.EmptyState())
    updates, state = accumulated.update(updates, state._replace(inner=inner), params, **extra_args)
    updates, ema_state = ema_tx.update(updates, ema_state, params, **extra_args)
    return updates, state._replace(inner=state.inner._replace(ema=ema_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _keyed(chain: optax.GradientTransformationExtraArgs) -> optax.GradientTransformationExtraArgs:
  """`chain` of (first link, rest) with its state as an `AdamState` (keyed by name)."""

  def init_fn(params):
    head, tail = chain.init(params)
    return AdamState(head, *tail)

  def update_fn(updates, state, params=None, **extra_args):
    updates, (head, tail) = chain.update(
      updates, (state[0], tuple(state[1:])), params, **extra_args
    )
    return updates, AdamState(head, *tail)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _update_fn(chain: Any, config: AdamConfig) -> Any:
  def update_fn(updates, state, params=None, *, finite=None, **extra_args):
    del extra_args  # read by no transform of the chain
    leaves = jax.tree.leaves(updates, is_leaf=lambda x: x is None)
    if leaves and all(g is None for g in leaves):
      return updates, state  # no gradient at all: a no-op, not a counted step (Keras 3)
    if params is None and config.needs_params:
      flags = (("weight_decay", config.weight_decay is not None), ("use_ema", config.use_ema))
      on = " and ".join(name for name, value in flags if value)
      raise ValueError(
        f"optadam.adam with {on} needs the parameters: call `tx.update(grads, opt_state, params)`."
      )
    return chain.update(updates, state, params, finite=finite)

  return update_fn


def _checked_jit(update_fn: Any) -> Any:
  """``jax.jit(update_fn)``, with the sparse row indices checked before the jit hides them.

  Extra keyword arguments (optax's ``GradientTransformationExtraArgs``) other than
  ``finite`` are accepted and not passed into the compiled function: no transform of
  the chain reads them, so any value (a string, an object) is fine and none
  recompiles. The result keeps the jitted function's ``lower``, ``trace``,
  ``eval_shape`` and cache methods.
  """
  jitted = jax.jit(update_fn)

  @functools.wraps(update_fn)
  def checked(updates, state, params=None, *, finite=None, **extra_args):
    del extra_args  # read by no transform of the chain
    sparse.check_row_indices(updates)
    return jitted(updates, state, params, finite=finite)

  for attr in ("lower", "trace", "eval_shape", "clear_cache", "_cache_size"):
    if hasattr(jitted, attr):
      setattr(checked, attr, getattr(jitted, attr))
  return checked
