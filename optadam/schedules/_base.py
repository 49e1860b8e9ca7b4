"""Argument validation, float32 helpers and the base class shared by the schedules."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

_F32 = np.float32
_PI = _F32(math.pi)  # Keras: ops.array(math.pi, dtype=float32)


# --------------------------------------------------------------------------
# Argument validation helpers.
# --------------------------------------------------------------------------


def _real(name: str, value: Any) -> int | float:
  """Returns `value` as a Python int or float, or raises a TypeError.

  Accepts Python ints and floats, NumPy scalars and 0-d NumPy/JAX arrays of
  a numeric dtype (converted with `.item()`); rejects bools, strings, arrays
  with more than one element and abstract (traced) JAX values.
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(
      f"Argument `{name}` must be a real number (int or float), not a "
      f"bool. Received: {name}={value!r}"
    )
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    return float(value)
  dtype = getattr(value, "dtype", None)
  shape = getattr(value, "shape", None)
  if dtype is not None and shape == () and np.dtype(dtype).kind in "iuf":
    try:
      return value.item()
    except Exception as e:  # e.g. a jax tracer: not concrete.
      raise TypeError(
        f"Argument `{name}` must be a concrete number, known when the "
        f"schedule is built, not a traced value. Received: "
        f"{name}={value!r}"
      ) from e
  if isinstance(value, numbers.Real):
    return float(value)
  raise TypeError(
    f"Argument `{name}` must be a real number (int or float). "
    f"Received: {name}={value!r} of type {type(value).__name__}"
  )


def _finite(name: str, value: Any) -> int | float:
  value = _real(name, value)
  if not math.isfinite(value):
    raise ValueError(f"Argument `{name}` must be a finite number. Received: {name}={value!r}")
  return value


def _positive(name: str, value: Any) -> int | float:
  value = _finite(name, value)
  if not value > 0:
    raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value!r}")
  return value


def _non_negative(name: str, value: Any) -> int | float:
  value = _finite(name, value)
  if not value >= 0:
    raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
  return value


def _bool(name: str, value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(
    f"Argument `{name}` must be a bool (True or False). "
    f"Received: {name}={value!r} of type {type(value).__name__}"
  )


def _name(value: Any) -> str | None:
  if value is None or isinstance(value, str):
    return value
  raise TypeError(
    "Argument `name` must be a string or None. "
    f"Received: name={value!r} of type {type(value).__name__}"
  )


def _number_list(name: str, value: Any) -> list:
  if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    raise TypeError(
      f"Argument `{name}` must be a list of numbers. "
      f"Received: {name}={value!r} of type {type(value).__name__}"
    )
  items = list(np.asarray(value).tolist()) if hasattr(value, "shape") else list(value)
  out = []
  for i, item in enumerate(items):
    try:
      out.append(_finite(f"{name}[{i}]", item))
    except TypeError:
      raise TypeError(
        f"Argument `{name}` must be a list of finite real numbers, but "
        f"{name}[{i}]={item!r} is of type {type(item).__name__}. "
        f"Received: {name}={value!r}"
      ) from None
    except ValueError:
      raise ValueError(
        f"Argument `{name}` must be a list of finite real numbers, but "
        f"{name}[{i}]={item!r}. Received: {name}={value!r}"
      ) from None
  return out


def _as_f32(step):
  """Keras's `ops.cast(step, float32)` for a step scalar or array."""
  return jnp.asarray(step).astype(jnp.float32)


def _div(x, divisor):
  """`x / divisor` for a float32 array `x` and a step-independent divisor.

  Rounded exactly like an eager float32 division, also under `jax.jit`,
  `jax.vmap` and for array steps. XLA would otherwise rewrite a division
  by a constant, or by a broadcast scalar, as a multiplication by the
  reciprocal (`41 / 41` then gives 0.99999994, and `ceil(14 / 7)` gives 3)
  and fuse that product into FMAs. So the divisor is given `x`'s shape
  (and, under `vmap`, its batch dimension: it is selected by a predicate
  on `x`) and passed through `lax.optimization_barrier`, which XLA cannot
  see through.
  """
  divisor = jnp.asarray(divisor, jnp.float32)
  divisor = jnp.where(x == x, divisor, divisor)  # Shaped/batched like x.
  return x / lax.optimization_barrier(divisor)


# --------------------------------------------------------------------------
# Base class.
# --------------------------------------------------------------------------


class LearningRateSchedule:
  """Base class of the schedules: a config-holding `step -> lr` callable.

  Subclasses implement `__call__(self, step)` as a pure `jax.numpy`
  function of `step` and list their constructor arguments, in Keras's
  config order, in `_CONFIG_KEYS`: `get_config()` returns them and
  `from_config` rebuilds an instance from that dict.
  """

  def __call__(self, step):  # pragma: no cover - abstract
    raise NotImplementedError(
      f"Learning rate schedule '{type(self).__name__}' must override `__call__(self, step)`."
    )

  def get_config(self) -> dict:
    """The constructor arguments, in Keras's key order (lists copied)."""
    return {
      k: list(getattr(self, k)) if isinstance(getattr(self, k), (list, tuple)) else getattr(self, k)
      for k in self._CONFIG_KEYS
    }

  @classmethod
  def from_config(cls, config: dict):
    """Instantiates the schedule from the output of `get_config()`.

    Args:
        config: A dict whose keys are constructor argument names, as
            returned by `get_config()` (Keras 2 or Keras 3 spelling).

    Returns:
        A new instance of `cls`.

    Raises:
        TypeError: if `config` is not a dict or has keys that are not
            constructor arguments of `cls`.
    """
    if not isinstance(config, dict):
      raise TypeError(
        f"Argument `config` of {cls.__name__}.from_config must be a "
        f"dict. Received: config={config!r} of type "
        f"{type(config).__name__}"
      )
    unknown = sorted(set(config) - set(cls._CONFIG_KEYS))
    if unknown:
      raise TypeError(
        f"Unknown keys in `config` for {cls.__name__}: {unknown}. "
        f"Allowed keys: {list(cls._CONFIG_KEYS)}. Received: "
        f"config={config!r}"
      )
    return cls(**config)

  _CONFIG_KEYS: tuple = ()

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"
