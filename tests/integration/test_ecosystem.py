"""optadam with Flax (linen TrainState, nnx.Optimizer), optax's wrappers, vmap and Orbax.

Every check is numeric: against plain `optadam.adam`, a hand computation, or the
float64 transcription of the documented update (docs/semantics.md) in `support/reference.py`.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import optadam
from helpers import checkpoint_keys
from optadam import _tree
from reference import reference_adam

# --- models and data -----------------------------------------------------------------------


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.LayerNorm()(nn.Dense(8)(x)))
    return nn.Dense(1)(x)


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(4, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.norm(self.dense(x))))


def batches(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    x = rng.normal(size=(16, 4)).astype(np.float32)
    out.append((x, np.tanh(x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32))))
  return out


def flat(tree):
  """{"/"-joined path: np.ndarray} (the names `exclude_from_weight_decay` sees)."""
  return {_tree.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_trees_equal(a, b):
  chex.assert_trees_all_equal_structs(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_same_numbers(a, b):
  """Equal up to an ulp or two: for the same computation compiled in different contexts.

  XLA on CPU contracts ``a * b + c`` into a fused multiply-add inside a fusion, so the
  same optadam update can round differently inside a user's jit (fused with
  ``apply_updates``) than when called on its own; bitwise checks are kept for runs
  that execute the same program (checkpoint resume, untouched parameters).
  """
  chex.assert_trees_all_equal_structs(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol)


def decayed(x, lr, wd):
  """x after one step with a zero gradient: the Adam step is 0, only lr * wd * x remains.

  The arithmetic optadam does, in float32: u = (0 + wd * x) * (-lr); x + u.
  """
  x = np.asarray(x, np.float32)
  return x + (np.float32(wd) * x) * np.float32(-lr)


LINEN = LinenNet()
LINEN_VARS = LINEN.init(jax.random.key(0), jnp.zeros((1, 4)))
EXCLUDE = ["bias", "LayerNorm"]


def linen_loss(params, x, y):
  return jnp.mean((LINEN.apply({"params": params}, x) - y) ** 2)


# --- Flax linen: TrainState --------------------------------------------------------------


def test_linen_paths_are_matched_by_user_patterns():
  mask = flat(optadam.exclusion_mask(EXCLUDE)(LINEN_VARS))
  assert mask == {
    "params/Dense_0/bias": False,
    "params/Dense_0/kernel": True,
    "params/Dense_1/bias": False,
    "params/Dense_1/kernel": True,
    "params/LayerNorm_0/bias": False,
    "params/LayerNorm_0/scale": False,
  }
  # The usual TrainState holds variables["params"]: the paths lose "params/", same verdicts.
  mask = flat(optadam.exclusion_mask(EXCLUDE)(LINEN_VARS["params"]))
  assert mask == {
    "Dense_0/bias": False,
    "Dense_0/kernel": True,
    "Dense_1/bias": False,
    "Dense_1/kernel": True,
    "LayerNorm_0/bias": False,
    "LayerNorm_0/scale": False,
  }


@pytest.mark.parametrize("whole_variables", [False, True])
def test_linen_trainstate_weight_decay_exclusion_numbers(whole_variables):
  """Zero gradient: excluded leaves do not move; decayed ones move by exactly lr * wd * x."""
  lr, wd = 0.1, 0.05
  params = LINEN_VARS if whole_variables else LINEN_VARS["params"]
  state = train_state.TrainState.create(
    apply_fn=LINEN.apply,
    params=params,
    tx=optadam.adam(lr, weight_decay=wd, exclude_from_weight_decay=EXCLUDE),
  )
  new = state.apply_gradients(grads=jax.tree.map(jnp.zeros_like, params))
  before, after = flat(params), flat(new.params)
  for name, x in before.items():
    if "bias" in name or "LayerNorm" in name:
      np.testing.assert_array_equal(after[name], x, err_msg=name)
    else:
      np.testing.assert_array_equal(after[name], decayed(x, lr, wd), err_msg=name)
      np.testing.assert_allclose(after[name], x * (1 - lr * wd), rtol=1e-6, err_msg=name)
      assert not np.array_equal(after[name], x)


def _linen_train(tx, steps=6):
  """TrainState training; returns (params per step, grads per step, final state)."""
  state = train_state.TrainState.create(apply_fn=LINEN.apply, params=LINEN_VARS["params"], tx=tx)

  @jax.jit
  def step(state, x, y):
    grads = jax.grad(linen_loss)(state.params, x, y)
    return state.apply_gradients(grads=grads), grads

  history, grads = [], []
  for x, y in batches(steps):
    state, g = step(state, x, y)
    history.append(state.params)
    grads.append(g)
  return history, grads, state


def test_linen_trainstate_training_with_ema_matches_spec_and_plain_loop():
  kwargs = dict(learning_rate=1e-2, weight_decay=0.1, amsgrad=True, use_ema=True, ema_momentum=0.8)
  tx = optadam.adam(**kwargs, exclude_from_weight_decay=EXCLUDE)
  history, grads, state = _linen_train(tx)

  # The same gradients through a plain optadam loop: bit for bit.
  params, opt_state = LINEN_VARS["params"], tx.init(LINEN_VARS["params"])
  for g, h in zip(grads, history):
    updates, opt_state = tx.update(g, opt_state, params)
    params = optadam.apply_updates(params, updates)
    assert_same_numbers(params, h)
  assert_same_numbers(opt_state, state.opt_state)

  # And the float64 transcription of the documented update, with Keras-style name exclusion.
  ref_hist, ref_avg = reference_adam(
    flat(LINEN_VARS["params"]),
    [flat(g) for g in grads],
    **kwargs,
    exclude_from_weight_decay=EXCLUDE,
  )
  for h, r in zip(history, ref_hist):
    assert_trees_close(flat(h), r, rtol=2e-5)
  ema = optadam.ema_params(state.opt_state)
  assert_trees_close(flat(ema), ref_avg, rtol=2e-5)

  # Evaluate with the EMA weights (training params untouched), then finalize them in.
  x, y = batches(1, seed=1)[0]
  ema_loss = linen_loss(ema, x, y)
  assert np.isfinite(ema_loss) and ema_loss != linen_loss(state.params, x, y)
  final = state.replace(params=optadam.finalize_variable_values(state.params, state.opt_state))
  assert_trees_equal(final.params, ema)
  assert float(linen_loss(final.params, x, y)) == float(ema_loss)


def test_linen_trainstate_inject_hyperparams_changes_lr_without_recompiling():
  """inject_hyperparams(optadam.adam) inside a TrainState; lr changed between jitted steps."""
  lrs = [1e-2, 1e-2, 5e-3, 2e-2, 1e-3]
  static = ("beta_1", "beta_2", "epsilon", "ema_momentum")  # Python floats, as the plain call
  tx = optax.inject_hyperparams(optadam.adam, static_args=static)(
    learning_rate=lrs[0], weight_decay=0.1, use_ema=True
  )
  state = train_state.TrainState.create(apply_fn=LINEN.apply, params=LINEN_VARS["params"], tx=tx)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, x, y):
    return state.apply_gradients(grads=jax.grad(linen_loss)(state.params, x, y))

  history = []
  for lr, (x, y) in zip(lrs, batches(len(lrs))):
    state.opt_state.hyperparams["learning_rate"] = jnp.asarray(lr)
    state = step(state, x, y)
    history.append(state.params)
  plain, _, plain_state = _linen_train(
    optadam.adam(lambda count: jnp.asarray(lrs)[count], weight_decay=0.1, use_ema=True),
    steps=len(lrs),
  )
  for h, p in zip(history, plain):
    assert_same_numbers(h, p)
  assert_same_numbers(
    optadam.ema_params(state.opt_state), optadam.ema_params(plain_state.opt_state)
  )


def test_orbax_trainstate_checkpoint_resume_bitwise(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  tx = optadam.adam(
    1e-2,
    amsgrad=True,
    weight_decay=0.1,
    use_ema=True,
    ema_overwrite_frequency=3,
    exclude_from_weight_decay=EXCLUDE,
  )
  state = train_state.TrainState.create(apply_fn=LINEN.apply, params=LINEN_VARS["params"], tx=tx)

  @jax.jit
  def step(state, x, y):
    return state.apply_gradients(grads=jax.grad(linen_loss)(state.params, x, y))

  data = batches(6)
  path = str(tmp_path / "ckpt")
  uninterrupted = []
  for i, (x, y) in enumerate(data):
    if i == 3:
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
    state = step(state, x, y)
    uninterrupted.append(state)
  with ocp.StandardCheckpointer() as ckptr:
    keys = checkpoint_keys(ckptr, path)
    assert {
      "step",
      "params/Dense_0/kernel",
      "opt_state/adam/count",
      "opt_state/adam/mu/Dense_0/kernel",
      "opt_state/adam/nu/LayerNorm_0/scale",
      "opt_state/adam/nu_max/Dense_1/bias",
      "opt_state/learning_rate/count",
      "opt_state/ema/count",
      "opt_state/ema/ema/Dense_1/kernel",
    } <= keys, sorted(keys)
    # Restore into the fresh state's structure (a new run's TrainState.create).
    fresh = train_state.TrainState.create(apply_fn=LINEN.apply, params=LINEN_VARS["params"], tx=tx)
    restored = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh))
  assert isinstance(restored.opt_state, optadam.AdamState) and int(restored.step) == 3
  for i, (x, y) in enumerate(data[3:]):
    restored = step(restored, x, y)
    assert_trees_equal(restored.params, uninterrupted[3 + i].params)
    assert_trees_equal(restored.opt_state, uninterrupted[3 + i].opt_state)


# --- Flax nnx: nnx.Optimizer ------------------------------------------------------------------

NNX_EXCLUDE = ["bias", "norm"]  # nnx paths are attribute names: dense/bias, norm/scale, ...


def nnx_loss(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def test_nnx_paths_are_matched_by_user_patterns():
  model = NnxNet(nnx.Rngs(0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))  # what nnx.Optimizer passes to tx.update
  assert flat(optadam.exclusion_mask(NNX_EXCLUDE)(params)) == {
    "dense/bias": False,
    "dense/kernel": True,
    "head/bias": False,
    "head/kernel": True,
    "norm/bias": False,
    "norm/scale": False,
  }


def test_nnx_optimizer_weight_decay_exclusion_numbers():
  lr, wd = 0.1, 0.05
  model = NnxNet(nnx.Rngs(0))
  before = flat(nnx.as_pure(nnx.state(model, nnx.Param)))
  opt = nnx.Optimizer(
    model, optadam.adam(lr, weight_decay=wd, exclude_from_weight_decay=NNX_EXCLUDE), wrt=nnx.Param
  )
  zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  opt.update(model, zeros)
  after = flat(nnx.as_pure(nnx.state(model, nnx.Param)))
  for name, x in before.items():
    if "bias" in name or "norm" in name:
      np.testing.assert_array_equal(after[name], x, err_msg=name)
    else:
      np.testing.assert_array_equal(after[name], decayed(x, lr, wd), err_msg=name)


def test_nnx_optimizer_training_with_ema_matches_plain_loop():
  tx = optadam.adam(
    1e-2,
    weight_decay=0.1,
    use_ema=True,
    ema_momentum=0.8,
    ema_overwrite_frequency=4,
    exclude_from_weight_decay=NNX_EXCLUDE,
  )
  model = NnxNet(nnx.Rngs(0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt, x, y):
    grads = nnx.grad(nnx_loss)(model, x, y)
    opt.update(model, grads)
    return grads

  # The functional equivalent on the pure parameter tree, for comparison.
  opt_state = tx.init(params)
  for x, y in batches(6):
    grads = nnx.as_pure(train_step(model, opt, x, y))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optadam.apply_updates(params, updates)
    assert_same_numbers(nnx.as_pure(nnx.state(model, nnx.Param)), params)
  assert_same_numbers(nnx.as_pure(opt.opt_state), opt_state)

  # Evaluate with the EMA weights on a copy; the training model is untouched.
  trained = nnx.as_pure(nnx.state(model, nnx.Param))
  ema = optadam.ema_params(nnx.as_pure(opt.opt_state))
  assert_same_numbers(ema, optadam.ema_params(opt_state))
  x, y = batches(1, seed=1)[0]
  eval_model = nnx.clone(model)
  nnx.update(eval_model, ema)
  assert_trees_equal(nnx.as_pure(nnx.state(eval_model, nnx.Param)), ema)
  assert_trees_equal(nnx.as_pure(nnx.state(model, nnx.Param)), trained)
  ema_loss = float(nnx_loss(eval_model, x, y))
  # Finalize into the model (Keras's end of fit).
  nnx.update(
    model,
    optadam.finalize_variable_values(
      nnx.as_pure(nnx.state(model, nnx.Param)), nnx.as_pure(opt.opt_state)
    ),
  )
  assert_trees_equal(nnx.as_pure(nnx.state(model, nnx.Param)), ema)
  assert float(nnx_loss(model, x, y)) == ema_loss


# --- optax composition (plain dict parameters) -------------------------------------------------

SHAPES = {"enc": {"w": (3, 4), "b": (4,)}, "head": {"w": (4, 2), "b": (2,)}}


def make_params(seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
    SHAPES,
    is_leaf=lambda s: isinstance(s, tuple),
  )


def make_grads(n, seed=0, dyadic=False):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):

    def one(s):
      g = rng.normal(size=s)
      g = np.round(g * 8) / 8 if dyadic else g  # multiples of 1/8: sums and halves are exact
      return jnp.asarray(g, jnp.float32)

    out.append(jax.tree.map(one, SHAPES, is_leaf=lambda s: isinstance(s, tuple)))
  return out


_STEPS = {}


def _jitted_step(tx):
  """One compiled step per optimizer object (shared by the runs that use it)."""
  if id(tx) not in _STEPS:

    def step(params, state, g):
      updates, state = tx.update(g, state, params)
      return optadam.apply_updates(params, updates), state

    _STEPS[id(tx)] = (tx, jax.jit(step))  # keeps tx alive, so its id is not reused
  return _STEPS[id(tx)][1]


def run(tx, grads, params=None):
  """Params after every step and the final state."""
  params = make_params() if params is None else params
  state = tx.init(params)
  step = _jitted_step(tx)
  history = []
  for g in grads:
    params, state = step(params, state, g)
    history.append(params)
  return history, state


ADAM_KW = dict(learning_rate=1e-2, weight_decay=0.05, amsgrad=True, use_ema=True, ema_momentum=0.9)


def test_chain_with_transforms_before_and_after():
  grads = make_grads(5)
  clip = optax.clip_by_global_norm(0.5)
  # Before: optadam on the clipped gradients, EMA included (optadam.adam stays last).
  chained, chained_state = run(optax.chain(clip, optadam.adam(**ADAM_KW)), grads)
  clipped = [clip.update(g, clip.init(g))[0] for g in grads]
  plain, plain_state = run(optadam.adam(**ADAM_KW), clipped)
  for a, b in zip(chained, plain):
    assert_same_numbers(a, b)
  assert_same_numbers(optadam.ema_params(chained_state), optadam.ema_params(plain_state))

  # After: a transform on optadam's updates (here halving them), checked by hand.
  kw = dict(ADAM_KW, use_ema=False)
  tx = optax.chain(optadam.adam(**kw), optax.scale(0.5))
  inner = optadam.adam(**kw)

  @jax.jit
  def both(params, state, inner_state, g):
    u, state = tx.update(g, state, params)
    u_inner, inner_state = inner.update(g, inner_state, params)
    return u, u_inner, state, inner_state

  params = make_params()
  state, inner_state = tx.init(params), inner.init(params)
  for g in grads:
    u, u_inner, state, inner_state = both(params, state, inner_state, g)
    assert_trees_equal(u, jax.tree.map(lambda v: v * 0.5, u_inner))  # exact: a power of 2
    params = optadam.apply_updates(params, u)


def test_named_chain():
  grads = make_grads(4)
  tx = optax.named_chain(("clip", optax.clip(0.3)), ("adam", optadam.adam(**ADAM_KW)))
  named, state = run(tx, grads)
  plain, plain_state = run(optax.chain(optax.clip(0.3), optadam.adam(**ADAM_KW)), grads)
  for a, b in zip(named, plain):
    assert_same_numbers(a, b)
  assert set(state) == {"clip", "adam"}
  assert isinstance(state["adam"], optadam.AdamState)
  assert_same_numbers(state["adam"], plain_state[1])
  assert_same_numbers(optadam.ema_params(state), optadam.ema_params(plain_state))


@pytest.mark.parametrize("use_ema", [False, True])
def test_multisteps_equals_optadam_on_averaged_gradients(use_ema):
  k = 2
  kw = dict(ADAM_KW, use_ema=use_ema)
  grads = make_grads(3 * k, dyadic=True)
  multi, multi_state = run(optax.MultiSteps(optadam.adam(**kw), every_k_schedule=k), grads)
  averaged = [
    jax.tree.map(lambda *gs: sum(gs) / k, *grads[i : i + k]) for i in range(0, len(grads), k)
  ]
  plain, plain_state = run(optadam.adam(**kw), averaged)
  params0 = make_params()
  for i, h in enumerate(multi):
    if (i + 1) % k:  # accumulation steps leave the params alone
      assert_same_numbers(h, params0 if i < k else plain[i // k - 1])
    else:
      assert_same_numbers(h, plain[i // k])
  assert_same_numbers(multi_state.inner_opt_state, plain_state)
  if use_ema:
    assert_same_numbers(optadam.ema_params(multi_state), optadam.ema_params(plain_state))


def test_apply_if_finite_skips_nan_step():
  grads = make_grads(5)
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads[2])
  tx = optax.apply_if_finite(optadam.adam(**ADAM_KW), max_consecutive_errors=3)
  params = make_params()
  state = tx.init(params)
  step = jax.jit(
    lambda p, s, g: (lambda u, s: (optadam.apply_updates(p, u), s))(*tx.update(g, s, p))
  )
  history = []
  for i, g in enumerate(grads[:2] + [bad] + grads[2:]):
    before_params, before_state = params, state
    params, state = step(params, state, g)
    if i == 2:
      assert_trees_equal(params, before_params)
      assert_trees_equal(state.inner_state, before_state.inner_state)
      assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
    else:
      history.append(params)
  plain, plain_state = run(optadam.adam(**ADAM_KW), grads)
  for a, b in zip(history, plain):
    assert_same_numbers(a, b)
  assert_same_numbers(state.inner_state, plain_state)


def test_partition_frozen_layers_do_not_move_and_hold_no_state():
  grads = make_grads(4)
  labels = {"enc": {"w": "frozen", "b": "frozen"}, "head": {"w": "train", "b": "train"}}
  tx = optax.partition({"train": optadam.adam(**ADAM_KW), "frozen": optax.set_to_zero()}, labels)
  history, state = run(tx, grads)
  params0 = make_params()
  for h in history:
    assert_trees_equal(h["enc"], params0["enc"])
  # The trainable part equals optadam on that sub-tree alone.
  plain, plain_state = run(
    optadam.adam(**ADAM_KW), [{"head": g["head"]} for g in grads], params={"head": params0["head"]}
  )
  for h, p in zip(history, plain):
    assert_same_numbers(h["head"], p["head"])
  inner = state.inner_states["train"].inner_state
  for tree in (inner.adam.mu, inner.adam.nu, inner.adam.nu_max, inner.ema.ema):
    assert isinstance(tree["enc"]["w"], optax.MaskedNode)  # no moments for frozen layers
    assert tree["head"]["w"].shape == (4, 2) and tree["head"]["b"].shape == (2,)
  assert_same_numbers(inner.adam.mu["head"], plain_state.adam.mu["head"])
  # EMA helpers: the frozen layers keep their values.
  final = optadam.finalize_variable_values(history[-1], state)
  assert_trees_equal(final["enc"], params0["enc"])
  assert_same_numbers(final["head"], optadam.ema_params(plain_state)["head"])


def test_masked_passes_other_leaves_through():
  grads = make_grads(3)
  mask = {"enc": {"w": True, "b": False}, "head": {"w": True, "b": False}}
  tx = optax.masked(optadam.adam(**ADAM_KW), mask)
  params = make_params()
  state = tx.init(params)
  assert isinstance(state.inner_state.adam.mu["enc"]["b"], optax.MaskedNode)
  only_w = lambda t: {k: {"w": v["w"]} for k, v in t.items()}
  plain = optadam.adam(**ADAM_KW)
  plain_params, plain_state = only_w(params), plain.init(only_w(params))
  for g in grads:
    updates, state = tx.update(g, state, params)
    plain_updates, plain_state = plain.update(only_w(g), plain_state, plain_params)
    for k in SHAPES:  # optax.masked semantics: masked-out leaves get the raw gradient
      np.testing.assert_array_equal(updates[k]["b"], g[k]["b"])
      np.testing.assert_array_equal(updates[k]["w"], plain_updates[k]["w"])
    params = optadam.apply_updates(params, updates)
    plain_params = optadam.apply_updates(plain_params, plain_updates)


def test_tree_map_params_over_adam_state():
  tx = optadam.adam(**ADAM_KW)
  params = make_params()
  state = tx.init(params)
  # E.g. cast every parameter-shaped part (mu, nu, nu_max, EMA) to bfloat16; counts untouched.
  cast = optax.tree_map_params(tx, lambda p: p.astype(jnp.bfloat16), state)
  for tree in (cast.adam.mu, cast.adam.nu, cast.adam.nu_max, cast.ema.ema):
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(tree))
  assert cast.adam.count.dtype == jnp.int32
  # Shapes as a PartitionSpec-like tree, non-params replaced.
  shapes = optax.tree_map_params(
    tx,
    lambda p: p.shape,
    state,
    transform_non_params=lambda _: "scalar",
    is_leaf=lambda x: isinstance(x, jax.Array),
  )
  assert shapes.adam.mu["enc"]["w"] == (3, 4) and shapes.ema.ema["head"]["b"] == (2,)
  assert shapes.adam.count == "scalar" and shapes.learning_rate.count == "scalar"


def test_vmap_over_independent_problems():
  batch = 3
  tx = optadam.adam(**ADAM_KW)
  params = [make_params(seed=s) for s in range(batch)]
  grads = [make_grads(4, seed=10 + s) for s in range(batch)]
  stacked_params = jax.tree.map(lambda *x: jnp.stack(x), *params)
  state = jax.vmap(tx.init)(stacked_params)

  @jax.jit
  @jax.vmap
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optadam.apply_updates(p, u), s

  for t in range(4):
    stacked_params, state = step(
      stacked_params, state, jax.tree.map(lambda *x: jnp.stack(x), *[g[t] for g in grads])
    )
  for b in range(batch):
    single, single_state = run(tx, grads[b], params=params[b])
    assert_trees_close(jax.tree.map(lambda x: x[b], stacked_params), single[-1], rtol=1e-6)  # noqa: B023
    assert_trees_close(
      jax.tree.map(lambda x: x[b], optadam.ema_params(state)),  # noqa: B023
      optadam.ema_params(single_state),
      rtol=1e-6,
    )


def test_zero_arg_callable_lr_in_trainstate():
  """A host-callback learning rate works in a jitted TrainState step (and changes apply)."""
  current = [1e-2]
  tx = optadam.adam(lambda: current[0], weight_decay=0.1)
  state = train_state.TrainState.create(apply_fn=LINEN.apply, params=LINEN_VARS["params"], tx=tx)
  step = jax.jit(lambda s, x, y: s.apply_gradients(grads=jax.grad(linen_loss)(s.params, x, y)))
  lrs = [1e-2, 3e-3, 3e-2]
  history = []
  for lr, (x, y) in zip(lrs, batches(3)):
    current[0] = lr
    state = step(state, x, y)
    history.append(state.params)
  plain, _, _ = _linen_train(
    optadam.adam(lambda count: jnp.asarray(lrs)[count], weight_decay=0.1), steps=3
  )
  for a, b in zip(history, plain):
    assert_same_numbers(a, b)
