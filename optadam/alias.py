"""`optadam.adam` and `optadam.adamw`: Keras's arguments and defaults, as one `optax.chain`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

from optadam import hyperparams
from optadam.chain import KerasAdam, build
from optadam.config import AdamConfig, check_keras_kwargs


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
      across devices are never grouped; ``init`` decides from the parameters
      it is given, so before a traced ``init`` (``jax.jit(tx.init)``,
      ``jax.eval_shape``), which sees no shardings, fix the layout from the
      sharded arrays or ShapeDtypeStructs: ``tx = tx.with_group_layout(structs)``
      (see `KerasAdam.with_group_layout`). Not with ``ema_style="keras3"``;
      sparse gradients only on leaves above the threshold.
    **kwargs: Keras's legacy keywords: ``lr``, ``decay``,
      ``gradient_aggregator``, ``gradient_transformers`` raise ValueError;
      ``is_legacy_optimizer`` and ``mesh`` are accepted and ignored.

  Returns:
    A `KerasAdam` (an ``optax.GradientTransformationExtraArgs``) whose state is an
    `AdamState`. Its ``update`` needs ``params`` when weight decay or EMA is on;
    ``tx.config`` holds the validated arguments (an `AdamConfig`).

  Example:
    >>> import jax, jax.numpy as jnp, optadam
    >>> tx = optadam.adam(learning_rate=1e-3, weight_decay=0.004)
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optadam.apply_updates(params, updates)
  """
  check_keras_kwargs(kwargs)
  config = AdamConfig(
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
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
    exclude_from_weight_decay=exclude_from_weight_decay,
    weight_decay_mask=weight_decay_mask,
    ema_dtype=ema_dtype,
    ema_style=ema_style,
    loss_scale_factor=loss_scale_factor,
    gradient_accumulation_steps=gradient_accumulation_steps,
    group_small_leaves=group_small_leaves,
  )
  return build(config)


def adamw(
  learning_rate: hyperparams.Hyperparam = 0.001,
  weight_decay: float = 0.004,
  beta_1: hyperparams.Hyperparam = 0.9,
  beta_2: hyperparams.Hyperparam = 0.999,
  epsilon: float = 1e-7,
  amsgrad: bool = False,
  clipnorm: Optional[float] = None,
  clipvalue: Optional[float] = None,
  global_clipnorm: Optional[float] = None,
  use_ema: bool = False,
  ema_momentum: float = 0.99,
  ema_overwrite_frequency: Optional[int] = None,
  jit_compile: bool = True,
  name: str = "AdamW",
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
  """Keras's ``AdamW`` (``tf.keras.optimizers.AdamW``, TF 2.11–2.15; Keras 3's) for optax.

  Keras's AdamW is its Adam with ``weight_decay`` second in the argument list and
  0.004 by default: the same decoupled decay ``x <- x - x * weight_decay * lr``
  before the Adam step, the same update and the same optimizer variables. So this
  is `optadam.adam` with those arguments, whose configuration names the class
  ``"AdamW"`` (`optadam.get_config` writes it; ``tx.config.keras_class``).
  ``weight_decay=None`` is a ValueError, as in Keras. The other arguments, and
  the optadam-only keyword arguments, are `optadam.adam`'s.

  Returns:
    A `KerasAdam` whose state is an `AdamState`; its ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optadam
    >>> tx = optadam.adamw(learning_rate=1e-3)
    >>> tx.config.weight_decay, tx.config.keras_class, optadam.get_config(tx)["name"]
    (0.004, 'AdamW', 'AdamW')
  """
  check_keras_kwargs(kwargs, "optadam.adamw")
  tx = adam(
    learning_rate,
    beta_1,
    beta_2,
    epsilon,
    amsgrad,
    weight_decay,
    clipnorm,
    clipvalue,
    global_clipnorm,
    use_ema,
    ema_momentum,
    ema_overwrite_frequency,
    jit_compile,
    name,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
    exclude_from_weight_decay=exclude_from_weight_decay,
    weight_decay_mask=weight_decay_mask,
    ema_dtype=ema_dtype,
    ema_style=ema_style,
    loss_scale_factor=loss_scale_factor,
    gradient_accumulation_steps=gradient_accumulation_steps,
    group_small_leaves=group_small_leaves,
  )
  return build(dataclasses.replace(tx.config, keras_class="AdamW"))
