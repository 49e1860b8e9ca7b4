"""Saved Keras model files in, without TensorFlow or Keras: `read_keras_file`, `from_keras_file`.

Three layouts are read (all with h5py, imported lazily; the optional extra
``optadam[keras-files]``):

* ``.keras`` archives (zip) written by TF 2.15's Keras 2 and by Keras 3:
  ``metadata.json`` (``keras_version``), ``config.json`` (the model's config, the
  optimizer in ``compile_config.optimizer``) and ``model.weights.h5``, in which
  every layer's variables are ``layers/<name>/vars/<i>``, ``<name>`` being the
  snake-cased class name made unique in model order (``dense``, ``dense_1``, ...;
  never the layer's own name), and the optimizer's variables are
  ``optimizer/vars/<i>`` in ``optimizer.variables`` order, without their names.
* legacy ``.h5`` files (``model.save("run.h5")``): the model config and
  ``training_config.optimizer_config`` in root attributes, weights under
  ``model_weights/<layer>/`` listed by ``weight_names``, and the optimizer's
  variables under ``optimizer_weights/`` listed, with their names, by
  ``weight_names`` (split into ``weight_names0``, ``weight_names1``, ... when large).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Any, Optional
from collections.abc import Mapping

import jax
import numpy as np

from optadam import _keras_classes
from optadam import _keras_file_formats as formats
from optadam import _tree
from optadam import keras_config
from optadam import keras_state
from optadam.chain import KerasAdam

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_RESAVE = (
  "Load it with TensorFlow once and re-save it as a Keras file: "
  '`model = tf.keras.models.load_model(path); model.save("run.keras")`, then read that.'
)


@dataclasses.dataclass(frozen=True, repr=False)
class KerasFile:
  """What `read_keras_file` found in a saved Keras model file.

  Attributes:
    path: the file read.
    format: ``"keras"`` (a ``.keras`` zip archive) or ``"h5"`` (legacy HDF5).
    keras_version: the Keras that wrote it, e.g. ``"2.15.0"`` (TF 2.15) or ``"3.15.1"``.
    optimizer_config: the serialized optimizer, ``{"class_name": "Adam", "config":
      {...}, ...}`` as `optadam.from_keras_config` takes it (the legacy format's
      ``"Custom>"`` prefix removed); None when the model was saved without one.
    optimizer_variables: the values of ``optimizer.variables``, in Keras's order.
    optimizer_variable_names: their names (legacy ``.h5`` only; ``.keras`` archives
      do not store them), else None.
    weights: the model's variables, trainable or not, in model order, keyed by
      their path in the file: ``layers/dense/vars/0`` in a ``.keras`` archive,
      ``dense/kernel`` (the variable name without ``:0``) in a ``.h5`` file.
    trainable: the keys of `weights` that are the model's trainable variables, in
      Keras's order (the order of the optimizer's slots); None when the file does
      not tell (then pass `from_keras_file` parameters in that order).
    model_config: the model's Keras config (``{"class_name": ..., "config": ...}``).
  """

  path: str
  format: str
  keras_version: str
  optimizer_config: Optional[dict[str, Any]]
  optimizer_variables: tuple[np.ndarray, ...]
  optimizer_variable_names: Optional[tuple[str, ...]]
  weights: dict[str, np.ndarray]
  trainable: Optional[tuple[str, ...]]
  model_config: Optional[dict[str, Any]]

  @property
  def keras_major(self) -> int:
    """2 (TF 2.x's Keras) or 3."""
    return int(self.keras_version.split(".")[0])

  @property
  def optimizer_class(self) -> Optional[str]:
    """The optimizer's ``class_name`` (``"Adam"``), or None without an optimizer."""
    return None if self.optimizer_config is None else self.optimizer_config.get("class_name")

  def __repr__(self) -> str:
    return (
      f"KerasFile(path={self.path!r}, format={self.format!r}, "
      f"keras_version={self.keras_version!r}, optimizer_class={self.optimizer_class!r}, "
      f"{len(self.optimizer_variables)} optimizer variables, "
      f"weights={ {k: v.shape for k, v in self.weights.items()} })"
    )


def _import_h5py():
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "Reading Keras model files needs h5py: `pip install optadam[keras-files]` "
      "(or `pip install h5py`). TensorFlow and Keras are not needed."
    ) from e
  return h5py


def _check_path(path: str) -> None:
  """Refuses what is not a Keras model file, with what to do instead."""
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, "saved_model.pb")):
      raise ValueError(
        f"{path!r} is a TensorFlow SavedModel directory; reading it needs TensorFlow. {_RESAVE}"
      )
    raise ValueError(f"{path!r} is a directory, not a Keras model file (.keras or .h5).")
  base = os.path.basename(path)
  is_ckpt = (
    base == "checkpoint"
    or base.endswith(".index")
    or re.search(r"\.data-\d+-of-\d+$", base)
    or (not os.path.exists(path) and os.path.exists(path + ".index"))
  )
  if is_ckpt:
    raise ValueError(
      f"{path!r} is a TensorFlow checkpoint (tf.train.Checkpoint / save_weights in TF "
      "format); reading it needs TensorFlow. Restore it into the model and optimizer with "
      'TensorFlow, then `model.save("run.keras")`, and read that.'
    )
  if base == "saved_model.pb":
    raise ValueError(f"{path!r} is part of a TensorFlow SavedModel. {_RESAVE}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such Keras model file: {path!r}.")


# --- public API --------------------------------------------------------------------------------


def read_keras_file(path: str | os.PathLike) -> KerasFile:
  """Reads a saved Keras model file: optimizer config and variables, model weights.

  Reads ``.keras`` archives written by TF 2.15 (Keras 2.15) and by Keras 3, and
  legacy ``.h5`` files (``model.save("run.h5")``), with numpy and h5py only —
  never TensorFlow or Keras. The file is opened read-only.

  Args:
    path: the ``.keras`` or ``.h5`` file.

  Returns:
    A `KerasFile`.

  Raises:
    ImportError: without h5py (``pip install optadam[keras-files]``).
    ValueError: for a file that is not a Keras model file, a TensorFlow
      SavedModel directory or a TensorFlow checkpoint (they need TensorFlow; the
      message says how to re-save as ``.keras``).
    FileNotFoundError: when `path` does not exist.

  Example:
    >>> import optadam
    >>> f = optadam.read_keras_file("tests/fixtures/keras_files/tf215_defaults.keras")
    >>> f.keras_version, f.optimizer_class, len(f.optimizer_variables)
    ('2.15.0', 'Adam', 9)
    >>> list(f.weights)[:2]
    ['layers/dense/vars/0', 'layers/dense/vars/1']
  """
  path = os.fspath(path)
  _check_path(path)
  h5py = _import_h5py()
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(_ZIP_MAGIC):
    return KerasFile(**formats.read_keras_archive(path, h5py))
  if head == _HDF5_MAGIC:
    return KerasFile(**formats.read_h5(path, h5py))
  raise ValueError(
    f"{path!r} is not a Keras model file: neither a .keras (zip) archive nor an HDF5 "
    f"(.h5) file (it starts with {head!r})."
  )


def _check_optimizer(record: KerasFile) -> dict[str, Any]:
  """The file's optimizer config, refused with a clear reason when optadam cannot continue it."""
  entry = record.optimizer_config
  if entry is None:
    raise ValueError(
      f"{record.path!r} holds a model saved without its optimizer (an uncompiled model, or "
      "`include_optimizer=False`): there is no optimizer state to resume. Build one with "
      "`optadam.adam(...)` and `tx.init(params)` instead."
    )
  adam = entry
  if _keras_classes.class_name(entry) in _keras_classes.LSO_CLASSES:
    adam = (entry.get("config") or {}).get("inner_optimizer") or {}
  try:
    _keras_classes.family_member(
      adam.get("config") or {}, adam.get("module"), _keras_classes.class_name(adam)
    )
  except ValueError as e:
    raise ValueError(f"{record.path!r}: {e}") from None
  return entry


def _keras_order(
  record: KerasFile, params: Any, names: Optional[Mapping[str, str]]
) -> Optional[list[str]]:
  """`state_from_keras`'s `order` (parameter paths in Keras's order) from `names`."""
  if names is None:
    return None
  paths = [_tree.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if record.trainable is None:
    raise ValueError(
      f"{record.path!r} does not say which of its weights are trainable, so `names` cannot "
      "be matched to the optimizer's slots; pass `params` in Keras's order and names=None."
    )
  missing = [p for p in paths if p not in names]
  unknown = sorted(set(names) - set(paths))
  if missing or unknown:
    raise ValueError(
      f"`names` must map every parameter path to a variable of {record.path!r}; "
      f"parameters without a name: {missing}; names of no parameter: {unknown}."
    )
  by_file: dict[str, Any] = {}
  for p in paths:
    target = names[p]
    if target not in record.trainable:
      raise ValueError(
        f"`names[{p!r}]` = {target!r} is not a trainable variable of {record.path!r}; "
        f"its trainable variables are {list(record.trainable)}."
      )
    if target in by_file:
      raise ValueError(f"`names` maps both {by_file[target]!r} and {p!r} to {target!r}.")
    by_file[target] = p
  absent = [t for t in record.trainable if t not in by_file]
  if absent:
    raise ValueError(f"`names` leaves trainable variables of {record.path!r} unmapped: {absent}.")
  return [by_file[t] for t in record.trainable]


def _never_stepped(record: KerasFile, layout: formats.SlotLayout) -> bool:
  """A compiled model saved before its first step: the optimizer has no slots yet."""
  values = record.optimizer_variables
  return len(values) <= 1 + layout.lr_var and all(int(np.asarray(v)) == 0 for v in values[:1])


def _check_fit(
  record: KerasFile, layout: formats.SlotLayout, params: Any, order: Optional[list[str]]
) -> None:
  """Number and shapes of the file's trainable variables against `params`, named."""
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [_tree.path_str(p) for p, _ in leaves_with_paths]
  shapes = {pth: np.shape(leaf) for pth, (_, leaf) in zip(paths, leaves_with_paths)}
  n_file = layout.count_trainables(len(record.optimizer_variables))
  if n_file is None:
    kind = "TF's legacy Adam" if layout.legacy else f"Keras {record.keras_major}'s Adam"
    raise ValueError(
      f"{record.path!r}: {len(record.optimizer_variables)} optimizer variables do not fit "
      f"{kind} with use_ema={layout.avg}, amsgrad={layout.amsgrad}; the file may be damaged."
    )
  if n_file != len(paths):
    listed = f" ({list(record.trainable)})" if record.trainable else ""
    raise ValueError(
      f"{record.path!r} has optimizer state for {n_file} trainable variables{listed}; "
      f"`params` has {len(paths)} leaves ({paths})."
    )
  keras_paths = order if order is not None else paths
  for i, p in enumerate(keras_paths):
    j = layout.first_moment_index(i, n_file)
    file_shape = np.shape(record.optimizer_variables[j])
    if file_shape != shapes[p]:
      var = record.trainable[i] if record.trainable and i < len(record.trainable) else f"#{i}"
      raise ValueError(
        f"{record.path!r}: trainable variable {var!r} (number {i} in Keras's order) has "
        f"shape {file_shape}; the parameter {p!r} has shape {shapes[p]}."
      )


def from_keras_file(
  path: str | os.PathLike, params: Any, *, names: Optional[Mapping[str, str]] = None, **overrides
) -> tuple[KerasAdam, Any]:
  """The `optadam.adam` a saved Keras model's optimizer describes, and its state, to continue.

  Reads the file with `read_keras_file`, rebuilds the optimizer with
  `optadam.from_keras_config` and its state with `optadam.state_from_keras`:
  step count, moments, AMSGrad's v-hat, EMA averages and (Keras 3) gradient
  accumulators. Files written by Keras 3 get Keras 3's semantics where they
  differ (``ema_style="keras3"``; the step count of the moments is
  ``iterations // gradient_accumulation_steps``). The file's ``jit_compile`` is
  not used (TF 2.15 records the effective value, False on a machine without a
  GPU); pass ``jit_compile=`` to choose.

  Args:
    path: a ``.keras`` or legacy ``.h5`` model file.
    params: your parameter pytree, e.g. Flax parameters filled from
      ``read_keras_file(path).weights``. By default its leaves, in
      ``jax.tree.leaves`` order, are the model's trainable variables in Keras's
      order.
    names: where the orders differ, a map from each parameter's "/"-joined pytree
      path (``"Dense_0/kernel"``) to the file's variable path, a key of
      ``KerasFile.weights`` (``"layers/dense/vars/0"`` in a ``.keras`` archive,
      ``"dense/kernel"`` in a ``.h5`` file).
    **overrides: arguments of `optadam.adam` that Keras keeps outside the config
      (``exclude_from_weight_decay``, ``mu_dtype``, ...) or that replace the file's.

  Returns:
    ``(tx, opt_state)``: continue with ``tx.update(grads, opt_state, params)``.

  Raises:
    ValueError: no optimizer in the file, another class than Adam, a legacy
      optimizer, or variables whose number or shapes do not fit `params`.

  Example:
    >>> import numpy as np, optadam
    >>> path = "tests/fixtures/keras_files/tf215_defaults.keras"
    >>> params = list(optadam.read_keras_file(path).weights.values())
    >>> tx, opt_state = optadam.from_keras_file(path, params)
    >>> int(opt_state.adam.count)
    10
  """
  record = read_keras_file(path)
  entry = json.loads(json.dumps(_check_optimizer(record)))  # a deep copy: the record stays as read
  if _keras_classes.class_name(entry) in _keras_classes.LSO_CLASSES:
    return _from_loss_scale_file(record, entry, params, names, overrides)
  _as_continued(entry["config"], record.keras_major, overrides)
  order = _keras_order(record, params, names)
  tx = keras_config.from_keras_config(entry, **overrides)
  layout = formats.SlotLayout(record.keras_major, entry)
  if _never_stepped(record, layout):
    if layout.legacy and record.format == "keras":
      warnings.warn(_LEGACY_KERAS_ARCHIVE.format(path=record.path), stacklevel=2)
    return tx, tx.init(params)
  _check_fit(record, layout, params, order)
  state = keras_state.state_from_keras(tx, list(record.optimizer_variables), params, order=order)
  return tx, state


_LEGACY_KERAS_ARCHIVE = (
  "{path!r} holds TF's legacy Adam, and TF 2.15 saves no state of a legacy optimizer in a "
  ".keras archive: like tf.keras.models.load_model, optadam starts it afresh (step 0, zero "
  "moments). The run's .h5 file (model.save('run.h5')) holds the state."
)


def _as_continued(body: Any, keras_major: int, overrides: dict[str, Any]) -> None:
  """The file's Adam options, for a continuation: its ``jit_compile`` is dropped (TF 2.15
  records the effective value), and Keras 3's EMA is Keras 3's (``ema_style="keras3"``)."""
  if not isinstance(body, dict):
    return
  body.pop("jit_compile", None)
  if keras_major >= 3 and body.get("use_ema"):
    overrides.setdefault("ema_style", "keras3")


def _from_loss_scale_file(record, entry, params, names, overrides):
  """`optadam.loss_scale_optimizer` around the file's Adam, and its state."""
  order = _keras_order(record, params, names)
  inner = entry["config"]["inner_optimizer"]
  _as_continued(
    inner.get("config") if "class_name" in inner else inner, record.keras_major, overrides
  )
  tx = keras_config.from_keras_config(entry, **overrides)
  extra = {}
  if record.keras_major < 3:
    # TF 2.15 does not save the dynamic loss scale or its counter (its optimizer/vars are the
    # inner Adam's); loading the file in TF restarts them at initial_scale and 0: so do we.
    extra = {"loss_scale": entry["config"].get("initial_scale", 2.0**15), "dynamic_counter": 0}
  variables = list(record.optimizer_variables)
  state = keras_state.state_from_keras(tx, variables, params, order=order, **extra)
  return tx, state
