"""Parts of `make_keras_files.py`: damaged model files, and other optimizers' configs.

* `make_damaged_files(out)`: three small files derived byte by byte from ``tf215_defaults.keras``
  and ``tf215_defaults.h5`` (which must already be in ``out``), for the readers' error messages.
  Deterministic: the output depends only on the source files' bytes.
* `make_other_configs(be, out)`: ``other_optimizer_configs.json``, the bare (``get_config()``)
  and serialized (``keras.optimizers.serialize``) configs of default-constructed optimizers of
  the running Keras, in its own section (``tf215`` or ``keras3``; the other is kept).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

DAMAGED = {
  "damaged_config_not_json.keras": (
    "tf215_defaults.keras",
    "config.json cut to its first half (not JSON); metadata.json and model.weights.h5 intact",
  ),
  "damaged_truncated.h5": (
    "tf215_defaults.h5",
    "the file cut to its first half (the HDF5 superblock is intact, its end-of-file is not)",
  ),
  "damaged_truncated_weights.keras": (
    "tf215_defaults.keras",
    "model.weights.h5 inside the archive cut to its first half; config.json and metadata.json "
    "intact",
  ),
}


def json_safe(x):
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def _rezip(source: str, target: str, cut_member: str) -> None:
  """Copy the zip `source` to `target` member by member (same order, names, dates and
  compression), with the member `cut_member` cut to the first half of its bytes."""
  with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
    for info in src.infolist():
      data = src.read(info.filename)
      if info.filename == cut_member:
        data = data[: len(data) // 2]
      copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
      copy.compress_type = info.compress_type
      copy.external_attr = info.external_attr
      dst.writestr(copy, data)


def make_damaged_files(out: str) -> list[str]:
  for name, (source, _) in DAMAGED.items():
    src, dst = os.path.join(out, source), os.path.join(out, name)
    if not os.path.exists(src):
      raise FileNotFoundError(f"{src}: write the defaults scenario first (TF 2.15)")
    if name.endswith(".h5"):
      with open(src, "rb") as f:
        data = f.read()
      with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
    else:
      member = "config.json" if "config" in name else "model.weights.h5"
      _rezip(src, dst, member)
  meta = {
    name: {"source": source, "damage": how, "size": os.path.getsize(os.path.join(out, name))}
    for name, (source, how) in DAMAGED.items()
  }
  with open(os.path.join(out, "damaged_files.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")
  return list(DAMAGED)


def _optimizer_classes(module, prefix: str = "") -> dict:
  base = module.Optimizer
  return {
    prefix + name: cls
    for name in sorted(dir(module))
    if isinstance(cls := getattr(module, name), type) and issubclass(cls, base) and cls is not base
  }


def _entry(be, make) -> dict:
  """{"bare": get_config(), "serialized": serialize(...)} of `make()`, or {"error": ...}."""
  be.keras.backend.clear_session()  # Keras 3 default names unique per session: adam_w, not adam_w_1
  try:
    opt = make()
  except Exception as e:  # recorded: some optimizers need arguments
    return {"error": f"{type(e).__name__}: {e}"[:300]}
  entry = {"bare": opt.get_config(), "serialized": be.keras.optimizers.serialize(opt)}
  if be.major == 2:  # what a TF 2.15 .h5 file's training_config holds
    entry["serialized_legacy_format"] = be.keras.optimizers.serialize(opt, use_legacy_format=True)
  return json_safe(entry)


def _stepped(be, opt):
  """`opt` after one apply_gradients on a (2,) variable: legacy hyperparameters become float32
  variables, and their config values float32 numbers (what a file written after training holds)."""
  keras = be.keras
  var = keras.Variable(np.zeros(2, np.float32)) if be.major == 3 else be.tf.Variable([0.0, 0.0])
  opt.apply_gradients([(np.full(2, 0.1, np.float32), var)])
  return opt


def _special(be) -> dict:
  """Non-default configs: AdamW with every argument set, legacy Adam with decay / epsilon 0."""
  keras = be.keras
  schedule = lambda: keras.optimizers.schedules.ExponentialDecay(0.01, 4, 0.7, staircase=True)
  adamw = dict(
    learning_rate=0.01,
    weight_decay=0.05,
    beta_1=0.8,
    beta_2=0.99,
    epsilon=1e-6,
    amsgrad=True,
    clipnorm=1.0,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=5,
  )
  if be.major == 3:
    adamw["gradient_accumulation_steps"] = 2
  opt = keras.optimizers
  out = {
    "AdamW(" + ", ".join(f"{k}={v}" for k, v in adamw.items()) + ")": lambda: opt.AdamW(**adamw),
    "AdamW(learning_rate=ExponentialDecay(0.01, 4, 0.7, staircase=True), global_clipnorm=1.0)": (
      lambda: opt.AdamW(learning_rate=schedule(), global_clipnorm=1.0)
    ),
  }
  lso = opt.LossScaleOptimizer if be.major == 3 else keras.mixed_precision.LossScaleOptimizer
  out["LossScaleOptimizer(AdamW())"] = lambda: lso(opt.AdamW())
  if be.major == 2:
    legacy = opt.legacy.Adam
    out["legacy.Adam(learning_rate=0.01, decay=0.05)"] = lambda: legacy(0.01, decay=0.05)
    out["legacy.Adam(learning_rate=0.01, decay=0.05) after one step"] = lambda: _stepped(
      be, legacy(0.01, decay=0.05)
    )
    out["legacy.Adam(epsilon=0.0)"] = lambda: legacy(epsilon=0.0)
    out["legacy.Adam(amsgrad=True, clipvalue=0.5, clipnorm=1.0) after one step"] = lambda: _stepped(
      be, legacy(amsgrad=True, clipvalue=0.5, clipnorm=1.0)
    )
    out["legacy.Adam(learning_rate=ExponentialDecay(0.01, 4, 0.7, staircase=True))"] = lambda: (
      legacy(learning_rate=schedule())
    )
  return out


def make_other_configs(be, out: str) -> str:
  keras = be.keras
  classes = _optimizer_classes(keras.optimizers)
  if be.major == 2:
    classes.update(_optimizer_classes(keras.optimizers.legacy, "legacy."))
  section = {
    "keras_version": be.version,
    "defaults": {name: _entry(be, cls) for name, cls in classes.items()},
    "non_defaults": {name: _entry(be, make) for name, make in _special(be).items()},
  }
  if be.major == 2:
    section["tf_version"] = be.tf.__version__
  path = os.path.join(out, "other_optimizer_configs.json")
  data = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  data["description"] = (
    "get_config() ('bare') and keras.optimizers.serialize() ('serialized'; TF 2.15 also "
    "serialize(use_legacy_format=True), what its .h5 files hold) of default-constructed "
    "optimizers ('defaults', keyed by class; 'legacy.X' = tf.keras.optimizers.legacy.X) and of "
    "some non-default ones ('non_defaults'), written by tools/make_keras_files.py"
  )
  data[be.prefix] = section
  with open(path, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
    f.write("\n")
  return os.path.basename(path)
