"""Model, data, optimizer and checks shared by the sharding and multi-process workers.

Imported by `sharding_worker.py` (one process, 8 fake CPU devices) and
`multiprocess_worker.py` (2 processes x 4 fake CPU devices); both set
``XLA_FLAGS`` before importing JAX, so this module never does.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import optadam

IN_DIM = 8
BATCH = 32
STEPS = 8


class MLP(nn.Module):
  """Dense -> LayerNorm -> relu -> Dense -> relu -> Dense: kernels, biases and a norm scale."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.LayerNorm()(nn.Dense(32)(x)))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(1)(x)


MODEL = MLP()


def host_params() -> Any:
  """The initial parameters as NumPy arrays (identical in every process)."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, IN_DIM), jnp.float32))["params"]
  return jax.tree.map(np.asarray, params)


def host_batches(steps: int = STEPS) -> list[tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(42)
  out = []
  for _ in range(steps):
    x = rng.normal(size=(BATCH, IN_DIM)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    out.append((x, y))
  return out


def make_tx(learning_rate: Any = 1e-2) -> optax.GradientTransformation:
  """Every parameter-shaped state there is: mu, nu, nu_max (AMSGrad) and the EMA average."""
  return optadam.adam(
    learning_rate,
    amsgrad=True,
    weight_decay=1e-2,
    global_clipnorm=1.0,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=5,
    exclude_from_weight_decay=["bias", "LayerNorm"],
  )


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean((MODEL.apply({"params": params}, x) - y) ** 2)


def train_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optadam.apply_updates(params, updates), opt_state, loss

  return step


def param_specs(params: Any, axis: str) -> Any:
  """Shard every parameter's last dimension over `axis` where it divides; else replicate."""

  def spec(p):
    return P(*([None] * (p.ndim - 1)), axis) if p.ndim and p.shape[-1] % 8 == 0 else P()

  return jax.tree.map(spec, params)


def param_specs_model(params: Any) -> Any:
  """For a ("data", "model") mesh: last dimension over "model" (size 4) where it divides."""

  def spec(p):
    return P(*([None] * (p.ndim - 1)), "model") if p.ndim and p.shape[-1] % 4 == 0 else P()

  return jax.tree.map(spec, params)


def single_device_run(
  tx_factory: Callable[[], Any],
  steps: int = STEPS,
  before_step: Callable[[int], None] | None = None,
):
  """The reference: the same training on one device. Returns (params per step, final state)."""
  tx = tx_factory()
  device = jax.local_devices()[0]
  params = jax.device_put(host_params(), device)
  opt_state = tx.init(params)
  step = jax.jit(train_step(tx))
  history = []
  for i, (x, y) in enumerate(host_batches(steps)):
    if before_step is not None:
      before_step(i)
    params, opt_state, _ = step(
      params, opt_state, jax.device_put(x, device), jax.device_put(y, device)
    )
    history.append(jax.tree.map(np.asarray, params))
  return history, jax.tree.map(np.asarray, opt_state)


def worst_relative(a: Any, b: Any) -> float:
  """max over leaves of max|a - b| / max(1, max|b|) (trees or lists of trees)."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    assert x.shape == y.shape, (x.shape, y.shape)
    diff = np.max(np.abs(x - y), initial=0.0)
    worst = max(worst, float(diff / max(1.0, np.max(np.abs(y), initial=0.0))))
  return worst


def bitwise_equal(a: Any, b: Any) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
    np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(la, lb)
  )


def params_shaped_parts(opt_state: Any) -> dict[str, Any]:
  """optadam.adam's parameter-shaped state, by name."""
  return {
    "mu": opt_state.adam.mu,
    "nu": opt_state.adam.nu,
    "nu_max": opt_state.adam.nu_max,
    "ema": opt_state.ema.ema,
  }


def mismatched_shardings(opt_state: Any, params: Any) -> list[str]:
  """Paths of moments / EMA leaves whose sharding is not equivalent to their parameter's."""
  bad = []
  for name, tree in params_shaped_parts(opt_state).items():
    for (path, leaf), p in zip(
      jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(params), strict=True
    ):
      if not leaf.sharding.is_equivalent_to(p.sharding, p.ndim):
        bad.append(f"{name}{jax.tree_util.keystr(path)}: {leaf.sharding} vs {p.sharding}")
  return bad


def shardings_match(tree: Any, shardings: Any) -> list[str]:
  """Paths of leaves whose sharding is not equivalent to the given one."""
  bad = []
  s_leaves = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(tree), s_leaves, strict=True):
    if not leaf.sharding.is_equivalent_to(s, leaf.ndim):
      bad.append(f"{jax.tree_util.keystr(path)}: {leaf.sharding} vs {s}")
  return bad


def run_scenarios(
  scenarios: dict[str, Callable[[], Any]], names: list[str], emit: Callable[[str], None] = print
) -> int:
  """Runs the named scenarios; prints one ``RESULT {json}`` line each; returns the failures."""
  failures = 0
  for name in names:
    start = time.perf_counter()
    try:
      info = scenarios[name]() or {}
      emit(
        "RESULT "
        + json.dumps(
          {
            "scenario": name,
            "ok": True,
            "info": info,
            "seconds": round(time.perf_counter() - start, 2),
          }
        )
      )
    except Exception:  # pylint: disable=broad-except
      failures += 1
      emit("RESULT " + json.dumps({"scenario": name, "ok": False, "error": traceback.format_exc()}))
    sys.stdout.flush()
  return failures


def run_saving_checkpoint(
  step: Callable[..., Any], state: Any, batches: list, path: str, at: int
) -> list:
  """Runs `step` over the batches, saving the state with Orbax before batch `at`; every state."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  states = []
  for i, (x, y) in enumerate(batches):
    if i == at:
      checkpointer = ocp.StandardCheckpointer()
      checkpointer.save(path, state)
      checkpointer.wait_until_finished()
    state = step(state, x, y)
    states.append(state)
  return states
