"""The optimizer contract that optax asks of every optimizer it ships, checked for optadam.adam.

The properties are those of optax's ``alias_test.py`` and of what Flax NNX's ``Optimizer`` relies
on, written for optadam: every configuration of the registry `contract_configs.CONFIGS` (defaults,
AMSGrad, epsilon + weight decay, each clip, EMA in three styles, gradient accumulation, loss
scaling, a schedule, a zero-argument callable, everything at once, `optadam.loss_scale_optimizer`
in both styles) is crossed with every dtype (`contract_configs.DTYPES`), and for each pair:

* it converges on a parabola and on the Rosenbrock function (float32 and complex64);
* the second step does not recompile, and the state's shapes, dtypes and weak types stay the
  same from step to step with the update inside `jax.lax.cond` (a skipped step changes nothing);
* `optax.tree_map_params` reaches exactly the per-parameter state leaves (a no-op map gives the
  state back);
* ``update`` accepts unexpected keyword arguments;
* wrapped in `optax.inject_hyperparams` it gives bit-identical updates and state;
* the update's dtype is the gradient's;
* inside `optax.MultiSteps(every_k_schedule=4)` the first update is exactly zero;
* ``init`` on `jax.ShapeDtypeStruct` leaves gives concrete zeros (`jax.eval_shape` agrees);

and, in one subprocess with 8 CPU devices (`contract_mesh_worker.py`), under `jax.set_mesh` with
explicit axes, `jax.typeof` of every state leaf (sharding included) is the same after ``init``,
after ``update`` and under `jax.jit`, and `nnx.Optimizer` keeps a sharded kernel's sharding in its
moments. The errors for what cannot be optimized (integer leaves, out-of-range sparse rows) and
the complex-number arithmetic are tested at the end.

Cost: compiling dominates on CPU, so each configuration is compiled once per kind of run, on one
parameter tree holding a leaf per dtype (Adam's leaves do not interact, except through the global
norm of ``global_clipnorm``, which is what that configuration is about); the (configuration,
dtype) tests read their own leaf from the cached run. float64 and complex128 need x64: those runs
are made inside ``jax.enable_x64(True)`` and kept as NumPy arrays, never flipping x64 globally.
The convergence runs are one `jax.lax.scan` per configuration, without x64, as a user runs them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import subprocess
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from contract_configs import (
  CONFIGS,
  CONVERGENCE_DTYPES,
  CONVERGENCE_STEPS,
  DTYPES,
  PROBLEMS,
  adam_kwargs,
  descent_grads,
  make_injected_tx,
  make_tx,
  state_types,
)

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, above integration/
NAMES = sorted(CONFIGS)
PAIRS = [(name, dtype) for name in NAMES for dtype in DTYPES]
PROPERTY_STEPS = 4  # two real updates with accumulation; two EMA overwrites at frequency 2
TAKE = (True, True, False, True, True)  # the lax.cond run: the third call skips the step
SHAPE = (2, 3)
ZERO_IMAG = "complex64_zero_imag"  # the float32 leaf's values and gradients, as complex64
ZERO_IMAG_CONFIGS = ("defaults", "clipnorm", "clipvalue", "everything")  # every complex code path
EXTRA_ARGS = dict(unexpected_extra_args_your_optimizer_doesnt_expect=1, another="a string")


@contextlib.contextmanager
def compilations():
  """Collects JAX's "Finished ... compilation" log lines (`jax.log_compiles`) into a list."""
  found: list[str] = []

  class Collect(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if re.search(r"Finished .* compilation", message):
        found.append(message)

  handler = Collect(level=logging.DEBUG)
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles():
      yield found
  finally:
    logger.removeHandler(handler)


def host(tree: Any) -> Any:
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _per_dtype(seed: int, scale: float, zero_imag: bool) -> dict[str, jax.Array]:
  """One (2, 3) leaf per dtype (or float32 and ZERO_IMAG); call inside `jax.enable_x64(True)`."""
  rng = np.random.default_rng(seed)
  out = {}
  for dtype in DTYPES:
    x = rng.normal(size=SHAPE)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      x = x + 1j * rng.normal(size=SHAPE)
    out[dtype] = jnp.asarray(x * scale, dtype)
  if zero_imag:
    return {"float32": out["float32"], ZERO_IMAG: out["float32"].astype(jnp.complex64)}
  return out


def property_params(zero_imag: bool = False) -> dict[str, jax.Array]:
  return _per_dtype(0, 1.0, zero_imag)


def property_grads(step: int, zero_imag: bool = False) -> dict[str, jax.Array]:
  return _per_dtype(100 + step, 2.0, zero_imag)


def cond_step(tx):
  """A jitted train step whose update runs inside `jax.lax.cond` (optax's stability check)."""

  def step(params, state, grads, take):
    def update():
      return tx.update(grads, state, params)

    def skip():
      return jax.tree.map(jnp.zeros_like, grads), state

    updates, state = jax.lax.cond(take, update, skip)
    return optadam.apply_updates(params, updates), state, updates

  return jax.jit(step)


class Run(NamedTuple):
  init: Any  # the state after init (host)
  init_types: list[str]  # jax.typeof of its leaves
  states: list[Any]  # the state after each call (host)
  types: list[list[str]]
  updates: list[Any]  # the update of each call (host)
  second_call_compilations: list[str]


def _run_cond_steps(tx, zero_imag: bool = False) -> Run:
  with jax.enable_x64(True):
    params = property_params(zero_imag)
    state = tx.init(params)
    init, init_types = host(state), state_types(state)
    step = cond_step(tx)
    states, types, updates, second = [], [], [], []
    grads = iter([property_grads(i, zero_imag) for i in range(PROPERTY_STEPS)])
    zero = jax.tree.map(jnp.zeros_like, params)
    for i, take in enumerate(TAKE):
      g = next(grads) if take else zero
      if i == 1:
        with compilations() as second:
          params, state, u = step(params, state, g, take)
          jax.block_until_ready(state)
      else:
        params, state, u = step(params, state, g, take)
      states.append(host(state))
      types.append(state_types(state))
      updates.append(host(u))
  return Run(init, init_types, states, types, updates, list(second))


@functools.cache
def plain_run(name: str) -> Run:
  return _run_cond_steps(make_tx(name))


@functools.cache
def zero_imag_run(name: str) -> Run:
  return _run_cond_steps(make_tx(name), zero_imag=True)


@functools.cache
def injected_run(name: str) -> Run:
  return _run_cond_steps(make_injected_tx(name))


@functools.cache
def multi_steps_run(name: str) -> tuple[list[Any], list[str], list[list[str]]]:
  tx = optax.MultiSteps(make_tx(name), every_k_schedule=4)
  with jax.enable_x64(True):
    params = property_params()
    state = tx.init(params)
    init_types = state_types(state)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params, **EXTRA_ARGS)  # passed on to adam
      return optadam.apply_updates(params, updates), state, updates

    updates, types = [], []
    for i in range(4):
      params, state, u = step(params, state, property_grads(i))
      updates.append(host(u))
      types.append(state_types(state))
  return updates, init_types, types


def leaves_of(tree: Any, dtype: str) -> list[tuple[str, np.ndarray]]:
  """(path, leaf) for the leaves of `tree` that belong to the parameter of `dtype`."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if any(getattr(k, "key", None) == dtype for k in path):
      out.append((jax.tree_util.keystr(path), leaf))
  return out


def assert_same_bits(a: Any, b: Any, what: str) -> None:
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b, f"{what}: different structures\n{tree_a}\n{tree_b}"
  for i, (x, y) in enumerate(zip(flat_a, flat_b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: leaf {i}"
    assert x.tobytes() == y.tobytes(), f"{what}: leaf {i} differs:\n{x}\n{y}"


# --- convergence --------------------------------------------------------------------------------


@functools.cache
def convergence_run(name: str) -> dict[str, float]:
  """One scan of CONVERGENCE_STEPS steps over the four problems at once; max |x - x*| of each."""
  tx = make_tx(name)
  loss_scale = CONFIGS[name].loss_scale
  problems = {
    f"{p}/{dtype}": PROBLEMS[p](jnp.dtype(dtype)) for p in PROBLEMS for dtype in CONVERGENCE_DTYPES
  }

  def loss(params):
    return sum(problems[k].loss(params[k]) for k in problems) * loss_scale

  def body(carry, _):
    params, state = carry
    updates, state = tx.update(descent_grads(loss, params), state, params)
    return (optadam.apply_updates(params, updates), state), None

  @jax.jit
  def run(params):
    return jax.lax.scan(body, (params, tx.init(params)), None, length=CONVERGENCE_STEPS)[0][0]

  final = run({k: p.x0 for k, p in problems.items()})
  return {k: float(jnp.max(jnp.abs(final[k] - problems[k].optimum))) for k in problems}


@pytest.mark.parametrize("dtype", CONVERGENCE_DTYPES)
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", NAMES)
def test_converges(name, problem, dtype):
  """optax's bar (alias_test): within 3e-2 of the optimum after the run; most get to 1e-3."""
  error = convergence_run(name)[f"{problem}/{dtype}"]
  optimum = PROBLEMS[problem](jnp.dtype(dtype)).optimum
  assert error <= 3e-2 * (1.0 + float(jnp.max(jnp.abs(optimum)))), (name, problem, dtype, error)


def test_complex_adam_moves_both_parts_like_optax():
  """The issue's example: before, g = 1+1j moved only the real part; now it follows optax.adam.

  With epsilon 0 Keras's epsilon-hat and optax's epsilon coincide, so the two agree closely.
  """
  params = jnp.array([1.0 + 0.0j], jnp.complex64)
  g = jnp.array([1.0 + 1.0j], jnp.complex64)
  ours = optadam.adam(0.1, epsilon=0.0)
  theirs = optax.adam(0.1, eps=0.0)
  u_ours, _ = ours.update(g, ours.init(params))
  u_theirs, _ = theirs.update(g, theirs.init(params))
  np.testing.assert_allclose(np.asarray(params + u_ours), [0.9292893 - 0.0707107j], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u_ours), np.asarray(u_theirs), rtol=1e-6)


# --- compilation, lax.cond and state stability --------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_second_step_does_not_recompile(name):
  run = plain_run(name)
  assert run.second_call_compilations == [], run.second_call_compilations


@pytest.mark.parametrize("name,dtype", PAIRS)
def test_state_types_stable_inside_lax_cond(name, dtype):
  """Shapes, dtypes and weak types of the state never change (lax.cond would refuse otherwise)."""
  run = plain_run(name)
  for types in run.types:
    assert types == run.init_types
  init = dict(leaves_of(run.init, dtype))
  assert init, f"no state leaf for {dtype}"
  for state in run.states:
    for path, leaf in leaves_of(state, dtype):
      assert (leaf.shape, leaf.dtype) == (init[path].shape, init[path].dtype), path


@pytest.mark.parametrize("name,dtype", PAIRS)
def test_update_dtype_is_gradient_dtype(name, dtype):
  for updates in plain_run(name).updates:
    assert updates[dtype].dtype == jnp.dtype(dtype)
    assert updates[dtype].shape == SHAPE


@pytest.mark.parametrize("name,dtype", PAIRS)
def test_skipped_step_changes_nothing_and_steps_move(name, dtype):
  """The lax.cond run: the third call skips; the others move every parameter (by finite steps)."""
  run = plain_run(name)
  for (path, before), (_, after) in zip(
    leaves_of(run.states[1], dtype), leaves_of(run.states[2], dtype)
  ):
    np.testing.assert_array_equal(after, before, err_msg=path)
  accumulating = "gradient_accumulation_steps" in CONFIGS[name].kwargs
  for i, updates in enumerate(run.updates):
    u = updates[dtype]
    assert np.all(np.isfinite(u)), (i, u)
    real_update = TAKE[i] and (not accumulating or i in (1, 4))  # calls 2 and 4 with k = 2
    assert bool(np.any(u != 0)) == real_update, (i, u)


@pytest.mark.parametrize("name", ZERO_IMAG_CONFIGS)
def test_complex_with_zero_imaginary_parts_is_the_real_computation(name):
  """Keras's arithmetic on complex leaves: a complex64 parameter and gradient with zero
  imaginary parts give the float32 numbers (updates, moments, averages) to within an ulp or two
  (XLA contracts a real ``a + b * c`` into one FMA where the complex product rounds first), and
  imaginary parts that stay exactly zero."""
  run = zero_imag_run(name)
  for i, updates in enumerate(run.updates):
    u, r = updates[ZERO_IMAG], updates["float32"]
    np.testing.assert_allclose(u.real, r, rtol=3e-7, atol=3e-7 * np.max(np.abs(r)), err_msg=i)
    np.testing.assert_array_equal(u.imag, np.zeros(SHAPE, np.float32))
  for i, state in enumerate(run.states):
    as_complex = leaves_of(state, ZERO_IMAG)
    as_real = leaves_of(state, "float32")
    assert len(as_complex) == len(as_real) > 0
    for (path, c), (_, r) in zip(as_complex, as_real):
      tol = 3e-7 * max(float(np.max(np.abs(r))), 1e-30)
      np.testing.assert_allclose(np.real(c), r, rtol=3e-7, atol=tol, err_msg=f"{i} {path}")
      np.testing.assert_array_equal(np.imag(c), 0.0, err_msg=f"{i} {path}")


# --- optax wrappers -----------------------------------------------------------------------------


def loss_scales(state: Any) -> list[Any]:
  """(scale, good_steps) of each `optadam.LossScaleState` in `state` (none without the wrapper)."""
  is_lso = lambda x: isinstance(x, optadam.LossScaleState)
  return [(x.scale, x.good_steps) for x in jax.tree.leaves(state, is_leaf=is_lso) if is_lso(x)]


@pytest.mark.parametrize("name,dtype", PAIRS)
def test_inject_hyperparams_gives_same_updates_and_state(name, dtype):
  plain, injected = plain_run(name), injected_run(name)
  for i in range(len(TAKE)):
    assert_same_bits(injected.updates[i][dtype], plain.updates[i][dtype], f"update {i}")
    assert_same_bits(
      leaves_of(injected.states[i].inner_state, dtype),
      leaves_of(plain.states[i], dtype),
      f"state {i}",
    )
    scales = loss_scales(injected.states[i].inner_state), loss_scales(plain.states[i])
    assert_same_bits(*scales, f"loss scale {i}")
  lr = adam_kwargs(name)["learning_rate"]
  zero_argument = callable(lr) and optadam.hyperparams.takes_no_arguments(lr)
  assert ("learning_rate" in injected.states[0].hyperparams) != zero_argument


@pytest.mark.parametrize("name,dtype", PAIRS)
def test_multi_steps_first_update_is_exactly_zero(name, dtype):
  updates, init_types, types = multi_steps_run(name)
  assert all(t == init_types for t in types)
  for i in range(3):
    u = updates[i][dtype]
    assert u.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(u, np.zeros(SHAPE, u.dtype))
  assert np.all(np.isfinite(updates[3][dtype]))


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params_reaches_exactly_the_per_parameter_leaves(name):
  tx = make_tx(name)
  with jax.enable_x64(True):
    params = property_params()
    state = tx.init(params)
    same = optax.tree_map_params(tx, lambda v: v, state)
    assert_same_bits(host(same), host(state), "no-op tree_map_params")
    marked = optax.tree_map_params(tx, lambda v: "param", state, transform_non_params=lambda v: "-")
  for path, leaf in jax.tree_util.tree_leaves_with_path(marked):
    per_parameter = any(getattr(k, "key", None) in DTYPES for k in path)
    assert leaf == ("param" if per_parameter else "-"), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", NAMES)
def test_update_accepts_unexpected_keyword_arguments(name):
  """Extra arguments (any type) are accepted and ignored, inside and outside jax.jit."""
  tx = make_tx(name)
  with jax.enable_x64(True):
    params, grads = property_params(), property_grads(0)
    state = tx.init(params)
    with_extra = jax.eval_shape(lambda: tx.update(grads, state, params, **EXTRA_ARGS))
    without = jax.eval_shape(lambda: tx.update(grads, state, params))
  assert jax.tree.structure(with_extra) == jax.tree.structure(without)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(with_extra)] == [
    (x.shape, x.dtype) for x in jax.tree.leaves(without)
  ]


# --- abstract init ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dtype", PAIRS)
def test_init_on_shape_dtype_structs_gives_concrete_zeros(name, dtype):
  tx = make_tx(name)
  with jax.enable_x64(True):
    params = property_params()
    structs = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    abstract = tx.init(structs)
    concrete = tx.init(params)
    shapes = jax.eval_shape(tx.init, params)
  assert state_types(abstract) == state_types(concrete)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(abstract)] == [
    (x.shape, x.dtype) for x in jax.tree.leaves(shapes)
  ]
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for leaf in jax.tree.leaves(abstract):
    assert isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
  ours = leaves_of(host(abstract), dtype)
  assert ours
  for path, leaf in ours:
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf), err_msg=path)


# --- 8 CPU devices: explicit sharding and nnx.Optimizer ------------------------------------------


@pytest.fixture(scope="module")
def mesh_results():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_ENABLE_X64", None)
  proc = subprocess.run(
    [sys.executable, os.path.join(TESTS, "support", "contract_mesh_worker.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=os.path.dirname(TESTS),
  )
  results = {}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      r = json.loads(line[len("RESULT ") :])
      results[r["scenario"]] = r
  assert results, f"worker gave no results (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
  results["_log"] = proc.stderr[-3000:]
  return results


def _mesh_info(results, scenario):
  assert scenario in results, f"{scenario} did not run:\n{results['_log']}"
  r = results[scenario]
  assert r["ok"], f"{scenario} failed:\n{r['error']}"
  return r["info"]


@pytest.mark.parametrize("name", NAMES)
def test_explicit_mesh_state_types_same_after_init_update_and_jit(mesh_results, name):
  info = _mesh_info(mesh_results, f"explicit/{name}")
  init = info["init"]
  assert any("@d" in t for t in init), init  # the sharded leaves' state is sharded
  for stage in ("update", "jit_update", "jit_init", "shape_dtype_struct_init"):
    assert info[stage] == init, (stage, info[stage], init)


def test_abstract_init_creates_sharded_zeros_directly(mesh_results):
  info = _mesh_info(mesh_results, "abstract_init_sharding")
  assert info["shard_shapes"] == [[1, 4]] * 8
  assert info["same_sharding"] and info["all_zero"]


def test_nnx_optimizer_keeps_sharded_kernel_sharding_in_moments(mesh_results):
  info = _mesh_info(mesh_results, "nnx_optimizer")
  assert "@d" in info["kernel"]
  for key in ("mu", "nu", "mu_after_step", "nu_after_step"):
    assert info[key] == info["kernel"], (key, info)


# --- what cannot be optimized: clear errors ----------------------------------------------------


def test_non_floating_leaf_is_a_type_error_naming_its_path():
  variables = {"params": {"w": jnp.ones(3)}, "step": jnp.zeros((), jnp.int32)}
  for tx in (
    optadam.adam(),
    optadam.adam(use_ema=True, gradient_accumulation_steps=2),
    optadam.parameter_ema(),
  ):
    with pytest.raises(TypeError) as e:
      tx.init(variables)
    message = str(e.value)
    for part in ("`step`", "int32", "optax.masked", "optax.set_to_zero", "wrt=nnx.Param"):
      assert part in message, (part, message)
  for leaf, dtype in ((jnp.ones(2, jnp.bool_), "bool"), (jax.random.key(0), "key<fry>")):
    with pytest.raises(TypeError, match=re.escape(f"`params/flag` of dtype {dtype}")):
      optadam.adam().init({"params": {"w": jnp.ones(3), "flag": leaf}})
  with pytest.raises(TypeError, match=r"\(the root of the tree\) of dtype int32"):
    optadam.adam().init(jnp.arange(3))


def test_excluded_integer_leaf_trains_with_multi_transform_and_nnx_wrt():
  variables = {"params": {"w": jnp.ones(3)}, "step": jnp.zeros((), jnp.int32)}
  tx = optax.multi_transform(
    {"adam": optadam.adam(0.1), "frozen": optax.set_to_zero()}, {"params": "adam", "step": "frozen"}
  )
  state = tx.init(variables)
  grads = {"params": {"w": jnp.ones(3)}, "step": jnp.zeros((), jnp.int32)}
  updates, _ = tx.update(grads, state, variables)
  np.testing.assert_allclose(np.asarray(updates["params"]["w"]), np.full(3, -0.1), rtol=1e-5)
  assert int(updates["step"]) == 0

  from flax import nnx  # pylint: disable=import-outside-toplevel

  class Counted(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(3))
      self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

  with pytest.raises(TypeError, match=r"`calls(/value)?` of dtype int32"):
    nnx.Optimizer(Counted(), optadam.adam(0.1), wrt=nnx.Variable)
  optimizer = nnx.Optimizer(Counted(), optadam.adam(0.1), wrt=nnx.Param)
  assert optimizer.opt_state.adam.mu["w"].get_value().shape == (3,)


TABLE_SHAPE = (5, 3)


def _bad_slices(indices):
  values = jnp.arange(6.0).reshape(2, 3) + 1.0
  return {"embedding": optadam.IndexedSlices(values, jnp.asarray(indices), TABLE_SHAPE)}


@pytest.mark.parametrize("indices,bad", [([1, 99], "99"), ([-1, 2], "-1")])
def test_out_of_range_sparse_row_is_a_value_error_when_concrete(indices, bad):
  """Concrete device indices are checked at update: before adam's internal jit, and without it."""
  params = {"embedding": jnp.zeros(TABLE_SHAPE)}
  for tx in (
    optadam.adam(),
    optadam.adam(jit_compile=False),
    optax.chain(optadam.scale_by_keras_adam()),
  ):
    state = tx.init(params)
    with pytest.raises(ValueError, match=rf"`embedding` has row index {bad} outside \[0, 5\)"):
      tx.update(_bad_slices(indices), state, params)
  g = _bad_slices(indices)["embedding"]
  np.testing.assert_array_equal(np.asarray(g.indices), indices)  # kept as given


def test_out_of_range_sparse_row_inside_users_jit_is_dropped():
  """Inside the user's jit the indices are traced: the out-of-range entry is dropped (JAX's
  scatter), so the step is bit for bit that of the gradient without it."""
  params = {"embedding": jnp.linspace(-1.0, 1.0, 15).reshape(TABLE_SHAPE)}
  tx = optadam.adam(0.1)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  state = tx.init(params)
  with_bad, bad_state = step(_bad_slices([1, 99]), state, params)
  g = _bad_slices([1, 99])["embedding"]
  good = {"embedding": optadam.IndexedSlices(g.values[:1], jnp.array([1]), TABLE_SHAPE)}
  without, good_state = step(good, state, params)
  assert_same_bits(with_bad, without, "update")
  assert_same_bits(bad_state, good_state, "state")
  assert np.any(np.asarray(with_bad["embedding"])[1] != 0)


def test_moment_dtypes_complex_mu_allowed_nu_always_real():
  params = {"c": jnp.ones(2, jnp.complex64), "r": jnp.ones(2, jnp.bfloat16)}
  state = optadam.adam(mu_dtype=jnp.complex64, nu_dtype=jnp.float32).init(params).adam
  assert state.mu["c"].dtype == jnp.complex64 and state.mu["r"].dtype == jnp.float32
  assert state.nu["c"].dtype == jnp.float32 and state.nu["r"].dtype == jnp.float32
  state = optadam.adam(mu_dtype=jnp.float32).init(params).adam
  assert state.mu["c"].dtype == jnp.complex64 and state.nu["c"].dtype == jnp.float32
  with pytest.raises(TypeError, match=r"`nu_dtype` must be None or a real floating dtype.*real"):
    optadam.adam(nu_dtype=jnp.complex64)
  with pytest.raises(TypeError, match="`ema_dtype`"):
    optadam.adam(use_ema=True, ema_dtype=jnp.int32)


# --- complex numbers: optax's convention, Keras's arithmetic ------------------------------------


def test_complex_step_follows_keras_formula_with_abs_squared():
  """m: EMA of g (complex); v: EMA of |g|^2 (real); epsilon-hat; AMSGrad maxes the real v."""
  b1, b2, eps, lr = 0.9, 0.999, 1e-7, 0.01
  x0 = np.array([0.5 - 1.0j, 2.0 + 0.25j])
  grads = [np.array([1.0 + 2.0j, -0.5 + 0.0j]), np.array([0.1 - 0.1j, 3.0 + 4.0j])]
  tx = optadam.adam(lr, amsgrad=True)
  x = jnp.asarray(x0, jnp.complex64)
  state = tx.init(x)
  m, v, vmax, ref = np.zeros(2, complex), np.zeros(2), np.zeros(2), x0.copy()
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(jnp.asarray(g, jnp.complex64), state, x)
    x = optadam.apply_updates(x, updates)
    m = m + (g - m) * (1 - b1)
    v = v + (np.abs(g) ** 2 - v) * (1 - b2)
    vmax = np.maximum(vmax, v)
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    ref = ref - alpha * m / (np.sqrt(vmax) + eps)
  assert state.adam.nu.dtype == state.adam.nu_max.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(state.adam.nu_max), vmax, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-6)


def test_complex_clips_weight_decay_and_ema():
  g = {"a": jnp.array([3.0 - 4.0j, 1.0 + 0.5j], jnp.complex64), "b": jnp.array([0.0, 0.0])}
  clipped, _ = optadam.clip_by_value(2.0).update(g, optax.EmptyState())
  np.testing.assert_array_equal(np.asarray(clipped["a"]), [2.0 - 2.0j, 1.0 + 0.5j])  # both parts
  clipped, _ = optadam.clip_by_tensor_norm(1.0).update(g, optax.EmptyState())
  norm = np.sqrt(25.0 + 1.25)
  np.testing.assert_allclose(np.asarray(clipped["a"]), np.asarray(g["a"]) / norm, rtol=1e-6)
  clipped, _ = optadam.clip_by_keras_global_norm(1.0).update(g, optax.EmptyState())
  np.testing.assert_allclose(np.asarray(clipped["a"]), np.asarray(g["a"]) / norm, rtol=1e-6)
  assert clipped["a"].dtype == jnp.complex64 and clipped["b"].dtype == jnp.float32

  # weight decay and EMA with a zero gradient: only the decay moves x; the average follows x
  x0 = jnp.array([1.0 + 1.0j, -2.0 + 0.5j], jnp.complex64)
  tx = optadam.adam(0.1, weight_decay=0.5, use_ema=True, ema_momentum=0.5)
  state = tx.init(x0)
  updates, state = tx.update(jnp.zeros(2, jnp.complex64), state, x0)
  x1 = optadam.apply_updates(x0, updates)
  np.testing.assert_allclose(np.asarray(x1), np.asarray(x0) * (1 - 0.1 * 0.5), rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(optadam.ema_params(state)), 0.5 * np.asarray(x0) + 0.5 * np.asarray(x1), rtol=1e-6
  )


def test_complex_sparse_gradient_equals_dense():
  table = jnp.asarray(np.arange(12.0).reshape(4, 3) * (1 - 0.5j), jnp.complex64)
  values = jnp.asarray(np.arange(9.0).reshape(3, 3) * (0.5 + 1j), jnp.complex64)
  g = optadam.IndexedSlices(values, jnp.array([2, 0, 2]), table.shape)  # row 2 twice
  tx = optadam.adam(0.1)
  u_sparse, s_sparse = tx.update(g, tx.init(table), table)
  u_dense, s_dense = tx.update(g.to_dense(), tx.init(table), table)
  assert u_sparse.dtype == jnp.complex64 and s_sparse.adam.nu.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(s_sparse.adam.nu), np.asarray(s_dense.adam.nu), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u_sparse), np.asarray(u_dense), rtol=1e-6)
  clipped, _ = optadam.clip_by_tensor_norm(1.0).update(g, optax.EmptyState())  # raw values' norm
  norm = np.sqrt(np.sum(np.abs(np.asarray(values)) ** 2))
  np.testing.assert_allclose(np.asarray(clipped.values), np.asarray(values) / norm, rtol=1e-6)


def test_inject_hyperparams_on_complex_params_without_hyperparam_dtype():
  """inject_hyperparams stores hyperparameters in the params' dtype: complex here. adam takes
  their real part (a nonzero imaginary part is an error)."""
  params = {"z": jnp.array([1.0 + 1.0j, -0.5j], jnp.complex64)}
  grads = {"z": jnp.array([0.5 - 1.0j, 2.0 + 0.0j], jnp.complex64)}
  static = ("beta_1", "beta_2", "epsilon", "ema_momentum")  # float32 betas round 1 - beta apart
  tx = optax.inject_hyperparams(optadam.adam, static_args=static)(
    learning_rate=0.1, weight_decay=0.01
  )
  state = tx.init(params)
  assert jnp.iscomplexobj(state.hyperparams["learning_rate"])
  updates, _ = tx.update(grads, state, params)
  plain = optadam.adam(0.1, weight_decay=0.01)
  expected, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["z"]), np.asarray(expected["z"]), rtol=1e-6)
  with pytest.raises(ValueError, match="`learning_rate` must be a real number"):
    optadam.adam(jnp.asarray(0.1 + 0.1j))
  with pytest.raises(TypeError, match="`beta_1` must be a real number"):
    optadam.scale_by_keras_adam(beta_1=jnp.asarray(0.9 + 0.0j))
