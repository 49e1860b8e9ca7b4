"""Dynamic loss scaling: Keras's ``LossScaleOptimizer`` around any optax transformation.

(The module is ``loss_scaling`` so that the public function `optadam.loss_scale` does not
shadow it.)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _tree
from optadam import hyperparams
from optadam import sparse

STYLES = ("keras2", "keras3")


class LossScaleState(NamedTuple):
  """State of `loss_scale_optimizer`."""

  scale: jax.Array  # shape=(), dtype=float32: the current dynamic loss scale
  good_steps: jax.Array  # shape=(), dtype=int32: finite steps since the scale last changed
  inner: optax.OptState  # the wrapped transformation's state


class LossScaleOptimizer(optax.GradientTransformationExtraArgs):
  """The `optax.GradientTransformationExtraArgs` returned by `optadam.loss_scale_optimizer`.

  Besides ``init`` and ``update`` it carries ``inner`` (the wrapped
  transformation), ``initial_scale``, ``dynamic_growth_steps``, ``style`` and ``name``
  (Keras 3's config key), read by `optadam.get_config`.
  """


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


def _nan_unless_finite(values: jax.Array) -> jax.Array:
  """A float32 scalar: 0 when every element of `values` is finite, NaN otherwise."""
  # x - x is 0 for a finite x and NaN for inf or NaN: one read of the leaf, no temporary (x * 0
  # would make XLA materialise a full-size broadcast of the zero, and isfinite a mask).
  summed = lambda v: jnp.sum(_zero_or_nan(v), dtype=jnp.float32)
  k = _row_length(values)
  if k is None:
    return summed(values)

  def matvec(v):
    # XLA:CPU reduces to a scalar on one thread but runs a matrix-vector product on all of
    # them: each row @ zeros is 0, or NaN where the row holds an inf or a NaN (inf * 0 = nan).
    # Only the last axis is split (into rows of k), so sharded leading axes stay as they are.
    rows = v.reshape(*v.shape[:-1], v.shape[-1] // k, k)
    products = jax.lax.dot_general(
      rows,
      jnp.zeros((k,), v.dtype),
      (((rows.ndim - 1,), (0,)), ((), ())),
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
    )
    return jnp.sum(products)

  return jax.lax.platform_dependent(values, cpu=matvec, default=summed)


def _zero_or_nan(values: jax.Array) -> jax.Array:
  zero_or_nan = values - values
  if jnp.issubdtype(values.dtype, jnp.complexfloating):
    zero_or_nan = zero_or_nan.real + zero_or_nan.imag
  return zero_or_nan


def _row_length(values: jax.Array) -> Optional[int]:
  """The row length for `_nan_unless_finite`'s matrix-vector product, or None (a plain sum)."""
  if values.size < 2**16 or not jnp.issubdtype(values.dtype, jnp.floating):
    return None
  # Long rows run at memory speed (rows of 256 take 3x as long as rows of 8192). Prefer rows
  # whose count (last // k) is a multiple of 8, so that a last axis sharded over up to 8 devices
  # splits into sharded rows and no partial products cross devices.
  last = values.shape[-1]
  ks = [k for k in range(min(last, 8192), 255, -1) if last % k == 0]
  return next((k for k in ks if k >= 1024 and (last // k) % 8 == 0), ks[0] if ks else None)


def _all_finite(leaves: list[Any]) -> jax.Array:
  """One boolean for all non-None leaves (a global reduction, also over shards and processes)."""
  sums = [_nan_unless_finite(sparse.values_of(g)) for g in leaves if g is not None]
  if not sums:
    return jnp.asarray(True)
  return jnp.isfinite(sum(sums[1:], sums[0]))


def _unscaled_all_finite(leaves: list[Any], unscale: Any, scale: jax.Array) -> jax.Array:
  """``_all_finite`` of the unscaled leaves, without forming them at every step."""
  # Times a factor in [0, 1] a value is finite exactly when it was, so with a scale >= 1 (Keras 2
  # never halves it below 1) the leaves themselves are checked; a smaller scale (an initial_scale
  # below 1) checks the products too, in a cond so that they are not formed at every step.
  finite = _all_finite(leaves)
  products = lambda leaves: _all_finite([None if g is None else unscale(g) for g in leaves])
  return finite & jax.lax.cond(scale >= 1, lambda leaves: jnp.asarray(True), products, leaves)


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
  power_of_two = value is not None and math.frexp(value)[0] == 0.5
  inner_tx = optax.with_extra_args_support(inner)

  def init_fn(params):
    return LossScaleState(
      scale=jnp.asarray(initial_scale, jnp.float32),
      good_steps=jnp.zeros([], jnp.int32),
      inner=inner_tx.init(params),
    )

  def unscale(g, scale):
    values = sparse.values_of(g)
    if style == "keras2":  # get_unscaled_gradients: times the float32 reciprocal, cast to g's dtype
      return sparse.with_values(g, values * (1.0 / scale).astype(values.dtype))
    # Keras 3: ops.divide(g, scale), promoted to float32 or wider; its Adam casts that to the
    # variable's dtype before any arithmetic. Here: back to g's dtype (a no-op from float32 up), so
    # that the updates have the gradients' dtype, as optax's transforms (and lax.cond) expect.
    wide = jnp.promote_types(values.dtype, jnp.float32)
    if not power_of_two:
      return sparse.with_values(g, (values / scale).astype(values.dtype))
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
    unscaled = values.astype(wide) * r1.astype(wide) * r2.astype(wide)
    return sparse.with_values(g, unscaled.astype(values.dtype))

  def update_fn(updates, state, params=None, **extra_args):
    g_leaves, treedef = _tree.flatten_grads(updates)
    scale = state.scale
    if style == "keras2":  # Keras 2 checks the unscaled gradients, Keras 3 the scaled ones
      finite = _unscaled_all_finite(g_leaves, lambda g: unscale(g, scale), scale)
    else:
      finite = _all_finite(g_leaves)
    if axis_name is not None:  # one decision for all the shards of the model
      finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) == 1

    skippable = getattr(inner, "skippable_update", None)
    if skippable is not None:  # optadam.adam: straight-line, each transform keeps its own state
      grads = treedef.unflatten([None if g is None else unscale(g, scale) for g in g_leaves])
      new_updates, new_inner = skippable(grads, state.inner, params, finite, **extra_args)
      skipped = _increment_counts(state.inner) if style == "keras2" else state.inner
      # The transforms kept their parameter-sized state; the scalars (step counts) settle here.
      new_inner = jax.tree.map(
        lambda new, old: new if jnp.ndim(new) else jnp.where(finite, new, old), new_inner, skipped
      )
      new_updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
    else:  # any other transformation: run it in the true branch of a cond

      def apply(operand):
        grads, inner_state = operand  # unscaled again here, so that XLA fuses it into the step
        grads = [None if g is None else unscale(g, scale) for g in grads]
        return inner_tx.update(treedef.unflatten(grads), inner_state, params, **extra_args)

      def skip(operand):
        shapes = jax.eval_shape(apply, operand)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes[0])
        inner_state = operand[1]
        return zeros, (_increment_counts(inner_state) if style == "keras2" else inner_state)

      new_updates, new_inner = jax.lax.cond(finite, apply, skip, (g_leaves, state.inner))
    new_scale, new_good = _next_scale(finite, state)
    return new_updates, LossScaleState(scale=new_scale, good_steps=new_good, inner=new_inner)

  def _next_scale(finite, state):
    scale = state.scale
    two = jnp.asarray(2.0, jnp.float32)
    if style == "keras2":
      grow = state.good_steps + 1 >= growth
      grown = scale * two
      grown = jnp.where(jnp.isfinite(grown), grown, scale)
      shrunk = jnp.maximum(scale / two, jnp.asarray(1.0, jnp.float32))
    else:
      grow = state.good_steps == growth - 1
      grown = scale * two
      shrunk = scale * jnp.asarray(0.5, jnp.float32)
    zero = jnp.zeros([], jnp.int32)
    new_scale = jnp.where(finite, jnp.where(grow, grown, scale), shrunk)
    new_good = jnp.where(finite & ~grow, optax.safe_increment(state.good_steps), zero)
    return new_scale, new_good

  tx = LossScaleOptimizer(init_fn, update_fn)
  tx.name = "loss_scale_optimizer"  # Keras 3's config has a name (set by from_keras_config)
  tx.inner = inner
  tx.initial_scale = initial_scale
  tx.dynamic_growth_steps = growth
  tx.style = style
  return tx


def _find_states(opt_state: Any) -> list[LossScaleState]:
  is_state = lambda x: isinstance(x, LossScaleState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def the_state(opt_state: Any) -> LossScaleState:
  """The one `LossScaleState` inside `opt_state` (private helper of the public readers)."""
  found = _find_states(opt_state)
  if not found:
    raise ValueError(
      "This optimizer state holds no loss scale: build the optimizer with "
      "`optadam.loss_scale_optimizer(...)`."
    )
  if len(found) > 1:
    raise ValueError(
      f"The optimizer state holds {len(found)} loss scales; pass the part of the state that "
      "holds the one you mean."
    )
  return found[0]


def loss_scale(opt_state: Any) -> jax.Array:
  """The current loss scale (float32 scalar), wherever the wrapper sits in `opt_state`.

  Finds the `LossScaleState` inside ``optax.chain``, ``inject_hyperparams``,
  ``MultiSteps`` and similar nestings. Works on traced states (inside ``jit``).

  Raises:
    ValueError: if the state holds no loss scale, or more than one.

  Example:
    >>> import jax.numpy as jnp, optadam, optax
    >>> tx = optax.MultiSteps(optadam.loss_scale_optimizer(optadam.adam(), 256.0), 2)
    >>> float(optadam.loss_scale(tx.init({"w": jnp.zeros(2)})))
    256.0
  """
  return the_state(opt_state).scale


def scale_loss(loss: Any, opt_state: Any) -> jax.Array:
  """``loss`` multiplied by the current loss scale, in the loss's dtype.

  Use it inside the function you differentiate, so that the gradients are those of
  the scaled loss that `loss_scale_optimizer`'s ``update`` expects. The product is
  formed in float32 (or the loss's dtype if wider) and then cast to the loss's dtype;
  for a float32 loss that is what both Keras versions compute (Keras 2 casts the scale
  to the loss's dtype first, which for a float16 loss turns a scale of 2**16 or more
  into inf; Keras 3 returns the float32 product). Prefer a float32 loss.

  Example:
    >>> import jax.numpy as jnp, optadam
    >>> state = optadam.loss_scale_optimizer(optadam.adam(), 8.0).init({"w": jnp.zeros(2)})
    >>> optadam.scale_loss(jnp.float16(1.5), state)
    Array(12., dtype=float16)
  """
  loss = jnp.asarray(loss)
  scale = loss_scale(opt_state)
  wide = jnp.promote_types(loss.dtype, jnp.float32)
  return (loss.astype(wide) * scale.astype(wide)).astype(loss.dtype)
