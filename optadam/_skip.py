"""Skipping a step from inside optadam's own transforms (`loss_scale_optimizer`'s fast path).

`optadam.loss_scale_optimizer` around `optadam.adam` does not run Adam in a
``lax.cond``: on CPU the conditional copies every state buffer in and out, about 3x the
step. Instead it traces Adam's chain inside `skip_unless` with the step's finiteness
flag, and each transform that holds parameter-sized state passes its new state
through `keep` where it is defined::

    m = keep(m + (g - m) * (1 - beta_1), m)  # the old m on a skipped step

so that the update is computed from the kept state and XLA fuses the select into the
kernel that writes it (no copy, no second kernel). The wrapper zeroes the updates and
settles the scalar state (the step counts) itself. Outside `skip_unless`, `keep` is the
identity: every transform computes exactly what it did before.

The flag is only read at trace time, inside the function that `skip_unless` wraps (never
across a ``jax.jit`` boundary whose trace could be cached without it).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, Optional

import jax
import jax.numpy as jnp

_FINITE: contextvars.ContextVar[Optional[jax.Array]] = contextvars.ContextVar(
  "optadam_skip_finite", default=None
)


@contextlib.contextmanager
def skip_unless(finite: jax.Array) -> Iterator[None]:
  """Within the block, `keep` selects the new state where `finite` (a scalar bool) holds."""
  token = _FINITE.set(finite)
  try:
    yield
  finally:
    _FINITE.reset(token)


def keep(new: Any, old: Any) -> Any:
  """`new`, or `old` on a step that the enclosing `skip_unless` skips (a tree of arrays)."""
  finite = _FINITE.get()
  if finite is None:
    return new
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
