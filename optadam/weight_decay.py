"""Keras's decoupled weight decay, with regex exclusion on parameter paths."""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Union

import jax
import optax

from optadam import _tree
from optadam import hyperparams

Mask = Union[Any, Callable[[Any], Any]]


def exclusion_mask(patterns: Sequence[str]) -> Callable[[Any], Any]:
  """A mask function: False for leaves whose "/"-joined path matches a pattern.

  Each pattern is a regular expression matched with `re.search` (as Keras's
  ``exclude_from_weight_decay(var_names=...)`` matches variable names), against
  the leaf's path in the pytree joined with "/", e.g. ``params/Dense_0/bias``.
  """
  compiled = [re.compile(p) for p in patterns]

  def mask_fn(tree):
    def keep(path, leaf):
      if leaf is None:
        return None
      name = _tree.path_str(path)
      return not any(c.search(name) for c in compiled)
    return jax.tree_util.tree_map_with_path(keep, tree, is_leaf=_tree.is_grad_leaf)

  return mask_fn


def add_decayed_weights(
    weight_decay: float,
    *,
    exclude_from_weight_decay: Optional[Sequence[str]] = None,
    weight_decay_mask: Optional[Mask] = None,
) -> optax.GradientTransformation:
  """Adds ``weight_decay * params`` to the updates, except where excluded.

  Placed after `scale_by_keras_adam` and before `scale_by_learning_rate`
  (optax's ``adamw`` placement), the decay is multiplied by the step's learning
  rate and applied to the pre-update value, as Keras does:
  ``x_new = x - lr * weight_decay * x - alpha * m / (sqrt(v) + epsilon)``.
  A weight decay of 0 still runs (Keras). Leaves whose gradient is None get no
  decay.

  Args:
    weight_decay: the decay rate (a finite number).
    exclude_from_weight_decay: regular expressions; a parameter whose
      "/"-joined pytree path matches one (`re.search`) is not decayed.
    weight_decay_mask: an optax-style mask (a pytree of bools, or a callable
      returning one from the params): only True leaves are decayed.

  Returns:
    An `optax.GradientTransformation` (``optax.add_decayed_weights``, masked).
  """
  hyperparams.check_number("weight_decay", weight_decay, allow_callable=False)
  if isinstance(exclude_from_weight_decay, str):
    raise TypeError("`exclude_from_weight_decay` must be a list of regular expressions; got "
                    f"the single string {exclude_from_weight_decay!r} (wrap it in a list).")
  patterns = list(exclude_from_weight_decay or [])
  for p in patterns:
    if not isinstance(p, str):
      raise TypeError("`exclude_from_weight_decay` must be a list of strings (regular "
                      f"expressions); got the element {hyperparams.describe(p)}.")
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"`exclude_from_weight_decay` pattern {p!r} is not a valid regular "
                       f"expression: {e}.") from None
  # optax.add_decayed_weights is exactly Keras's decay once placed before the lr scaling.
  tx = optax.add_decayed_weights(weight_decay, mask=exclusion_mask(patterns) if patterns else None)
  if weight_decay_mask is not None:
    tx = optax.masked(tx, weight_decay_mask)
  return tx
