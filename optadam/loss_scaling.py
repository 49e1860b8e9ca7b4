"""Dynamic loss scaling: Keras's ``LossScaleOptimizer`` around any optax transformation.

(The module is ``loss_scaling`` so that the public function `optadam.loss_scale` does not
shadow it.) The two Keras versions differ in five rules; each is one small object here
(`_Keras2Rules`, `_Keras3Rules`), and the wrapper runs `inner` either straight-line (around
`optadam.adam`, whose transforms keep their state on a skipped step when given ``finite``) or
in the true branch of a ``lax.cond`` (any other transformation).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _finite
from optadam import _tree
from optadam import hyperparams
from optadam import sparse
from optadam.chain import KerasAdam

STYLES = ("keras2", "keras3")


class LossScaleState(NamedTuple):
  """State of `loss_scale_optimizer`."""

  scale: jax.Array  # shape=(), dtype=float32: the current dynamic loss scale
  good_steps: jax.Array  # shape=(), dtype=int32: finite steps since the scale last changed
  inner: optax.OptState  # the wrapped transformation's state


class LossScaleOptimizer(optax.GradientTransformationExtraArgs):
  """The `optax.GradientTransformationExtraArgs` returned by `optadam.loss_scale_optimizer`.

  Attributes:
    inner: the wrapped transformation.
    initial_scale: the scale before the first step.
    dynamic_growth_steps: consecutive finite steps after which the scale doubles.
    style: ``"keras2"`` or ``"keras3"``.
    name: Keras 3's config key (``"loss_scale_optimizer"`` unless read from a config).

  All are read by `optadam.get_config`.
  """

  inner: optax.GradientTransformation
  initial_scale: Any
  dynamic_growth_steps: int
  style: str
  name: str

  def __new__(cls, init, update, inner, initial_scale, dynamic_growth_steps, style, name):
    self = super().__new__(cls, init, update)
    self.inner, self.initial_scale, self.dynamic_growth_steps = (
      inner,
      initial_scale,
      dynamic_growth_steps,
    )
    self.style, self.name = style, name
    return self

  def __getnewargs__(self):
    return (
      self.init,
      self.update,
      self.inner,
      self.initial_scale,
      self.dynamic_growth_steps,
      self.style,
      self.name,
    )

  def with_name(self, name: str) -> LossScaleOptimizer:
    """The same optimizer under another ``name`` (Keras 3's config key)."""
    init, update, inner, initial_scale, growth, style, _ = self.__getnewargs__()
    return LossScaleOptimizer(init, update, inner, initial_scale, growth, style, name)


def _check_args(inner: Any, initial_scale: Any, dynamic_growth_steps: Any, style: Any) -> None:
  if isinstance(inner, LossScaleOptimizer):
    raise TypeError(
      "`inner` is already a loss_scale_optimizer; a LossScaleOptimizer cannot wrap another."
    )
  if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise TypeError(
      "`inner` must be an optax GradientTransformation (e.g. optadam.adam(...)); got "
      f"{hyperparams.describe(inner)}."
    )
  if (
    isinstance(initial_scale, bool)
    or not isinstance(initial_scale, (numbers.Real, np.ndarray, np.generic, jax.Array))
    or np.ndim(initial_scale) != 0  # type: ignore[arg-type]
  ):
    raise TypeError(
      "`initial_scale` must be a positive finite number; got "
      f"{hyperparams.describe(initial_scale)}."
    )
  value = hyperparams.concrete_number(initial_scale)
  as_float32 = np.float32(value) if value is not None and abs(value) < 3.5e38 else np.inf
  if value is not None and not (math.isfinite(float(as_float32)) and value > 0):
    raise ValueError(
      "`initial_scale` must be a positive number that is finite in float32 (the scale is "
      f"kept in float32); got {initial_scale!r}."
    )
  k = dynamic_growth_steps
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(
      "`dynamic_growth_steps` must be an int >= 1 (double the scale after that many finite "
      f"steps); got {hyperparams.describe(k)}."
    )
  if style not in STYLES:
    raise ValueError(f"`style` must be one of {STYLES}; got {style!r}.")


class _Keras2Rules:
  """TF 2.15's ``LossScaleOptimizer``: ``get_unscaled_gradients``, then ``apply_gradients``."""

  def unscale(self, values: jax.Array, scale: jax.Array) -> jax.Array:
    return values * (1.0 / scale).astype(values.dtype)  # the float32 reciprocal, in g's dtype

  def finite(self, leaves: list[Any], scale: jax.Array, unscale: Any) -> jax.Array:
    return _finite.unscaled_all_finite(leaves, unscale, scale)  # checks the unscaled gradients

  def moves(self, scale: jax.Array, good_steps: jax.Array, growth: int) -> tuple:
    """(grow, grown, shrunk): whether this finite step grows the scale, and the two scales."""
    two = jnp.asarray(2.0, jnp.float32)
    grown = scale * two
    grown = jnp.where(jnp.isfinite(grown), grown, scale)  # kept only if finite
    shrunk = jnp.maximum(scale / two, jnp.asarray(1.0, jnp.float32))  # floor at 1
    return good_steps + 1 >= growth, grown, shrunk

  def skipped(self, inner_state: Any) -> Any:
    return _increment_counts(inner_state)  # a skipped step still advances `iterations`


class _Keras3Rules:
  """Keras 3's ``LossScaleOptimizer.stateless_apply``."""

  def __init__(self, power_of_two: bool):
    self.power_of_two = power_of_two

  def unscale(self, values: jax.Array, scale: jax.Array) -> jax.Array:
    # Keras 3: ops.divide(g, scale), promoted to float32 or wider; its Adam casts that to the
    # variable's dtype before any arithmetic. Here: back to g's dtype (a no-op from float32 up),
    # so that the updates have the gradients' dtype, as optax's transforms (and lax.cond) expect.
    wide = jnp.promote_types(values.dtype, jnp.float32)
    if not self.power_of_two:
      return (values / scale).astype(values.dtype)
    # A power-of-two scale stays one (or 0 / inf), and dividing by it is multiplying by its
    # exact reciprocal: the same bits, without a division that XLA would materialise. The
    # reciprocal is applied as two normal power-of-two factors (1/scale itself can be
    # subnormal, which XLA flushes to 0, or overflow), each product exact.
    r1 = jnp.where(
      scale > 2.0**64,
      jnp.float32(2.0**-64),
      jnp.where(scale < 2.0**-64, jnp.float32(2.0**64), jnp.float32(1.0)),
    )
    r2 = 1.0 / (scale * r1)
    return (values.astype(wide) * r1.astype(wide) * r2.astype(wide)).astype(values.dtype)

  def finite(self, leaves: list[Any], scale: jax.Array, unscale: Any) -> jax.Array:
    del scale, unscale
    return _finite.all_finite(leaves)  # checks the scaled gradients

  def moves(self, scale: jax.Array, good_steps: jax.Array, growth: int) -> tuple:
    """(grow, grown, shrunk): no floor, no check of the doubled scale."""
    grown = scale * jnp.asarray(2.0, jnp.float32)
    shrunk = scale * jnp.asarray(0.5, jnp.float32)
    return good_steps == growth - 1, grown, shrunk

  def skipped(self, inner_state: Any) -> Any:
    return inner_state  # a skipped step does not exist for the inner optimizer


def _increment_counts(state: Any) -> Any:
  """`state` with every integer ``count`` field of its NamedTuples incremented (saturating)."""
  has_count = lambda x: isinstance(x, tuple) and hasattr(x, "_fields") and "count" in x._fields

  def bump(x):
    if not has_count(x):
      return x
    inner = {f: _increment_counts(getattr(x, f)) for f in x._fields if f != "count"}
    count = x.count
    if hasattr(count, "dtype") and jnp.issubdtype(count.dtype, jnp.integer):
      count = optax.safe_increment(count)
    return x._replace(count=count, **inner)

  return jax.tree.map(bump, state, is_leaf=has_count)


def loss_scale_optimizer(
  inner: optax.GradientTransformation,
  initial_scale: float = 2.0**15,
  dynamic_growth_steps: int = 2000,
  *,
  style: str = "keras2",
  axis_name: Any = None,
) -> LossScaleOptimizer:
  """Keras's ``LossScaleOptimizer`` (dynamic loss scaling) around `inner`.

  Multiply the loss by the current scale inside your ``jax.grad`` (`optadam.scale_loss`)
  and pass the gradients **of the scaled loss** to ``update``. Each step then:

  1. unscales the gradients, checks them for non-finite values (one decision for all
     leaves; ``None`` leaves are ignored), and
  2. on a finite step runs `inner` on the unscaled gradients, adds 1 to
     ``good_steps`` and, once ``good_steps`` reaches `dynamic_growth_steps`, doubles
     the scale and resets ``good_steps`` to 0;
  3. on a non-finite step emits updates that are exactly zero (the parameters do not
     move), halves the scale and resets ``good_steps`` to 0.

  Around `optadam.adam` (the ``KerasAdam`` it returns) the step is straight-line: Adam's
  transforms keep their own moments, AMSGrad maximum, EMA average and accumulators where
  they compute them (``where(finite, new, old)``, fused into the kernels that write them),
  and the updates are zeroed, so the wrapper adds one finiteness reduction to Adam's
  kernels (about 1.1x the plain step at 1e7 parameters on CPU; `benchmarks.loss_scale`).
  Any other `inner` (an ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``, ...) runs
  in the true branch of a ``lax.cond``, which on CPU copies its state in and out (2.4-3x).
  Both give the same trajectory (to a few float32 ulp: XLA fuses them differently).

  The two styles differ in every place where the two Keras versions do (each observed
  by running them):

  =====================  ===================================  ================================
  rule                   ``"keras2"`` (TF 2.15 ``tf.keras``)  ``"keras3"`` (Keras 3)
  =====================  ===================================  ================================
  unscaling              ``g * cast(1/scale, g.dtype)``       ``g / scale`` in float32 (or
                                                              wider), cast to ``g.dtype``
  finiteness checked on  the unscaled gradients               the scaled gradients
  halving                ``max(scale / 2, 1)``: floor at 1    ``scale * 0.5``: no floor (can
                                                              reach 0, then NaN updates)
  doubling               kept only if finite (max 2**127)     not checked (can become inf,
                                                              then every step is skipped)
  growth test            ``good_steps + 1 >= growth_steps``   ``good_steps == growth_steps-1``
  skipped step           inner ``iterations`` += 1 (every     inner state unchanged
                         ``count`` in the inner state)
  =====================  ===================================  ================================

  So under ``"keras2"`` a skipped step still advances the inner optimizer's step
  count: Adam's bias correction, learning-rate schedules and the EMA overwrite
  period move on as if the step had been taken (``optadam.adam``'s moments and EMA
  average do not change). Under ``"keras3"`` a skipped step does not exist for the
  inner optimizer. In both, the scale used to unscale a step's gradients is the
  scale before that step's update (the scale the loss was multiplied by).

  ``"keras2"`` reproduces ``LossScaleOptimizer.get_unscaled_gradients`` followed by
  ``apply_gradients`` (Keras 2's custom training loop, and what ``fit`` does);
  ``"keras3"`` reproduces ``keras.optimizers.LossScaleOptimizer.stateless_apply``.
  (With a power-of-two `initial_scale`, the default, ``"keras3"`` multiplies by the exact
  reciprocal, which gives the bits of the division; a scale that is not a power of two is
  divided by.) With 16-bit gradients the two unscalings round differently (``"keras3"``
  rounds the float32 quotient to the gradient's dtype, as Keras 3's Adam casts it to the
  variable's: `inner` gets, and the updates have, the gradients' dtype), and for a scale
  that is not a power of two they differ by one rounding even in float32.

  Args:
    inner: the optax transformation to wrap, normally `optadam.adam`. Its ``update``
      gets the unscaled gradients, the parameters and any extra arguments.
    initial_scale: the scale before the first step, a positive number finite in
      float32 (Keras's default 2**15).
    dynamic_growth_steps: double the scale after this many consecutive finite steps
      (an int >= 1; Keras's default 2000).
    style: ``"keras2"`` (default) or ``"keras3"``.
    axis_name: only for an ``update`` that runs inside ``shard_map`` (or ``pmap``) on
      per-device pieces of the gradients: the mesh axis name(s) over which the
      finiteness decision is combined, so that every device takes the same one. Under
      ``jax.jit`` with sharded (global) arrays, and across processes, the check is
      already global; leave it None.

  Returns:
    A `LossScaleOptimizer` (an ``optax.GradientTransformationExtraArgs``) whose state
    is a `LossScaleState`. Read the scale with `optadam.loss_scale`.

  Raises:
    TypeError: if `inner` is not a transformation or is itself a loss_scale_optimizer.
    ValueError: for a non-positive or non-finite `initial_scale`, `dynamic_growth_steps`
      < 1 or not an int, or an unknown `style`.

  Example:
    >>> import jax, jax.numpy as jnp, optadam
    >>> tx = optadam.loss_scale_optimizer(optadam.adam(1e-3), initial_scale=2.0**10)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> grads = jax.grad(lambda p: optadam.scale_loss(loss(p), state))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optadam.apply_updates(params, updates)
    >>> float(optadam.loss_scale(state)), int(state.good_steps)
    (1024.0, 1)
    >>> bad = {"w": jnp.array([1.0, jnp.inf, 0.0])}
    >>> updates, state = tx.update(bad, state, params)  # skipped: zero updates, scale halved
    >>> float(optadam.loss_scale(state)), updates["w"].tolist()
    (512.0, [0.0, 0.0, 0.0])
  """
  _check_args(inner, initial_scale, dynamic_growth_steps, style)
  growth = int(dynamic_growth_steps)
  value = hyperparams.concrete_number(initial_scale)
  rules: Any = _Keras2Rules()
  if style == "keras3":
    rules = _Keras3Rules(power_of_two=value is not None and math.frexp(value)[0] == 0.5)
  inner_tx = optax.with_extra_args_support(inner)
  run_inner = _straight_line if isinstance(inner, KerasAdam) else _in_cond

  def init_fn(params):
    return LossScaleState(
      scale=jnp.asarray(initial_scale, jnp.float32),
      good_steps=jnp.zeros([], jnp.int32),
      inner=inner_tx.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    g_leaves, treedef = _tree.flatten_grads(updates)
    unscale = lambda g: sparse.with_values(g, rules.unscale(sparse.values_of(g), state.scale))
    finite = rules.finite(g_leaves, state.scale, unscale)
    if axis_name is not None:  # one decision for all the shards of the model
      finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) == 1
    step = _Step(treedef, g_leaves, unscale, finite, params, extra_args)
    new_updates, new_inner = run_inner(inner_tx, rules, step, state.inner)
    new_scale, new_good = _next_scale(rules, finite, state, growth)
    return new_updates, LossScaleState(scale=new_scale, good_steps=new_good, inner=new_inner)

  return LossScaleOptimizer(
    init_fn, update_fn, inner, initial_scale, growth, style, "loss_scale_optimizer"
  )


class _Step(NamedTuple):
  """One step's gradients and what the wrapper decided about them."""

  treedef: Any
  g_leaves: list[Any]  # the scaled gradients (None leaves included)
  unscale: Any  # g -> the unscaled g
  finite: jax.Array  # scalar bool: take the step
  params: Any
  extra_args: dict[str, Any]


def _straight_line(inner_tx, rules, step: _Step, inner_state):
  """`optadam.adam`: its transforms keep their parameter-sized state where ``finite`` is False."""
  grads = step.treedef.unflatten([None if g is None else step.unscale(g) for g in step.g_leaves])
  new_updates, new_inner = inner_tx.update(
    grads, inner_state, step.params, finite=step.finite, **step.extra_args
  )
  skipped = rules.skipped(inner_state)
  # The transforms kept their parameter-sized state; the scalars (step counts) settle here.
  new_inner = jax.tree.map(
    lambda new, old: new if jnp.ndim(new) else jnp.where(step.finite, new, old), new_inner, skipped
  )
  new_updates = jax.tree.map(lambda u: jnp.where(step.finite, u, jnp.zeros_like(u)), new_updates)
  return new_updates, new_inner


def _in_cond(inner_tx, rules, step: _Step, inner_state):
  """Any other transformation: run in the true branch of a ``lax.cond`` (copies its state)."""

  def apply(operand):
    grads, state = operand  # unscaled again here, so that XLA fuses it into the step
    grads = [None if g is None else step.unscale(g) for g in grads]
    return inner_tx.update(step.treedef.unflatten(grads), state, step.params, **step.extra_args)

  def skip(operand):
    shapes = jax.eval_shape(apply, operand)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes[0])
    return zeros, rules.skipped(operand[1])

  return jax.lax.cond(step.finite, apply, skip, (step.g_leaves, inner_state))


def _next_scale(rules, finite: jax.Array, state: LossScaleState, growth: int) -> tuple:
  """The scale and good-step count after a step: grown, kept or shrunk by `rules`."""
  grow, grown, shrunk = rules.moves(state.scale, state.good_steps, growth)
  zero = jnp.zeros([], jnp.int32)
  new_scale = jnp.where(finite, jnp.where(grow, grown, state.scale), shrunk)
  new_good = jnp.where(finite & ~grow, optax.safe_increment(state.good_steps), zero)
  return new_scale, new_good
