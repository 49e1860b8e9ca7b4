# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   colab:
#     provenance: []
#     toc_visible: true
# ---

# %% [markdown]
# # Mixed precision: dynamic loss scaling with `optadam.loss_scale_optimizer`
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/loss_scaling.ipynb)
#
# A model that computes in **float16** keeps its weights in float32, but its backward pass runs in
# float16, whose smallest normal number is 6.1e-5 (subnormals go down to 6e-8). Small gradients
# underflow to zero and the layers they flow through stop learning. Keras's answer is the
# `LossScaleOptimizer`: multiply the loss by a large *loss scale*, divide the gradients by it, skip
# a step (and halve the scale) when a gradient overflows, double the scale after a run of finite
# steps. `optadam.loss_scale_optimizer` is that wrapper for optax, in Keras 2's rules (default)
# or Keras 3's (`style="keras3"`).
#
# Below: a small Flax MLP computing in float16 that stalls without loss scaling, trains with it,
# and the same run in bfloat16 (float32's exponent range: no underflow, no scaling needed).

# %%
import sys

# In Colab: install optadam (and the examples' dependencies) from GitHub.
# Elsewhere: run from a checkout with `pip install -e ".[examples]"` done.
if "google.colab" in sys.modules:
  %pip install -q "optadam[examples] @ git+https://github.com/optadam/optadam"

import jax

print(f"JAX {jax.__version__}; backend: {jax.default_backend().upper()}; "
      f"{jax.device_count()} device(s): {jax.devices()}")

# %%
import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import optadam

# %% [markdown]
# ## The model and the data
#
# A 3-layer MLP whose `Dense` layers compute in `dtype` with float32 parameters (Keras's
# `mixed_float16` policy). The targets are small (~1e-3) and the head starts near zero, so the
# gradient of the mean squared error reaching the hidden layers is around 1e-9: below float16's
# range.

# %%
class MLP(nn.Module):
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    for width in (64, 64, 64):
      x = nn.gelu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(x))
    head_init = nn.initializers.variance_scaling(1e-6, "fan_in", "normal")
    return nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=head_init)(x)


rng = np.random.RandomState(0)
X = rng.normal(size=(2048, 8)).astype(np.float32)
Y = (1e-3 * np.sin(X @ rng.normal(size=(8,))))[:, None].astype(np.float32)
STEPS, BATCH = 300, 256


def train(dtype, loss_scaling: bool):
  model = MLP(dtype)
  params = model.init(jax.random.key(0), X[:1])["params"]
  tx = optadam.adam(3e-3)
  if loss_scaling:
    tx = optadam.loss_scale_optimizer(tx, initial_scale=2.0**24, dynamic_growth_steps=20)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    pred = model.apply({"params": params}, x.astype(dtype))
    return jnp.mean((pred.astype(jnp.float32) - y) ** 2)  # the loss itself in float32

  @jax.jit
  def step(params, opt_state, x, y):
    if loss_scaling:  # differentiate the scaled loss; the wrapper unscales the gradients
      scaled = lambda p: optadam.scale_loss(loss_fn(p, x, y), opt_state)
      grads = jax.grad(scaled)(params)
    else:
      grads = jax.grad(loss_fn)(params, x, y)
    zeros = jnp.mean(grads["Dense_0"]["kernel"] == 0)  # first layer: underflowed to 0?
    updates, opt_state = tx.update(grads, opt_state, params)
    return optadam.apply_updates(params, updates), opt_state, zeros

  history = {"loss": [], "zeros": [], "scale": []}
  full_loss = jax.jit(loss_fn)
  for i in range(STEPS):
    b = slice((i * BATCH) % len(X), (i * BATCH) % len(X) + BATCH)
    params, opt_state, zeros = step(params, opt_state, X[b], Y[b])
    history["loss"].append(float(full_loss(params, X, Y)))
    history["zeros"].append(float(zeros))
    history["scale"].append(float(optadam.loss_scale(opt_state)) if loss_scaling else np.nan)
  return history


runs = {
  "float32": train(jnp.float32, False),
  "float16, no loss scaling": train(jnp.float16, False),
  "float16 + loss_scale_optimizer": train(jnp.float16, True),
  "bfloat16, no loss scaling": train(jnp.bfloat16, False),
}
for name, h in runs.items():
  print(f"{name:32s} final loss {h['loss'][-1]:.3e}   first-layer gradients that are 0: "
        f"{100 * np.mean(h['zeros']):.0f}%")

# %% [markdown]
# ## Training curves and the loss scale
#
# Without scaling, most first-layer gradients of the float16 run are exactly 0 (and the rest
# are float16 subnormals): the hidden layers barely learn and the loss stalls. With the wrapper the float16 run follows the float32 one. The scale
# starts at 2**24, doubles after every 20 finite steps, and is halved (that step skipped, the
# parameters untouched) whenever the scaled gradients overflow float16's 65504.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for name, h in runs.items():
  ax1.plot(h["loss"], label=name, lw=2 if "loss_scale" in name else 1)
ax1.set(yscale="log", xlabel="step", ylabel="training loss (MSE)", title="float16 stalls without scaling")
ax1.legend()
scale = np.array(runs["float16 + loss_scale_optimizer"]["scale"])
ax2.plot(np.log2(scale), drawstyle="steps-post")
skipped = np.flatnonzero(np.diff(np.log2(scale)) < 0) + 1
ax2.plot(skipped, np.log2(scale[skipped]), "rv", label="step skipped (overflow): scale halved")
ax2.set(xlabel="step", ylabel="log2(loss scale)", title="the dynamic loss scale")
ax2.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The claims above, checked:

# %%
f32 = runs["float32"]["loss"][-1]
assert np.mean(runs["float16, no loss scaling"]["zeros"]) > 0.5
assert runs["float16, no loss scaling"]["loss"][-1] > 1.2 * f32
assert abs(runs["float16 + loss_scale_optimizer"]["loss"][-1] / f32 - 1) < 0.1
assert abs(runs["bfloat16, no loss scaling"]["loss"][-1] / f32 - 1) < 0.05
assert len(skipped) >= 1 and scale.max() > 2.0**24
print(f"{len(skipped)} overflowing steps skipped; scale between 2**{np.log2(scale.min()):.0f} "
      f"and 2**{np.log2(scale.max()):.0f}")

# %% [markdown]
# ## Keras 2 or Keras 3 rules
#
# `style="keras2"` (default) reproduces TF 2.15's `tf.keras.mixed_precision.LossScaleOptimizer`:
# gradients are multiplied by `1/scale` cast to their dtype, the scale never goes below 1 nor
# becomes inf, and a skipped step still advances the inner optimizer's step count (bias
# correction, schedules, EMA). `style="keras3"` reproduces `keras.optimizers.LossScaleOptimizer`:
# gradients are divided by the scale, there is no floor and no finiteness check on growth, and a
# skipped step does not exist for the inner optimizer. The state holds the scale, the count of
# finite steps since it last changed, and the inner state:

# %%
tx = optadam.loss_scale_optimizer(optadam.adam(1e-3), 2.0**10, 2, style="keras3")
state = tx.init({"w": jnp.ones(3)})
bad = {"w": jnp.array([1.0, jnp.inf, 0.0])}
updates, state = tx.update(bad, state)
print(state.scale, state.good_steps, state.inner.adam.count, updates["w"])
print(optadam.get_config(tx, keras_version=3)["initial_scale"])
