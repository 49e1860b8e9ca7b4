"""The Keras Adam scaler: moments, bias correction folded into alpha, epsilon-hat, AMSGrad."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optadam import _skip
from optadam import _tree
from optadam import hyperparams
from optadam import sparse


class ScaleByKerasAdamState(NamedTuple):
  """State of `scale_by_keras_adam`."""

  # shape=(), dtype=int32: updates already taken (Keras's `iterations`)
  count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count (as in optax)
  mu: optax.Updates  # first moment m, shaped like params (dtype: mu_dtype or the param's)
  nu: optax.Updates  # second moment v, shaped like params (dtype: nu_dtype or the param's)
  nu_max: Optional[
    optax.Updates
  ]  # running max of the raw v (AMSGrad's v-hat); None without amsgrad


def _one_minus(beta: Any, beta_now: Any) -> Any:
  """`1 - beta`: in Python double for a Python number (Keras's rounding), else float32."""
  if isinstance(beta, (int, float)) and not isinstance(beta, bool):
    return 1.0 - float(beta)
  return 1.0 - jnp.asarray(beta_now, jnp.float32)


def scale_by_keras_adam(
  beta_1: hyperparams.Hyperparam = 0.9,
  beta_2: hyperparams.Hyperparam = 0.999,
  epsilon: float = 1e-7,
  amsgrad: bool = False,
  *,
  mu_dtype: Optional[Any] = None,
  nu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Scales gradients by Keras's Adam rule (without the learning rate).

  With ``t`` the 1-based step, per parameter with gradient ``g``::

    m     = m + (g - m) * (1 - beta_1)
    v     = v + (g * g - v) * (1 - beta_2)
    v_hat = max(v_hat, v)                       # amsgrad only: max of the RAW v
    c     = sqrt(1 - beta_2**t) / (1 - beta_1**t)
    out   = (m * c) / (sqrt(v_hat or v) + epsilon)

  Multiplied by ``-learning_rate`` (`optadam.scale_by_learning_rate`) this is
  Keras's ``x -= (m * alpha) / (sqrt(v) + epsilon)`` with
  ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``.

  Differences from optax: ``optax.scale_by_adam`` bias-corrects ``v`` and puts
  epsilon after that correction; Keras's epsilon is "epsilon hat", outside the
  square root and not bias-corrected (it acts like ``epsilon / sqrt(1 - beta_2**t)``
  in the textbook form). ``optax.scale_by_amsgrad`` maxes the bias-corrected
  ``v``; Keras maxes the raw one. The two agree only when epsilon is 0.

  Numerics: ``1 - beta`` is formed in Python double precision and rounded to the
  moment dtype (Keras's rounding); the powers and ``c`` are computed in float32
  (float64 for float64 moments, from ``float32(beta)`` as Keras 2's ``tf.cast``
  does), so that 16-bit parameters still move (Keras 2 rounds ``beta_2 = 0.999``
  to 1.0 in bfloat16 and never moves them). The
  step count is a saturating int32. Gradient leaves that are ``None`` leave
  their moments untouched and give a ``None`` update; sparse
  `optadam.IndexedSlices` gradients give the dense-equivalent result.

  Complex parameters (optax's convention, Keras's arithmetic): ``m`` is the
  moving average of the complex ``g``; ``v`` that of the real
  ``|g|^2 = real(g * conj(g))``, so ``v`` (and AMSGrad's ``v_hat``) are real
  arrays; the real and imaginary parts of ``m * c`` are each divided by the
  real ``sqrt(v) + epsilon``. Real parameters are computed exactly as above.
  Pass the conjugate of ``jax.grad``'s result as the gradient of a real loss of
  complex parameters (JAX returns ``df/dx - i df/dy``; the descent direction is
  its conjugate), as for any optax optimizer.

  Only floating-point and complex parameters can be optimized: ``init`` raises a
  `TypeError` naming the path of any other leaf (integer step counters, RNG
  keys, booleans). ``init`` also accepts `jax.ShapeDtypeStruct` leaves and
  returns zeros carrying the struct's sharding.

  Args:
    beta_1: decay of the first moment: a float, a schedule ``fn(step)`` or a
      zero-argument callable (called at every step).
    beta_2: decay of the second moment, same forms.
    epsilon: Keras's epsilon-hat, added to ``sqrt(v)``.
    amsgrad: use the running maximum of the raw second moment.
    mu_dtype: dtype of the first moment; default: the parameter's (as Keras).
      It sets the precision; the kind follows the parameter: with
      ``jnp.float32`` (or ``jnp.complex64``) a real parameter gets a float32
      ``m`` and a complex one a complex64 ``m``.
    nu_dtype: dtype of the second moment (and of ``v_hat``), a real floating
      dtype; default: the parameter's (its real counterpart for a complex
      parameter: complex64 -> float32). Use ``jnp.float32`` to keep 16-bit
      models' moments precise.

  Returns:
    An `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp, optax, optadam
    >>> tx = optax.chain(optadam.scale_by_keras_adam(), optax.scale(-1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, state)
    >>> updates["w"].dtype, state[0].nu["w"].dtype
    (dtype('float32'), dtype('float32'))

    A complex parameter has a complex ``m`` and a real ``v``; both parts move:

    >>> tx = optadam.scale_by_keras_adam()
    >>> state = tx.init(jnp.zeros(1, jnp.complex64))
    >>> updates, state = tx.update(jnp.array([1.0 + 1.0j], jnp.complex64), state)
    >>> state.mu.dtype, state.nu.dtype, state.nu
    (dtype('complex64'), dtype('float32'), Array([0.002], dtype=float32))
  """
  hyperparams.check_number("beta_1", beta_1, low=0.0, high=1.0, high_inclusive=False)
  hyperparams.check_number("beta_2", beta_2, low=0.0, high=1.0, high_inclusive=False)
  hyperparams.check_number("epsilon", epsilon, allow_callable=False, low=0.0)
  mu_dtype = hyperparams.as_dtype("mu_dtype", mu_dtype, allow_complex=True)
  nu_dtype = hyperparams.as_dtype(
    "nu_dtype", nu_dtype, why="the second moment |g|^2 is real, also for complex parameters"
  )

  def init_fn(params):
    _tree.check_params(params, "optadam.scale_by_keras_adam")

    def zeros(dtype, real=False):
      return lambda p: _tree.zeros_like(p, _tree.state_dtype(_tree.dtype_of(p), dtype, real=real))

    mu = jax.tree.map(zeros(mu_dtype), params)
    nu = jax.tree.map(zeros(nu_dtype, real=True), params)
    nu_max = jax.tree.map(zeros(nu_dtype, real=True), params) if amsgrad else None
    return ScaleByKerasAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, nu_max=nu_max)

  def update_fn(updates, state, params=None):
    del params
    sparse.check_row_indices(updates)  # concrete indices only; traced ones are dropped
    b1 = hyperparams.value_at(beta_1, state.count)
    b2 = hyperparams.value_at(beta_2, state.count)
    one_minus_b1 = _one_minus(beta_1, b1)
    one_minus_b2 = _one_minus(beta_2, b2)

    factors = {}  # compute dtype -> bias-correction factor c (one per dtype, shared by leaves)

    def correction(dtype):
      if dtype not in factors:
        t = (state.count + 1).astype(dtype)
        # Keras 2's tf.cast(beta, dtype) goes through a float32 tensor, also for float64.
        b1_power = jnp.power(jnp.asarray(b1, jnp.float32).astype(dtype), t)
        b2_power = jnp.power(jnp.asarray(b2, jnp.float32).astype(dtype), t)
        factors[dtype] = jnp.sqrt(1 - b2_power) / (1 - b1_power)
      return factors[dtype]

    g_leaves, treedef = _tree.flatten_grads(updates)
    mu_leaves = _tree.leaves_like(treedef, state.mu)
    nu_leaves = _tree.leaves_like(treedef, state.nu)
    vmax_leaves = _tree.leaves_like(treedef, state.nu_max) if amsgrad else [None] * len(g_leaves)

    out: list[Any] = []
    new_mu, new_nu, new_vmax = [], [], []
    for g, m, v, vmax in zip(g_leaves, mu_leaves, nu_leaves, vmax_leaves):
      if g is None:  # no gradient: this parameter is skipped entirely (Keras)
        out.append(None)
        new_mu.append(m)
        new_nu.append(v)
        new_vmax.append(vmax)
        continue
      mu_old, nu_old = m, v
      if sparse.is_sparse(g):
        m, v = sparse.keras_moments(g, m, v, one_minus_b1, one_minus_b2)
        out_dtype = g.dtype
      else:
        gm = g.astype(m.dtype)
        if _tree.is_complex(g.dtype):  # v follows |g|^2, real
          g_sq = _tree.complex_abs_sq(g, v.dtype)
        else:
          gv = g.astype(v.dtype)
          g_sq = gv * gv
        m = m + (gm - m) * hyperparams.cast(one_minus_b1, m.dtype)
        v = v + (g_sq - v) * hyperparams.cast(one_minus_b2, v.dtype)
        out_dtype = g.dtype
      m, v = _skip.keep((m, v), (mu_old, nu_old))  # the old moments on a skipped step
      if amsgrad:
        vmax = _skip.keep(jnp.maximum(vmax, v), vmax)
      v_used = vmax if amsgrad else v
      dtype = _tree.real_dtype(jnp.promote_types(m.dtype, v_used.dtype))
      c = correction(jnp.promote_types(dtype, jnp.float32))
      denominator = jnp.sqrt(v_used) + jnp.asarray(epsilon, v_used.dtype)
      step = _tree.divide_by_real(m * c.astype(m.dtype), denominator)
      out.append(step.astype(out_dtype))
      new_mu.append(m)
      new_nu.append(v)
      new_vmax.append(vmax)

    unflatten = treedef.unflatten
    new_state = ScaleByKerasAdamState(
      count=optax.safe_increment(state.count),
      mu=unflatten(new_mu),
      nu=unflatten(new_nu),
      nu_max=unflatten(new_vmax) if amsgrad else None,
    )
    return unflatten(out), new_state

  return optax.GradientTransformation(init_fn, update_fn)
