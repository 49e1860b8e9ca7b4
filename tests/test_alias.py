"""`optadam.adam`'s contract: arguments, validation, tracing, hyperparameter forms, dtypes."""

from __future__ import annotations

import inspect

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam
from helpers import run_optadam, worst_relative
from reference import make_grads, make_params, reference_adam

SHAPES = {"w": (4, 3), "b": (3,)}


# --- signature ---------------------------------------------------------------------------


def test_signature_is_keras2():
  params = list(inspect.signature(optadam.adam).parameters.values())
  positional = [(p.name, p.default) for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
  assert positional == [
    ("learning_rate", 0.001),
    ("beta_1", 0.9),
    ("beta_2", 0.999),
    ("epsilon", 1e-7),
    ("amsgrad", False),
    ("weight_decay", None),
    ("clipnorm", None),
    ("clipvalue", None),
    ("global_clipnorm", None),
    ("use_ema", False),
    ("ema_momentum", 0.99),
    ("ema_overwrite_frequency", None),
    ("jit_compile", True),
    ("name", "Adam"),
  ]
  assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[len(positional) :])


def test_positional_arguments_in_keras_order():
  tx = optadam.adam(0.01, 0.8, 0.99, 1e-3, True)
  assert tx.keras_args["learning_rate"] == 0.01 and tx.keras_args["amsgrad"] is True
  assert tx.name == "Adam"
  assert optadam.adam(name="enc_opt").name == "enc_opt"


def test_state_is_named():
  params = {"w": jnp.ones(3)}
  state = optadam.adam(use_ema=True, weight_decay=0.1).init(params)
  assert isinstance(state, optadam.AdamState)
  assert state._fields == ("loss_scale", "clip", "adam", "learning_rate", "weight_decay", "ema")
  assert state.adam.mu["w"].shape == (3,)
  assert isinstance(state.ema, optadam.ParameterEmaState)


# --- validation ----------------------------------------------------------------------------

BAD = [
  (dict(beta_1=1.0), ValueError, "beta_1"),
  (dict(beta_1=-0.1), ValueError, "beta_1"),
  (dict(beta_2=1.5), ValueError, "beta_2"),
  (dict(epsilon=-1e-7), ValueError, "epsilon"),
  (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
  (dict(learning_rate=float("inf")), ValueError, "learning_rate"),
  (dict(learning_rate="0.1"), TypeError, "learning_rate"),
  (dict(learning_rate=jnp.ones(3)), ValueError, "learning_rate"),
  (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
  (dict(weight_decay="x"), TypeError, "weight_decay"),
  (dict(clipnorm=1.0, clipvalue=1.0), ValueError, "clipnorm"),
  (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError, "global_clipnorm"),
  (dict(clipvalue=0.5, global_clipnorm=1.0), ValueError, "clipvalue"),
  (dict(clipnorm=-1.0), ValueError, "clipnorm"),
  (dict(clipvalue=-1.0), ValueError, "clipvalue"),
  (dict(global_clipnorm=-2.0), ValueError, "global_clipnorm"),
  (dict(global_clipnorm=float("nan")), ValueError, "global_clipnorm"),
  (dict(use_ema=True, ema_momentum=1.5), ValueError, "ema_momentum"),
  (dict(use_ema=True, ema_momentum=-0.1), ValueError, "ema_momentum"),
  (dict(use_ema=True, ema_overwrite_frequency=-1), ValueError, "ema_overwrite_frequency"),
  (dict(use_ema=True, ema_overwrite_frequency=2.5), ValueError, "ema_overwrite_frequency"),
  (dict(use_ema=True, ema_overwrite_frequency="3"), ValueError, "ema_overwrite_frequency"),
  (dict(amsgrad="yes"), TypeError, "amsgrad"),
  (dict(use_ema=1), TypeError, "use_ema"),
  (dict(jit_compile=None), TypeError, "jit_compile"),
  (dict(name=3), TypeError, "name"),
  (dict(exclude_from_weight_decay=["bias"]), ValueError, "weight_decay"),
  (
    dict(weight_decay=0.1, exclude_from_weight_decay="bias"),
    TypeError,
    "exclude_from_weight_decay",
  ),
  (
    dict(weight_decay=0.1, exclude_from_weight_decay=["("]),
    ValueError,
    "exclude_from_weight_decay",
  ),
  (dict(lr=0.1), ValueError, "learning_rate"),
  (dict(decay=0.1), ValueError, "decay"),
  (dict(gradient_aggregator=lambda g: g), ValueError, "gradient_aggregator"),
  (dict(gradient_transformers=[]), ValueError, "gradient_transformers"),
  (dict(momentum=0.9), TypeError, "momentum"),
  (dict(mu_dtype="float7"), TypeError, "mu_dtype"),
  (dict(use_ema=True, ema_style="keras4"), ValueError, "ema_style"),
]


def _bad_id(kwargs: dict) -> str:
  """A stable id (pytest-xdist workers must collect the same names): no object addresses."""
  return str({k: (v if not callable(v) else "<callable>") for k, v in kwargs.items()})


@pytest.mark.parametrize("kwargs,error,word", BAD, ids=[_bad_id(b[0]) for b in BAD])
def test_bad_arguments_are_rejected(kwargs, error, word):
  with pytest.raises(error, match=word):
    optadam.adam(**kwargs)


def test_off_values_and_ignored_kwargs():
  # None or 0 means "off" for clipping (Keras); ints are accepted (Keras 2)
  optadam.adam(clipnorm=0, clipvalue=None, global_clipnorm=0.0)
  optadam.adam(learning_rate=1, is_legacy_optimizer=False, mesh=None)
  optadam.adam(use_ema=True, ema_overwrite_frequency=0)
  optadam.adam(use_ema=False, ema_momentum=5.0)  # not validated when EMA is off (Keras)
  optadam.adam(learning_rate=-0.001)  # finite: allowed (Keras runs it)


def test_missing_params_is_a_clear_error():
  for kwargs in (dict(weight_decay=0.1), dict(use_ema=True)):
    tx = optadam.adam(**kwargs)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="needs the parameters"):
      tx.update({"w": jnp.ones(2)}, tx.init(params))
  tx = optadam.adam()  # without them, params are optional
  tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))


def test_transforms_validate_on_their_own():
  with pytest.raises(ValueError, match="clipnorm"):
    optadam.clip_by_tensor_norm(0.0)
  with pytest.raises(ValueError, match="global_clipnorm"):
    optadam.clip_by_keras_global_norm(-1.0)
  with pytest.raises(TypeError, match="learning_rate"):
    optadam.scale_by_learning_rate(None)
  with pytest.raises(ValueError, match="ema_momentum"):
    optadam.parameter_ema(2.0)


# --- tracing, recompilation, hyperparameter forms ------------------------------------------


def _loss_grads(params, x):
  return jax.grad(lambda p: jnp.sum((x @ p["w"] + p["b"]) ** 2))(params)


def test_no_recompilation_in_user_jit():
  tx = optadam.adam(
    amsgrad=True, weight_decay=0.01, clipnorm=1.0, use_ema=True, ema_overwrite_frequency=2
  )
  params = {k: jnp.asarray(v) for k, v in make_params(SHAPES).items()}
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, x):
    updates, state = tx.update(_loss_grads(params, x), state, params)
    return optadam.apply_updates(params, updates), state

  for i in range(4):
    params, state = step(params, state, jnp.full((2, 4), 0.1 * i))
  assert int(state.adam.count) == 4


def test_own_jit_compiles_once():
  tx = optadam.adam(weight_decay=0.01)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    params = optadam.apply_updates(params, updates)
  assert tx.update._cache_size() == 1  # pylint: disable=protected-access


def test_jit_compile_false_runs_op_by_op_with_same_numbers():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 5)
  a, _ = run_optadam(optadam.adam(weight_decay=0.01, jit_compile=False), params0, grads, jit=False)
  b, _ = run_optadam(optadam.adam(weight_decay=0.01), params0, grads, jit=False)
  assert not hasattr(optadam.adam(jit_compile=False).update, "lower")
  assert hasattr(optadam.adam().update, "lower")
  assert worst_relative(a, b) < 1e-8  # fused (jit) code may contract a*b + c into one FMA


def test_zero_arg_callable_is_called_every_step_inside_jit():
  current = {"lr": 0.1, "b1": 0.9}
  tx = optadam.adam(learning_rate=lambda: current["lr"], beta_1=lambda: current["b1"])
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state, g):
    traces.append(1)
    updates, state = tx.update(g, state, params)
    return optadam.apply_updates(params, updates), state, updates

  g = {"w": jnp.array([1.0, -2.0])}
  seen = []
  for lr in (0.1, 0.01, 0.5):
    current["lr"] = lr
    params, state, updates = step(params, state, g)
    seen.append(np.asarray(updates["w"]))
  assert len(traces) == 1
  # with a constant gradient the Keras step size is exactly lr * sign(g) (up to epsilon)
  for lr, u in zip((0.1, 0.01, 0.5), seen):
    np.testing.assert_allclose(
      u, -lr * np.array([1.0, -1.0]), rtol=1e-4
    )  # 1 - beta_2**t cancels in f32


def test_zero_arg_callable_matches_reference_schedule():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 10)
  step = {"i": 0}
  lrs = [0.01 * (1 + (i % 3)) for i in range(10)]

  def lr_fn():
    return lrs[step["i"]]

  tx = optadam.adam(learning_rate=lr_fn)
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)
  step_fn = jax.jit(lambda p, s, g: tx.update(g, s, p))
  hist = []
  for i, g in enumerate(grads):
    step["i"] = i
    updates, state = step_fn(params, state, {k: jnp.asarray(v) for k, v in g.items()})
    params = optadam.apply_updates(params, updates)
    hist.append({k: np.asarray(v) for k, v in params.items()})
  ref, _ = reference_adam(params0, grads, learning_rate=lambda i: lrs[i])
  assert worst_relative(hist, ref) < 1e-6


def test_schedule_gets_step_before_increment():
  seen = []
  tx = optadam.scale_by_learning_rate(
    lambda count: (jax.debug.callback(seen.append, count), 1.0)[1]
  )
  state = tx.init({"w": jnp.ones(1)})
  for _ in range(3):
    _, state = tx.update({"w": jnp.ones(1)}, state)
  jax.effects_barrier()
  assert [int(c) for c in seen] == [0, 1, 2]


def test_beta_schedules_and_callables_match_constant():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 8)
  const, _ = run_optadam(optadam.adam(beta_1=0.8, beta_2=0.99), params0, grads)
  sched, _ = run_optadam(
    optadam.adam(beta_1=lambda step: 0.8, beta_2=lambda step: 0.99), params0, grads
  )
  zero_arg, _ = run_optadam(optadam.adam(beta_1=lambda: 0.8, beta_2=lambda: 0.99), params0, grads)
  # arrays/callables form 1 - beta in float32 (Python floats in double): equal to ~1 ulp
  assert worst_relative(sched, const) < 1e-6
  assert worst_relative(zero_arg, const) < 1e-6


@pytest.mark.parametrize("static", [True, False])
def test_inject_hyperparams_gives_same_numbers(static):
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 12)
  kwargs = dict(
    amsgrad=True, weight_decay=0.01, clipnorm=1.0, use_ema=True, ema_overwrite_frequency=4
  )
  plain, _ = run_optadam(optadam.adam(1e-2, **kwargs), params0, grads)
  static_args = ("beta_1", "beta_2", "ema_momentum", "ema_overwrite_frequency") if static else ()
  injected_tx = optax.inject_hyperparams(optadam.adam, static_args=static_args)(
    learning_rate=1e-2, **kwargs
  )
  injected, state = run_optadam(injected_tx, params0, grads)
  if static:
    assert worst_relative(injected, plain) == 0.0
  else:  # betas as float32 arrays: 1 - beta rounds differently from Keras's double
    assert worst_relative(injected, plain) < 1e-6
  assert "learning_rate" in state.hyperparams


def test_inject_hyperparams_changes_lr_without_recompiling():
  tx = optax.inject_hyperparams(optadam.adam)(learning_rate=0.1)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optadam.apply_updates(params, updates), state, updates

  g = {"w": jnp.array([1.0, -1.0])}
  params, state, u1 = step(params, state, g)
  state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)  # same (not weak) type
  params, state, u2 = step(params, state, g)
  np.testing.assert_allclose(u1["w"], [-0.1, 0.1], rtol=1e-5)
  np.testing.assert_allclose(u2["w"], [-0.01, 0.01], rtol=1e-5)


def test_vmap_over_independent_problems():
  tx = optadam.adam(weight_decay=0.01)
  params = {"w": jnp.stack([jnp.ones(3), 2 * jnp.ones(3)])}
  grads = {"w": jnp.stack([jnp.ones(3), -jnp.ones(3)])}
  states = jax.vmap(tx.init)(params)
  updates, _ = jax.vmap(tx.update)(grads, states, params)
  for i in range(2):
    single, _ = tx.update(
      {"w": grads["w"][i]}, tx.init({"w": params["w"][i]}), {"w": params["w"][i]}
    )
    np.testing.assert_array_equal(updates["w"][i], single["w"])


# --- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64])
def test_state_dtypes_and_shapes_are_stable(dtype):
  with jax.enable_x64(dtype == jnp.float64):
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros(2, dtype)}
    tx = optadam.adam(
      amsgrad=True, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=2, clipnorm=1.0
    )
    state0 = tx.init(params)
    state = state0
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for _ in range(3):
      grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, dtype), params)
      updates, state = step(params, state, grads)
      chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
      chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
      params = optadam.apply_updates(params, updates)
    assert state.adam.mu["w"].dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_model_with_default_betas_moves(dtype):
  """Keras 2 rounds beta_2=0.999 to 1.0 in bfloat16 and never moves; optadam does (SPEC §2)."""
  params = {"w": jnp.ones(4, dtype)}
  tx = optadam.adam(learning_rate=0.01)
  state = tx.init(params)
  for _ in range(20):
    updates, state = tx.update({"w": jnp.ones(4, dtype)}, state, params)
    params = optadam.apply_updates(params, updates)
  assert params["w"].dtype == dtype
  # 20 steps of ~lr each (Adam's step is ~lr for a constant gradient), quantized by the dtype
  w = np.asarray(params["w"], np.float32)
  assert np.all(w < 0.85) and np.all(w > 0.7), w


def test_mu_nu_dtypes_and_gradient_cast():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = optadam.adam(mu_dtype=jnp.float32, nu_dtype=jnp.float32, use_ema=True, ema_dtype=jnp.float32)
  state = tx.init(params)
  assert state.adam.mu["w"].dtype == jnp.float32 and state.adam.nu["w"].dtype == jnp.float32
  assert state.ema.ema["w"].dtype == jnp.float32
  updates, state2 = tx.update({"w": jnp.ones(3, jnp.float32)}, state, params)  # float32 gradient
  chex.assert_trees_all_equal_shapes_and_dtypes(state2, state)
  assert optadam.apply_updates(params, updates)["w"].dtype == jnp.bfloat16


# --- None gradients ------------------------------------------------------------------------


def test_none_gradients_skip_the_parameter_entirely():
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 12, none=lambda s, k: k == "b" and s % 3 == 1)
  kwargs = dict(
    amsgrad=True,
    weight_decay=0.05,
    clipnorm=0.5,
    use_ema=True,
    ema_overwrite_frequency=4,
    learning_rate=0.01,
  )
  ours, state = run_optadam(optadam.adam(**kwargs), params0, grads)
  ref, avg = reference_adam(params0, grads, **kwargs)
  assert worst_relative(ours, ref) < 1e-6
  np.testing.assert_allclose(optadam.ema_params(state)["b"], avg["b"], rtol=1e-6)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  pattern=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6),
  amsgrad=st.booleans(),
)
def test_none_leaves_leave_their_state_untouched(pattern, amsgrad):
  tx = optadam.adam(amsgrad=amsgrad, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=2)
  params = {"a": jnp.arange(3.0), "b": -jnp.arange(2.0)}
  state = tx.init(params)
  for i, (a_none, b_none) in enumerate(pattern):
    grads = {
      "a": None if a_none else jnp.full(3, 0.3 * (i + 1)),
      "b": None if b_none else jnp.ones(2),
    }
    updates, new_state = tx.update(grads, state, params)
    for key, is_none in (("a", a_none), ("b", b_none)):
      if is_none:
        assert updates[key] is None
        np.testing.assert_array_equal(new_state.adam.mu[key], state.adam.mu[key])
        np.testing.assert_array_equal(new_state.adam.nu[key], state.adam.nu[key])
        np.testing.assert_array_equal(new_state.ema.ema[key], state.ema.ema[key])
        if amsgrad:
          np.testing.assert_array_equal(new_state.adam.nu_max[key], state.adam.nu_max[key])
    assert int(new_state.adam.count) == i + 1
    params, state = optadam.apply_updates(params, updates), new_state


# --- properties ----------------------------------------------------------------------------


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  log_scales=st.lists(st.floats(-3, 3), min_size=6, max_size=6),
  amsgrad=st.booleans(),
)
def test_invariant_to_diagonal_rescaling_when_epsilon_is_zero(seed, log_scales, amsgrad):
  """With epsilon = 0, scaling each gradient coordinate by a constant d > 0 changes nothing."""
  d = np.float32(10.0) ** np.asarray(log_scales, np.float32).reshape(2, 3)
  rng = np.random.default_rng(seed)
  tx = optadam.scale_by_keras_adam(epsilon=0.0, amsgrad=amsgrad)
  params = {"w": jnp.zeros((2, 3))}
  s1, s2 = tx.init(params), tx.init(params)
  for _ in range(5):
    g = rng.normal(size=(2, 3)).astype(np.float32) + 0.1
    u1, s1 = tx.update({"w": jnp.asarray(g)}, s1)
    u2, s2 = tx.update({"w": jnp.asarray(g * d)}, s2)
    # float32 noise relative to the tensor's scale (m near 0 cancels in m + (g - m) * 0.1)
    np.testing.assert_allclose(
      u2["w"], u1["w"], rtol=2e-5, atol=2e-5 * float(np.max(np.abs(u1["w"])))
    )


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(scale=st.floats(1e-3, 1e3), lr=st.floats(1e-4, 1e-1))
def test_first_step_shows_epsilon_hat(scale, lr):
  """Keras's first step: -lr c m / (sqrt(v) + eps), c = sqrt(1 - b2) / (1 - b1), eps NOT scaled."""
  tx = optadam.adam(learning_rate=lr, epsilon=1e-3)
  params = {"w": jnp.zeros(3)}
  g = np.asarray(np.array([1.0, -1.0, 0.5]) * scale, np.float32).astype(np.float64)
  updates, _ = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init(params), params)
  f32 = lambda x: float(np.float32(x))
  c = np.sqrt(1 - f32(0.999)) / (1 - f32(0.9))  # powers in float32, as Keras
  m, v = g * f32(1 - 0.9), g * g * f32(1 - 0.999)  # 1 - beta in double, rounded (Keras)
  expected = -f32(lr) * c * m / (np.sqrt(v) + 1e-3)
  np.testing.assert_allclose(updates["w"], expected, rtol=2e-6)


def test_standalone_building_blocks_compose_in_optax_chain():
  """The blocks are ordinary optax transforms: the chain equals optadam.adam."""
  params0 = make_params(SHAPES)
  grads = make_grads(SHAPES, 10, scale=5.0)
  keras_order = optax.chain(
    optadam.clip_by_tensor_norm(1.0),
    optadam.scale_by_keras_adam(amsgrad=True),
    optadam.scale_by_learning_rate(0.01),
    optadam.add_decayed_weights(0.01, learning_rate=0.01, exclude_from_weight_decay=["b"]),
  )
  adamw_order = optax.chain(  # optax's adamw placement: the same up to rounding
    optadam.clip_by_tensor_norm(1.0),
    optadam.scale_by_keras_adam(amsgrad=True),
    optadam.add_decayed_weights(0.01, exclude_from_weight_decay=["b"]),
    optadam.scale_by_learning_rate(0.01),
  )
  a, _ = run_optadam(keras_order, params0, grads)
  b, _ = run_optadam(
    optadam.adam(
      0.01, amsgrad=True, weight_decay=0.01, clipnorm=1.0, exclude_from_weight_decay=["b"]
    ),
    params0,
    grads,
  )
  c, _ = run_optadam(adamw_order, params0, grads)
  assert worst_relative(a, b) == 0.0
  assert 0.0 < worst_relative(c, b) < 1e-6
