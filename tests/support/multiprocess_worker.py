"""One process of a 2-process optadam training run on localhost.

Run by tests/integration/test_multiprocess.py:

    python tests/support/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORK_DIR

Each process has 4 fake CPU devices; together they form one global mesh of 8.
Cross-process collectives use Gloo over TCP (jax 0.10's default for CPU),
pinned to 127.0.0.1; the coordinator binds to 127.0.0.1 only. Each scenario
prints one ``RESULT {json}`` line; the exit code is the number of failures.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax

LOOPBACK = "127.0.0.1"


def _gloo_on_loopback() -> str:
  """Makes Gloo's TCP transport listen on 127.0.0.1 (it otherwise resolves the hostname).

  Uses JAX internals (jax 0.10: ``xla_bridge.register_backend_factory`` and
  ``make_gloo_tcp_collectives(hostname=...)``); if they are not there, JAX's
  default (Gloo on the hostname's address) is kept.
  """
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel

    def factory():
      collectives = _jax.make_gloo_tcp_collectives(
        distributed_client=distributed.global_state.client, hostname=LOOPBACK
      )
      return xla_bridge.make_cpu_client(collectives=collectives)

    xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
    return "gloo@127.0.0.1"
  except Exception as e:  # pylint: disable=broad-except
    return f"gloo (default host; loopback pinning unavailable: {e!r})"


def main(argv: list[str]) -> int:
  process_id, num_processes, port, work_dir = int(argv[0]), int(argv[1]), argv[2], argv[3]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  transport = _gloo_on_loopback()
  jax.distributed.initialize(
    coordinator_address=f"{LOOPBACK}:{port}",
    coordinator_bind_address=f"{LOOPBACK}:{port}",
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=90,
    heartbeat_timeout_seconds=30,
    shutdown_timeout_seconds=30,
  )
  try:
    return _run(process_id, work_dir, transport)
  finally:
    jax.distributed.shutdown()


def _run(process_id: int, work_dir: str, transport: str) -> int:
  # Imported after jax.distributed.initialize (no JAX computation may run before it).
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  import dist_common as dc  # pylint: disable=import-outside-toplevel
  import optadam  # pylint: disable=import-outside-toplevel

  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4

  def global_array(host, sharding):
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  def gather(tree):
    return multihost_utils.process_allgather(tree, tiled=True)

  def spans_processes(x):
    return len({d.process_index for d in x.sharding.device_set}) == 2

  reference = {}

  def single_process_reference():
    # The same training on this process's first device alone.
    if not reference:
      reference["run"] = dc.single_device_run(dc.make_tx)
    return reference["run"]

  def setup(kind):
    if kind == "8":
      mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
      specs = dc.param_specs(dc.host_params(), "d")
      batch = NamedSharding(mesh, P("d"))
    else:
      mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
      specs = dc.param_specs_model(dc.host_params())
      batch = NamedSharding(mesh, P("data"))
    param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    params = jax.tree.map(global_array, dc.host_params(), param_sh)
    return mesh, params, param_sh, batch

  def train(kind, zero1_axis=None):
    mesh, params, param_sh, batch_sh = setup(kind)
    tx = dc.make_tx()
    opt_sh = optadam.state_shardings(tx, params, zero1_axis=zero1_axis)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    replicated = NamedSharding(mesh, P())
    step = jax.jit(dc.train_step(tx), out_shardings=(param_sh, opt_sh, replicated))
    history = []
    for x, y in dc.host_batches():
      params, opt_state, _ = step(
        params, opt_state, global_array(x, batch_sh), global_array(y, batch_sh)
      )
      assert not dc.shardings_match(opt_state, opt_sh)
      history.append(gather(params))
    ref_history, ref_state = single_process_reference()
    err = dc.worst_relative(history, ref_history)
    ema_err = dc.worst_relative(gather(opt_state.ema.ema), ref_state.ema.ema)
    assert err <= 1e-6 and ema_err <= 1e-6, (err, ema_err)
    return opt_state, {"worst_relative": err, "ema_worst_relative": ema_err}

  def scenario_train_mesh8():
    """Params and state sharded over all 8 devices of both processes."""
    opt_state, info = train("8")
    mu = opt_state.adam.mu["Dense_0"]["kernel"]  # (8, 32) split over 8 devices: (8, 4) each
    assert spans_processes(mu) and not mu.is_fully_addressable
    assert [s.data.shape for s in mu.addressable_shards] == [(8, 4)] * 4
    return info

  def scenario_zero1_across_processes():
    """ZeRO-1 over the "data" axis, which spans the two processes: each holds half the moments."""
    opt_state, info = train("2x4", zero1_axis="data")
    mu = opt_state.adam.mu["Dense_0"]["kernel"]
    assert mu.sharding.spec == P("data", "model") and spans_processes(mu)
    rows = {(s.index[0].start, s.index[0].stop) for s in mu.addressable_shards}
    assert rows == {(4 * process_id, 4 * process_id + 4)}, rows  # this process's half
    info["rows_here"] = list(rows.pop())
    return info

  def scenario_orbax_multiprocess():
    """Orbax save mid-training by both processes, restore into sharded targets, bitwise resume."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    from flax.training import train_state  # pylint: disable=import-outside-toplevel

    mesh, params, param_sh, batch_sh = setup("8")
    tx = dc.make_tx()
    opt_sh = optadam.state_shardings(tx, param_sh)
    replicated = NamedSharding(mesh, P())
    state = train_state.TrainState.create(apply_fn=dc.MODEL.apply, params=params, tx=tx)
    state = jax.device_put(state, state.replace(step=replicated, params=param_sh, opt_state=opt_sh))

    @jax.jit
    def step(state, x, y):
      return state.apply_gradients(grads=jax.grad(dc.loss_fn)(state.params, x, y))

    batches = [(global_array(x, batch_sh), global_array(y, batch_sh)) for x, y in dc.host_batches()]
    half = dc.STEPS // 2
    path = os.path.join(work_dir, "ckpt")
    uninterrupted = dc.run_saving_checkpoint(step, state, batches, path, half)
    state = uninterrupted[-1]

    abstract_params = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )
    abstract_opt = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      jax.eval_shape(tx.init, abstract_params),
      opt_sh,
    )
    target = state.replace(
      step=jax.ShapeDtypeStruct((), np.int32, sharding=replicated),
      params=abstract_params,
      opt_state=abstract_opt,
    )
    restored = ocp.StandardCheckpointer().restore(path, target)
    assert not dc.shardings_match(restored.opt_state, opt_sh)
    assert spans_processes(restored.opt_state.adam.nu["Dense_1"]["kernel"])
    assert int(restored.step) == half
    for i, (x, y) in enumerate(batches[half:]):
      restored = step(restored, x, y)
      ref = uninterrupted[half + i]
      assert dc.bitwise_equal(gather(restored.params), gather(ref.params)), i
      assert dc.bitwise_equal(gather(restored.opt_state), gather(ref.opt_state)), i
    # And the whole run equals the single-process one.
    ref_history, _ = single_process_reference()
    err = dc.worst_relative(gather(restored.params), ref_history[-1])
    assert err <= 1e-6, err
    return {"worst_relative_final": err}

  def scenario_loss_scale_across_processes():
    """Dynamic loss scaling whose bad gradients live on one process only: one global decision."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
    shape = (8, 16)
    param_sh = {"kernel": NamedSharding(mesh, P("d", None)), "bias": NamedSharding(mesh, P())}
    rows = {0: set(), 1: set()}  # the kernel rows whose shards live on each process
    for device, index in param_sh["kernel"].devices_indices_map(shape).items():
      rows[device.process_index].update(range(*index[0].indices(shape[0])))
    assert rows[0] and rows[1] and not rows[0] & rows[1], rows
    rng = np.random.default_rng(3)
    host_params = {
      "kernel": rng.normal(size=shape).astype(np.float32),
      "bias": rng.normal(size=shape[1:]).astype(np.float32),
    }
    # Non-finite values only in the rows of one process: alone, each process would decide
    # differently (process 0 sees step 5 bad, process 1 steps 2 and 6).
    bad = {2: (1, np.inf), 5: (0, np.nan), 6: (1, -np.inf)}
    host_grads = []
    for i in range(10):
      g = {
        k: (rng.normal(size=v.shape) * 2.0**8).astype(np.float32) for k, v in host_params.items()
      }
      if i in bad:
        owner, value = bad[i]
        g["kernel"][max(rows[owner]), i] = value
      host_grads.append(g)

    def make_tx(style):
      return optadam.loss_scale_optimizer(
        optadam.adam(0.01, amsgrad=True, use_ema=True),
        initial_scale=2.0**8,
        dynamic_growth_steps=2,
        style=style,
      )

    def step_fn(tx):
      def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optadam.apply_updates(params, updates), state

      return step

    def reference_run(style):
      # The same steps on this process's first device, on local unsharded arrays.
      tx = make_tx(style)
      device = jax.local_devices()[0]
      params = jax.device_put(host_params, device)
      state = tx.init(params)
      step = jax.jit(step_fn(tx))
      history, scales, good_steps = [], [], []
      for g in host_grads:
        params, state = step(params, state, jax.device_put(g, device))
        history.append(jax.tree.map(np.asarray, params))
        scales.append(float(state.scale))
        good_steps.append(int(state.good_steps))
      return history, scales, good_steps, jax.tree.map(np.asarray, state.inner)

    def one_value(x):
      # Every local device's copy of a replicated scalar; they must agree.
      values = {np.asarray(s.data).item() for s in x.addressable_shards}
      assert len(values) == 1, values
      return values.pop()

    def run(style):
      tx = make_tx(style)
      opt_sh = optadam.state_shardings(tx, param_sh)
      assert opt_sh.scale.is_fully_replicated and opt_sh.good_steps.is_fully_replicated
      params = jax.tree.map(global_array, host_params, param_sh)
      assert spans_processes(params["kernel"]) and not params["kernel"].is_fully_addressable
      state = jax.jit(tx.init, out_shardings=opt_sh)(params)
      step = jax.jit(
        step_fn(tx),
        in_shardings=(param_sh, opt_sh, param_sh),
        out_shardings=(param_sh, opt_sh),
        donate_argnums=(0, 1),
      )
      history, scales, good_steps, locally_bad = [], [], [], []
      for i, g in enumerate(host_grads):
        grads = jax.tree.map(global_array, g, param_sh)
        if not all(
          np.isfinite(np.asarray(s.data)).all()
          for leaf in jax.tree.leaves(grads)
          for s in leaf.addressable_shards
        ):
          locally_bad.append(i)
        before = gather(params)
        params, state = step(params, state, grads)
        now = gather(params)
        history.append(now)
        scales.append(float(one_value(state.scale)))
        good_steps.append(int(one_value(state.good_steps)))
        assert dc.bitwise_equal(now, before) == (i in bad), f"step {i}: skipped is {i in bad}"
      mu = state.inner.adam.mu["kernel"]
      assert mu.sharding.spec == P("d", None) and spans_processes(mu)
      # The same scale and good_steps after every step in both processes.
      both = multihost_utils.process_allgather(
        np.asarray([scales, good_steps], np.float64), tiled=False
      )
      assert (both[0] == both[1]).all(), both
      ref_history, ref_scales, ref_good_steps, ref_inner = reference_run(style)
      assert scales == ref_scales and good_steps == ref_good_steps, (scales, ref_scales)
      err = dc.worst_relative(history, ref_history)
      state_err = dc.worst_relative(gather(state.inner), ref_inner)
      assert err <= 1e-6 and state_err <= 1e-6, (err, state_err)
      previous = [2.0**8, *scales[:-1]]
      halved = [i for i, (a, b) in enumerate(zip(previous, scales)) if b == a / 2]
      doubled = [i for i, (a, b) in enumerate(zip(previous, scales)) if b == a * 2]
      assert halved == sorted(bad) and doubled, (halved, doubled)
      return {
        "scales": scales,
        "good_steps": good_steps,
        "halved": halved,
        "doubled": doubled,
        "locally_bad": locally_bad,
        "rows_here": sorted(rows[process_id]),
        "worst_relative": err,
        "state_worst_relative": state_err,
      }

    return {style: run(style) for style in ("keras2", "keras3")}

  scenarios = {
    "train_mesh8": scenario_train_mesh8,
    "zero1_across_processes": scenario_zero1_across_processes,
    "orbax_multiprocess": scenario_orbax_multiprocess,
    "loss_scale_across_processes": scenario_loss_scale_across_processes,
  }
  print(f"process {process_id}: {jax.device_count()} devices, collectives {transport}", flush=True)
  return dc.run_scenarios(scenarios, list(scenarios))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
