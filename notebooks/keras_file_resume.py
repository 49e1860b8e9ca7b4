# ---
# jupyter:
#   colab:
#     provenance: []
#     toc_visible: true
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Resume a tf.keras training run in JAX from its saved file — without TensorFlow
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/keras_file_resume.ipynb)
#
# A small Keras model, `Input(3) -> Dense(4, relu) -> Dense(2)`, was trained by **TF 2.15**
# (`tf.keras`, Keras 2.15) for 15 epochs with `Adam(0.01, use_ema=True)` and saved mid-training
# with `model.save("run.keras")`; then Keras trained it 15 epochs more. The file, the data and
# Keras's loss history (both halves) are in `tests/fixtures/keras_files/` (written by
# `tools/make_keras_files.py`).
#
# Here, with **no TensorFlow and no Keras installed**, we
#
# 1. read the file with `optadam.read_keras_file` (numpy + h5py),
# 2. fill the parameters of a Flax twin of the model from the file's weights,
# 3. rebuild the optimizer *and its state* (step count, moments, EMA averages) with
#    `optadam.from_keras_file`,
# 4. continue training in JAX for the 15 epochs Keras ran after the save, and draw the two loss
#    curves together.

# %%
import sys

# In Colab: install optadam (and the examples' dependencies) from GitHub.
# Elsewhere: run from a checkout with `pip install -e ".[examples]"` done.
if "google.colab" in sys.modules:
  # %pip install -q "optadam[examples] @ git+https://github.com/optadam/optadam"

import jax

print(f"JAX {jax.__version__}; backend: {jax.default_backend().upper()}; "
      f"{jax.device_count()} device(s): {jax.devices()}")

# %%
# %matplotlib inline
import json
import os
import urllib.request

import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optadam

NAME = "tf215_dense_midtraining"
HERE = os.path.join(os.path.dirname(os.path.dirname(optadam.__file__)), "tests", "fixtures",
                    "keras_files")
if not os.path.exists(os.path.join(HERE, NAME + ".keras")):  # optadam installed with pip (Colab)
  HERE = "keras_files"
  os.makedirs(HERE, exist_ok=True)
  RAW = "https://raw.githubusercontent.com/optadam/optadam/main/tests/fixtures/keras_files/"
  for suffix in (".keras", ".json", "_data.npz"):
    urllib.request.urlretrieve(RAW + NAME + suffix, os.path.join(HERE, NAME + suffix))
PATH = os.path.join(HERE, NAME + ".keras")
with open(os.path.join(HERE, NAME + ".json")) as f:
  history = json.load(f)
data = np.load(os.path.join(HERE, NAME + "_data.npz"))
x, y = data["x"], data["y"]
print(history["description"])
print("TensorFlow imported:", "tensorflow" in sys.modules, "| Keras imported:", "keras" in sys.modules)

# %% [markdown]
# ## 1. What the file holds
#
# A `.keras` file is a zip archive: `metadata.json` (which Keras wrote it), `config.json` (the
# model, and the optimizer's config under `compile_config`) and `model.weights.h5`, where each
# layer's variables are `layers/<name>/vars/<i>` and the optimizer's are `optimizer/vars/<i>`.

# %%
record = optadam.read_keras_file(PATH)
print(record)
print("written by Keras", record.keras_version, "| optimizer:", record.optimizer_class)
print("optimizer config:", record.optimizer_config["config"])
for key in record.trainable:
  print(f"  {key:22s} {record.weights[key].shape}")
print("optimizer variables:", [v.shape for v in record.optimizer_variables])

# %% [markdown]
# ## 2. The Flax twin, its parameters filled from the file
#
# Keras's `Dense` kernel is `(in, out)`, like Flax's. Flax's parameter tree sorts its keys
# (`bias` before `kernel`), Keras lists the kernel first, so we tell `from_keras_file` which
# file variable each parameter is with `names` (parameter path → file path).

# %%
class Twin(nn.Module):
  @nn.compact
  def __call__(self, x):
    hidden = nn.relu(nn.Dense(4)(x))  # Dense_0 (Keras: dense)
    return nn.Dense(2)(hidden)  # Dense_1 (Keras: dense_1)


model = Twin()
names = {
  "params/Dense_0/kernel": "layers/dense/vars/0",
  "params/Dense_0/bias": "layers/dense/vars/1",
  "params/Dense_1/kernel": "layers/dense_1/vars/0",
  "params/Dense_1/bias": "layers/dense_1/vars/1",
}
shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])
params = jax.tree_util.tree_map_with_path(
  lambda path, _: jnp.asarray(record.weights[names["/".join(k.key for k in path)]]), shapes
)
tx, opt_state = optadam.from_keras_file(PATH, params, names=names)
print("steps already taken:", int(opt_state.adam.count), "| EMA kept:", "ema" in opt_state._fields)


# %% [markdown]
# ## 3. Continue training in JAX
#
# The same loop as Keras's `fit(batch_size=32, shuffle=False)`: 8 batches an epoch, and the
# epoch's loss is the mean of the batch losses (each computed before its update).

# %%
def loss_fn(params, xb, yb):
  return jnp.mean((model.apply(params, xb) - yb) ** 2)


@jax.jit
def train_step(params, opt_state, xb, yb):
  loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optadam.apply_updates(params, updates), opt_state, loss


batch = history["batch_size"]
jax_losses = []
for epoch in range(len(history["loss_after_save"])):
  losses = []
  for i in range(0, len(x), batch):
    params, opt_state, loss = train_step(params, opt_state, x[i:i + batch], y[i:i + batch])
    losses.append(loss)
  jax_losses.append(float(np.mean(losses)))
final_params = optadam.finalize_variable_values(params, opt_state)  # what fit() does at the end

keras_after = np.array(history["loss_after_save"])
rel = np.max(np.abs(np.array(jax_losses) - keras_after) / keras_after)
print(f"JAX continuation vs Keras's: max relative difference of the epoch losses {rel:.1e}")
assert rel < 1e-5, rel  # the gradients differ by rounding only (TF's vs JAX's autodiff)

# %%
before = history["loss_before_save"]
epochs_before = np.arange(1, len(before) + 1)
epochs_after = np.arange(len(before) + 1, len(before) + len(keras_after) + 1)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(epochs_before, before, "o-", color="tab:blue", label="Keras (TF 2.15), before the save")
ax.plot(epochs_after, keras_after, "o-", color="tab:blue", alpha=0.4,
        label="Keras (TF 2.15), continued")
ax.plot(epochs_after, jax_losses, "x--", color="tab:orange", label="JAX + optadam, resumed from file")
ax.axvline(len(before) + 0.5, color="gray", ls=":")
ax.text(len(before) + 0.7, max(before) * 0.9, "model.save(\"run.keras\")", color="gray")
ax.set(xlabel="epoch", ylabel="training loss (mse)", yscale="log",
       title="One training run: Keras before the save, JAX after it")
ax.legend()
plt.show()

# %% [markdown]
# The two continuations lie on top of each other: TF computed its gradients with its own
# autodiff, JAX with `jax.grad`, so they differ by rounding only, and the optimizer state that
# came from the file makes the JAX run pick up exactly where Keras left off — with a bias
# correction for step 121, not step 1, and the moments Keras had built up.
#
# The jump at the save is Keras's, not the migration's: with `use_ema=True`, `fit()` ends by
# replacing the weights with their moving averages (`finalize_variable_values`), so the file
# holds the averaged weights, and training continues from them. `optadam.finalize_variable_values`
# does the same at the end of the JAX run (`final_params` above).
