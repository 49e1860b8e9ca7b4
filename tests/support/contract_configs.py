"""The registry of `optadam.adam` configurations that the contract suite crosses with every dtype.

Shared by `tests/integration/test_contract.py` and its 8-device worker `contract_mesh_worker.py`.
Each entry is a `Config`: Keras arguments plus how the learning rate is built from a base rate, so
that the convergence runs (`CONVERGENCE_LR`) and the short property runs use the same
configurations, and an optional wrapper around the optimizer (`optadam.loss_scale_optimizer`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optadam
from optadam import hyperparams
from optadam import schedules

CONVERGENCE_LR = 0.02
CONVERGENCE_STEPS = 3000
DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")
CONVERGENCE_DTYPES = ("float32", "complex64")
INJECTED = ("learning_rate", "weight_decay")  # what inject_hyperparams turns into state


def _constant(lr: float) -> Any:
  return lr


def _schedule(lr: float) -> Any:
  return schedules.ExponentialDecay(lr, decay_steps=CONVERGENCE_STEPS, decay_rate=0.5)


def _zero_argument_callable(lr: float) -> Any:
  return lambda: lr  # called on the host at every step (a pure_callback)


def _unwrapped(tx: Any) -> Any:
  return tx


LOSS_SCALE = 128.0  # a power of two: scaling the loss and unscaling the gradients are exact


def _loss_scale_optimizer(style: str) -> Callable[[Any], Any]:
  """`optadam.loss_scale_optimizer` around the optimizer, its scale fixed at `LOSS_SCALE`.

  The scale grows only after 10**6 finite steps (more than any run of the suite takes), so it
  stays `LOSS_SCALE` and multiplying the loss by the constant ``Config.loss_scale`` is exactly
  `optadam.scale_loss`. Nothing overflows: the convergence runs (float32, complex64) differentiate
  the scaled loss, and the property runs feed their own gradients of order 1 in every dtype
  (which the wrapper divides by `LOSS_SCALE`).
  """

  def wrap(tx: Any) -> Any:
    return optadam.loss_scale_optimizer(
      tx, initial_scale=LOSS_SCALE, dynamic_growth_steps=10**6, style=style
    )

  return wrap


def _legacy_adam(**kwargs: Any) -> Any:
  """TF's legacy Adam, by hand (docs/migration.md): a LegacyDecay learning rate (decay 1e-3)
  and float32 betas, so that ``1 - beta`` is formed in float32."""
  kwargs["learning_rate"] = optadam.LegacyDecay(kwargs["learning_rate"], decay=1e-3)
  kwargs["beta_1"] = np.float32(kwargs.get("beta_1", 0.9))
  kwargs["beta_2"] = np.float32(kwargs.get("beta_2", 0.999))
  return optadam.adam(**kwargs)


class Config(NamedTuple):
  """One configuration of `optadam.adam` (or of another member of the family, `builder`)."""

  kwargs: dict[str, Any]  # Keras arguments other than learning_rate
  learning_rate: Callable[[float], Any] = _constant  # base rate -> the learning_rate argument
  loss_scale: float = 1.0  # the loss is multiplied by this before differentiating
  wrap: Callable[[Any], Any] = _unwrapped  # around optadam.adam (in make_injected_tx too)
  builder: Callable[..., Any] = optadam.adam  # optadam.adam, optadam.adamw or _legacy_adam


# EMA overwrite every 2 steps (so that the short property runs overwrite) converges only with a
# short average (momentum 0.5): with 0.9 the parameters keep being pulled back to a lagging mean.
CONFIGS: dict[str, Config] = {
  "defaults": Config({}),
  "amsgrad": Config(dict(amsgrad=True)),
  "epsilon_weight_decay": Config(dict(epsilon=1e-3, weight_decay=1e-3)),
  "clipnorm": Config(dict(clipnorm=1.0)),
  "clipvalue": Config(dict(clipvalue=2.0)),
  "global_clipnorm": Config(dict(global_clipnorm=1.0)),
  "ema": Config(dict(use_ema=True, ema_momentum=0.9)),
  "ema_overwrite": Config(dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2)),
  "ema_keras3": Config(
    dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2, ema_style="keras3")
  ),
  "gradient_accumulation": Config(dict(gradient_accumulation_steps=2)),
  "loss_scale_factor": Config(dict(loss_scale_factor=128.0), loss_scale=128.0),
  "schedule": Config({}, learning_rate=_schedule),
  "zero_argument_callable": Config({}, learning_rate=_zero_argument_callable),
  "everything": Config(
    dict(
      amsgrad=True,
      epsilon=1e-3,
      weight_decay=1e-3,
      global_clipnorm=1.0,
      use_ema=True,
      ema_momentum=0.5,
      ema_overwrite_frequency=2,
      gradient_accumulation_steps=2,
      loss_scale_factor=128.0,
      mu_dtype=jnp.float32,
      nu_dtype=jnp.float32,
    ),
    learning_rate=_schedule,
    loss_scale=128.0,
  ),
  "adamw": Config(
    dict(weight_decay=0.004, amsgrad=True, use_ema=True, ema_momentum=0.9), builder=optadam.adamw
  ),
  "legacy_adam": Config(dict(amsgrad=True, clipnorm=1.0), builder=_legacy_adam),
  "loss_scale_keras2": Config(
    dict(amsgrad=True, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2),
    loss_scale=LOSS_SCALE,
    wrap=_loss_scale_optimizer("keras2"),
  ),
  "loss_scale_keras3": Config(
    dict(
      amsgrad=True, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2, ema_style="keras3"
    ),
    loss_scale=LOSS_SCALE,
    wrap=_loss_scale_optimizer("keras3"),
  ),
}


def adam_kwargs(name: str, lr: float = CONVERGENCE_LR) -> dict[str, Any]:
  config = CONFIGS[name]
  return dict(learning_rate=config.learning_rate(lr), **config.kwargs)


def make_tx(name: str, lr: float = CONVERGENCE_LR) -> optax.GradientTransformationExtraArgs:
  config = CONFIGS[name]
  return config.wrap(config.builder(**adam_kwargs(name, lr)))


def make_injected_tx(name: str, lr: float = CONVERGENCE_LR) -> optax.GradientTransformation:
  """`optax.inject_hyperparams` of `make_tx`'s optimizer: learning rate, weight decay as state.

  Every other argument is static (inject_hyperparams would otherwise turn every numeric default
  into state too): a beta or epsilon given as a float32 array rounds ``1 - beta`` differently
  from Keras's Python double (tested in test_adam_api), and an int such as
  ``gradient_accumulation_steps`` must stay a Python int. A zero-argument callable learning rate
  stays static too (inject_hyperparams would call it with the step count, as a schedule).
  ``hyperparam_dtype=float32``: inject_hyperparams otherwise takes the first parameter's dtype,
  which may be complex or 16-bit.

  The config's wrapper is built inside the factory, around `optadam.adam`, so that the injected
  optimizer is the one of `make_tx`. (``loss_scale_optimizer(inject_hyperparams(adam))`` would
  run adam in the wrapper's ``lax.cond`` instead of its straight-line path: the same trajectory
  to a few ulp, not the same bits; test_loss_scale compares the two.)
  """
  kwargs = adam_kwargs(name, lr)
  lr_arg = kwargs["learning_rate"]
  injected = set(INJECTED)
  if callable(lr_arg) and hyperparams.takes_no_arguments(lr_arg):
    injected.discard("learning_rate")
  static = tuple(k for k in inspect.signature(optadam.adam).parameters if k not in injected)
  wrap, builder = CONFIGS[name].wrap, CONFIGS[name].builder

  @functools.wraps(optadam.adam)  # inject_hyperparams binds the arguments to adam's signature
  def factory(*args: Any, **adam_args: Any) -> Any:
    bound = inspect.signature(optadam.adam).bind(*args, **adam_args)  # by name: adamw's order
    arguments = dict(bound.arguments)
    return wrap(builder(**arguments.pop("kwargs", {}), **arguments))

  return optax.inject_hyperparams(factory, static_args=static, hyperparam_dtype=jnp.float32)(
    **kwargs
  )


# --- optimisation problems (float32 and complex64) ----------------------------------------------


class Problem(NamedTuple):
  x0: jax.Array
  optimum: jax.Array
  loss: Callable[[jax.Array], jax.Array]


def parabola(dtype: Any) -> Problem:
  """``sum |x - x*|^2``; complex optima have imaginary parts, so both parts must move."""
  optimum = np.array([1.0, -1.0, 2.0])
  if jnp.issubdtype(dtype, jnp.complexfloating):
    optimum = optimum * (1.0 - 0.5j)
  optimum = jnp.asarray(optimum, dtype)
  return Problem(
    jnp.asarray([-1.0, 4.0, 0.5], dtype), optimum, lambda x: jnp.sum(jnp.abs(x - optimum) ** 2)
  )


def rosenbrock(dtype: Any) -> Problem:
  """``|a - x0|^2 + 100 |x1 - x0^2|^2``, minimum at ``(a, a^2)``; ``a = 1 + 1j`` when complex."""
  a = 1.0 + 1.0j if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0
  optimum = jnp.asarray([a, a * a], dtype)

  def loss(x):
    return jnp.abs(a - x[0]) ** 2 + 100.0 * jnp.abs(x[1] - x[0] ** 2) ** 2

  return Problem(jnp.zeros(2, dtype), optimum, loss)


PROBLEMS = {"parabola": parabola, "rosenbrock": rosenbrock}


def descent_grads(loss: Callable[[Any], jax.Array], params: Any) -> Any:
  """The gradient to give an optax optimizer: ``conj(jax.grad(loss))``.

  For a real loss of complex ``z = x + iy`` JAX returns ``df/dx - i df/dy``; its conjugate is
  the steepest-ascent direction (the identity for real parameters).
  """
  return jax.tree.map(jnp.conj, jax.grad(loss)(params))


def state_types(tree: Any) -> list[str]:
  """`jax.typeof` of every leaf, as text (shape, dtype, weak type; in explicit mode, sharding)."""
  return [str(jax.typeof(x)) for x in jax.tree.leaves(tree)]
