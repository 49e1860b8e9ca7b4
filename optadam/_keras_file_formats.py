"""How Keras lays out a saved model file: the readers behind `optadam.read_keras_file` (private).

Nothing here imports h5py, TensorFlow or Keras: the caller passes the h5py module in. See
`optadam.keras_file` for the layouts and tools/README.md for what was observed in real files.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from optadam import _keras_classes
from optadam._keras_classes import LSO_CLASSES

_ROOT_GROUPS_NOT_MODEL = ("optimizer", "metrics", "compile_metrics", "compile_loss", "loss")
KERAS3_LSO_OWN = 4  # a Keras 3 LossScaleOptimizer's own variables, before the inner optimizer's
# Layers whose variables after the first `k` are not trainable (moving statistics).
_NON_TRAINABLE_AFTER = {
  "BatchNormalization": lambda c: int(c.get("scale", True)) + int(c.get("center", True)),
  "Normalization": lambda c: 0,
}


def _natural_key(name: str) -> tuple:
  return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _attribute_key(name: str) -> tuple:
  """Keras 3 visits a layer's attributes in name order, private ones last."""
  return (name.startswith("_"),) + _natural_key(name)


def _snake_case(class_name: str) -> str:
  """The group name Keras gives a layer of this class (before making it unique)."""
  name = re.sub(r"\W+", "", class_name.split(">")[-1])
  name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _optimizer_entry(config: Any, path: str, where: str) -> Optional[dict[str, Any]]:
  if config is None:
    return None
  if not isinstance(config, dict) or "class_name" not in config:
    raise ValueError(f"{path!r}: the optimizer in {where} is not a serialized Keras optimizer.")
  out = dict(config)
  out["class_name"] = str(out["class_name"]).split(">")[-1]
  return out


# --- .keras archives ---------------------------------------------------------------------------


def _layers_in_order(layers_group, model_config: Optional[dict]) -> list[tuple[str, Any]]:
  """(group name, layer config) of a `layers` group, in model order."""
  present = list(layers_group)
  configs: list[Any] = []
  if isinstance(model_config, dict):
    configs = (model_config.get("config") or {}).get("layers") or []
  used: dict[str, int] = {}
  ordered = []
  for layer in configs:
    if not isinstance(layer, dict) or "class_name" not in layer:
      continue
    name = _snake_case(str(layer["class_name"]))
    if name in used:
      used[name] += 1
      name = f"{name}_{used[name]}"
    else:
      used[name] = 0
    if name in present:
      ordered.append((name, layer))
  rest = sorted(set(present) - {n for n, _ in ordered}, key=_natural_key)
  return ordered + [(n, None) for n in rest]


def _read_vars(group) -> list[np.ndarray]:
  if "vars" not in group:
    return []
  vars_group = group["vars"]
  return [np.asarray(vars_group[k]) for k in sorted(vars_group, key=_natural_key)]


def _walk_layers(group, prefix: str, layer_config: Optional[dict], out: dict, trainable: list):
  """Adds a layer's variables (its own, then its sub-layers', in model order) to `out`."""
  values = _read_vars(group)
  cls = (layer_config or {}).get("class_name")
  conf = (layer_config or {}).get("config") or {}
  n_trainable = len(values)
  if conf.get("trainable") is False:
    n_trainable = 0
  elif cls in _NON_TRAINABLE_AFTER:
    n_trainable = min(n_trainable, _NON_TRAINABLE_AFTER[cls](conf))
  for i, value in enumerate(values):
    key = f"{prefix}vars/{i}"
    out[key] = value
    trainable.append(i < n_trainable)
  children = []
  for sub in ("layers", "_layer_checkpoint_dependencies"):
    if sub in group:
      children += [(f"{sub}/{n}", c) for n, c in _layers_in_order(group[sub], layer_config)]
  others = set(group) - {"vars", "layers", "_layer_checkpoint_dependencies"}
  children += [(n, None) for n in sorted(others, key=_attribute_key)]  # sub-layers as attributes
  for name, child_config in children:
    child = group[name]
    if hasattr(child, "keys"):
      if conf.get("trainable") is False and child_config is not None:
        child_config = {**child_config, "config": {**child_config.get("config", {})}}
        child_config["config"]["trainable"] = False
      _walk_layers(child, f"{prefix}{name}/", child_config, out, trainable)


def _model_weights_keras(h5, model_config) -> tuple[dict, list]:
  out: dict[str, np.ndarray] = {}
  trainable: list[bool] = []
  for i, value in enumerate(_read_vars(h5)):  # the model's own variables
    out[f"vars/{i}"] = value
    trainable.append(True)
  for sub in ("layers", "_layer_checkpoint_dependencies"):
    if sub in h5:
      for name, layer_config in _layers_in_order(h5[sub], model_config):
        _walk_layers(h5[sub][name], f"{sub}/{name}/", layer_config, out, trainable)
  for name in sorted(h5, key=_attribute_key):  # subclassed models: attributes holding layers
    if name in ("vars", "layers", "_layer_checkpoint_dependencies") + _ROOT_GROUPS_NOT_MODEL:
      continue
    if hasattr(h5[name], "keys"):
      _walk_layers(h5[name], f"{name}/", None, out, trainable)
  return out, trainable


@contextlib.contextmanager
def _damaged(path: str, what: str) -> Iterator[None]:
  """h5py's errors reading a damaged (e.g. truncated) file as a ValueError naming the file."""
  try:
    yield
  except OSError as e:
    raise ValueError(
      f"{path!r} is damaged: {what} cannot be read ({e}); it may be truncated. Save the model "
      "again."
    ) from e


def _json_member(archive: zipfile.ZipFile, name: str, path: str) -> Any:
  """A JSON member of a .keras archive; a ValueError naming the file when it is not JSON."""
  try:
    return json.loads(archive.read(name))
  except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path!r} is damaged: its {name} is not valid JSON ({e}).") from e


def read_keras_archive(path: str, h5py) -> dict[str, Any]:
  """The `KerasFile` fields of a .keras archive."""
  try:
    archive = zipfile.ZipFile(path, "r")
  except zipfile.BadZipFile as e:
    raise ValueError(f"{path!r} is not a Keras model file: not a readable zip archive.") from e
  with archive:
    names = set(archive.namelist())
    if "config.json" not in names or "metadata.json" not in names:
      raise ValueError(
        f"{path!r} is a zip archive but not a Keras model file: it has no config.json / "
        f"metadata.json (found {sorted(names)[:8]})."
      )
    metadata = _json_member(archive, "metadata.json", path)
    config = _json_member(archive, "config.json", path)
    if "model.weights.h5" not in names:
      raise ValueError(
        f"{path!r}: the archive has no model.weights.h5 (found {sorted(names)}); sharded or "
        "npz weights are not supported: re-save with `model.save(path)`."
      )
    weights_bytes = archive.read("model.weights.h5")
  compile_config = config.get("compile_config") or {}
  optimizer = _optimizer_entry(
    compile_config.get("optimizer"), path, "config.json compile_config.optimizer"
  )
  with _damaged(path, "its model.weights.h5"), h5py.File(io.BytesIO(weights_bytes), "r") as h5:
    weights, is_trainable = _model_weights_keras(h5, config)
    opt_values: list[np.ndarray] = []
    if "optimizer" in h5:
      opt_values = _read_vars(h5["optimizer"])
      if not opt_values and "inner_optimizer" in h5["optimizer"]:
        opt_values = _read_vars(h5["optimizer"]["inner_optimizer"])
  trainable = [k for k, t in zip(weights, is_trainable) if t]
  candidates: Optional[list[Any]] = trainable
  slot_shapes = first_moment_shapes(metadata.get("keras_version", ""), optimizer, opt_values)
  if slot_shapes is not None and slot_shapes != [np.shape(weights[k]) for k in trainable]:
    candidates = None  # the layer configs did not tell which variables are trainable
  return dict(
    path=path,
    format="keras",
    keras_version=str(metadata.get("keras_version", "")),
    optimizer_config=optimizer,
    optimizer_variables=tuple(opt_values),
    optimizer_variable_names=None,
    weights=weights,
    trainable=None if candidates is None else tuple(candidates),
    model_config={k: config[k] for k in ("module", "class_name", "config") if k in config},
  )


# --- legacy .h5 files --------------------------------------------------------------------------


def _attr_json(attrs, name: str) -> Any:
  if name not in attrs:
    return None
  value = attrs[name]
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  return json.loads(value)


def _name_list(group, name: str) -> list[str]:
  """A list attribute, also when Keras split it into name0, name1, ... (the HDF5 header limit)."""
  if name in group.attrs:
    chunks = [group.attrs[name]]
  else:
    chunks, i = [], 0
    while f"{name}{i}" in group.attrs:
      chunks.append(group.attrs[f"{name}{i}"])
      i += 1
  out = []
  for chunk in chunks:
    for n in np.atleast_1d(chunk):
      out.append(n.decode("utf-8") if isinstance(n, bytes) else str(n))
  return out


def _strip_slot(name: str) -> str:
  return name[:-2] if name.endswith(":0") else name


def read_h5(path: str, h5py) -> dict[str, Any]:
  """The `KerasFile` fields of a legacy .h5 model file."""
  with _damaged(path, "the HDF5 file"), h5py.File(path, "r") as h5:
    if "model_weights" not in h5 and "model_config" not in h5.attrs:
      keys = sorted(h5)[:8]
      hint = (
        " It looks like a weights-only file (`model.save_weights`); it has no optimizer config."
        if "layers" in h5 or "vars" in h5 or "layer_names" in h5.attrs
        else ""
      )
      raise ValueError(
        f"{path!r} is an HDF5 file but not a Keras model file: no model_config attribute "
        f"or model_weights group (top-level groups: {keys}).{hint}"
      )
    attrs = h5.attrs
    version = attrs.get("keras_version", b"")
    version = version.decode() if isinstance(version, bytes) else str(version)
    model_config = _attr_json(attrs, "model_config")
    training = _attr_json(attrs, "training_config") or {}
    optimizer = _optimizer_entry(
      training.get("optimizer_config"), path, "the training_config attribute"
    )
    group = h5.get("model_weights", h5)
    weights: dict[str, np.ndarray] = {}
    for layer in _name_list(group, "layer_names"):
      layer_group = group[layer]
      for wname in _name_list(layer_group, "weight_names"):
        key = _strip_slot(wname)
        if key in weights:
          key = f"{layer}/{key}"
        weights[key] = np.asarray(layer_group[wname])
    opt_names: list[str] = []
    opt_values: list[np.ndarray] = []
    if "optimizer_weights" in h5:
      opt_group = h5["optimizer_weights"]
      opt_names = _name_list(opt_group, "weight_names")
      opt_values = [np.asarray(opt_group[n]) for n in opt_names]
  trainable = _trainable_from_slot_names(opt_names, weights)
  slot_shapes = first_moment_shapes(version, optimizer, opt_values)
  if trainable is not None and slot_shapes != [np.shape(weights[k]) for k in trainable]:
    trainable = None
  return dict(
    path=path,
    format="h5",
    keras_version=version,
    optimizer_config=optimizer,
    optimizer_variables=tuple(opt_values),
    optimizer_variable_names=tuple(opt_names) if opt_names else None,
    weights=weights,
    trainable=trainable,
    model_config=model_config,
  )


def _trainable_from_slot_names(opt_names: list[str], weights: dict) -> Optional[tuple[str, ...]]:
  """The trainables, from the first-moment slots' names.

  Keras 2 names them ``<Optimizer>/m/<variable>:0``; TF's legacy optimizers
  ``<Optimizer>/<variable>/m:0``; Keras 3
  ``<optimizer>/<variable path with "/" as "_">_momentum``.
  """
  found = []
  flat = {k.replace("/", "_"): k for k in weights}
  for n in opt_names:
    keras2 = re.fullmatch(r"(?:[^/]+/)?m/(.+?)(?::\d+)?", n)
    legacy = re.fullmatch(r"[^/]+/(.+)/m(?::\d+)?", n)
    keras3 = re.fullmatch(r"[^/]+/(.+)_momentum", n)
    if keras2 and keras2.group(1) in weights:
      found.append(keras2.group(1))
    elif legacy and legacy.group(1) in weights:
      found.append(legacy.group(1))
    elif keras3 and keras3.group(1) in flat:
      found.append(flat[keras3.group(1)])
  return tuple(found) if found else None


# --- the layout of Adam's variables -------------------------------------------------------


def adam_entry(entry: Optional[dict]) -> Optional[dict]:
  """The Adam-family entry inside an optimizer entry (also inside a LossScaleOptimizer)."""
  while isinstance(entry, dict):
    if _keras_classes.class_name(entry) in ("Adam", "AdamW"):
      return entry
    entry = (entry.get("config") or {}).get("inner_optimizer")
  return None


class SlotLayout:
  """Where an Adam-family optimizer keeps its variables in ``optimizer.variables``.

  Keras 2's new Adam: iteration, averages (EMA), (m, v) interleaved, v-hats; Keras 3 adds
  the learning rate after the iteration (float rates) and accumulators after the averages;
  TF's legacy Adam: iteration, every m, every v, every v-hat.
  """

  def __init__(self, keras_major: int, entry: dict):
    config = entry.get("config") or {}
    self.legacy = _keras_classes.is_legacy_adam(entry)
    k3 = keras_major >= 3 and not self.legacy
    self.lr_var = int(k3 and not isinstance(config.get("learning_rate"), dict))
    self.avg = bool(config.get("use_ema")) and not self.legacy
    self.acc = k3 and bool(config.get("gradient_accumulation_steps"))
    self.amsgrad = bool(config.get("amsgrad"))

  def count_trainables(self, count: int) -> Optional[int]:
    """How many trainable variables `count` variables cover (None: they fit no count)."""
    per = 2 + self.avg + self.amsgrad + self.acc
    rest = count - 1 - self.lr_var
    return rest // per if rest >= 0 and rest % per == 0 else None

  def first_moment_index(self, i: int, n: int) -> int:
    """The position of the i-th trainable variable's ``m`` among `n`."""
    start = 1 + self.lr_var + n * (self.avg + self.acc)
    return start + (i if self.legacy else 2 * i)


def first_moment_shapes(version: str, entry: Optional[dict], values: list) -> Optional[list]:
  """Shapes of Adam's first-moment slots (= the trainable variables'), or None if unknown."""
  adam = adam_entry(entry)
  if entry is None or adam is None or not values:
    return None
  major = int(str(version).split(".")[0] or 2)
  if major >= 3 and _keras_classes.class_name(entry) in LSO_CLASSES:
    values = values[KERAS3_LSO_OWN:]  # its iteration, learning_rate, step_counter, dynamic_scale
  layout = SlotLayout(major, adam)
  n = layout.count_trainables(len(values))
  if not n:  # None: not an Adam layout; 0: the optimizer was never built (no slots)
    return None
  return [np.shape(values[layout.first_moment_index(i, n)]) for i in range(n)]
