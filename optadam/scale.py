"""The Keras Adam scaler: moments, bias correction folded into alpha, epsilon-hat, AMSGrad."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

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
) -> optax.GradientTransformationExtraArgs:
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
  moment dtype (Keras's rounding) for a Python-number beta, and in float32 for a
  float32 number or array (``np.float32(0.9)``: ``1 - 0.9f = 0.100000024``, what
  TF's legacy Adam kernels compute; see `optadam.LegacyDecay`); the powers and ``c``
  are computed in float32 (float64 for float64 moments, from ``float32(beta)`` as
  Keras 2's ``tf.cast`` does), so that 16-bit parameters still move (Keras 2 rounds
  ``beta_2 = 0.999`` to 1.0 in bfloat16 and never moves them). The step count is a
  saturating int32. Gradient leaves that are ``None`` leave
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

  ``update`` also accepts ``finite`` (a scalar bool array, or None): where it is
  False the moments and ``v_hat`` keep their old values (the step count and the
  update are the caller's to settle); `optadam.loss_scale_optimizer` skips a step
  with it, without a ``lax.cond``.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

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
  mu_dtype, nu_dtype = check_args(beta_1, beta_2, epsilon, mu_dtype, nu_dtype)

  def init_fn(params):
    _tree.check_params(params, "optadam.scale_by_keras_adam")

    def zeros(dtype, real=False):
      return lambda p: _tree.zeros_like(p, _tree.state_dtype(_tree.dtype_of(p), dtype, real=real))

    return ScaleByKerasAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(zeros(mu_dtype), params),
      nu=jax.tree.map(zeros(nu_dtype, real=True), params),
      nu_max=jax.tree.map(zeros(nu_dtype, real=True), params) if amsgrad else None,
    )

  def update_fn(updates, state, params=None, *, finite=None, **extra_args):
    del params, extra_args
    sparse.check_row_indices(updates)  # concrete indices only; traced ones are dropped
    b1 = hyperparams.value_at(beta_1, state.count)
    b2 = hyperparams.value_at(beta_2, state.count)
    one_minus = (_one_minus(beta_1, b1), _one_minus(beta_2, b2))
    correction = _BiasCorrection(b1, b2, state.count)
    g_leaves, treedef = _tree.flatten_grads(updates)
    mu, nu = (_tree.leaves_like(treedef, x) for x in (state.mu, state.nu))
    vmax = _tree.leaves_like(treedef, state.nu_max) if amsgrad else [None] * len(g_leaves)
    out, new = [], []
    for leaf in zip(g_leaves, mu, nu, vmax):
      step, moments = _leaf_step(*leaf, one_minus, correction, epsilon, amsgrad, finite)
      out.append(step)
      new.append(moments)
    mu, nu, vmax = (treedef.unflatten([x[i] for x in new]) for i in range(3))
    new_state = ScaleByKerasAdamState(
      count=optax.safe_increment(state.count), mu=mu, nu=nu, nu_max=vmax if amsgrad else None
    )
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_args(beta_1: Any, beta_2: Any, epsilon: Any, mu_dtype: Any, nu_dtype: Any) -> tuple:
  """Validates the Keras Adam scaler's arguments (traced values and callables pass).

  Returns:
    ``(mu_dtype, nu_dtype)`` as numpy dtypes (or None).
  """
  hyperparams.check_number("beta_1", beta_1, low=0.0, high=1.0, high_inclusive=False)
  hyperparams.check_number("beta_2", beta_2, low=0.0, high=1.0, high_inclusive=False)
  hyperparams.check_number("epsilon", epsilon, allow_callable=False, low=0.0)
  return (
    hyperparams.as_dtype("mu_dtype", mu_dtype, allow_complex=True),
    hyperparams.as_dtype(
      "nu_dtype", nu_dtype, why="the second moment |g|^2 is real, also for complex parameters"
    ),
  )


class _BiasCorrection:
  """``c = sqrt(1 - beta_2**t) / (1 - beta_1**t)`` per compute dtype, one per dtype per step."""

  def __init__(self, b1: Any, b2: Any, count: jax.Array):
    self.b1, self.b2, self.t = b1, b2, count + 1
    self.factors: dict[Any, jax.Array] = {}

  def __call__(self, dtype: Any) -> jax.Array:
    if dtype not in self.factors:
      t = self.t.astype(dtype)
      # Keras 2's tf.cast(beta, dtype) goes through a float32 tensor, also for float64.
      b1_power = jnp.power(jnp.asarray(self.b1, jnp.float32).astype(dtype), t)
      b2_power = jnp.power(jnp.asarray(self.b2, jnp.float32).astype(dtype), t)
      self.factors[dtype] = jnp.sqrt(1 - b2_power) / (1 - b1_power)
    return self.factors[dtype]


def _moments(g: Any, m: jax.Array, v: jax.Array, one_minus: tuple) -> tuple[jax.Array, jax.Array]:
  """Keras's ``m + (g - m) * (1 - beta_1)`` and ``v + (|g|^2 - v) * (1 - beta_2)``."""
  one_minus_b1, one_minus_b2 = one_minus
  if sparse.is_sparse(g):
    return sparse.keras_moments(g, m, v, one_minus_b1, one_minus_b2)
  gm = g.astype(m.dtype)
  if _tree.is_complex(g.dtype):  # v follows |g|^2, real
    g_sq = _tree.complex_abs_sq(g, v.dtype)
  else:
    gv = g.astype(v.dtype)
    g_sq = gv * gv
  m = m + (gm - m) * hyperparams.cast(one_minus_b1, m.dtype)
  v = v + (g_sq - v) * hyperparams.cast(one_minus_b2, v.dtype)
  return m, v


def _leaf_step(g, m_old, v_old, vmax, one_minus, correction, epsilon, amsgrad, finite):
  """One parameter's ``(update, (m, v, v_hat))``; a None gradient leaves its state as it was.

  With `finite` False (a skipped step) the new moments are the old ones.
  """
  if g is None:  # no gradient: this parameter is skipped entirely (Keras)
    return None, (m_old, v_old, vmax)
  m, v = _tree.keep(_moments(g, m_old, v_old, one_minus), (m_old, v_old), finite)
  if amsgrad:
    vmax = _tree.keep(jnp.maximum(vmax, v), vmax, finite)
  v_used = vmax if amsgrad else v
  dtype = _tree.real_dtype(jnp.promote_types(m.dtype, v_used.dtype))
  c = correction(jnp.promote_types(dtype, jnp.float32))
  denominator = jnp.sqrt(v_used) + jnp.asarray(epsilon, v_used.dtype)
  step = _tree.divide_by_real(m * c.astype(m.dtype), denominator)
  return step.astype(g.dtype), (m, v, vmax)
