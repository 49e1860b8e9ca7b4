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
# # From Keras to JAX: the same model, the same optimizer, the same trajectory
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/keras_to_jax.ipynb)
#
# A Keras 3 model (JAX backend) and its Flax twin start from the **same initial weights**
# (copied from Keras into the Flax parameters) and see the **same batches**. We
#
# 1. build `optadam.adam` from the Keras optimizer's `get_config()` with
#    `optadam.from_keras_config`, and round-trip the configuration with `optadam.get_config`;
# 2. train both models, each framework with its own gradients, and overlay the curves;
# 3. feed *identical* gradients to `keras.optimizers.Adam.apply_gradients` and to
#    `optadam.adam`, and plot the per-step parameter difference.

# %%
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported

# In Colab: install optadam (and the examples' dependencies) from GitHub.
# Elsewhere: run from a checkout with `pip install -e ".[examples]"` done.
if "google.colab" in sys.modules:
  # %pip install -q "optadam[examples] @ git+https://github.com/optadam/optadam" "keras>=3.5"

import jax

print(f"JAX {jax.__version__}; backend: {jax.default_backend().upper()}; "
      f"{jax.device_count()} device(s): {jax.devices()}")

# %%
# %matplotlib inline
import json

import flax.linen as nn
import jax.numpy as jnp
import keras
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optadam

# Full float32 matmuls on GPU/TPU too (their default may use TF32 / bfloat16 passes), so
# that the comparisons below are at float32 rounding on every backend.
jax.config.update("jax_default_matmul_precision", "highest")
print("Keras", keras.__version__, "backend:", keras.backend.backend())
assert keras.backend.backend() == "jax"

x, y = load_digits(return_X_y=True)  # bundled with scikit-learn
x = (x / 16.0).astype(np.float32)
x_train, x_val, y_train, y_val = train_test_split(
    x, y.astype(np.int32), test_size=0.2, random_state=0, stratify=y)
BATCH_SIZE, EPOCHS = 64, 8
steps_per_epoch = len(x_train) // BATCH_SIZE
order_rng = np.random.default_rng(0)
batches = [order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]  # index batches, shared by both runs
           for order in (order_rng.permutation(len(x_train)) for _ in range(EPOCHS))
           for i in range(steps_per_epoch)]
print(f"{len(batches)} steps of {BATCH_SIZE} examples")


# %% [markdown]
# ## The Keras model and its Flax twin
#
# Keras's `Dense` kernel is `(inputs, outputs)`, as Flax's, so the weights copy over as they are.
# The two models then compute the same logits (up to float32 rounding).

# %%
def make_keras_model():
  keras.utils.set_random_seed(0)
  return keras.Sequential([
      keras.Input((64,)),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(10),
  ])


class FlaxMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


keras_model = make_keras_model()
flax_model = FlaxMLP()


def keras_weights_to_flax(model):
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
  return {"params": {f"Dense_{i}": {"kernel": jnp.array(layer.kernel.numpy()),
                                    "bias": jnp.array(layer.bias.numpy())}
                     for i, layer in enumerate(dense)}}


def flax_to_keras_order(tree):
  # keras_model.trainable_variables: Dense_0 kernel, Dense_0 bias, Dense_1 kernel, Dense_1 bias
  p = tree["params"]
  return [p[f"Dense_{i}"][name] for i in range(2) for name in ("kernel", "bias")]


params0 = keras_weights_to_flax(keras_model)
reference = flax_model.init(jax.random.key(0), x_train[:1])
assert jax.tree.map(jnp.shape, reference) == jax.tree.map(jnp.shape, params0)
initial_keras_weights = keras_model.get_weights()

logits_diff = np.max(np.abs(np.asarray(keras_model(x_val)) -
                            np.asarray(flax_model.apply(params0, x_val))))
print(f"max |Keras logits - Flax logits| at initialisation: {logits_diff:.2e}")
assert logits_diff < 1e-5


# %% [markdown]
# ## The optimizer: from Keras's config to optadam and back
#
# A tf.keras model carries its optimizer's configuration (`model.optimizer.get_config()`, also
# saved in `.keras` / SavedModel files). `optadam.from_keras_config` turns it into the same
# optimizer for JAX; `optadam.get_config(tx, keras_version=3)` writes the Keras 3 dict back
# (`keras_version=2`, the default, writes Keras 2's keys), JSON-serialisable.

# %%
def make_keras_optimizer():
  return keras.optimizers.Adam(learning_rate=3e-3, epsilon=1e-6, amsgrad=True,
                               weight_decay=1e-4)


keras_config = make_keras_optimizer().get_config()
tx = optadam.from_keras_config(keras_config)
optadam_config = optadam.get_config(tx, keras_version=3)

print(f"{'key':26s} {'Keras get_config()':>24s}   {'optadam.get_config()':>22s}")
for key in keras_config:
  print(f"{key:26s} {keras_config[key]!r:>24}   {optadam_config.get(key, '(absent)')!r:>22}")
assert optadam_config == keras_config

# A JSON round trip, and Keras 2's keys (what tf.keras 2.11-2.15 writes):
again = optadam.from_keras_config(json.loads(json.dumps(optadam.get_config(tx))))
assert optadam.get_config(again) == optadam.get_config(tx)
print("\nKeras 2 form:", json.dumps(optadam.get_config(tx)))

# %% [markdown]
# Learning-rate schedules come across too: a Keras schedule in the config becomes the matching
# `optadam.schedules` class (same arguments, same formula).

# %%
schedule = keras.optimizers.schedules.ExponentialDecay(3e-3, decay_steps=100, decay_rate=0.5)
with_schedule = optadam.from_keras_config(keras.optimizers.Adam(learning_rate=schedule).get_config())
optadam_schedule = with_schedule.keras_args["learning_rate"]
print(optadam_schedule)
steps = np.array([0, 50, 100, 250])
print("Keras  :", [float(schedule(s)) for s in steps])
print("optadam:", [float(optadam_schedule(s)) for s in steps])
np.testing.assert_allclose([float(optadam_schedule(s)) for s in steps],
                           [float(schedule(s)) for s in steps], rtol=1e-6)

# %% [markdown]
# ## Run 1: each framework trains its own model
#
# Keras trains with `train_on_batch` (what `fit` does per batch) and computes its own
# gradients; Flax computes its gradients with `jax.grad` and steps with the optadam optimizer
# built from the Keras config. Same initial weights, same batches, same loss.

# %%
keras_model = make_keras_model()
keras_model.set_weights(initial_keras_weights)
keras_model.compile(optimizer=make_keras_optimizer(),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(flax_model.apply(params, x), y).mean()


@jax.jit
def flax_step(params, opt_state, x, y):
  loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, grads


def max_param_diff(params, keras_model):
  ours = flax_to_keras_order(params)
  absolute = max(float(np.max(np.abs(np.asarray(a) - w)))
                 for a, w in zip(ours, keras_model.get_weights()))
  scale = max(float(np.max(np.abs(w))) for w in keras_model.get_weights())
  return absolute, absolute / scale


params, opt_state = params0, tx.init(params0)
run1 = {"keras_loss": [], "optadam_loss": [], "abs": [], "rel": []}
for idx in batches:
  xb, yb = x_train[idx], y_train[idx]
  run1["keras_loss"].append(float(keras_model.train_on_batch(xb, yb)))
  params, opt_state, loss, _ = flax_step(params, opt_state, xb, yb)
  run1["optadam_loss"].append(float(loss))
  a, r = max_param_diff(params, keras_model)
  run1["abs"].append(a)
  run1["rel"].append(r)
print(f"final loss: Keras {run1['keras_loss'][-1]:.4f}, optadam {run1['optadam_loss'][-1]:.4f}; "
      f"max relative parameter difference over the run {max(run1['rel']):.1e}")

# %% [markdown]
# ## Run 2: identical gradients
#
# In run 1 the two *models* differ by float32 rounding too: Keras's and Flax's forward and
# backward passes, and their cross-entropies, are different XLA programs, so the gradients
# differ in the last bits, and a ReLU network amplifies such differences over the steps. To
# compare the **optimizers** alone, we compute each step's gradients once, with JAX on the Flax
# parameters, and hand the very same arrays to `keras_optimizer.apply_gradients` (on the Keras
# model's variables) and to optadam. Any parameter difference is then the optimizers' own
# arithmetic.

# %%
keras_model = make_keras_model()
keras_model.set_weights(initial_keras_weights)
keras_optimizer = make_keras_optimizer()

params, opt_state = params0, tx.init(params0)
run2 = {"abs": [], "rel": [], "bit_equal_steps": 0}
for idx in batches:
  params, opt_state, _, grads = flax_step(params, opt_state, x_train[idx], y_train[idx])
  keras_optimizer.apply_gradients(zip(flax_to_keras_order(grads),
                                      keras_model.trainable_variables))
  a, r = max_param_diff(params, keras_model)
  run2["abs"].append(a)
  run2["rel"].append(r)
  run2["bit_equal_steps"] += a == 0.0

print(f"max relative parameter difference: {max(run2['rel']):.1e} "
      f"(float32 epsilon is {np.finfo(np.float32).eps:.1e}); "
      f"bit-identical after {run2['bit_equal_steps']} of {len(batches)} steps")
assert max(run2["rel"]) < 1e-6

# %%
steps = np.arange(1, len(batches) + 1)
fig, (ax_loss, ax_diff) = plt.subplots(1, 2, figsize=(12, 4))
ax_loss.plot(steps, run1["keras_loss"], lw=2.5, alpha=0.6, label="keras.optimizers.Adam (Keras model)")
ax_loss.plot(steps, run1["optadam_loss"], "--", lw=1, color="k", label="optadam.adam (Flax model)")
ax_loss.set(title="Training loss per step (run 1)", xlabel="step", ylabel="cross-entropy",
            yscale="log")
floor = 1e-9  # bit-identical steps (difference 0) would be drawn at this floor
ax_diff.semilogy(steps, np.maximum(run1["rel"], floor), label="run 1: own gradients")
ax_diff.semilogy(steps, np.maximum(run2["rel"], floor), label="run 2: identical gradients")
ax_diff.axhline(np.finfo(np.float32).eps, color="gray", ls=":", label="float32 epsilon")
ax_diff.set(title="max |Keras - optadam| / max |param|, per step", xlabel="step",
            ylabel=f"relative difference (0 drawn at {floor:g})", ylim=(floor / 3, 1e-4))
for ax in (ax_loss, ax_diff):
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Run 2 stays at float32 noise — a relative difference of about one float32 epsilon, a few
# units in the last place, over the whole run: `optadam.adam` performs Keras's update —
# epsilon-hat, AMSGrad over the raw second moment, Keras's decoupled weight decay — step for
# step, and the two differ only in how XLA rounds the same formulas. For this small model run 1
# stays almost as close: the two models' gradients differ only in their last bits too. In
# deeper models those differences grow over the steps; run 2 is the comparison that isolates
# the optimizer. To continue a run that Keras started, `optadam.state_from_keras` also imports
# the Keras optimizer's variables (step count, moments, v-hat, EMA).
