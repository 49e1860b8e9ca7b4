"""Exponential moving average of the parameters, with periodic overwrite (Keras's ``use_ema``)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _tree
from optadam import hyperparams

EMA_STYLES = ("keras2", "keras3")


class ParameterEmaState(NamedTuple):
  """State of `parameter_ema`."""

  # shape=(), dtype=int32: updates already taken
  count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count (as in optax)
  ema: optax.Params  # the moving average, shaped like params (dtype: ema_dtype or the param's)


def check_ema_args(
  ema_momentum: Any, ema_overwrite_frequency: Any, ema_style: str = "keras2"
) -> None:
  """Validates the EMA arguments (docs: :ref:`parameter-ema`); traced values pass."""
  hyperparams.check_number("ema_momentum", ema_momentum, allow_callable=False, low=0.0, high=1.0)
  f = ema_overwrite_frequency
  if f is not None:
    if isinstance(f, jax.core.Tracer):
      pass
    elif isinstance(f, bool) or not (
      isinstance(f, (int, np.integer))
      or (
        isinstance(f, (np.ndarray, jax.Array))
        and np.ndim(f) == 0
        and np.issubdtype(np.asarray(f).dtype, np.integer)
      )
    ):
      raise ValueError(
        "`ema_overwrite_frequency` must be None or an int >= 0 (0 or None: never "
        f"overwrite); got {hyperparams.describe(f)}."
      )
    elif int(f) < 0:
      raise ValueError(
        "`ema_overwrite_frequency` must be None or an int >= 0 (0 or None: never "
        f"overwrite); got {f!r}."
      )
  if ema_style not in EMA_STYLES:
    raise ValueError(f"`ema_style` must be one of {EMA_STYLES}; got {ema_style!r}.")


def parameter_ema(
  ema_momentum: float = 0.99,
  ema_overwrite_frequency: Optional[int] = None,
  *,
  ema_dtype: Optional[Any] = None,
  ema_style: str = "keras2",
  gradient_accumulation_steps: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
  """Keeps an exponential moving average of the parameters; optionally overwrites them with it.

  This transform must come LAST in a chain: it sees the final update ``u`` and
  the parameters ``x`` and computes the post-update value ``x_new = x + u``
  exactly as ``optax.apply_updates`` will. Then::

    avg = ema_momentum * avg + (1 - ema_momentum) * x_new
    if ema_overwrite_frequency and (it + 1) % ema_overwrite_frequency == 0:
      emit  avg - x  as the update (the parameters land on the average)

  ``it`` is the number of updates already taken (0 on the first). The average
  starts as a copy of the parameters at ``init`` (Keras 2). On an overwrite step
  the stored average is set to the value the parameters land on
  (``x + (avg - x)``), so that the two are bit-equal afterwards; that value is
  ``avg`` itself unless the subtraction rounds (``|avg|`` much smaller than ``|x|``).

  Complex parameters are averaged as complex numbers (the momentum is real).
  ``init`` on `jax.ShapeDtypeStruct` leaves (abstract init) gives a zero average
  with the struct's sharding: there are no values to copy; restore the state from
  a checkpoint, or init with the real parameters, before training.

  This is an average of the parameters, not optax's ``ema`` (an average of the
  updates). Use `optadam.ema_params` to read the averages and
  `optadam.finalize_variable_values` to put them into the parameters.

  Args:
    ema_momentum: weight of the old average, in [0, 1].
    ema_overwrite_frequency: None or 0 (never), or overwrite after every
      ``ema_overwrite_frequency``-th update.
    ema_dtype: dtype of the average; default: the parameter's (as Keras). Use
      ``jnp.float32`` for 16-bit parameters. It sets the precision; a complex
      parameter gets a complex average (complex64 for ``jnp.float32``).
    ema_style: ``"keras2"`` (default; :ref:`parameter-ema`): parameters whose gradient is None
      are neither averaged nor overwritten that step. ``"keras3"`` reproduces
      Keras 3: the average is the post-update parameters after the first step
      (momentum 0 on it, computed in the average's dtype), and every parameter
      is averaged and overwritten, whether or not it got a gradient.
    gradient_accumulation_steps: Keras 3 only (``ema_style="keras3"``): the
      transform sees every call of an optimizer that accumulates this many
      gradients per update (placed after `optadam.accumulate_gradients`, so
      ``u`` is 0 on the calls that only accumulate), and counts Keras 3's
      ``iterations = calls // k``: the average is updated on every call, with
      momentum 0 while ``iterations == 0``, and the parameters are overwritten
      on every call where ``(iterations + 1) % ema_overwrite_frequency == 0``
      (the k calls of that update).

  On an overwrite step the parameters land on the average as Keras's
  ``var.assign(average)`` puts them there, also when they are infinite (the
  update is 0 where ``x`` already equals the average, never ``inf - inf``).
  Keras 3's JAX backend instead blends ``avg * 1 + x * 0``, which turns an
  infinite parameter or average into NaN; optadam does not reproduce that.

  ``update`` also accepts ``finite`` (a scalar bool array, or None): where it is
  False the average keeps its old value (`optadam.loss_scale_optimizer`'s skipped step).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose ``update`` needs ``params``.
  """
  check_ema_args(ema_momentum, ema_overwrite_frequency, ema_style)
  k = _check_accumulation(gradient_accumulation_steps, ema_style)
  ema_dtype = hyperparams.as_dtype("ema_dtype", ema_dtype, allow_complex=True)
  freq = ema_overwrite_frequency
  overwrites = freq is not None and not (
    hyperparams.concrete_number(freq) is not None and int(freq) == 0
  )

  def init_fn(params):
    _tree.check_params(params, "optadam.parameter_ema")

    def seed(p):
      dtype = _tree.state_dtype(_tree.dtype_of(p), ema_dtype)
      if isinstance(p, jax.ShapeDtypeStruct):  # abstract init: no values to copy
        return _tree.zeros_like(p, dtype)
      # a copy, never the parameter buffer itself (a donating train step would donate it twice)
      return jnp.array(p, dtype=dtype, copy=True)

    return ParameterEmaState(count=jnp.zeros([], jnp.int32), ema=jax.tree.map(seed, params))

  def update_fn(updates, state, params=None, *, finite=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(
        "The parameter EMA (`use_ema=True` / `optadam.parameter_ema`) needs the "
        "parameters: call `tx.update(grads, opt_state, params)`."
      )
    it = state.count if k == 1 else state.count // k  # Keras 3 accumulating: `iterations`
    overwrite = (it + 1) % jnp.asarray(freq, jnp.int32) == 0 if overwrites else None
    u_leaves, treedef = _tree.flatten_grads(updates)
    p_leaves = _tree.leaves_like(treedef, params)
    a_leaves = _tree.leaves_like(treedef, state.ema)
    out: list[Any] = []
    new_avg: list[Any] = []
    for u, p, avg in zip(u_leaves, p_leaves, a_leaves):
      if u is None and ema_style == "keras2":  # no gradient: not averaged, not overwritten
        out.append(None)
        new_avg.append(avg)
        continue
      blend = _blend(ema_momentum, ema_style, it, avg.dtype)
      u, new = _leaf_update(u, p, avg, blend, overwrite)
      out.append(u)
      new_avg.append(_tree.keep(new, avg, finite))  # the old average on a skipped step
    new_state = ParameterEmaState(
      count=optax.safe_increment(state.count), ema=treedef.unflatten(new_avg)
    )
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_accumulation(k: Any, ema_style: str) -> int:
  """The calls per update the EMA counts in (1 without accumulation)."""
  if k is None:
    return 1
  if ema_style != "keras3":
    raise ValueError(
      "`gradient_accumulation_steps` of parameter_ema is Keras 3's (ema_style='keras3'); with "
      "ema_style='keras2' put the EMA inside optadam.accumulate_gradients instead."
    )
  from_keras3 = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
  if not from_keras3:
    raise ValueError(
      f"`gradient_accumulation_steps` must be an int >= 1; got {hyperparams.describe(k)}."
    )
  return int(k)


def _leaf_update(u, p, avg, blend, overwrite):
  """One parameter's ``(update, new average)``: the blend of ``x_new = p + u``, and the overwrite.

  `u` is None for a parameter without a gradient (Keras 3 style: averaged and overwritten
  all the same); `overwrite` is the step's flag, or None without overwrites.
  """
  x_new = p if u is None else (p + u).astype(p.dtype)  # == optax.apply_updates
  if u is not None and avg.dtype != p.dtype:
    # Without the barrier XLA fuses this add into the average's kernel, which then reads
    # the old p after the donated buffer was updated in place (a copy of p every step),
    # and averages p + u in excess precision instead of the value the parameter stores.
    x_new = jax.lax.optimization_barrier(x_new)
  average = lambda x: blend(avg, x.astype(avg.dtype))
  new = average(x_new)
  if u is None:
    u = jnp.zeros_like(p)
  if overwrite is None:
    return u, new
  u = jnp.where(overwrite, _update_onto(new, p).astype(u.dtype), u)
  if avg.dtype == p.dtype:
    # Store exactly what the parameters land on. Off overwrite steps `landed` IS
    # x_new, so the average is written from it: XLA then reads the new parameters
    # back instead of materialising the update (one pass fewer per leaf).
    landed = (p + u).astype(p.dtype)
    new = jnp.where(overwrite, landed, average(landed))
  return u, new


def _blend(ema_momentum: Any, ema_style: str, it: jax.Array, dtype: Any) -> Any:
  """``(avg, x) -> new average`` for an average of `dtype` at step `it` (updates already taken).

  Keras 2: ``m * avg + (1 - m) * x``; a Python momentum stays a Python double and ``1 - m`` is
  formed in double (weakly typed, each rounds once to `dtype` where used); an array momentum
  is float32. Keras 3: ``m = cast(it != 0, dtype) * ema_momentum`` and ``1 - m``, in the
  average's dtype: a Python momentum meets the cast flag as a double, so a float64 average gets
  the double's value, not its float32 rounding. Keras 3 starts its average at zeros, so its
  first step gives ``x`` itself: here the average starts as a copy of the parameters, so that
  step selects ``x`` (``0 * avg`` would be NaN for an infinite parameter).
  """
  python = isinstance(ema_momentum, (int, float))
  if ema_style == "keras3":
    momentum = ema_momentum if python else jnp.asarray(ema_momentum).astype(dtype)
    m3 = (it != 0).astype(dtype) * momentum
    return lambda avg, x: jnp.where(it == 0, x, m3 * avg + (1 - m3) * x)
  if python:
    m, om = float(ema_momentum), 1.0 - float(ema_momentum)
    return lambda avg, x: m * avg + om * x
  as_array = jnp.asarray(ema_momentum, jnp.float32)
  m_array, om_array = as_array.astype(dtype), (1.0 - as_array).astype(dtype)
  return lambda avg, x: m_array * avg + om_array * x


def _update_onto(avg: jax.Array, p: jax.Array) -> jax.Array:
  """The update that moves `p` onto `avg` (Keras assigns it): ``avg - p``, 0 where they are equal.

  Equal infinities give 0, not ``inf - inf = NaN``: the parameter keeps its value, as Keras's
  ``var.assign(average)`` does. For finite values ``avg - p`` is 0 there anyway.
  """
  avg = avg.astype(p.dtype)
  return jnp.where(avg == p, jnp.zeros_like(p), avg - p)
