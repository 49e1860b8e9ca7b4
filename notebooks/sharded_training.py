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
# # Sharded training: the optimizer state follows the parameters
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/sharded_training.ipynb)
#
# A small Flax model with its parameters split over a device mesh (`jax.make_mesh` +
# `NamedSharding`), trained with a jitted step. `optadam.adam`'s state — the moments `mu` and
# `nu`, AMSGrad's `nu_max` and the EMA average — is created by `jax.jit(tx.init)` with **the
# parameters' shardings**, and keeps them through training; `optadam.state_shardings(tx,
# param_shardings)` gives the same shardings explicitly (for `out_shardings`, or an Orbax
# restore target).
#
# On a CPU runtime the first cell asks XLA for 8 virtual CPU devices, so the mesh is real
# even without accelerators. On a TPU runtime with 8 cores (or any multi-device runtime) the
# real devices are used; on a single GPU/TPU chip the notebook shows the mechanics on the 8
# virtual CPU devices.

# %%
import os
import sys

# 8 virtual CPU devices. Must be set before JAX starts; it only affects the CPU (host)
# platform, so on a GPU or TPU runtime JAX still uses the real accelerators.
if "jax" in sys.modules:
  print("JAX is already imported: restart the runtime for XLA_FLAGS to take effect.")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

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
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import optadam

jax.config.update("jax_default_matmul_precision", "highest")  # float32 matmuls on GPU/TPU too
devices = jax.devices()
if len(devices) < 2:  # a single accelerator chip: use the 8 virtual CPU devices instead
  devices = jax.devices("cpu")
n = len(devices)
mesh_shape = (2, n // 2) if n % 2 == 0 and n >= 4 else (1, n)
mesh = jax.make_mesh(mesh_shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2,
                     devices=devices)
print(f"mesh {dict(mesh.shape)} on {n} {devices[0].platform.upper()} devices")


# %% [markdown]
# ## A model with sharded parameters
#
# A 64 → 128 → 10 MLP, split Megatron-style over the `model` axis: the first kernel by
# columns, its bias with it, the second kernel by rows; the last bias is replicated. Batches
# are split over the `data` axis. The parameters are created directly in their shardings by
# `jax.jit(model.init, out_shardings=...)`.

# %%
class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


model = MLP()
SPECS = {"Dense_0": {"kernel": P(None, "model"), "bias": P("model")},
         "Dense_1": {"kernel": P("model", None), "bias": P()}}
param_shardings = {"params": jax.tree.map(lambda spec: NamedSharding(mesh, spec), SPECS)}
replicated = NamedSharding(mesh, P())
batch_sharding = NamedSharding(mesh, P("data"))

sample = jnp.zeros((1, 64), jnp.float32)
params = jax.jit(model.init, out_shardings=param_shardings)(jax.random.key(0), sample)
for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
  print(f"{jax.tree_util.keystr(path):38s} {str(p.shape):10s} {p.sharding.spec}")

# %% [markdown]
# ## The optimizer state: `jax.jit(tx.init)` keeps the parameters' shardings
#
# Keras options that add parameter-shaped state are on: AMSGrad's `nu_max` and the EMA average.

# %%
tx = optadam.adam(learning_rate=1e-2, amsgrad=True, weight_decay=1e-4,
                  exclude_from_weight_decay=["bias"], use_ema=True)
opt_state = jax.jit(tx.init)(params)

parts = {"mu": opt_state.adam.mu, "nu": opt_state.adam.nu, "nu_max": opt_state.adam.nu_max,
         "ema": optadam.ema_params(opt_state)}


def check_state_shardings(params, parts):
  for name, tree in parts.items():
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(tree)):
      assert s.sharding.is_equivalent_to(p.sharding, p.ndim), (name, s.sharding, p.sharding)


check_state_shardings(params, parts)
print("every moment, v-hat and EMA leaf has its parameter's sharding; e.g.")
print("  mu   Dense_0/kernel:", opt_state.adam.mu["params"]["Dense_0"]["kernel"].sharding)
print("  nu   Dense_1/kernel:", opt_state.adam.nu["params"]["Dense_1"]["kernel"].sharding)
print("  step count:        ", opt_state.adam.count.sharding)

# The same shardings, computed without running init (for out_shardings / checkpoint restore):
state_sh = optadam.state_shardings(tx, param_shardings)
opt_state = jax.jit(tx.init, out_shardings=state_sh)(params)
print("\nstate_shardings(tx, param_shardings).adam.mu:")
print(jax.tree.map(lambda s: s.spec, state_sh.adam.mu))

# %% [markdown]
# `jax.debug.visualize_array_sharding` draws which device holds which block: the first kernel
# (128 columns split over `model`, replicated over `data`) and its first moment, which lives
# exactly where the kernel does.

# %%
kernel = params["params"]["Dense_0"]["kernel"]
print("params/Dense_0/kernel", kernel.shape)
jax.debug.visualize_array_sharding(kernel)
print("opt_state.adam.mu/params/Dense_0/kernel")
jax.debug.visualize_array_sharding(opt_state.adam.mu["params"]["Dense_0"]["kernel"])
print("opt_state.adam.nu/params/Dense_1/kernel", params["params"]["Dense_1"]["kernel"].shape)
jax.debug.visualize_array_sharding(opt_state.adam.nu["params"]["Dense_1"]["kernel"])

# %% [markdown]
# **ZeRO-1.** With `zero1_axis="data"`, `optadam.state_shardings` also splits every
# parameter-shaped part of the state over the data-parallel axis: the parameters stay
# replicated over `data`, while each data-parallel replica keeps only its slice of `mu`, `nu`,
# `nu_max` and the EMA (XLA reduce-scatters the update into them and all-gathers the step).

# %%
zero1_sh = optadam.state_shardings(tx, params, zero1_axis="data")  # arrays: shapes known
zero1_state = jax.jit(tx.init, out_shardings=zero1_sh)(params)
mu_kernel = zero1_state.adam.mu["params"]["Dense_0"]["kernel"]
print("ZeRO-1 mu/params/Dense_0/kernel:", mu_kernel.sharding.spec)
jax.debug.visualize_array_sharding(mu_kernel)

# %% [markdown]
# ## A few jitted training steps
#
# Synthetic data: 10 classes from a fixed random teacher. The step pins its outputs to the
# parameters' and the state's shardings; the batch comes in split over `data`.

# %%
rng = np.random.default_rng(0)
teacher = rng.normal(size=(64, 10)).astype(np.float32)
STEPS, BATCH_SIZE = 40, 64
data = []
for _ in range(STEPS):
  xb = rng.normal(size=(BATCH_SIZE, 64)).astype(np.float32)
  data.append((xb, np.argmax(xb @ teacher, axis=-1).astype(np.int32)))


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()


def step_fn(params, opt_state, x, y):
  loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optadam.apply_updates(params, updates), opt_state, loss


train_step = jax.jit(step_fn, out_shardings=(param_shardings, state_sh, replicated))


params_sharded, state_sharded = params, opt_state
losses = []
for xb, yb in data:
  params_sharded, state_sharded, loss = train_step(
      params_sharded, state_sharded, jax.device_put(xb, batch_sharding),
      jax.device_put(yb, batch_sharding))
  losses.append(float(loss))
print(f"loss: step 1 {losses[0]:.3f} -> step {STEPS} {losses[-1]:.3f}")
check_state_shardings(params_sharded, {
    "mu": state_sharded.adam.mu, "nu": state_sharded.adam.nu,
    "nu_max": state_sharded.adam.nu_max, "ema": optadam.ema_params(state_sharded)})
print("after training, the moments' shardings:")
for path, m in jax.tree_util.tree_flatten_with_path(state_sharded.adam.mu)[0]:
  print(f"  mu{jax.tree_util.keystr(path):36s} {m.sharding}")

# %% [markdown]
# Sharding changes where the numbers live, not what they are: the same steps on a single
# device give the same parameters, up to float32 rounding (the sharded matmuls sum in a
# different order).

# %%
one_device = jax.sharding.SingleDeviceSharding(devices[0])
params_single = jax.device_put(params, one_device)
state_single = jax.device_put(jax.jit(tx.init)(params), one_device)
step_single = jax.jit(step_fn)
losses_single = []
for xb, yb in data:
  params_single, state_single, loss = step_single(
      params_single, state_single, jax.device_put(xb, one_device), jax.device_put(yb, one_device))
  losses_single.append(float(loss))
worst = max(float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b))) / (1.0 + jnp.max(jnp.abs(np.asarray(b)))))
            for a, b in zip(jax.tree.leaves(params_sharded), jax.tree.leaves(params_single)))
print(f"max relative difference, sharded vs single device after {STEPS} steps: {worst:.1e}")
assert worst < 1e-5

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, STEPS + 1), losses, lw=2.5, alpha=0.6, label=f"sharded, mesh {dict(mesh.shape)}")
ax.plot(np.arange(1, STEPS + 1), losses_single, "--", color="k", lw=1, label="single device")
ax.set(title="Training loss", xlabel="step", ylabel="cross-entropy")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()
