"""`optadam.adam`: Keras's arguments, validated, composed into one `optax.chain`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import optax

from optadam import _skip
from optadam import clipping
from optadam import ema
from optadam import grouping
from optadam import hyperparams
from optadam import keras3
from optadam import learning_rate as learning_rate_lib
from optadam import scale
from optadam import sparse
from optadam import weight_decay as weight_decay_lib


class AdamState(NamedTuple):
  """State of `optadam.adam`, one field per transform of the chain, in chain order."""

  loss_scale: optax.OptState  # EmptyState: dividing by Keras 3's loss_scale_factor is stateless
  clip: optax.OptState  # EmptyState: clipping is stateless
  adam: scale.ScaleByKerasAdamState  # step count, mu, nu, nu_max
  learning_rate: learning_rate_lib.ScaleByLearningRateState  # step count for schedules
  weight_decay: optax.OptState  # DecayedWeightsState (possibly inside optax.masked's state)
  ema: optax.OptState  # ParameterEmaState with use_ema, else EmptyState


class KerasAdam(optax.GradientTransformationExtraArgs):
  """The `optax.GradientTransformationExtraArgs` returned by `optadam.adam`.

  Besides ``init`` and ``update`` it carries ``name`` and ``keras_args`` (the
  arguments it was built from), read by `optadam.get_config`, and
  ``skippable_update(updates, state, params, finite)``: ``update`` in which every
  parameter-sized state keeps its old value unless the scalar bool ``finite`` holds
  (the updates and step counts are left to the caller; `optadam.loss_scale_optimizer`
  uses it to skip a step without a ``lax.cond``).
  """


_DEPRECATED_KWARGS = ("decay", "gradient_aggregator", "gradient_transformers")
_IGNORED_KWARGS = ("is_legacy_optimizer", "mesh")


def _check_kwargs(kwargs: dict[str, Any]) -> None:
  if isinstance(kwargs.get("kwargs"), dict):  # optax.inject_hyperparams binds **kwargs as `kwargs=`
    kwargs = {**kwargs["kwargs"], **{k: v for k, v in kwargs.items() if k != "kwargs"}}
  for key in kwargs:
    if key == "lr":
      raise ValueError(
        "`lr` is not an argument of optadam.adam: pass `learning_rate=` instead "
        "(Keras 2 silently ignores `lr`)."
      )
    if key in _DEPRECATED_KWARGS:
      raise ValueError(
        f"`{key}` is deprecated in the new Keras optimizer and not supported by "
        "optadam.adam; use a learning-rate schedule (for `decay`) or an optax "
        "transform in your own chain instead."
      )
    if key not in _IGNORED_KWARGS:
      raise TypeError(
        f"optadam.adam() got an unexpected keyword argument `{key}`. Keras's Adam "
        "arguments are: learning_rate, beta_1, beta_2, epsilon, amsgrad, "
        "weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, "
        "ema_overwrite_frequency, jit_compile, name."
      )


def _is_set(value: Any) -> bool:
  """Keras's "off" for clipping: None or 0."""
  return value is not None and hyperparams.concrete_number(value) != 0.0


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be True or False; got {hyperparams.describe(value)}.")


def _clip_transform(
  clipnorm: Any, clipvalue: Any, global_clipnorm: Any
) -> optax.GradientTransformation:
  given = {
    name: value
    for name, value in (
      ("clipnorm", clipnorm),
      ("clipvalue", clipvalue),
      ("global_clipnorm", global_clipnorm),
    )
    if _is_set(value)
  }
  if len(given) > 1:
    raise ValueError(
      f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; got "
      f"{', '.join(f'{k}={v!r}' for k, v in given.items())}."
    )
  if "clipnorm" in given:  # each clipping transform validates its own threshold
    return clipping.clip_by_tensor_norm(clipnorm)
  if "global_clipnorm" in given:
    return clipping.clip_by_keras_global_norm(global_clipnorm)
  if "clipvalue" in given:
    return clipping.clip_by_value(clipvalue)
  return optax.identity()


def _keyed_chain(
  transforms: AdamState, group: Optional[Any] = None
) -> tuple[optax.GradientTransformationExtraArgs, Optional[Any]]:
  """`optax.chain` of the transforms, its state an `AdamState` (keyed by name, not position).

  With `group` (``(max_size, decay_mask_fn, clipnorm, global_clipnorm)``), the elementwise
  part of the chain (adam .. ema) runs on packed small leaves (`optadam.grouping.group_leaves`),
  and the second result is its ``layout_of`` (else None).
  """
  if group is None:
    chain = optax.chain(*transforms)

    def init_fn(params):
      return AdamState(*chain.init(params))

    def update_fn(updates, state, params=None, **extra_args):
      updates, state = chain.update(updates, tuple(state), params, **extra_args)
      return updates, AdamState(*state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn), None

  max_size, decay_mask_fn, clipnorm, global_clipnorm = group
  # group_leaves clips: norms and scaling on the packed buffers, the other leaves as they are.
  packed_clip = clipnorm is not None or global_clipnorm is not None  # may be traced arrays
  head = optax.chain(transforms.loss_scale, optax.identity() if packed_clip else transforms.clip)
  tail = grouping.group_leaves(
    optax.chain(*transforms[2:]),
    max_size,
    decay_mask_fn=decay_mask_fn,
    clipnorm=clipnorm,
    global_clipnorm=global_clipnorm,
  )

  def grouped_init(params):
    return AdamState(*head.init(params), *tail.init(params))

  def grouped_update(updates, state, params=None, **extra_args):
    updates, head_state = head.update(updates, tuple(state[:2]), params)
    updates, tail_state = tail.update(updates, tuple(state[2:]), params, **extra_args)
    return updates, AdamState(*head_state, *tail_state)

  return optax.GradientTransformationExtraArgs(grouped_init, grouped_update), tail.layout_of


def _decay_mask_fn(patterns: Optional[Sequence[str]], mask: Optional[Any]) -> Optional[Any]:
  """The combined weight-decay mask of the parameters: excluded by a pattern or by `mask`."""
  fns = []
  if patterns:
    fns.append(weight_decay_lib.exclusion_mask(list(patterns)))
  if mask is not None:
    fns.append(mask if callable(mask) else (lambda params: mask))

  def combined(params):
    trees = [fn(params) for fn in fns]
    return jax.tree.map(lambda *ms: all(bool(m) for m in ms), *trees)

  return combined


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


def _has_array_hyperparams(*values: Any) -> bool:
  return any(isinstance(v, jax.Array) for v in values)


def _checked_jit(update_fn: Any) -> Any:
  """``jax.jit(update_fn)``, with the sparse row indices checked before the jit hides them.

  Extra keyword arguments (optax's ``GradientTransformationExtraArgs``) are
  accepted and not passed into the compiled function: no transform of the chain
  reads them, so any value (a string, an object) is fine and none recompiles.
  The result keeps the jitted function's ``lower``, ``trace``, ``eval_shape`` and
  cache methods.
  """
  jitted = jax.jit(update_fn)

  @functools.wraps(update_fn)
  def checked(updates, state, params=None, *args, **extra_args):
    del extra_args  # read by no transform of the chain
    sparse.check_row_indices(updates)
    return jitted(updates, state, params, *args)

  for attr in ("lower", "trace", "eval_shape", "clear_cache", "_cache_size"):
    if hasattr(jitted, attr):
      setattr(checked, attr, getattr(jitted, attr))
  return checked


def adam(
  learning_rate: hyperparams.Hyperparam = 0.001,
  beta_1: hyperparams.Hyperparam = 0.9,
  beta_2: hyperparams.Hyperparam = 0.999,
  epsilon: float = 1e-7,
  amsgrad: bool = False,
  weight_decay: Optional[float] = None,
  clipnorm: Optional[float] = None,
  clipvalue: Optional[float] = None,
  global_clipnorm: Optional[float] = None,
  use_ema: bool = False,
  ema_momentum: float = 0.99,
  ema_overwrite_frequency: Optional[int] = None,
  jit_compile: bool = True,
  name: str = "Adam",
  *,
  mu_dtype: Optional[Any] = None,
  nu_dtype: Optional[Any] = None,
  exclude_from_weight_decay: Optional[Sequence[str]] = None,
  weight_decay_mask: Optional[Any] = None,
  ema_dtype: Optional[Any] = None,
  ema_style: str = "keras2",
  loss_scale_factor: Optional[float] = None,
  gradient_accumulation_steps: Optional[int] = None,
  group_small_leaves: Optional[int] = None,
  **kwargs: Any,
) -> KerasAdam:
  """Keras's ``Adam`` optimizer (``tf.keras.optimizers.Adam``, TF 2.11–2.15) for optax.

  The same arguments, positional order and defaults as Keras 2; the result is
  one `optax.chain`, in Keras's order::

    [divide by loss_scale_factor]                   optadam.divide_by_loss_scale (Keras 3)
    clip (clipnorm | global_clipnorm | clipvalue)   optadam.clip_by_*
    -> Keras Adam scaling (epsilon-hat, AMSGrad)     optadam.scale_by_keras_adam
    -> -learning_rate                                optadam.scale_by_learning_rate
    -> decoupled weight decay (Keras's rounding)     optadam.add_decayed_weights
    -> parameter EMA with overwrite                  optadam.parameter_ema

  so that ``x_new = x - lr*wd*x - alpha * m / (sqrt(v) + epsilon)`` with
  ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``. Gradient leaves that
  are ``None`` skip their parameter entirely this step (no moment decay, weight
  decay or EMA) and give ``None`` updates (`optadam.apply_updates` keeps those
  parameters).

  Parameters may be float16, bfloat16, float32, float64, complex64 or complex128;
  any other leaf (an integer step counter, an RNG key) is a `TypeError` at
  ``init`` naming its path (exclude it with ``optax.multi_transform`` and
  ``optax.set_to_zero``, ``optax.masked``, or nnx's ``wrt=nnx.Param``). Complex
  parameters follow optax's convention with Keras's arithmetic: ``m`` averages
  ``g``, ``v`` averages the real ``|g|^2`` (see `optadam.scale_by_keras_adam`);
  give the optimizer ``conj(jax.grad(loss))``. ``init`` also accepts
  `jax.ShapeDtypeStruct` leaves (zeros with the structs' shardings). Extra
  keyword arguments to ``update`` are accepted and ignored.

  Args:
    learning_rate: float, scalar array, schedule ``fn(step)`` (e.g. from
      `optadam.schedules`) or zero-argument callable (called at every step).
    beta_1: first-moment decay, in [0, 1); float, schedule or zero-arg callable.
    beta_2: second-moment decay, in [0, 1); same forms.
    epsilon: Keras's epsilon-hat (outside the square root, not bias-corrected), >= 0.
    amsgrad: keep the running max of the raw second moment.
    weight_decay: decoupled decay rate, multiplied by the learning rate; None: off.
    clipnorm: clip each gradient tensor to this L2 norm; None or 0: off.
    clipvalue: clip gradient elements to [-clipvalue, clipvalue]; None or 0: off.
    global_clipnorm: clip all gradients to this global L2 norm; None or 0: off.
      At most one of the three clipping arguments may be set.
    use_ema: keep an exponential moving average of the parameters.
    ema_momentum: the EMA's momentum, in [0, 1].
    ema_overwrite_frequency: None or 0 (never), or overwrite the parameters with
      their average after every this many updates.
    jit_compile: True: ``update`` is compiled with ``jax.jit``; False: it runs op by
      op (debugging). Inside a user's ``jit`` it changes nothing.
    name: the optimizer's name, kept in its configuration.
    mu_dtype: dtype of the first moment (default: the parameter's).
    nu_dtype: dtype of the second moment and AMSGrad max (default: the parameter's).
    exclude_from_weight_decay: regular expressions; parameters whose
      "/"-joined pytree path matches one (``re.search``) are not decayed.
    weight_decay_mask: optax-style mask (pytree of bools or callable) of the
      parameters to decay.
    ema_dtype: dtype of the parameter average (default: the parameter's).
    ema_style: "keras2" (default) or "keras3" seeding of the average; see
      `optadam.parameter_ema`.
    loss_scale_factor: Keras 3: gradients are divided by it first; None: off.
    gradient_accumulation_steps: Keras 3: average the gradients of this many
      calls (>= 2) and update on every k-th; see `optadam.accumulate_gradients`.
      The state is then a `GradientAccumulationState` around the `AdamState`.
    group_small_leaves: None (default): off. An int: the floating-point
      parameters with at most this many elements that are not sharded across
      devices are packed, per dtype and weight-decay mask value, into flat 1-D
      buffers, and the Adam step, learning rate, weight decay and EMA run on
      those buffers (`optadam.grouping.group_leaves`): the same update, in a
      fraction of the kernels on many-leaf trees (compile time, dispatch).
      ``clipnorm`` stays per tensor (each tensor's norm is summed from the
      packed buffer). A few thousand elements (e.g. 4096) groups the biases,
      norm scales and small kernels while large kernels stay leaves.
      Bit-identical to the ungrouped step in most configurations; within an ulp
      or a few where XLA:CPU fuses a multiply-add differently or a clipping
      norm is summed in another order (see `optadam.grouping`). The state then
      holds `optadam.LeafGroups` where it would hold params-shaped trees;
      `optadam.ungroup_state` gives it per parameter path. Leaves sharded
      across devices are never grouped: with sharded small leaves, build the
      state (or `optadam.state_shardings`) from the sharded arrays or
      ShapeDtypeStructs before a traced ``init`` (see `optadam.grouping`). Not
      with ``ema_style="keras3"``; sparse gradients only on leaves above the
      threshold.
    **kwargs: Keras's legacy keywords: ``lr``, ``decay``,
      ``gradient_aggregator``, ``gradient_transformers`` raise ValueError;
      ``is_legacy_optimizer`` and ``mesh`` are accepted and ignored.

  Returns:
    A `KerasAdam` (an ``optax.GradientTransformationExtraArgs``) whose state is an
    `AdamState`. Its ``update`` needs ``params`` when weight decay or EMA is on.

  Example:
    >>> import jax, jax.numpy as jnp, optadam
    >>> tx = optadam.adam(learning_rate=1e-3, weight_decay=0.004)
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optadam.apply_updates(params, updates)
  """
  _check_kwargs(kwargs)
  real = hyperparams.real_part  # inject_hyperparams on complex params gives complex arrays
  learning_rate, beta_1, beta_2 = (
    real("learning_rate", learning_rate),
    real("beta_1", beta_1),
    real("beta_2", beta_2),
  )
  epsilon, weight_decay, ema_momentum = (
    real("epsilon", epsilon),
    real("weight_decay", weight_decay),
    real("ema_momentum", ema_momentum),
  )
  clipnorm, clipvalue, global_clipnorm = (
    real("clipnorm", clipnorm),
    real("clipvalue", clipvalue),
    real("global_clipnorm", global_clipnorm),
  )
  loss_scale_factor = real("loss_scale_factor", loss_scale_factor)
  _check_bool("amsgrad", amsgrad)
  _check_bool("use_ema", use_ema)
  _check_bool("jit_compile", jit_compile)
  if not isinstance(name, str):
    raise TypeError(f"`name` must be a string; got {hyperparams.describe(name)}.")
  if weight_decay is None and (exclude_from_weight_decay or weight_decay_mask is not None):
    raise ValueError(
      "`exclude_from_weight_decay` / `weight_decay_mask` need `weight_decay` to be "
      "set; got weight_decay=None."
    )
  clip = _clip_transform(clipnorm, clipvalue, global_clipnorm)
  keras3.check_accumulation_steps(gradient_accumulation_steps)
  _check_group_small_leaves(group_small_leaves, ema_style, use_ema)
  grouped = group_small_leaves is not None
  wd_masked = bool(exclude_from_weight_decay) or weight_decay_mask is not None
  lr = learning_rate
  if gradient_accumulation_steps and callable(lr) and not hyperparams.takes_no_arguments(lr):
    lr = keras3.raw_count_schedule(lr, gradient_accumulation_steps)  # schedules see every call

  transforms = AdamState(
    loss_scale=optax.identity()
    if loss_scale_factor is None
    else keras3.divide_by_loss_scale(loss_scale_factor),
    clip=clip,
    adam=scale.scale_by_keras_adam(
      beta_1, beta_2, epsilon, amsgrad, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    ),
    learning_rate=learning_rate_lib.scale_by_learning_rate(lr),
    weight_decay=optax.identity()
    if weight_decay is None
    else weight_decay_lib.add_decayed_weights(
      weight_decay,
      learning_rate=lr,
      exclude_from_weight_decay=None if grouped else exclude_from_weight_decay,
      weight_decay_mask=(grouping.decay_mask if wd_masked else None)
      if grouped
      else weight_decay_mask,
    ),
    ema=ema.parameter_ema(
      ema_momentum, ema_overwrite_frequency, ema_dtype=ema_dtype, ema_style=ema_style
    )
    if use_ema
    else optax.identity(),
  )
  group = None
  if grouped:
    decay_mask_fn = (
      _decay_mask_fn(exclude_from_weight_decay, weight_decay_mask) if wd_masked else None
    )
    group = (
      int(group_small_leaves),  # type: ignore[arg-type]  # checked by _check_group_small_leaves
      decay_mask_fn,
      clipnorm if _is_set(clipnorm) else None,
      global_clipnorm if _is_set(global_clipnorm) else None,
    )
  named, layout_of = _keyed_chain(transforms, group)
  if gradient_accumulation_steps:
    named = keras3.accumulate_gradients(gradient_accumulation_steps, named)
  needs_params = weight_decay is not None or use_ema

  def update_fn(updates, state, params=None, **extra_args):
    if needs_params and params is None:
      on = " and ".join(
        n for n, v in (("weight_decay", weight_decay is not None), ("use_ema", use_ema)) if v
      )
      raise ValueError(
        f"optadam.adam with {on} needs the parameters: call `tx.update(grads, opt_state, params)`."
      )
    return named.update(updates, state, params, **extra_args)

  plain_update = update_fn  # `update_fn` is rebound to its jit below

  def skippable_update(updates, state, params, finite, **extra_args):
    # loss_scale_optimizer's fast path: each transform keeps its old state unless `finite`.
    with _skip.skip_unless(finite):
      return plain_update(updates, state, params, **extra_args)

  # Array hyperparameters mean inject_hyperparams (or a trace) builds this optimizer at
  # every step; a jit here would then be a fresh function, recompiled at every call.
  if jit_compile and not _has_array_hyperparams(
    learning_rate,
    beta_1,
    beta_2,
    epsilon,
    weight_decay,
    clipnorm,
    clipvalue,
    global_clipnorm,
    ema_momentum,
    ema_overwrite_frequency,
    loss_scale_factor,
  ):
    update_fn, skippable_update = _checked_jit(update_fn), _checked_jit(skippable_update)

  tx = KerasAdam(named.init, update_fn)
  tx.skippable_update = skippable_update
  tx.name = name
  tx.keras_args = dict(
    learning_rate=learning_rate,
    beta_1=beta_1,
    beta_2=beta_2,
    epsilon=epsilon,
    amsgrad=amsgrad,
    weight_decay=weight_decay,
    clipnorm=clipnorm,
    clipvalue=clipvalue,
    global_clipnorm=global_clipnorm,
    use_ema=use_ema,
    ema_momentum=ema_momentum,
    ema_overwrite_frequency=ema_overwrite_frequency,
    jit_compile=jit_compile,
    name=name,
    loss_scale_factor=loss_scale_factor,
    gradient_accumulation_steps=gradient_accumulation_steps,
  )
  tx.group_small_leaves = group_small_leaves
  tx.group_layout = layout_of  # optadam.state_shardings decides the layout from shardings
  return tx
