#!/usr/bin/env python3
"""Golden trajectories from the real Keras 2 ``tf.keras.optimizers.Adam`` (TF 2.15).

Regenerate with ``make golden`` (creates ``.venv-tf`` with ``tensorflow-cpu==2.15.1`` and
``numpy<2``, then runs this script), or directly::

    .venv-tf/bin/python tools/make_keras2_golden.py [--out tests/golden] [--only NAME ...]
    .venv-tf/bin/python tools/make_keras2_golden.py --list
    .venv-tf/bin/python tools/make_keras2_golden.py --compare-modes   # eager vs graph vs XLA

The scenarios are data in ``golden_scenarios.py``, each with its own numpy seed; the numbers
are drawn by ``golden_problem.py``, run by ``golden_run.py`` and checked by
``golden_observe.py``. tools/README.md has the scenario table and what TF 2.15 was observed to
do. This script needs TensorFlow; the JAX tests that read its output need only numpy. The output
is byte-for-byte reproducible (per-scenario numpy seeds; no TF randomness is used).

How each scenario is run
------------------------
* ``tf.config.run_functions_eagerly(False)``; one ``tf.function`` per scenario calls
  ``optimizer.apply_gradients(list(zip(grads, vars)))`` (the gradients are passed as
  ``tf.function`` arguments, so nothing is constant-folded), exactly like the body of
  Keras's ``train_function``.
* The optimizer is the new (non-legacy) ``tf.keras.optimizers.Adam`` constructed with the
  scenario's kwargs and the default ``jit_compile=True``. On a machine without a GPU Keras
  itself turns that into ``jit_compile=False`` (see ``config["jit_compile"]`` in the json);
  ``--compare-modes`` shows whether forcing XLA changes any number.
* A gradient that is ``None`` on a step is passed as a ``(None, var)`` pair (what
  ``tape.gradient`` produces); Keras 2 filters such pairs out of that step entirely.
* Sparse gradients are ``tf.IndexedSlices(values, indices, dense_shape)``.

File format (the contract read by the JAX tests; also in tools/README.md)
--------------------------------------------------------------------------
For each scenario ``<name>`` there are two files in the output directory.

``<name>.json`` -- a JSON object with keys:
  scenario            str, == <name>
  description         str, what the scenario exercises
  kwargs              dict, the exact keyword arguments given to ``tf.keras.optimizers.Adam``;
                      a learning-rate schedule appears as
                      ``tf.keras.optimizers.schedules.serialize(schedule)``, i.e.
                      ``{"module": "keras.optimizers.schedules", "class_name": ..., "config": {...},
                      "registered_name": null}``
  exclude_from_weight_decay  list of str given to
                      ``optimizer.exclude_from_weight_decay(var_names=...)`` before the first
                      step, or null (not called)
  config              ``optimizer.get_config()`` after the last step, JSON-safe (numpy scalars ->
                      Python numbers)
  param_names         list of str, the names given to ``tf.Variable(..., name=...)`` in order
                      (TF appends ":0": the variable's ``.name`` is ``param_names[i] + ":0"``, and
                      that is what ``exclude_from_weight_decay`` regexes are matched against)
  param_shapes        list of lists of int
  param_dtypes        list of str: "float32", "float64", "float16" or "bfloat16"
  steps               int N, number of ``apply_gradients`` calls
  K                   int 10: ``optvarK_*`` is the state after the first K steps; null if N <= K
  sparse              {param_name: {...}} for parameters whose gradient is an IndexedSlices, or {}
  none_grad_steps     {param_name: [step, ...]} steps (0-based) on which that parameter's
                      gradient is None, or {}
  schedule            bool, true when the learning rate is a schedule (then ``lr_<s>`` exist)
  variables_names     ``[v.name for v in optimizer.variables]`` after the last step
                      (order: "iteration:0", ["Adam/average/<p>:0" per param if EMA],
                      "Adam/m/<p>:0", "Adam/v/<p>:0" interleaved per param,
                      ["Adam/vhat/<p>:0" per param if amsgrad])
  variables_dtypes    list of str, dtypes of ``optimizer.variables``
  observations        dict of free-form notes on what TF did in this scenario (may be {})
  tf_version, keras_version, numpy_version   str
  execution           dict: how the steps were run (tf.function, jit_compile, ...)

``<name>.npz`` -- ``np.savez_compressed`` arrays (i = parameter index, s = 0-based step,
j = index into ``optimizer.variables``):
  param_<i>_init            initial value of parameter i
  grad_<s>_<i>              dense gradient of parameter i at step s (absent when None or sparse)
  grad_<s>_<i>_values       \\
  grad_<s>_<i>_indices       > IndexedSlices gradient (raw: duplicates and order kept as given
  grad_<s>_<i>_dense_shape  /  to Keras; indices int32, dense_shape int64)
  param_<s>_<i>             value of parameter i after step s
  lr_<s>                    float32 scalar, the learning rate used at step s (schedules only;
                            read from the optimizer's ``current_learning_rate`` variable)
  optvarK_<j>               ``optimizer.variables[j]`` after the first K=10 steps
                            (iteration == 10); only when N > K
  optvar_<j>                ``optimizer.variables[j]`` after the last step
  final_<i>                 parameter i after ``optimizer.finalize_variable_values(vars)``
                            following the last step (EMA scenarios only)
Shapes are the parameter shapes (scalars are 0-d arrays). float32/float64 values are stored
in their own dtype; float16 and bfloat16 values (params, grads, optimizer variables) are stored
exactly as float32, the original dtype being in ``param_dtypes`` / ``variables_dtypes``.
The iteration counter ``optvar*_0`` is int64.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from golden_common import compact_json, parser, remove_stale, scenario_names, write_golden
from golden_observe import compare_modes, observe
from golden_run import run_scenario
from golden_scenarios import BY_NAME

LOSS_SCALE_PREFIX = "loss_scale_"  # those goldens belong to tools/make_loss_scale_golden.py


def main(argv=None):
  ap = parser(__doc__.split("\n")[0], only_help="scenario names (default: all)")
  ap.add_argument(
    "--compare-modes",
    action="store_true",
    help="diagnostic: compare tf.function vs eager vs forced XLA; writes nothing",
  )
  args = ap.parse_args(argv)

  names = scenario_names(ap, args, BY_NAME)
  if args.list:
    return 0
  if args.compare_modes:
    compare_modes([BY_NAME[n] for n in names])
    return 0

  import tensorflow as tf

  tf.get_logger().setLevel("ERROR")
  out = os.path.normpath(args.out)
  for n in names:
    sc = BY_NAME[n]
    arrays, meta = run_scenario(sc)
    meta["observations"] = observe(sc, arrays, meta)
    write_golden(out, n, arrays, compact_json(meta))
    print(f"wrote {os.path.join(out, n)}.{{npz,json}}  ({sc.steps} steps, {len(arrays)} arrays)")
  if not args.only:  # full regeneration: drop golden files of scenarios no longer registered
    remove_stale(out, lambda stem: not stem.startswith(LOSS_SCALE_PREFIX), BY_NAME)
  return 0


if __name__ == "__main__":
  sys.exit(main())
