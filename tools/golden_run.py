"""Run one Keras 2 Adam scenario in TensorFlow: the golden arrays and the json's metadata.

Each step is one ``tf.function`` call of ``optimizer.apply_gradients(list(zip(grads, vars)))``
(the body of Keras's ``train_function``), the gradients passed as arguments.
"""

from __future__ import annotations

import numpy as np

from golden_common import K_STEPS, is_schedule, jsonable, serialized_kwargs, store, tf_kwargs
from golden_problem import Sparse, make_problem
from golden_scenarios import Scenario


def _keras_version():
  try:
    import keras

    return keras.__version__
  except Exception:  # pragma: no cover
    return None


def _variables(sc: Scenario, inits: list) -> list:
  """``tf.Variable``s named as the scenario's parameters, cast from the float64 initial values."""
  import tensorflow as tf

  tfdt = getattr(tf, sc.dtype)
  return [
    tf.Variable(
      tf.constant(init, dtype=tf.float64)
      if sc.dtype == "float64"
      else tf.cast(tf.constant(init, dtype=tf.float64), tfdt),
      name=name,
    )
    for (name, _), init in zip(sc.params, inits)
  ]


def _to_tf(g, dtype: str, densify: bool):
  """A numpy gradient (array, ``Sparse`` or None) as TF sees it, cast to the parameter dtype."""
  import tensorflow as tf

  tfdt = getattr(tf, dtype)
  if g is None:
    return None
  if isinstance(g, Sparse):
    sl = tf.IndexedSlices(
      tf.cast(tf.constant(g.values, dtype=tf.float64), tfdt),
      tf.constant(g.indices, dtype=tf.int32),
      tf.constant(g.dense_shape, dtype=tf.int64),
    )
    return tf.convert_to_tensor(sl) if densify else sl
  return tf.cast(tf.constant(g, dtype=tf.float64), tfdt)


def _store_grads(arrays: dict, s: int, gs: list) -> None:
  import tensorflow as tf

  for i, g in enumerate(gs):
    if g is None:
      continue
    if isinstance(g, tf.IndexedSlices):
      arrays[f"grad_{s}_{i}_values"] = store(g.values)
      arrays[f"grad_{s}_{i}_indices"] = g.indices.numpy()
      arrays[f"grad_{s}_{i}_dense_shape"] = g.dense_shape.numpy()
    else:
      arrays[f"grad_{s}_{i}"] = store(g)


def run_scenario(sc: Scenario, mode: str = "function", densify: bool = False):
  """Run one scenario in TF. mode: 'function' (default, the golden), 'eager', 'xla'.

  ``densify=True`` (diagnostic only) converts IndexedSlices gradients to dense tensors with
  ``tf.convert_to_tensor`` before handing them to the optimizer.

  Returns (arrays: dict, meta: dict).
  """
  import tensorflow as tf

  tf.config.run_functions_eagerly(False)
  inits, grads = make_problem(sc)
  variables = _variables(sc, inits)
  kwargs = tf_kwargs(sc.kwargs)
  opt = tf.keras.optimizers.Adam(**kwargs)
  if mode == "xla":
    opt.jit_compile = True  # force the _update_step_xla path even without a GPU
  if sc.exclude is not None:
    opt.exclude_from_weight_decay(var_names=sc.exclude)

  def step(gs):
    opt.apply_gradients(list(zip(gs, variables)))

  step_fn = step if mode == "eager" else tf.function(step)

  arrays = {f"param_{i}_init": store(v) for i, v in enumerate(variables)}
  schedule = is_schedule(kwargs.get("learning_rate"))
  for s in range(sc.steps):
    gs = [_to_tf(g, sc.dtype, densify) for g in grads[s]]
    _store_grads(arrays, s, gs)
    step_fn(gs)
    for i, v in enumerate(variables):
      arrays[f"param_{s}_{i}"] = store(v)
    if schedule:
      arrays[f"lr_{s}"] = np.asarray(opt.learning_rate.numpy(), dtype=np.float32)
    if s + 1 == K_STEPS and sc.steps > K_STEPS:
      arrays.update({f"optvarK_{j}": store(ov) for j, ov in enumerate(opt.variables)})
  arrays.update({f"optvar_{j}": store(ov) for j, ov in enumerate(opt.variables)})
  if kwargs.get("use_ema"):
    opt.finalize_variable_values(variables)
    arrays.update({f"final_{i}": store(v) for i, v in enumerate(variables)})
  return arrays, _meta(sc, kwargs, opt, mode, schedule)


def _meta(sc: Scenario, kwargs: dict, opt, mode: str, schedule: bool) -> dict:
  """The json of one run (``observations`` still empty)."""
  import tensorflow as tf

  return {
    "scenario": sc.name,
    "description": sc.description,
    "kwargs": serialized_kwargs(kwargs),
    "exclude_from_weight_decay": sc.exclude,
    "config": jsonable(opt.get_config()),
    "param_names": [n for n, _ in sc.params],
    "param_shapes": [list(shape) for _, shape in sc.params],
    "param_dtypes": [sc.dtype] * len(sc.params),
    "steps": sc.steps,
    "K": K_STEPS if sc.steps > K_STEPS else None,
    "sparse": sc.sparse,
    "none_grad_steps": {k: [t for t in v if t < sc.steps] for k, v in sc.none_steps.items()},
    "schedule": bool(schedule),
    "variables_names": [v.name for v in opt.variables],
    "variables_dtypes": [v.dtype.name for v in opt.variables],
    "observations": {},
    "tf_version": tf.__version__,
    "keras_version": _keras_version(),
    "numpy_version": np.__version__,
    "execution": {
      "mode": mode,
      "run_functions_eagerly": False,
      "apply_gradients_in_tf_function": mode != "eager",
      "jit_compile_requested": kwargs.get("jit_compile", True),
      "jit_compile_effective": bool(opt.jit_compile),
      "gpus": len(tf.config.list_physical_devices("GPU")),
      "none_gradients_passed_as": "(None, var) pairs",
      "seed": sc.seed,
    },
  }
