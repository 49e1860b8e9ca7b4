"""The 8-device part of the optimizer contract (run by tests/integration/test_contract.py).

XLA's host device count must be set before JAX initialises, so these checks run in this
separate process:  python tests/support/contract_mesh_worker.py
Each scenario prints one ``RESULT {json}`` line; the exit code is the number of failures.

* ``explicit/<config>``: under ``jax.set_mesh`` with an ``AxisType.Explicit`` mesh, the
  `jax.typeof` (sharding included) of every state leaf after ``init``, after an eager
  ``update``, after a ``jax.jit(update)``, after ``jax.jit(init)`` and after ``init`` on
  sharded `jax.ShapeDtypeStruct` leaves.
* ``abstract_init_sharding``: ``init`` on a sharded struct makes each device's zeros directly.
* ``nnx_optimizer``: `nnx.Optimizer` on a model whose kernel is sharded keeps that sharding in
  the moments, also after a jitted step.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, ROOT]  # this checkout's optadam, not an installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from contract_configs import CONFIGS, make_tx, state_types  # noqa: E402


def explicit_mesh():
  return jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))


def sharded_params(mesh):
  """A row-sharded float32 kernel, a replicated bias and a sharded complex64 vector."""
  return {
    "kernel": jax.device_put(
      jnp.arange(32.0).reshape(8, 4) / 32.0, NamedSharding(mesh, P("d", None))
    ),
    "bias": jax.device_put(jnp.linspace(-1.0, 1.0, 4), NamedSharding(mesh, P())),
    "z": jax.device_put(
      (jnp.arange(8.0) + 1j * jnp.arange(8.0)[::-1]).astype(jnp.complex64),
      NamedSharding(mesh, P("d")),
    ),
  }


def explicit_scenario(name):
  def run():
    mesh = explicit_mesh()
    with jax.set_mesh(mesh):
      params = sharded_params(mesh)
      grads = jax.tree.map(lambda p: p * 0.5 + 0.25, params)
      tx = make_tx(name)
      state = tx.init(params)
      _, updated = tx.update(grads, state, params)  # adam's own jit

      @jax.jit
      def init_and_update(params, grads):  # both under the user's jit, in one compilation
        state = tx.init(params)
        return state, tx.update(grads, state, params)[1]

      jit_init, jit_update = init_and_update(params, grads)
      structs = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
      )
      return {
        "init": state_types(state),
        "update": state_types(updated),
        "jit_update": state_types(jit_update),
        "jit_init": state_types(jit_init),
        "shape_dtype_struct_init": state_types(tx.init(structs)),
      }

  return run


def abstract_init_sharding():
  mesh = explicit_mesh()
  with jax.set_mesh(mesh):
    sharding = NamedSharding(mesh, P("d", None))
    struct = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharding)
    state = make_tx("defaults").init({"kernel": struct})
    mu = state.adam.mu["kernel"]
    return {
      "shard_shapes": [list(s.data.shape) for s in mu.addressable_shards],
      "same_sharding": mu.sharding == sharding and state.adam.nu["kernel"].sharding == sharding,
      "all_zero": bool(jnp.all(mu == 0)),
    }


def nnx_optimizer():
  from flax import nnx  # pylint: disable=import-outside-toplevel

  import optadam  # pylint: disable=import-outside-toplevel

  mesh = explicit_mesh()
  with jax.set_mesh(mesh):
    model = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
    model.kernel.set_value(
      jax.device_put(model.kernel.get_value(), NamedSharding(mesh, P(None, "d")))
    )
    optimizer = nnx.Optimizer(model, optadam.adam(1e-2, weight_decay=1e-3), wrt=nnx.Param)

    def moments():
      adam = optimizer.opt_state.adam
      kernel_mu, kernel_nu = adam.mu["kernel"].get_value(), adam.nu["kernel"].get_value()
      return str(jax.typeof(kernel_mu)), str(jax.typeof(kernel_nu))

    mu, nu = moments()

    @nnx.jit
    def train_step(model, optimizer, x):
      grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
      optimizer.update(model, grads)

    train_step(model, optimizer, jnp.ones((2, 8)))
    mu_after, nu_after = moments()
    return {
      "kernel": str(jax.typeof(model.kernel.get_value())),
      "mu": mu,
      "nu": nu,
      "mu_after_step": mu_after,
      "nu_after_step": nu_after,
    }


SCENARIOS = {f"explicit/{name}": explicit_scenario(name) for name in CONFIGS}
SCENARIOS["abstract_init_sharding"] = abstract_init_sharding
SCENARIOS["nnx_optimizer"] = nnx_optimizer


def main(names):
  failures = 0
  for name in names or SCENARIOS:
    try:
      result = {"scenario": name, "ok": True, "info": SCENARIOS[name]()}
    except Exception:  # pylint: disable=broad-except
      failures += 1
      result = {"scenario": name, "ok": False, "error": traceback.format_exc()}
    print("RESULT " + json.dumps(result), flush=True)
  return failures


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
