"""Learning-rate scaling: a number, a schedule ``fn(step)``, or a zero-argument callable."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam import _tree
from optadam import hyperparams


class ScaleByLearningRateState(NamedTuple):
  """State of `scale_by_learning_rate`."""

  # shape=(), dtype=int32: updates already taken (a schedule's step)
  count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count (as in optax)


def scale_by_learning_rate(
  learning_rate: hyperparams.Hyperparam = 0.001,
) -> optax.GradientTransformation:
  """Multiplies updates by ``-learning_rate`` at the current step.

  `learning_rate` may be a number or scalar array (constant), a schedule
  ``fn(step)`` called with the number of updates already taken (0 on the first,
  as Keras), or a zero-argument callable, called on the host at every step —
  also inside a user's ``jax.jit`` — so that its current value is used without
  recompiling (Keras documents this; Keras 2 calls it once, Keras 3 bakes its
  value in at trace time).

  Numerics: like Keras's learning-rate variable, the value is held in float32
  (a float64 model sees ``float64(float32(lr))``, as in Keras); the product is
  formed in at least float32 and cast to the update's dtype (for a complex update,
  at least complex64: both parts are multiplied by the real rate).

  Differs from ``optax.scale_by_learning_rate`` in accepting zero-argument
  callables and in always keeping a step count (so the state's structure does not
  depend on the kind of learning rate).

  Args:
    learning_rate: the learning rate, in any of the forms above.

  Returns:
    An `optax.GradientTransformation`.
  """
  hyperparams.check_number("learning_rate", learning_rate)

  def init_fn(params):
    del params
    return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    lr = jnp.asarray(hyperparams.value_at(learning_rate, state.count), jnp.float32)

    def scale(u):
      dtype = jnp.promote_types(u.dtype, jnp.float32)
      return (u.astype(dtype) * (-lr).astype(dtype)).astype(u.dtype)

    new_state = ScaleByLearningRateState(count=optax.safe_increment(state.count))
    return _tree.map_grads(scale, updates), new_state

  return optax.GradientTransformation(init_fn, update_fn)
