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
# # optadam quickstart: Keras's Adam in a Flax training loop
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/quickstart.ipynb)
#
# `optadam.adam(...)` is `tf.keras.optimizers.Adam` (Keras 2, TF 2.11–2.15) as one
# `optax.GradientTransformation`: Keras's arguments and defaults, Keras's arithmetic. This
# notebook trains a small Flax (linen) MLP on scikit-learn's 8×8 digits (bundled with
# scikit-learn, no download) with `optadam.adam`, runs the same training with `optax.adam`
# beside it, and shows on a tiny example where the two differ: Keras's **epsilon-hat**.
#
# Runs on CPU in well under a minute; any Colab runtime works.

# %%
import sys

# In Colab: install optadam (and the examples' dependencies) from GitHub.
# Elsewhere: run from a checkout with `pip install -e ".[examples]"` done.
if "google.colab" in sys.modules:
  # %pip install -q "optadam[examples] @ git+https://github.com/optadam/optadam"

import jax

print(f"JAX {jax.__version__}; backend: {jax.default_backend().upper()}; "
      f"{jax.device_count()} device(s): {jax.devices()}")

# %% [markdown]
# ## Data and model
#
# 1797 digit images, 64 pixels each, scaled to [0, 1] and split 80/20. The model is a
# 64 → 128 → 64 → 10 MLP.

# %%
# %matplotlib inline
import time

import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optadam

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
x_train, x_val, y_train, y_val = train_test_split(
    x, y.astype(np.int32), test_size=0.2, random_state=0, stratify=y)
print("train", x_train.shape, "validation", x_val.shape)


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(128)(x))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


model = MLP()
params0 = model.init(jax.random.key(0), x_train[:1])
print(jax.tree.map(jnp.shape, params0))

# %% [markdown]
# ## A training loop for any optax optimizer
#
# `train(tx)` starts from the same initial parameters and sees the same mini-batches (fixed
# shuffling seed) whatever the optimizer, so runs are directly comparable. The train step is
# the usual optax one: `tx.update(grads, opt_state, params)` then `optax.apply_updates`.

# %%
BATCH_SIZE, EPOCHS = 64, 15


def loss_and_logits(params, x, y):
  logits = model.apply(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def train(tx, epochs=EPOCHS, seed=0):
  @jax.jit
  def train_step(params, opt_state, x, y):
    grads = jax.grad(lambda p: loss_and_logits(p, x, y)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def evaluate(params, x, y):
    loss, logits = loss_and_logits(params, x, y)
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)

  params, opt_state = params0, tx.init(params0)
  rng = np.random.default_rng(seed)  # the same batches for every optimizer
  history = {k: [] for k in ("train_loss", "val_loss", "train_acc", "val_acc")}
  for _ in range(epochs):
    order = rng.permutation(len(x_train))
    for i in range(len(x_train) // BATCH_SIZE):
      idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
      params, opt_state = train_step(params, opt_state, x_train[idx], y_train[idx])
    for split, (xs, ys) in (("train", (x_train, y_train)), ("val", (x_val, y_val))):
      loss, acc = evaluate(params, xs, ys)
      history[f"{split}_loss"].append(float(loss))
      history[f"{split}_acc"].append(float(acc))
  return params, opt_state, history


# %% [markdown]
# ## Train with `optadam.adam`
#
# Keras's defaults: `learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7`. The state is
# an `optadam.AdamState` with one named field per transform of the chain.

# %%
tx = optadam.adam(learning_rate=1e-3)

start = time.perf_counter()
params, opt_state, hist_optadam = train(tx)
print(f"optadam.adam: {time.perf_counter() - start:.1f} s, "
      f"validation accuracy {hist_optadam['val_acc'][-1]:.3f}")
print("state fields:", opt_state._fields, "| steps taken:", int(opt_state.adam.count))
assert hist_optadam["val_acc"][-1] > 0.9

# %% [markdown]
# ## The same run with `optax.adam`
#
# Same learning rate, betas and the same *nominal* epsilon (`eps=1e-7`). For most parameters
# epsilon is tiny next to `sqrt(v)`, so the curves nearly coincide and most parameters end
# close. Not all: epsilon sits in a different place in the two optimizers, and for parameters
# with tiny gradients (hidden units that rarely activate) it is not small next to `sqrt(v)`;
# those end up far apart. `optax.adam` is a close relative of Keras's Adam, not a reproduction
# of a Keras run.

# %%
params_optax, _, hist_optax = train(optax.adam(learning_rate=1e-3, eps=1e-7))

epochs = np.arange(1, EPOCHS + 1)
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
for hist, name, style, width in ((hist_optadam, "optadam.adam", "-", 2.5),
                                 (hist_optax, "optax.adam", "--", 1.2)):
  for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
    label = f"{name}, {'train' if split == 'train' else 'validation'}"
    ax_loss.plot(epochs, hist[f"{split}_loss"], style, color=color, lw=width, label=label)
    ax_acc.plot(epochs, hist[f"{split}_acc"], style, color=color, lw=width, label=label)
ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
for ax in (ax_loss, ax_acc):
  ax.grid(True, alpha=0.3)
  ax.legend()
fig.suptitle("Flax MLP on sklearn digits: optadam.adam vs optax.adam (lr=1e-3)")
fig.tight_layout()
plt.show()

diff = np.concatenate([np.abs(np.asarray(a - b)).ravel()
                       for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_optax))])
scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(params))
print(f"final parameters, |optadam - optax|: median {np.median(diff):.1e}, "
      f"max {diff.max():.1e} (largest |parameter|: {scale:.2f})")

# %% [markdown]
# ## Epsilon-hat: where Keras's epsilon goes
#
# The textbook (and `optax.adam`) update is `lr * m̂ / (sqrt(v̂) + ε)` with the bias-corrected
# moments `m̂ = m / (1 - β₁ᵗ)` and `v̂ = v / (1 - β₂ᵗ)`. Keras folds both corrections into the
# step size instead, `alpha = lr * sqrt(1 - β₂ᵗ) / (1 - β₁ᵗ)`, and updates with
# `alpha * m / (sqrt(v) + ε)`: its epsilon ("epsilon hat" in the Adam paper) is added to the
# *uncorrected* `sqrt(v)`, outside the square root, and is never bias-corrected. Multiplying
# out, Keras's update equals the textbook one with `ε / sqrt(1 - β₂ᵗ)` in place of `ε`, an
# epsilon that starts `1/sqrt(1 - β₂) ≈ 31.6` times larger (for `β₂ = 0.999`) and decays
# to `ε` over a few thousand steps. With the default `1e-7` this hardly matters; with the
# large epsilons used for stability (Keras's documentation suggests `1.0` or `0.1` for an
# Inception network on ImageNet) the two optimizers take visibly different steps. `optadam.adam(epsilon=e)` gives
# Keras's steps, `optax.adam(eps=e)` does not, and no constant `eps` makes them agree.

# %%
lr, b1, b2, eps = 1.0, 0.9, 0.999, 1.0
grads = np.array([0.5, -0.2, 0.8, 0.1, 0.3, -0.6], np.float32)


def updates_of(tx):
  p = jnp.zeros(())
  state = tx.init(p)
  out = []
  for g in grads:
    u, state = tx.update(jnp.asarray(g), state, p)
    out.append(float(u))
  return np.array(out)


u_optadam = updates_of(optadam.adam(learning_rate=lr, epsilon=eps))
u_optax = updates_of(optax.adam(learning_rate=lr, eps=eps))

# The textbook formula, in float64, with epsilon / sqrt(1 - beta_2**t) instead of epsilon.
m = v = 0.0
u_textbook_hat = []
for t, g in enumerate(grads.astype(np.float64), start=1):
  m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
  m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
  u_textbook_hat.append(-lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2**t)))
u_textbook_hat = np.array(u_textbook_hat)

print(" t   grad    optadam.adam   optax.adam   textbook, eps/sqrt(1-b2^t)")
for t, (g, a, o, h) in enumerate(zip(grads, u_optadam, u_optax, u_textbook_hat), start=1):
  print(f"{t:2d}  {g:5.2f}   {a:12.6f}  {o:11.6f}   {h:12.6f}")
np.testing.assert_allclose(u_optadam, u_textbook_hat, rtol=1e-4)  # float32 vs float64
assert np.max(np.abs(u_optadam - u_optax)) > 0.1  # a different optimizer, not rounding

# %% [markdown]
# The effective (textbook) epsilon of Keras's update over the steps, for `ε = 1e-7` and
# `β₂ = 0.999`:

# %%
t = np.arange(1, 20001)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(t, 1e-7 / np.sqrt(1 - 0.999**t), label="Keras / optadam: ε / sqrt(1 - β₂ᵗ)")
ax.loglog(t, np.full(t.shape, 1e-7), "--", label="optax.adam: ε")
ax.set(xlabel="step t", ylabel="effective epsilon", title="epsilon-hat vs epsilon (ε = 1e-7)")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# **Next:** [keras_to_jax.ipynb](keras_to_jax.ipynb) moves a Keras model and its optimizer to
# JAX, step for step; [ema_and_clipping.ipynb](ema_and_clipping.ipynb) covers EMA, clipping and
# AMSGrad; [sharded_training.ipynb](sharded_training.ipynb) shards the optimizer state with the
# parameters.
