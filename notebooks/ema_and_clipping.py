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
# # EMA, gradient clipping and AMSGrad
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/ema_and_clipping.ipynb)
#
# Three features of Keras's `Adam` that `optax.adam` lacks or does differently:
#
# 1. **EMA of the weights** (`use_ema=True`, `ema_momentum`, `ema_overwrite_frequency`): a moving
#    average of the *parameters*, read with `optadam.ema_params(opt_state)`, optionally written
#    into the parameters every N steps, and put into them at the end with
#    `optadam.finalize_variable_values` (what Keras's `fit` does);
# 2. **three clipping modes**: `clipnorm` (each tensor on its own), `global_clipnorm` (all
#    tensors together) and `clipvalue` (element by element);
# 3. **AMSGrad** over the raw (not bias-corrected) second moment.
#
# All data is generated or bundled with scikit-learn; runs on CPU in under a minute.

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
import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optadam

# %% [markdown]
# ## 1. EMA of the weights
#
# A Flax MLP on scikit-learn's digits with a deliberately high learning rate (`1e-2`) and small
# batches, so that the raw weights are noisy. With `use_ema=True` the optimizer state also keeps
# `average = 0.99 * average + 0.01 * weights` after every step. Every 10 steps we compute the
# validation loss of the raw weights and of the averaged weights, `optadam.ema_params(opt_state)`,
# without touching the training parameters (what Keras's `SwapEMAWeights` callback is for).
#
# A second run adds `ema_overwrite_frequency=100`: after every 100th step the weights jump to
# their average (Keras's overwrite), and from there training continues from the averaged weights.

# %%
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
x_train, x_val, y_train, y_val = train_test_split(
    x, y.astype(np.int32), test_size=0.2, random_state=0, stratify=y)


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(128)(x))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


model = MLP()
params0 = model.init(jax.random.key(0), x_train[:1])
STEPS, BATCH_SIZE, EVAL_EVERY, OVERWRITE = 600, 32, 10, 100


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()


@jax.jit
def accuracy(params, x, y):
  return jnp.mean(jnp.argmax(model.apply(params, x), axis=-1) == y)


evaluate = jax.jit(loss_fn)


def train_with_ema(tx, overwrites=False):
  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optadam.apply_updates(params, updates), opt_state, loss

  params, opt_state = params0, tx.init(params0)
  rng = np.random.default_rng(0)  # the same batches for both runs
  hist = {"train": [], "eval_step": [], "val_raw": [], "val_ema": []}
  for i in range(1, STEPS + 1):
    idx = rng.integers(0, len(x_train), BATCH_SIZE)
    params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
    hist["train"].append(float(loss))
    if i % EVAL_EVERY == 0:
      hist["eval_step"].append(i)
      hist["val_raw"].append(float(evaluate(params, x_val, y_val)))
      hist["val_ema"].append(float(evaluate(optadam.ema_params(opt_state), x_val, y_val)))
    if overwrites and i % OVERWRITE == 0:  # right after an overwrite: weights == average
      assert all(bool(jnp.array_equal(p, a)) for p, a in zip(
          jax.tree.leaves(params), jax.tree.leaves(optadam.ema_params(opt_state))))
  return params, opt_state, hist


params_ema, state_ema, hist_ema = train_with_ema(
    optadam.adam(learning_rate=1e-2, use_ema=True, ema_momentum=0.99))
params_ow, state_ow, hist_ow = train_with_ema(
    optadam.adam(learning_rate=1e-2, use_ema=True, ema_momentum=0.99,
                 ema_overwrite_frequency=OVERWRITE), overwrites=True)
print("final validation loss, raw weights / EMA weights:")
print(f"  use_ema=True:                 {hist_ema['val_raw'][-1]:.4f} / {hist_ema['val_ema'][-1]:.4f}")
print(f"  + ema_overwrite_frequency=100: {hist_ow['val_raw'][-1]:.4f} / {hist_ow['val_ema'][-1]:.4f}")


# %%
def smooth(values, n=20):
  return np.convolve(values, np.ones(n) / n, mode="valid")


steps = np.arange(1, STEPS + 1)
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, hist, title in ((axes[0], hist_ema, "use_ema=True, ema_momentum=0.99"),
                        (axes[1], hist_ow, f"... and ema_overwrite_frequency={OVERWRITE}")):
  ax.plot(steps, hist["train"], color="tab:gray", alpha=0.25, lw=0.8, label="training loss (batch)")
  ax.plot(steps[19:], smooth(hist["train"]), color="tab:gray", label="training loss (20-step mean)")
  ax.plot(hist["eval_step"], hist["val_raw"], "o-", ms=3, color="tab:blue",
          label="validation loss, raw weights")
  ax.plot(hist["eval_step"], hist["val_ema"], "s-", ms=3, color="tab:orange",
          label="validation loss, EMA weights (optadam.ema_params)")
  ax.set(title=title, xlabel="step", yscale="log", ylim=(0.02, 3))
  ax.grid(True, which="both", alpha=0.3)
for s in range(OVERWRITE, STEPS + 1, OVERWRITE):
  axes[1].axvline(s, color="tab:red", ls=":", lw=1)
axes[0].set_ylabel("cross-entropy")
axes[0].legend(loc="upper right", fontsize=8)
axes[1].text(OVERWRITE + 5, 2.2, "dotted: overwrite steps", color="tab:red", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The averaged weights are smoother and, once the average has warmed up (~1/(1 - 0.99) = 100
# steps), better on validation data than the raw weights they average; early on the average
# still remembers the initial weights. With overwrite, the raw weights' validation loss lands on
# the EMA curve at every dotted line — the weights now *are* the average, bit for bit (the loop
# asserts it); at step 100, while the average is still warming up, that is a step back — and
# training continues from there.
#
# At the end of training Keras's `fit` replaces the weights by their averages; with optadam that
# is `optadam.finalize_variable_values(params, opt_state)` (a no-op without `use_ema`):

# %%
final = optadam.finalize_variable_values(params_ema, state_ema)
for name, p in (("raw weights", params_ema), ("finalize_variable_values", final)):
  print(f"{name:26s} validation loss {float(evaluate(p, x_val, y_val)):.4f}, "
        f"accuracy {float(accuracy(p, x_val, y_val)):.4f}")
assert jax.tree.all(jax.tree.map(jnp.array_equal, final, optadam.ema_params(state_ema)))

# %% [markdown]
# ## 2. Clipping: `clipnorm` vs `global_clipnorm` vs `clipvalue`
#
# On a gradient with two tensors — `kernel = [3, 4]` (norm 5) and `bias = [0.5]` — and a
# threshold of 1, the three Keras modes (also available as optax transforms:
# `optadam.clip_by_tensor_norm`, `optadam.clip_by_keras_global_norm`, `optadam.clip_by_value`)
# give:

# %%
g = {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.5])}
for name, clip in (("clipnorm=1", optadam.clip_by_tensor_norm(1.0)),
                   ("global_clipnorm=1", optadam.clip_by_keras_global_norm(1.0)),
                   ("clipvalue=1", optadam.clip_by_value(1.0))):
  out, _ = clip.update(g, clip.init(g))
  print(f"{name:18s} kernel {np.round(np.asarray(out['kernel']), 4)}  bias {np.round(np.asarray(out['bias']), 4)}"
        f"   global norm {float(optax.global_norm(out)):.4f}")

# %% [markdown]
# `clipnorm` rescales each tensor to norm ≤ 1 on its own (the bias keeps its 0.5, so the
# direction of the whole gradient changes); `global_clipnorm` rescales everything by one factor
# (direction kept, global norm 1); `clipvalue` cuts each element to [-1, 1].
#
# **Occasional gradient spikes.** A linear regression (20 features + bias) trained with batches
# of 32; at steps 100, 250, 400 and 550 a quarter of the batch has labels off by +1000 (a
# corrupted batch), which makes the gradient ~1000× larger than usual. Without clipping, Adam
# takes a big step in the spike's direction and — worse — the spike inflates the second moment
# `v`, which then needs thousands of steps (`1/(1 - β₂)`) to decay, so all later steps are tiny
# and the model stays broken. Each clipping mode bounds what one batch can do.

# %%
rng = np.random.default_rng(0)
D, N, STEPS_REG, B = 20, 4096, 600, 32
SPIKES = list(range(100, STEPS_REG, 150))
w_true, b_true = rng.normal(size=D).astype(np.float32), np.float32(0.5)
X = rng.normal(size=(N, D)).astype(np.float32)
Y = X @ w_true + b_true + 0.1 * rng.normal(size=N).astype(np.float32)
X_val = rng.normal(size=(1024, D)).astype(np.float32)
Y_val = X_val @ w_true + b_true
reg_batches = []
for s in range(STEPS_REG):
  idx = rng.integers(0, N, B)
  yb = Y[idx].copy()
  if s in SPIKES:
    yb[: B // 4] += 1000.0  # a corrupted batch: a gradient spike
  reg_batches.append((X[idx], yb))


def mse(p, x, y):
  return jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)


def run_regression(tx):
  @jax.jit
  def step(p, s, x, y):
    grads = jax.grad(mse)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, mse(p, X_val, Y_val), optax.global_norm(grads)

  p = {"kernel": jnp.zeros(D), "bias": jnp.zeros(())}
  s = tx.init(p)
  val, gnorm = [], []
  for xb, yb in reg_batches:
    p, s, v, n = step(p, s, xb, yb)
    val.append(float(v))
    gnorm.append(float(n))
  return np.array(val), np.array(gnorm)


runs = {}
for label, kwargs in (("no clipping", {}), ("clipnorm=5", {"clipnorm": 5.0}),
                      ("global_clipnorm=5", {"global_clipnorm": 5.0}),
                      ("clipvalue=1", {"clipvalue": 1.0})):
  runs[label], grad_norm = run_regression(optadam.adam(learning_rate=0.05, **kwargs))
for label, val in runs.items():
  print(f"{label:18s} validation MSE: before the first spike {val[SPIKES[0] - 1]:.4f}, "
        f"at the end {val[-1]:.4f}")
assert runs["no clipping"][-1] > 100 * max(runs["clipnorm=5"][-1], runs["global_clipnorm=5"][-1])

# %%
fig, (ax_val, ax_norm) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
for label, val in runs.items():
  ax_val.plot(np.arange(1, STEPS_REG + 1), val, label=label, lw=1.2)
ax_norm.plot(np.arange(1, STEPS_REG + 1), grad_norm, color="tab:gray")
for s in SPIKES:
  for ax in (ax_val, ax_norm):
    ax.axvline(s + 1, color="tab:red", ls=":", lw=1)
ax_val.set(title="Validation MSE with occasional gradient spikes (red: spike steps)",
           xlabel="step", ylabel="MSE", yscale="log", ylim=(3e-4, 5e2))
ax_norm.set(title="Global gradient norm (raw)", xlabel="step", yscale="log")
ax_val.legend(loc="upper center", ncol=4, fontsize=8)
for ax in (ax_val, ax_norm):
  ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# All three modes contain the spikes here: each corrupted batch costs a short bump, after which
# training goes on at the normal step size. The choice matters for models with tensors of very
# different scales: `clipnorm` treats every tensor alone (a spike in one layer does not shrink
# the others' steps, but the overall direction changes), `global_clipnorm` keeps the direction
# (the usual choice, as `optax.clip_by_global_norm`), `clipvalue` clips elements (the direction
# changes most). Keras allows only one of them at a time; so does `optadam.adam`.
#
# ## 3. AMSGrad: the running max of the raw second moment
#
# With `amsgrad=True` the denominator uses `v̂ = max(v̂, v)`, the running maximum of the
# *raw* second moment `v` (Keras). Below, a single parameter sees a gradient of 1 for 1000
# steps and of 0.1 afterwards — gradients shrink as training converges. Adam's `v` follows the
# gradients down (over ~`1/(1 - β₂)` = 1000 steps) and its step size recovers; AMSGrad's `v̂`
# never decreases, so its steps stay several times smaller for good: the effective learning rate of
# AMSGrad is non-increasing, which its convergence proof needs. Both read straight from the
# state: `opt_state.adam.nu` and `opt_state.adam.nu_max`.
#
# `optax.amsgrad` is a different optimizer: it takes the maximum of the *bias-corrected* `v`
# (and uses the textbook epsilon), so it settles at another step size.

# %%
grads = np.ones(6000, np.float32)
grads[1000:] = 0.1


def trajectory(tx):
  p = jnp.zeros(())

  def body(state, g):
    update, state = tx.update(g, state, p)
    adam_state = getattr(state, "adam", None)  # optadam's AdamState; optax's states differ
    nu = nu_max = jnp.zeros(())
    if adam_state is not None:
      nu = adam_state.nu
      nu_max = nu if adam_state.nu_max is None else adam_state.nu_max
    return state, (-update, nu, nu_max)

  _, (step_size, nu, nu_max) = jax.lax.scan(body, tx.init(p), jnp.asarray(grads))
  return np.asarray(step_size), np.asarray(nu), np.asarray(nu_max)


step_adam, nu_adam, _ = trajectory(optadam.adam(learning_rate=1.0))
step_ams, nu_ams, nu_max_ams = trajectory(optadam.adam(learning_rate=1.0, amsgrad=True))
step_optax_ams, _, _ = trajectory(optax.amsgrad(learning_rate=1.0, eps=1e-7))
np.testing.assert_array_equal(nu_adam, nu_ams)  # the same raw v; AMSGrad also keeps its max
assert np.all(np.diff(nu_max_ams) >= 0) and nu_max_ams[-1] > 10 * nu_adam[-1]
print(f"step size at the end: Adam {step_adam[-1]:.3f}, optadam AMSGrad {step_ams[-1]:.3f}, "
      f"optax.amsgrad {step_optax_ams[-1]:.3f}")
assert step_adam[-1] > 3 * step_ams[-1]

t = np.arange(1, len(grads) + 1)
fig, (ax_v, ax_step) = plt.subplots(1, 2, figsize=(12, 4))
ax_v.plot(t, nu_adam, label="v (opt_state.adam.nu)")
ax_v.plot(t, nu_max_ams, "--", label="v̂ = running max of v (opt_state.adam.nu_max)")
ax_v.set(title="Second moment (gradient 1, then 0.1 from step 1000)", xlabel="step",
         yscale="log")
ax_step.plot(t, step_adam, label="optadam.adam")
ax_step.plot(t, step_ams, "--", label="optadam.adam(amsgrad=True)")
ax_step.plot(t, step_optax_ams, ":", color="k", label="optax.amsgrad")
ax_step.set(title="Step size |update| / learning_rate", xlabel="step", yscale="log")
for ax in (ax_v, ax_step):
  ax.axvline(1000, color="tab:red", ls=":", lw=1)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The price of AMSGrad's guarantee: a phase of large gradients — or a single spike — lowers the
# step size for the rest of the run; another reason to combine it with clipping
# (`optadam.adam(amsgrad=True, global_clipnorm=...)`).
