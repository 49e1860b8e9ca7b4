"""The TF 2.15 golden scenarios of tests/golden/ (made by `tools/make_keras2_golden.py`).

Read by integration/test_golden.py (trajectories), test_keras_config.py (their configs) and
test_keras_state.py (their optimizer variables).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

import optadam

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
SCENARIOS = sorted(
  os.path.basename(p)[:-5]
  for p in glob.glob(os.path.join(GOLDEN, "*.json"))
  if not os.path.basename(p).startswith("loss_scale_")  # tests/test_loss_scaling.py reads those
)
DTYPES = {
  "float32": jnp.float32,
  "float64": jnp.float64,
  "float16": jnp.float16,
  "bfloat16": jnp.bfloat16,
}


class Golden:
  """One scenario: metadata, inputs and TF's trajectory."""

  def __init__(self, name: str):
    with open(os.path.join(GOLDEN, name + ".json")) as f:
      self.meta = json.load(f)
    self.z = dict(np.load(os.path.join(GOLDEN, name + ".npz")))
    self.names = self.meta["param_names"]
    self.dtypes = [DTYPES[d] for d in self.meta["param_dtypes"]]
    self.steps = self.meta["steps"]
    self.x64 = any(d == jnp.float64 for d in self.dtypes)

  def params(self, key: str = "init") -> dict[str, Any]:
    fmt = "param_{i}_init" if key == "init" else "param_{key}_{i}"
    return {
      n: jnp.asarray(self.z[fmt.format(i=i, key=key)], d)
      for i, (n, d) in enumerate(zip(self.names, self.dtypes))
    }

  def grads(self, s: int) -> dict[str, Any]:
    out = {}
    for i, (n, d) in enumerate(zip(self.names, self.dtypes)):
      if f"grad_{s}_{i}" in self.z:
        out[n] = jnp.asarray(self.z[f"grad_{s}_{i}"], d)
      elif f"grad_{s}_{i}_values" in self.z:
        out[n] = optadam.IndexedSlices(
          jnp.asarray(self.z[f"grad_{s}_{i}_values"], d),
          jnp.asarray(self.z[f"grad_{s}_{i}_indices"], jnp.int32),
          tuple(int(x) for x in self.z[f"grad_{s}_{i}_dense_shape"]),
        )
      else:
        out[n] = None
    return out

  def expected(self, s: int) -> dict[str, np.ndarray]:
    return {n: self.z[f"param_{s}_{i}"] for i, n in enumerate(self.names)}

  def kwargs(self) -> dict[str, Any]:
    kwargs = dict(self.meta["kwargs"])
    if isinstance(kwargs.get("learning_rate"), dict):
      kwargs["learning_rate"] = optadam.schedules.deserialize(kwargs["learning_rate"])
    if self.meta["exclude_from_weight_decay"]:
      kwargs["exclude_from_weight_decay"] = self.meta["exclude_from_weight_decay"]
    return kwargs
