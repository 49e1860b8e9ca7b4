"""`optadam.state_from_keras` (docs/migration.md): Keras 3's optimizer variables as optadam's state,
and the errors for variables that do not fit. (Resuming TF 2.15's: integration/test_golden.py.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from golden import Golden
from helpers import worst_relative
from reference import make_grads, make_params

SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,)}


def test_state_import_errors():
  g = Golden("defaults")
  tx = optadam.adam()
  params = g.params()
  variables = [g.z[f"optvar_{j}"] for j in range(len(g.meta["variables_names"]))]
  with pytest.raises(ValueError, match="optimizer variables"):
    optadam.state_from_keras(tx, variables[:-1], params, order=g.names)
  with pytest.raises(ValueError, match="order"):
    optadam.state_from_keras(tx, variables, params, order=g.names[:-1] + ["nope"])
  swapped = list(variables)
  swapped[1], swapped[3] = swapped[3], swapped[1]  # m of kernel <-> m of bias: shapes differ
  with pytest.raises(ValueError, match="shape"):
    optadam.state_from_keras(tx, swapped, params, order=g.names)


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(
      learning_rate=0.01, amsgrad=True, use_ema=True, ema_overwrite_frequency=4, ema_momentum=0.9
    ),
    dict(learning_rate=0.01, weight_decay=0.01, gradient_accumulation_steps=2),
  ],
  ids=["amsgrad+ema", "accumulation"],
)
def test_resume_from_keras3_state(kwargs):
  """Run Keras 3 for 7 calls, import its `optimizer.variables`, continue in optadam."""
  import keras  # pylint: disable=import-outside-toplevel

  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 16, seed=9)
  variables = {k: keras.Variable(v, name=k.replace("/", "_")) for k, v in params0.items()}
  opt = keras.optimizers.Adam(**kwargs)
  history = []
  for i, g in enumerate(grads):
    if i == 7:
      snapshot = [np.asarray(v.value) for v in opt.variables]
      params_at_7 = {k: jnp.asarray(np.asarray(v.value)) for k, v in variables.items()}
    opt.apply_gradients([(jnp.asarray(g[k]), variables[k]) for k in SHAPES])
    history.append({k: np.asarray(v.value) for k, v in variables.items()})
  style = {"ema_style": "keras3"} if kwargs.get("use_ema") else {}
  tx = optadam.adam(**kwargs, **style)
  state = optadam.state_from_keras(tx, snapshot, params_at_7, order=list(SHAPES))
  params, ours = params_at_7, []
  for g in grads[7:]:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = optadam.apply_updates(params, updates)
    ours.append({k: np.asarray(v) for k, v in params.items()})
  assert worst_relative(ours, history[7:]) < 1e-6
