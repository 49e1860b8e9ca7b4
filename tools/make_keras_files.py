#!/usr/bin/env python3
"""Saved Keras model files (and the run that continues them) for `optadam.read_keras_file`.

Run it twice, once per Keras (``make keras-files`` does both)::

    .venv-tf/bin/python tools/make_keras_files.py   # TF 2.15.1 (tf.keras 2.15): .keras + .h5
    .venv/bin/python tools/make_keras_files.py      # Keras 3 (JAX backend): .keras

It writes into ``tests/fixtures/keras_files/`` (``--out`` to change); tools/README.md has the
table of files and the format. The output is deterministic except for the ``date_saved`` field
Keras puts into a ``.keras`` archive (fixed numpy seeds; no framework randomness is used).

Every scenario is the same small model, ``Input(3) -> Dense(4, relu) -> Dense(2)`` (26 weights),
compiled with the scenario's optimizer (``Adam``, ``AdamW`` or, TF 2.15 only,
``tf.keras.optimizers.legacy.Adam``) and loss "mse". Its weights are set to seeded values, then
``model.optimizer.apply_gradients(zip(grads, model.trainable_variables))`` runs on 20 known
gradients: after the first 10 the model is saved (``<prefix>_<scenario>.keras`` and ``.h5``),
then the 10 more steps are Keras's continuation, recorded after each step, and finally
``optimizer.finalize_variable_values`` (EMA) is recorded. With TF 2.15 each step is one call of a
``tf.function`` (the body of ``train_function``); with Keras 3 ``apply_gradients`` runs as ``fit``
would on the JAX backend, eagerly. TF 2.15 saves no state of a legacy optimizer into a ``.keras``:
for those the continuation Keras runs after ``load_model`` of the ``.keras`` is recorded too.

Also written: damaged files for the readers' errors and ``other_optimizer_configs.json`` (the
configs of other optimizers), by `keras_files_extra.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
from keras_files_extra import json_safe, make_damaged_files, make_other_configs
from keras_files_scenarios import (
  CONTINUED_STEPS,
  SAVED_STEPS,
  SCENARIOS,
  SHAPES,
  gradients,
  init_weights,
)


def build_model(keras):
  return keras.Sequential(
    [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
  )


class Backend:
  """What differs between TF 2.15 (tf.keras) and Keras 3."""

  def __init__(self):
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel

      self.tf = tf
      self.keras = tf.keras
      import keras as keras_pkg  # pylint: disable=import-outside-toplevel

      self.version = keras_pkg.__version__
      self.major = 2
      self.prefix = "tf215"
      self.formats = ("keras", "h5")
    except ImportError:
      import keras  # pylint: disable=import-outside-toplevel

      self.tf = None
      self.keras = keras
      self.version = keras.__version__
      self.major = 3
      self.prefix = "keras3"
      self.formats = ("keras", "h5")

  def step_fn(self, model):
    opt, variables = model.optimizer, model.trainable_variables
    if self.tf is None:
      return lambda grads: opt.apply_gradients(zip(grads, variables))
    tf = self.tf

    @tf.function
    def step(grads):
      opt.apply_gradients(zip(grads, variables))

    return lambda grads: step([tf.constant(g) for g in grads])

  def values(self, variables):
    return [np.array(v.numpy() if self.tf else v.value) for v in variables]

  def var_names(self, variables):
    return [v.name if self.tf else v.path for v in variables]

  def optimizer(self, cls: str, kwargs: dict):
    """`keras.optimizers.<cls>(**kwargs)`; "legacy.Adam" is tf.keras.optimizers.legacy.Adam."""
    module = self.keras.optimizers
    for part in cls.split("."):
      module = getattr(module, part)
    return module(**kwargs)

  def optimizer_variables(self, opt) -> list:
    """`optimizer.variables`; a legacy (OptimizerV2) optimizer's are `optimizer.weights`."""
    legacy = self.tf is not None and isinstance(opt, self.keras.optimizers.legacy.Optimizer)
    return opt.weights if legacy else opt.variables


def _save(model, out: str, base: str, formats) -> list[str]:
  files = []
  for fmt in formats:
    path = os.path.join(out, f"{base}.{fmt}")
    if os.path.exists(path):
      os.remove(path)
    model.save(path)
    files.append(os.path.basename(path))
  return files


def _continue(be: Backend, step, model, grads) -> list[list[np.ndarray]]:
  """Keras's continuation: the trainable variables after each `step` on `grads`."""
  out = []
  for g in grads:
    step(g)
    out.append(be.values(model.trainable_variables))
  return out


def _legacy_reloads(be: Backend, out: str, base: str, grads, continued) -> list:
  """Legacy Adam: TF 2.15 loads the .h5 with its optimizer state (the continuation is the same,
  bit for bit) but saves no optimizer state into a .keras: `load_model` of it starts a fresh
  legacy Adam (iterations 0). Returns the continuation Keras runs after loading the .keras."""
  keras = be.keras
  runs = {}
  for fmt in ("h5", "keras"):
    keras.backend.clear_session()
    model = keras.models.load_model(os.path.join(out, f"{base}.{fmt}"))
    iterations = int(model.optimizer.iterations.numpy())
    runs[fmt] = (iterations, _continue(be, be.step_fn(model), model, grads))
  assert runs["h5"][0] == SAVED_STEPS and runs["keras"][0] == 0, (runs["h5"][0], runs["keras"][0])
  for ours, theirs in zip(runs["h5"][1], continued):
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), "h5 reload differs"
  return runs["keras"][1]


def make_scenario(be: Backend, name: str, out: str, seed: int) -> dict:
  sc = SCENARIOS[name]
  keras = be.keras
  keras.backend.clear_session()  # layer and variable names dense, dense_1 in every file
  kwargs = sc.kwargs(keras)
  model = build_model(keras)
  opt = be.optimizer(sc.optimizer, kwargs)
  if sc.exclude:
    opt.exclude_from_weight_decay(var_names=sc.exclude)
  model.compile(optimizer=opt, loss="mse")
  for var, value in zip(model.trainable_variables, init_weights(seed)):
    var.assign(value)
  grads = gradients(seed)
  step = be.step_fn(model)  # one tf.function for all 20 steps
  _continue(be, step, model, grads[:SAVED_STEPS])
  base = f"{be.prefix}_{name}"
  saved_params = be.values(model.trainable_variables)
  saved_optvars = be.values(be.optimizer_variables(opt))
  files = _save(model, out, base, sc.formats)
  continued = _continue(be, step, model, grads[SAVED_STEPS:])
  arrays = {}
  for i in range(len(SHAPES)):
    arrays[f"grads_{i}"] = np.stack([g[i] for g in grads])
    arrays[f"saved_{i}"] = saved_params[i]
    arrays[f"params_{i}"] = np.stack([p[i] for p in continued])
  for j, v in enumerate(saved_optvars):
    arrays[f"optvar_{j}"] = v
  if kwargs.get("use_ema"):
    opt.finalize_variable_values(model.trainable_variables)
    for i, p in enumerate(be.values(model.trainable_variables)):
      arrays[f"final_{i}"] = p
  meta = _scenario_meta(be, name, kwargs, opt, model, seed)
  if sc.optimizer.startswith("legacy."):  # the .keras holds no optimizer state: not resumable
    files.remove(f"{base}.keras")
    meta["files_without_optimizer_state"] = [f"{base}.keras"]
    reloaded = _legacy_reloads(be, out, base, grads[SAVED_STEPS:], continued)
    for i in range(len(SHAPES)):
      arrays[f"reloaded_params_{i}"] = np.stack([p[i] for p in reloaded])
  meta["files"] = files
  np.savez_compressed(os.path.join(out, f"{base}.npz"), **arrays)
  with open(os.path.join(out, f"{base}.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")
  return meta


def _scenario_meta(be: Backend, name: str, kwargs: dict, opt, model, seed: int) -> dict:
  keras, sc = be.keras, SCENARIOS[name]
  return {
    "scenario": name,
    "description": sc.description,
    "optimizer": sc.optimizer,
    "keras_version": be.version,
    "keras_major": be.major,
    "kwargs": json_safe(
      {
        k: (keras.optimizers.schedules.serialize(v) if hasattr(v, "get_config") else v)
        for k, v in kwargs.items()
      }
    ),
    "exclude_from_weight_decay": sc.exclude,
    "config": json_safe(opt.get_config()),
    "trainable_names": be.var_names(model.trainable_variables),
    "optimizer_variable_names": be.var_names(be.optimizer_variables(opt)),
    "saved_steps": SAVED_STEPS,
    "continued_steps": CONTINUED_STEPS,
    "seed": seed,
  }


def make_notebook_run(be: Backend, out: str) -> None:
  """TF 2.15 only: a Dense regression model trained 15 epochs with fit, saved mid-training."""
  keras = be.keras
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)
  rng = np.random.RandomState(0)
  x = rng.standard_normal((256, 3)).astype(np.float32)
  w_true = np.array([[1.5, -2.0], [0.5, 1.0], [-1.0, 0.25]], np.float32)
  y = (np.tanh(x @ w_true) + 0.05 * rng.standard_normal((256, 2))).astype(np.float32)
  model = build_model(keras)
  for var, value in zip(model.trainable_variables, init_weights(7)):
    var.assign(value)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01, use_ema=True), loss="mse")
  first = model.fit(x, y, batch_size=32, epochs=15, shuffle=False, verbose=0)
  path = os.path.join(out, "tf215_dense_midtraining.keras")
  if os.path.exists(path):
    os.remove(path)
  model.save(path)
  more = model.fit(x, y, batch_size=32, epochs=15, shuffle=False, verbose=0)
  np.savez_compressed(os.path.join(out, "tf215_dense_midtraining_data.npz"), x=x, y=y)
  meta = {
    "description": "Dense(4, relu) -> Dense(2) on y = tanh(x @ w) + noise; Adam(0.01, use_ema)."
    " fit(batch_size=32, shuffle=False): 15 epochs, model.save, 15 more epochs",
    "keras_version": be.version,
    "batch_size": 32,
    "epochs_before_save": 15,
    "loss_before_save": [float(v) for v in first.history["loss"]],
    "loss_after_save": [float(v) for v in more.history["loss"]],
  }
  with open(os.path.join(out, "tf215_dense_midtraining.json"), "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")


def make_structure_files(be: Backend, out: str) -> list[str]:
  """A functional model with 11 bias-free Dense layers (dense_10 sorts before dense_2), a
  BatchNormalization (moving statistics are not trainable), a frozen Dense and a nested
  Sequential, trained one epoch by fit: for the model order and the trainable variables."""
  keras = be.keras
  keras.backend.clear_session()
  keras.utils.set_random_seed(1)
  inputs = keras.Input((3,))
  h = inputs
  for _ in range(11):
    h = keras.layers.Dense(3, activation="tanh", use_bias=False)(h)
  h = keras.layers.BatchNormalization()(h)
  frozen = keras.layers.Dense(3)
  h = frozen(h)
  frozen.trainable = False
  head = keras.Sequential([keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])
  model = keras.Model(inputs, head(h))
  model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
  rng = np.random.RandomState(5)
  x = rng.standard_normal((16, 3)).astype(np.float32)
  y = rng.standard_normal((16, 2)).astype(np.float32)
  model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
  base = f"{be.prefix}_structure"
  files = []
  for fmt in be.formats if be.major == 2 else ("keras",):  # (Keras 3's .h5 is read in scenarios)
    path = os.path.join(out, f"{base}.{fmt}")
    if os.path.exists(path):
      os.remove(path)
    model.save(path)
    files.append(os.path.basename(path))
  ordered = [w for layer in model.layers for w in layer.weights]
  arrays = {f"ordered_{k}": v for k, v in enumerate(be.values(ordered))}
  arrays.update({f"trainable_{k}": v for k, v in enumerate(be.values(model.trainable_variables))})
  np.savez_compressed(os.path.join(out, f"{base}.npz"), **arrays)
  meta = {
    "description": make_structure_files.__doc__.split(":")[0].replace("\n  ", " "),
    "structure_files": files,
    "keras_version": be.version,
    "ordered_names": be.var_names(ordered),
    "trainable_names": be.var_names(model.trainable_variables),
    "optimizer_variables": len(model.optimizer.variables),
  }
  with open(os.path.join(out, f"{base}.json"), "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")
  return files


def make_error_files(be: Backend, out: str) -> list[str]:
  """Files that optadam must refuse (or, for the LossScaleOptimizer, route): one Dense(2) layer."""
  keras = be.keras
  written = []

  def save(model, name, train=True):
    if train:
      grads = [np.full(v.shape, 0.1, np.float32) for v in model.trainable_variables]
      for _ in range(2):
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    path = os.path.join(out, f"{be.prefix}_{name}")
    if os.path.exists(path):
      os.remove(path)
    model.save(path)
    written.append(os.path.basename(path))

  def small(optimizer=None):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)  # the Glorot initial kernel
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    if optimizer is not None:
      model.compile(optimizer=optimizer, loss="mse")
    return model

  save(small(keras.optimizers.SGD(0.1, momentum=0.9)), "sgd.keras")
  save(small(), "no_optimizer.keras", train=False)
  save(small(keras.optimizers.Adam()), "untrained_adam.keras", train=False)  # compiled, no step
  if be.major == 2:
    save(small(keras.optimizers.legacy.Adam(0.01)), "legacy_adam.h5")
    lso = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(0.01))
    save(small(lso), "loss_scale_adam.keras")
  else:
    # Keras 3.15's LossScaleOptimizer cannot apply gradients eagerly on the JAX backend
    # (UnexpectedTracerError in its dynamic-scale `cond`): train it with fit (a jitted step).
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01))
    model = small(lso)
    rng = np.random.RandomState(3)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    save(model, "loss_scale_adam.keras", train=False)
  meta = {"variable_names": be.var_names(lso.variables), "config": json_safe(lso.get_config())}
  with open(os.path.join(out, f"{be.prefix}_loss_scale_adam.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")
  return written


OTHERS = ["structure", "errors", "notebook", "damaged", "configs"]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join("tests", "fixtures", "keras_files"))
  parser.add_argument(
    "--only",
    nargs="+",
    choices=list(SCENARIOS) + OTHERS,
    help="write only these (default: everything)",
  )
  args = parser.parse_args(argv)
  only = set(args.only or list(SCENARIOS) + OTHERS)
  os.makedirs(args.out, exist_ok=True)
  be = Backend()
  for seed, (name, sc) in enumerate(SCENARIOS.items()):
    if be.major in sc.majors and name in only:
      meta = make_scenario(be, name, args.out, seed)
      print(f"{be.prefix}_{name}: {', '.join(meta['files'])}")
  if "structure" in only:
    print(", ".join(make_structure_files(be, args.out)))
  if "errors" in only:
    print(", ".join(make_error_files(be, args.out)))
  if be.major == 2 and "notebook" in only:
    make_notebook_run(be, args.out)
    print("tf215_dense_midtraining.keras")
  if be.major == 2 and "damaged" in only:  # from tf215_defaults.{keras,h5}
    print(", ".join(make_damaged_files(args.out)))
  if "configs" in only:
    print(make_other_configs(be, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
