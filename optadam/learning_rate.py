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


class LegacyDecay:
  """TF's legacy learning-rate decay: ``lr_t = lr(step) / (1 + decay * step)``.

  The learning rate of ``tf.keras.optimizers.legacy.Adam`` (the Adam of TF <= 2.10)
  at step ``step`` (updates already taken, 0 on the first), in float32 as TF
  computes it for float32 variables: ``lr(step)`` is `learning_rate` (a number) or
  its value at ``step`` (a schedule ``fn(step)``), and then, when ``decay > 0``,
  ``lr_t = lr_t / (1 + float32(decay) * float32(step))``. A schedule and a decay
  compose, as in TF.

  Give it as the learning rate of `optadam.adam`; with the betas as float32
  numbers (``np.float32(0.9)``, which `optadam.scale_by_keras_adam` turns into
  ``1 - beta`` in float32, as TF's legacy kernels do) that is the legacy Adam::

    tx = optadam.adam(
      learning_rate=optadam.LegacyDecay(0.001, decay=1e-4),
      beta_1=np.float32(0.9),
      beta_2=np.float32(0.999),
    )

  (`optadam.from_keras_config` and `optadam.from_keras_file` build exactly this
  from a legacy config or file.) For float64 variables TF divides in float64;
  here the rate is float32 (as every learning rate in optadam), so it can differ
  in its last float32 bit.

  Args:
    learning_rate: a number or a schedule ``fn(step)`` (e.g. from
      `optadam.schedules`), called with the float32 step, as TF does.
    decay: the legacy ``decay`` (>= 0; 0: no decay).
  """

  def __init__(self, learning_rate: hyperparams.Hyperparam, decay: float = 0.0):
    hyperparams.check_number("learning_rate", learning_rate)
    if callable(learning_rate) and hyperparams.takes_no_arguments(learning_rate):
      raise TypeError(
        "LegacyDecay's `learning_rate` must be a number or a schedule fn(step); got the "
        f"zero-argument callable {learning_rate!r}."
      )
    hyperparams.check_number("decay", decay, allow_callable=False, low=0.0)
    self.learning_rate = learning_rate
    self.decay = decay

  def __call__(self, step: jax.Array) -> jax.Array:
    step = jnp.asarray(step).astype(jnp.float32)
    lr = jnp.asarray(hyperparams.value_at(self.learning_rate, step), jnp.float32)
    if hyperparams.concrete_number(self.decay) == 0.0:
      return lr  # TF applies the decay only when it is > 0
    return lr / (1.0 + jnp.float32(self.decay) * step)

  def __repr__(self) -> str:
    return f"LegacyDecay({self.learning_rate!r}, decay={self.decay!r})"
