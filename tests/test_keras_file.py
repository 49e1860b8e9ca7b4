"""Resuming a Keras run from its saved file: `optadam.read_keras_file` / `from_keras_file`.

The files in tests/fixtures/keras_files/ were written by the real TF 2.15.1 (``tf215_*``: .keras
and legacy .h5) and Keras 3 (``keras3_*``: .keras and .h5) with `tools/make_keras_files.py`: Keras
trained 10 steps on known gradients, saved, and trained 10 more (the continuation, in the .npz).
Here optadam resumes from each file and must follow Keras's continuation step by step (float32,
within MAX_ULPS at each tensor's scale), calling `tx.update` outside any jit ("eager"), inside the
user's `jax.jit` ("jit") and op by op ("op-by-op"). Reading needs numpy and h5py only; TensorFlow
and Keras are never imported by optadam.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optadam
from helpers import worst_ulps

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras_files")


def _load_meta() -> dict[str, dict]:
  out = {}
  for p in sorted(glob.glob(os.path.join(FIXTURES, "*.json"))):
    with open(p, encoding="utf-8") as f:
      meta = json.load(f)
    if "files" in meta:  # a scenario (not the notebook's run or the LossScaleOptimizer's notes)
      out[os.path.basename(p)[:-5]] = meta
  return out


META = _load_meta()
FILES = [(base, f) for base, meta in META.items() for f in meta["files"]]
FLAX_PATHS = ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"]
MAX_ULPS = 6  # float32 ulps at each tensor's scale, every step (measured: at most 4, XLA-fused EMA)


def fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def flax_params(record: optadam.KerasFile) -> tuple[dict, dict]:
  """Flax-style nested params (keys sorted: bias before kernel) and the `names` map."""
  names = dict(zip(FLAX_PATHS, record.trainable))
  params = {}
  for path, key in names.items():
    layer, leaf = path.split("/")
    params.setdefault(layer, {})[leaf] = jnp.asarray(record.weights[key])
  return params, names


def continuation(base: str):
  meta, z = META[base], np.load(fixture(base + ".npz"))
  n = len(FLAX_PATHS)
  grads = [
    {p: z[f"grads_{i}"][s] for i, p in enumerate(FLAX_PATHS)}
    for s in range(meta["saved_steps"], meta["saved_steps"] + meta["continued_steps"])
  ]
  expected = [{p: z[f"params_{i}"][s] for i, p in enumerate(FLAX_PATHS)} for s in range(10)]
  final = {p: z[f"final_{i}"] for i, p in enumerate(FLAX_PATHS)} if "final_0" in z else None
  return meta, z, grads, expected, final, n


def nested(flat: dict) -> dict:
  out = {}
  for path, value in flat.items():
    layer, leaf = path.split("/")
    out.setdefault(layer, {})[leaf] = jnp.asarray(value)
  return out


def flat(params: dict) -> dict:
  return {f"{layer}/{leaf}": np.asarray(v) for layer, d in params.items() for leaf, v in d.items()}


def resume(path: str, base: str, mode: str):
  meta, _, grads, expected, final, _ = continuation(base)
  record = optadam.read_keras_file(path)
  params, names = flax_params(record)
  overrides = {}
  if meta["exclude_from_weight_decay"]:
    overrides["exclude_from_weight_decay"] = meta["exclude_from_weight_decay"]
  if mode == "op-by-op":
    overrides["jit_compile"] = False
  tx, state = optadam.from_keras_file(path, params, names=names, **overrides)
  assert tx.keras_args["jit_compile"] == (mode != "op-by-op")

  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optadam.apply_updates(params, updates), state

  if mode == "jit":
    step = jax.jit(step)
  ours = []
  for g in grads:
    params, state = step(params, state, nested(g))
    ours.append(flat(params))
  finalized = flat(optadam.finalize_variable_values(params, state))
  return ours, expected, finalized, final


# Each scenario's .keras and .h5 hold the same run: both modes on the .keras, the jit on the .h5
# (both modes where the .h5 is the only file with state: the legacy Adam's). And once op by op
# (jit_compile=False passed as an override of the file's config).
RUNS = [
  (b, f, m)
  for b, f in FILES
  for m in ("eager", "jit")
  if m == "jit" or f.endswith(".keras") or len(META[b]["files"]) == 1
]
RUNS.append(("tf215_amsgrad_ema", "tf215_amsgrad_ema.keras", "op-by-op"))


@pytest.mark.parametrize("base,name,mode", RUNS, ids=[f"{f}-{m}" for _, f, m in RUNS])
def test_resume_follows_keras(base, name, mode, report):
  ours, expected, finalized, final = resume(fixture(name), base, mode)
  ulps = worst_ulps(ours, expected)
  text = f"{ulps:.1f} ulp over the 10 resumed steps"
  if final is not None:
    final_ulps = worst_ulps([finalized], [final])
    text += f", finalize_variable_values {final_ulps:.1f} ulp"
    assert final_ulps <= MAX_ULPS
  report(f"keras file / {name} / {mode}", text)
  assert ulps <= MAX_ULPS


@pytest.mark.parametrize("base,name", FILES, ids=[f for _, f in FILES])
def test_reads_what_keras_saved(base, name):
  meta, z = META[base], np.load(fixture(base + ".npz"))
  record = optadam.read_keras_file(fixture(name))
  assert record.format == name.rsplit(".", 1)[1]
  assert record.keras_version == meta["keras_version"]
  assert record.keras_major == meta["keras_major"]
  member = meta.get("optimizer", "Adam")  # Adam, AdamW or legacy.Adam
  assert record.optimizer_class == member.split(".")[-1]
  config = dict(record.optimizer_config["config"])
  schedule = isinstance(config["learning_rate"], dict)
  if record.keras_major == 3 and not schedule:
    assert record.optimizer_variables[1] == np.float32(config["learning_rate"])  # the lr variable
  assert config == meta["config"]
  assert len(record.optimizer_variables) == len(meta["optimizer_variable_names"])
  tx = optadam.from_keras_config(record.optimizer_config)
  assert tx.keras_args["amsgrad"] == config["amsgrad"]
  assert tx.config.keras_class == member
  for j, value in enumerate(record.optimizer_variables):
    np.testing.assert_array_equal(value, z[f"optvar_{j}"])
    assert value.dtype == z[f"optvar_{j}"].dtype
  assert len(record.trainable) == 4
  for i, key in enumerate(record.trainable):
    np.testing.assert_array_equal(record.weights[key], z[f"saved_{i}"])
  if record.format == "h5":
    model = "" if record.keras_major == 2 else "sequential/"  # Keras 3 names: the model's path
    assert record.trainable == tuple(model + p for p in FLAX_PATHS)
    assert record.optimizer_variable_names == tuple(meta["optimizer_variable_names"])
  else:
    assert record.trainable == (
      "layers/dense/vars/0",
      "layers/dense/vars/1",
      "layers/dense_1/vars/0",
      "layers/dense_1/vars/1",
    )
    assert record.optimizer_variable_names is None


def test_default_order_is_keras_order():
  """Without `names`, the leaves of `params` in tree order are the trainables in Keras's order."""
  path = fixture("tf215_amsgrad_ema.keras")
  _, _, grads, expected, _, _ = continuation("tf215_amsgrad_ema")
  record = optadam.read_keras_file(path)
  params = [jnp.asarray(record.weights[k]) for k in record.trainable]
  tx, state = optadam.from_keras_file(path, params)
  assert int(state.adam.count) == 10 and int(state.ema.count) == 10
  for g in grads:
    updates, state = tx.update([jnp.asarray(g[p]) for p in FLAX_PATHS], state, params)
    params = optadam.apply_updates(params, updates)
  assert worst_ulps([dict(zip(FLAX_PATHS, params))], [expected[-1]]) <= MAX_ULPS


def test_keras3_semantics():
  path = fixture("keras3_accumulation.keras")
  params, names = flax_params(optadam.read_keras_file(path))
  tx, state = optadam.from_keras_file(path, params, names=names)
  assert tx.keras_args["gradient_accumulation_steps"] == 3
  assert isinstance(state, optadam.GradientAccumulationState)
  assert int(state.count) == 10  # raw calls (Keras 3's `iterations`)
  assert int(state.inner.adam.count) == 3  # real updates: 10 // 3, the bias correction's count
  z = np.load(fixture("keras3_accumulation.npz"))
  # order: iteration, learning_rate, 4 accumulators, ...: the kernel's holds the 10th gradient
  np.testing.assert_array_equal(state.acc["dense"]["kernel"], z["optvar_2"])
  np.testing.assert_array_equal(z["optvar_2"], z["grads_0"][9])


def test_ema_style_and_jit_compile_follow_the_writer(monkeypatch):
  """Keras 3 files get ema_style="keras3"; the file's jit_compile (TF 2.15: false) is dropped."""
  seen = {}
  real = optadam.keras_file.keras_config.from_keras_config

  def spy(config, **overrides):
    seen.update(config=config, overrides=overrides)
    return real(config, **overrides)

  monkeypatch.setattr(optadam.keras_file.keras_config, "from_keras_config", spy)
  for name, style in (("keras3_amsgrad_ema.keras", "keras3"), ("tf215_amsgrad_ema.keras", None)):
    params, names = flax_params(optadam.read_keras_file(fixture(name)))
    tx, _ = optadam.from_keras_file(fixture(name), params, names=names)
    assert seen["overrides"].get("ema_style") == style
    assert "jit_compile" not in seen["config"] and tx.keras_args["jit_compile"] is True
  tx, _ = optadam.from_keras_file(fixture(name), params, names=names, ema_style="keras3")
  assert seen["overrides"]["ema_style"] == "keras3"


def test_the_file_is_not_modified(tmp_path):
  for name in ("tf215_defaults.keras", "tf215_defaults.h5", "keras3_defaults.keras"):
    copy = tmp_path / name
    shutil.copy(fixture(name), copy)
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    mtime = os.stat(copy).st_mtime_ns
    record = optadam.read_keras_file(copy)
    optadam.from_keras_file(copy, [jnp.asarray(record.weights[k]) for k in record.trainable])
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert os.stat(copy).st_mtime_ns == mtime


def test_tensorflow_and_keras_are_not_imported():
  assert "tensorflow" not in sys.modules
  code = (
    "import sys, optadam; "
    "assert 'h5py' not in sys.modules; "  # imported on first read only
    f"r = optadam.read_keras_file({fixture('tf215_defaults.h5')!r}); "
    "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)"
  )
  import subprocess  # pylint: disable=import-outside-toplevel

  env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# --- errors -------------------------------------------------------------------------------------


def _kernel_first(name: str) -> list:
  record = optadam.read_keras_file(fixture(name))
  return [jnp.asarray(record.weights[k]) for k in record.trainable]


def test_not_a_keras_file(tmp_path):
  text = tmp_path / "notes.keras"
  text.write_text("hello")
  with pytest.raises(ValueError, match=r"notes\.keras.*not a Keras model file"):
    optadam.read_keras_file(text)
  import zipfile  # pylint: disable=import-outside-toplevel

  with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
    z.writestr("readme.txt", "not a model")
  with pytest.raises(ValueError, match=r"other\.keras.*zip archive but not a Keras model"):
    optadam.read_keras_file(tmp_path / "other.keras")
  import h5py  # pylint: disable=import-outside-toplevel

  with h5py.File(tmp_path / "data.h5", "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"data\.h5.*HDF5 file but not a Keras model file"):
    optadam.read_keras_file(tmp_path / "data.h5")
  with h5py.File(tmp_path / "run.weights.h5", "w") as f:  # what Keras 3's save_weights writes
    f.create_group("layers/dense/vars")["0"] = np.zeros((3, 2))
  with pytest.raises(ValueError, match=r"weights-only file"):
    optadam.read_keras_file(tmp_path / "run.weights.h5")
  with pytest.raises(ValueError, match=r"is a directory"):
    optadam.read_keras_file(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"missing\.keras"):
    optadam.read_keras_file(tmp_path / "missing.keras")


def test_tensorflow_formats_say_how_to_resave(tmp_path):
  saved = tmp_path / "export"
  saved.mkdir()
  (saved / "saved_model.pb").write_bytes(b"\x08\x01")
  (tmp_path / "ckpt-3.index").write_bytes(b"")
  (tmp_path / "ckpt-3.data-00000-of-00001").write_bytes(b"")
  (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
  with pytest.raises(ValueError, match=r"SavedModel directory.*needs TensorFlow.*run\.keras"):
    optadam.read_keras_file(saved)
  with pytest.raises(ValueError, match=r"SavedModel"):
    optadam.read_keras_file(saved / "saved_model.pb")
  for name in ("ckpt-3", "ckpt-3.index", "ckpt-3.data-00000-of-00001", "checkpoint"):
    with pytest.raises(ValueError, match=r"TensorFlow checkpoint.*needs TensorFlow.*run\.keras"):
      optadam.from_keras_file(tmp_path / name, [])


def test_without_h5py(monkeypatch):
  monkeypatch.setitem(sys.modules, "h5py", None)
  with pytest.raises(ImportError, match=r"pip install optadam\[keras-files\]"):
    optadam.read_keras_file(fixture("tf215_defaults.keras"))


@pytest.mark.parametrize("name", ["tf215_no_optimizer.keras", "keras3_no_optimizer.keras"])
def test_saved_without_optimizer(name):
  record = optadam.read_keras_file(fixture(name))
  assert record.optimizer_config is None and record.optimizer_variables == ()
  assert [v.shape for v in record.weights.values()] == [(3, 2), (2,)]
  with pytest.raises(ValueError, match=rf"{name}.*saved without its optimizer"):
    optadam.from_keras_file(fixture(name), list(record.weights.values()))


@pytest.mark.parametrize("name", ["tf215_sgd.keras", "keras3_sgd.keras"])
def test_other_optimizer(name):
  with pytest.raises(ValueError, match=rf"{name}.*'SGD', not Adam"):
    optadam.from_keras_file(fixture(name), _kernel_first(name))


def test_legacy_optimizer():
  """TF's legacy Adam's .h5: its iteration, then every m, every v (and v-hat)."""
  name = "tf215_legacy_adam.h5"
  record = optadam.read_keras_file(fixture(name))
  assert record.optimizer_variable_names[0] == "Adam/iter:0"
  params = [jnp.asarray(record.weights[k]) for k in record.trainable]
  tx, state = optadam.from_keras_file(fixture(name), params)
  assert tx.config.keras_class == "legacy.Adam"
  assert isinstance(tx.config.learning_rate, optadam.LegacyDecay)
  assert int(state.adam.count) == int(record.optimizer_variables[0])
  n = len(params)
  for i, key in enumerate(record.trainable):
    np.testing.assert_array_equal(state.adam.mu[i], record.optimizer_variables[1 + i])
    np.testing.assert_array_equal(state.adam.nu[i], record.optimizer_variables[1 + n + i])
    assert record.optimizer_variable_names[1 + i] == f"Adam/{key}/m:0"


LEGACY_ARCHIVES = [
  (b, f) for b, m in META.items() for f in m.get("files_without_optimizer_state", [])
]


@pytest.mark.parametrize("base,name", LEGACY_ARCHIVES, ids=[f for _, f in LEGACY_ARCHIVES])
def test_legacy_keras_archive_restarts_like_load_model(base, name):
  """TF 2.15 saves no state of a legacy optimizer in a .keras archive: load_model restarts it
  at step 0, and so does from_keras_file (with a warning); the continuation is Keras's."""
  _, z, grads, _, _, _ = continuation(base)
  record = optadam.read_keras_file(fixture(name))
  assert record.optimizer_variables == ()
  params, names = flax_params(record)
  with pytest.warns(UserWarning, match="no state of a legacy optimizer"):
    tx, state = optadam.from_keras_file(fixture(name), params, names=names)
  assert tx.config.keras_class == "legacy.Adam" and int(state.adam.count) == 0
  expected = [
    {p: z[f"reloaded_params_{i}"][s] for i, p in enumerate(FLAX_PATHS)} for s in range(10)
  ]
  ours = []
  for g in grads:
    updates, state = tx.update(nested(g), state, params)
    params = optadam.apply_updates(params, updates)
    ours.append(flat(params))
  assert worst_ulps(ours, expected) <= MAX_ULPS


@pytest.mark.parametrize("base,name", FILES, ids=[f for _, f in FILES])
def test_config_and_file_build_the_same_optimizer(base, name):
  """The optimizer built from the file's config (and its state from the file's variables)
  steps exactly like the one from_keras_file builds."""
  meta, _, grads, _, _, _ = continuation(base)
  record = optadam.read_keras_file(fixture(name))
  params, names = flax_params(record)
  overrides = {}
  if meta["exclude_from_weight_decay"]:
    overrides["exclude_from_weight_decay"] = meta["exclude_from_weight_decay"]
  tx_file, state_file = optadam.from_keras_file(fixture(name), params, names=names, **overrides)
  if record.keras_major >= 3 and meta["kwargs"].get("use_ema"):
    overrides["ema_style"] = "keras3"
  tx = optadam.from_keras_config(record.optimizer_config, jit_compile=True, **overrides)
  order = [p for t in record.trainable for p, k in names.items() if k == t]
  state = optadam.state_from_keras(tx, list(record.optimizer_variables), params, order=order)
  for g in grads[:4]:
    u_file, state_file = tx_file.update(nested(g), state_file, params)
    u, state = tx.update(nested(g), state, params)
    jax.tree.map(np.testing.assert_array_equal, u, u_file)


@pytest.mark.parametrize(
  "name,damage",
  [
    ("damaged_config_not_json.keras", "its config.json is not valid JSON"),
    ("damaged_truncated.h5", "the HDF5 file cannot be read"),
    ("damaged_truncated_weights.keras", "its model.weights.h5 cannot be read"),
  ],
)
def test_damaged_files(name, damage):
  with pytest.raises(ValueError, match=rf"{name}.* is damaged: {damage}"):
    optadam.read_keras_file(fixture(name))


@pytest.mark.parametrize(
  "name,cls,count",
  [
    ("tf215_loss_scale_adam.keras", "LossScaleOptimizerV3", 5),
    ("keras3_loss_scale_adam.keras", "LossScaleOptimizer", 10),
  ],
)
def test_loss_scale_optimizer(name, cls, count):
  """TF 2.15 saves the inner Adam's 5 variables only; Keras 3 its own 4, then the inner Adam's 6."""
  record = optadam.read_keras_file(fixture(name))
  assert record.optimizer_class == cls
  assert record.optimizer_config["config"]["inner_optimizer"]["class_name"] == "Adam"
  assert len(record.optimizer_variables) == count
  assert record.trainable == ("layers/dense/vars/0", "layers/dense/vars/1")
  params = _kernel_first(name)
  tx, state = optadam.from_keras_file(fixture(name), params)
  assert isinstance(tx, optadam.LossScaleOptimizer)
  assert tx.style == ("keras2" if cls == "LossScaleOptimizerV3" else "keras3")
  assert int(state.inner.adam.count) == 2
  inner = record.optimizer_variables[count - 4 :]  # m, v of the kernel, m, v of the bias
  np.testing.assert_array_equal(state.inner.adam.mu[0], inner[0])
  np.testing.assert_array_equal(state.inner.adam.nu[1], inner[3])
  if cls == "LossScaleOptimizerV3":  # TF 2.15 saves no loss scale: it restarts, as in TF
    assert float(state.scale) == 32768.0 and int(state.good_steps) == 0
  else:  # Keras 3: step_counter and dynamic_scale are the LossScaleOptimizer's own variables
    assert float(state.scale) == float(record.optimizer_variables[3])
    assert int(state.good_steps) == int(record.optimizer_variables[2]) == 2


def test_count_and_shape_mismatch():
  name = "tf215_defaults.keras"
  params = _kernel_first(name)
  with pytest.raises(ValueError, match=r"state for 4 trainable variables.*`params` has 3 leaves"):
    optadam.from_keras_file(fixture(name), params[:3])
  params[0] = params[0].T
  with pytest.raises(
    ValueError,
    match=r"'layers/dense/vars/0' .*has shape \(3, 4\); the parameter '0' has shape \(4, 3\)",
  ):
    optadam.from_keras_file(fixture(name), params)
  params, names = flax_params(optadam.read_keras_file(fixture("tf215_defaults.h5")))
  params["dense"]["bias"] = jnp.zeros(5)
  with pytest.raises(
    ValueError,
    match=r"'dense/bias' .*has shape \(4,\); the parameter 'dense/bias' has shape \(5,\)",
  ):
    optadam.from_keras_file(fixture("tf215_defaults.h5"), params, names=names)


def test_bad_names():
  name = "tf215_defaults.h5"
  params, names = flax_params(optadam.read_keras_file(fixture(name)))
  with pytest.raises(ValueError, match=r"parameters without a name: \['dense_1/bias'\]"):
    optadam.from_keras_file(
      fixture(name),
      params,
      names={**names, "dense_1/bias": None}
      and {k: v for k, v in names.items() if k != "dense_1/bias"},
    )
  with pytest.raises(ValueError, match=r"'dense/kernel:0' is not a trainable variable"):
    optadam.from_keras_file(
      fixture(name), params, names={**names, "dense/kernel": "dense/kernel:0"}
    )
  with pytest.raises(ValueError, match=r"maps both"):
    optadam.from_keras_file(fixture(name), params, names={**names, "dense/bias": "dense/kernel"})


# --- model order and trainable variables ---------------------------------------------------------


def _structure_files(prefix):
  with open(fixture(f"{prefix}_structure.json"), encoding="utf-8") as f:
    return json.load(f)["structure_files"]


STRUCTURE = [(prefix, name) for prefix in ("tf215", "keras3") for name in _structure_files(prefix)]


@pytest.mark.parametrize("prefix,name", STRUCTURE, ids=[n for _, n in STRUCTURE])
def test_model_order_and_trainables(prefix, name):
  """11 Dense layers, BatchNormalization, a frozen Dense, a nested Sequential, in Keras's order."""
  with open(fixture(f"{prefix}_structure.json"), encoding="utf-8") as f:
    meta = json.load(f)
  z = np.load(fixture(f"{prefix}_structure.npz"))
  record = optadam.read_keras_file(fixture(name))
  ordered = [z[f"ordered_{k}"] for k in range(len(meta["ordered_names"]))]
  assert len(record.weights) == len(ordered)
  for value, expected in zip(record.weights.values(), ordered, strict=True):
    np.testing.assert_array_equal(value, expected)
  trainable = [z[f"trainable_{k}"] for k in range(len(meta["trainable_names"]))]
  assert record.trainable is not None and len(record.trainable) == len(trainable)
  for key, expected in zip(record.trainable, trainable, strict=True):
    np.testing.assert_array_equal(record.weights[key], expected)
  assert len(record.optimizer_variables) == meta["optimizer_variables"]
  params = [jnp.asarray(record.weights[k]) for k in record.trainable]
  tx, state = optadam.from_keras_file(fixture(name), params)
  assert int(state.adam.count) == 2  # one epoch of 16 samples, batch 8
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in updates)


def test_docstring_examples(monkeypatch):
  import doctest  # pylint: disable=import-outside-toplevel

  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = doctest.testmod(optadam.keras_file, optionflags=doctest.ELLIPSIS)
  assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("name", ["tf215_untrained_adam.keras", "keras3_untrained_adam.keras"])
def test_compiled_but_never_stepped(name):
  """A model compiled with Adam and saved before any step: a fresh state, as Keras would start."""
  record = optadam.read_keras_file(fixture(name))
  assert record.optimizer_class == "Adam"
  params = _kernel_first(name)
  tx, state = optadam.from_keras_file(fixture(name), params)
  fresh = tx.init(params)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state, fresh))
  assert int(state.adam.count) == 0
