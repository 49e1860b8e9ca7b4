"""Keras 3's two optimizer extras: ``loss_scale_factor`` and ``gradient_accumulation_steps``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _tree
from optadam import hyperparams
from optadam import sparse


def check_accumulation_steps(gradient_accumulation_steps: Any) -> None:
  k = gradient_accumulation_steps
  if k is None:
    return
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
    hint = (
      " It shapes the state, so it cannot be a hyperparameter array: with "
      "optax.inject_hyperparams, pass static_args=('gradient_accumulation_steps',)."
      if isinstance(k, (jax.Array, np.ndarray))
      else ""
    )
    raise ValueError(
      "`gradient_accumulation_steps` must be None or an int >= 2 (Keras 3); got "
      f"{hyperparams.describe(k)}.{hint}"
    )


def check_loss_scale_factor(loss_scale_factor: Any) -> None:
  """Validates Keras 3's ``loss_scale_factor``: a finite number > 0 (traced values pass)."""
  hyperparams.check_number("loss_scale_factor", loss_scale_factor, allow_callable=False, low=0.0)
  if hyperparams.concrete_number(loss_scale_factor) == 0.0:
    raise ValueError("`loss_scale_factor` must be > 0 (or None for no loss scaling); got 0.")


def divide_by_loss_scale(loss_scale_factor: float) -> optax.GradientTransformation:
  """Divides every gradient by `loss_scale_factor`, before anything else (Keras 3).

  ``g <- g / loss_scale_factor`` — a division, as Keras 3 writes it, not a
  multiplication by the reciprocal (the roundings differ).

  Args:
    loss_scale_factor: the factor the loss was multiplied by (> 0).

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  check_loss_scale_factor(loss_scale_factor)

  def divide(g):
    values = sparse.values_of(g)
    if _tree.is_complex(values.dtype):  # both parts divided by the real factor
      factor = jnp.asarray(loss_scale_factor, _tree.real_dtype(values.dtype))
      return sparse.with_values(g, _tree.divide_by_real(values, factor))
    return sparse.with_values(g, values / jnp.asarray(loss_scale_factor, values.dtype))

  def update_fn(updates, state, params=None):
    del params
    return _tree.map_grads(divide, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class GradientAccumulationState(NamedTuple):
  """State of `accumulate_gradients`."""

  # shape=(), dtype=int32: calls so far (Keras 3's raw `_iterations`)
  count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count (as in optax)
  acc: optax.Updates  # sum of the gradients since the last real update, shaped like params
  inner: optax.OptState  # the wrapped optimizer's state (changes on real updates only)


def accumulate_gradients(
  gradient_accumulation_steps: int, inner: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
  """Keras 3's gradient accumulation around `inner`.

  Calls that are not the k-th add the gradient to an accumulator and emit zero
  updates; every k-th call runs `inner` on ``(g + acc) / k`` (Keras 3's mean,
  with its rounding) and resets the accumulator. `inner`'s own step count
  therefore counts real updates (Keras 3's bias correction uses ``calls // k``);
  give schedules the raw call count with `raw_count_schedule`.

  Differs from ``optax.MultiSteps`` in the arithmetic of the mean (a sum divided
  by k, not a running mean) and in having a fixed k. Unlike Keras 3, an EMA
  inside `inner` is updated on real updates only.

  ``update`` also accepts ``finite`` (a scalar bool array, or None), passed on to
  `inner`: where it is False the accumulators keep their old values.

  Args:
    gradient_accumulation_steps: k >= 2.
    inner: the transformation to run every k-th call.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a
    `GradientAccumulationState`.
  """
  check_accumulation_steps(gradient_accumulation_steps)
  k = int(gradient_accumulation_steps)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    _tree.check_params(params, "optadam.accumulate_gradients")
    acc = jax.tree.map(lambda p: _tree.zeros_like(p), params)
    return GradientAccumulationState(jnp.zeros([], jnp.int32), acc, inner.init(params))

  def update_fn(updates, state, params=None, *, finite=None, **extra_args):
    g_leaves, treedef = _tree.flatten_grads(updates)
    if any(sparse.is_sparse(g) for g in g_leaves):
      raise TypeError(
        "gradient_accumulation_steps does not support sparse (IndexedSlices) gradients; "
        "densify them first."
      )
    acc_leaves = _tree.leaves_like(treedef, state.acc)
    is_update = (state.count + 1) % k == 0
    mean = treedef.unflatten(
      [None if g is None else _mean(g, a, k) for g, a in zip(g_leaves, acc_leaves)]
    )

    def real_update(_):
      return inner.update(mean, state.inner, params, finite=finite, **extra_args)

    def accumulate(_):
      # Zeros like each gradient; an inner EMA in Keras 3's style also gives an update for a
      # parameter without a gradient (zeros like the parameter there), so that both branches
      # return the same tree.
      shaped = treedef.flatten_up_to(jax.eval_shape(real_update, None)[0])
      p_leaves = [None] * len(g_leaves) if params is None else treedef.flatten_up_to(params)
      zeros = [
        None if u is None else jnp.zeros_like(p if g is None else g)
        for u, g, p in zip(shaped, g_leaves, p_leaves)
      ]
      return treedef.unflatten(zeros), state.inner

    new_updates, new_inner = jax.lax.cond(is_update, real_update, accumulate, None)
    new_acc = [
      a
      if g is None
      else _tree.keep(jnp.where(is_update, jnp.zeros_like(a), a + g.astype(a.dtype)), a, finite)
      for g, a in zip(g_leaves, acc_leaves)
    ]
    new_state = GradientAccumulationState(
      optax.safe_increment(state.count), treedef.unflatten(new_acc), new_inner
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _mean(g: jax.Array, acc: jax.Array, k: int) -> jax.Array:
  """Keras 3's ``(g + acc) / k``; a complex sum has both parts divided by the real k."""
  if _tree.is_complex(jnp.result_type(g, acc)):
    return _tree.divide_by_real(g + acc, k)
  return (g + acc) / k


def raw_count_schedule(schedule, gradient_accumulation_steps: int):
  """`schedule` evaluated at the raw call count when called with the real-update count."""
  k = int(gradient_accumulation_steps)
  return lambda count: schedule(count * k + (k - 1))
