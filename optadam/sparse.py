"""Sparse gradient leaves (placeholder until the sparse issue lands)."""

from __future__ import annotations

from typing import Any


def is_sparse(x: Any) -> bool:
  """True for sparse gradient leaves."""
  del x
  return False


def keras_moments(g, m, v, one_minus_b1, one_minus_b2):
  raise NotImplementedError("sparse gradients are not supported yet")


def values_of(g: Any) -> Any:
  """The raw values of a gradient leaf (the array itself for a dense gradient)."""
  return g


def with_values(g: Any, values: Any) -> Any:
  """`g` with its values replaced."""
  del g
  return values
