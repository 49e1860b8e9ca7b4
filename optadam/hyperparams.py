"""Hyperparameter values: a number, a schedule ``fn(step)``, or a zero-argument callable.

Keras documents that ``learning_rate``, ``beta_1`` and ``beta_2`` may be "a callable
that takes no arguments and returns the actual value to use". Keras 2 calls such a
callable once, at construction; Keras 3 bakes its value in when ``jax.jit`` traces.
optadam keeps the documented promise: the callable is called at every step, also
inside the user's own ``jax.jit``, through a host callback, so a changing value is
honoured without recompiling.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

Hyperparam = Union[float, int, jax.Array, np.ndarray, Callable[..., Any]]


def takes_no_arguments(fn: Callable[..., Any]) -> bool:
  """True if `fn` cannot take a positional argument (a Keras zero-arg callable).

  A callable that can take one positional argument is a schedule ``fn(step)``.
  """
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):  # builtins without a signature: a schedule.
    return False
  positional = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
  )
  return not any(p.kind in positional for p in sig.parameters.values())


def _host_value(fn: Callable[[], Any]) -> jax.Array:
  """Calls `fn()` on the host at run time (every execution), as a float32 scalar."""

  def callback():
    value = np.asarray(fn(), dtype=np.float32)
    if value.shape != ():
      raise ValueError(
        f"A zero-argument hyperparameter callable must return a scalar; {fn!r} "
        f"returned an array of shape {value.shape}."
      )
    return value

  return jax.pure_callback(
    callback, jax.ShapeDtypeStruct((), jnp.float32), vmap_method="broadcast_all"
  )


def value_at(value: Hyperparam, count: jax.Array) -> Any:
  """The value of a hyperparameter at step `count` (steps already taken).

  Numbers and arrays are returned unchanged (a Python float stays a Python float,
  so it keeps its full double precision until it meets an array); a schedule is
  called with `count`; a zero-argument callable is called on the host.
  """
  if callable(value):
    if takes_no_arguments(value):
      return _host_value(value)
    return value(count)
  return value


def real_part(name: str, value: Any) -> Any:
  """A complex array hyperparameter as its real part; other values unchanged.

  `optax.inject_hyperparams` stores numeric hyperparameters in the parameters'
  highest dtype (unless given ``hyperparam_dtype``), so with complex parameters
  they arrive as complex arrays whose imaginary part is zero. A concrete nonzero
  imaginary part is a ValueError naming the argument.
  """
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and jnp.iscomplexobj(value):
    if not isinstance(value, jax.core.Tracer) and np.any(np.imag(np.asarray(value)) != 0):
      raise ValueError(f"`{name}` must be a real number; got the complex value {value!r}.")
    return jnp.real(jnp.asarray(value))
  return value


def concrete_number(value: Any) -> float | None:
  """`value` as a Python float if it is a concrete real scalar, else None.

  Traced values (under `jit` or `inject_hyperparams`) and callables give None:
  they are never validated, so that tracing keeps working.
  """
  if isinstance(value, bool):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    arr = np.asarray(value)
    if arr.shape == () and np.issubdtype(arr.dtype, np.number):
      return float(arr)
  return None


def describe(value: Any) -> str:
  """`repr(value)` with its type, for error messages."""
  return f"{value!r} (type {type(value).__name__})"


def check_number(
  name: str,
  value: Any,
  *,
  allow_callable: bool = True,
  low: float | None = None,
  high: float | None = None,
  high_inclusive: bool = True,
  allowed: str = "",
) -> None:
  """Validates a scalar hyperparameter at construction.

  Concrete numbers must be finite and within [low, high] (or [low, high) when
  `high_inclusive` is False). Callables (when allowed) and traced arrays pass.
  Anything else is a TypeError that names the argument.
  """
  if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
    if allow_callable:
      return
    raise TypeError(
      f"`{name}` must be a number{allowed and ', ' + allowed}; got the callable {value!r}."
    )
  if isinstance(value, bool) or not isinstance(
    value, (numbers.Real, np.ndarray, np.generic, jax.Array)
  ):
    kinds = (
      "a float, a schedule fn(step) or a zero-argument callable" if allow_callable else "a float"
    )
    raise TypeError(f"`{name}` must be {kinds}; got {describe(value)}.")
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) != 0:
    raise ValueError(f"`{name}` must be a scalar; got an array of shape {np.shape(value)}.")
  if jnp.iscomplexobj(value):
    raise TypeError(f"`{name}` must be a real number; got {describe(value)}.")
  x = concrete_number(value)
  if x is None:
    return
  if not math.isfinite(x):
    raise ValueError(f"`{name}` must be a finite number; got {value!r}.")
  below = low is not None and x < low
  above = high is not None and (x > high if high_inclusive else x >= high)
  if below or above:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    bracket = "]" if high_inclusive and high is not None else ")"
    raise ValueError(
      f"`{name}` must be in [{lo}, {hi}{bracket}{allowed and ' (' + allowed + ')'}; got {value!r}."
    )


def as_dtype(name: str, value: Any, *, allow_complex: bool = False, why: str = "") -> Any:
  """`value` as a numpy dtype (None stays None), or a TypeError naming the argument.

  Floating dtypes are accepted, and complex ones too with `allow_complex`; `why`
  is added to the message when a complex dtype is refused.
  """
  if value is None:
    return None
  allowed = (
    "a floating or complex dtype (e.g. jnp.float32, jnp.complex64)"
    if allow_complex
    else "a real floating dtype (e.g. jnp.float32)"
  )
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    raise TypeError(f"`{name}` must be None or {allowed}; got {describe(value)}.") from None
  kinds = (jnp.floating, jnp.complexfloating) if allow_complex else (jnp.floating,)
  if not any(jnp.issubdtype(dtype, kind) for kind in kinds):
    hint = f" ({why})" if why and jnp.issubdtype(dtype, jnp.complexfloating) else ""
    raise TypeError(f"`{name}` must be None or {allowed}{hint}; got {dtype}.")
  return dtype


def cast(x: Any, dtype: Any) -> Any:
  """A Python float stays weakly typed (rounds straight to `dtype` where used); arrays are cast."""
  return x if isinstance(x, float) else jnp.asarray(x).astype(dtype)
