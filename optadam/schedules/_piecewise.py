"""`PiecewiseConstantDecay`: a constant learning rate on each interval between boundaries."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from optadam.schedules._base import (
  _F32,
  LearningRateSchedule,
  _name,
  _number_list,
)


class PiecewiseConstantDecay(LearningRateSchedule):
  """Piecewise constant: `values[i]` on the i-th interval between `boundaries`.

  Formula (upper bounds inclusive, like Keras)::

      lr = values[0]     if step <= boundaries[0]
           values[i]     if boundaries[i-1] < step <= boundaries[i]
           values[-1]    if step > boundaries[-1]

  i.e. `lr = values[count(step > b for b in boundaries)]`. As in Keras the
  boundaries are first converted like `convert_to_tensor` (int -> int32,
  float -> float32) and then cast to the dtype of `step`, so with an integer
  step a float boundary is truncated (`2.5` acts as `2`).

  Args:
      boundaries: non-empty list of finite Python numbers, strictly
          increasing.
      values: list of finite Python numbers, `len(boundaries) + 1` long.
          The result is always float32 (Keras returns int32 for int values).
      name: str or None. Name, kept for the config only.

  Example:
      >>> sched = PiecewiseConstantDecay([100, 110], [1.0, 0.5, 0.25])
      >>> [float(sched(s)) for s in (100, 101, 110, 111)]
      [1.0, 0.5, 0.5, 0.25]

  Keras 2 vs 3: Keras 2 *selects* the value (`tf.case`); Keras 3 sums
  `cast(in_interval) * value` over all intervals. They differ when no
  interval matches (a NaN step: Keras 2 gives `values[0]` through its
  default branch, Keras 3 gives 0) and for non-finite values (0 * inf).
  This class follows Keras 2 (selection). Keras does not check that the
  boundaries increase (Keras 2 fails at call time on overlapping
  intervals, Keras 3 returns a sum of values); here that is a ValueError
  at construction.
  """

  _CONFIG_KEYS = ("boundaries", "values", "name")

  def __init__(self, boundaries, values, name="PiecewiseConstant"):
    boundaries = _number_list("boundaries", boundaries)
    values = _number_list("values", values)
    if len(boundaries) != len(values) - 1:
      raise ValueError(
        "The length of `boundaries` should be 1 less than the length "
        f"of `values`. Received: boundaries={boundaries} of length "
        f"{len(boundaries)}, and values={values} of length "
        f"{len(values)}."
      )
    if not boundaries:
      raise ValueError(
        "Argument `boundaries` must contain at least one boundary. "
        f"Received: boundaries={boundaries}"
      )
    for i in range(1, len(boundaries)):
      if not boundaries[i] > boundaries[i - 1]:
        raise ValueError(
          "Argument `boundaries` must be strictly increasing. "
          f"Received: boundaries={boundaries} (boundaries[{i}]="
          f"{boundaries[i]!r} <= boundaries[{i - 1}]="
          f"{boundaries[i - 1]!r})"
        )
    self.boundaries = boundaries
    self.values = values
    self.name = _name(name)

  def __call__(self, step):
    step = jnp.asarray(step)
    # Keras: convert_to_tensor(b) (int -> int32, float -> float32), then
    # cast to the step's dtype. int64 stands in for int32 so that a large
    # Python int does not overflow before the cast.
    boundaries = np.asarray(
      [
        np.asarray(b, dtype=np.int64 if isinstance(b, int) else _F32).astype(step.dtype)
        for b in self.boundaries
      ]
    )
    values = jnp.asarray(np.asarray(self.values, dtype=_F32))
    index = jnp.sum(step[..., None] > boundaries, axis=-1)
    return values[index]
