"""Guards on the compiled train step of `optadam.adam` (issue 8): passes over memory, copies.

An Adam step is memory-bound, so its cost is the number of times it streams the
full-size arrays (params, grads, m, v, v_hat, the parameter average) through
memory. These tests compile the donated train step

    step(params, opt_state, grads) -> (params, opt_state),  jax.jit(donate_argnums=(0, 1))

on a 3-leaf tree and read XLA's *optimized* HLO (``compiled.as_text()``). Each
ENTRY instruction other than parameters, constants, tuples, get-tuple-element and
bitcast is one kernel (a loop fusion, a reduction, a copy). For every leaf we
count, by the leaf's dimensions (the three leaves have distinct shapes, so names
of ops and fusions do not matter):

  kernels  ENTRY instructions that read or write an array of the leaf's shape
  writes   full-size arrays those kernels write
  reads    full-size operands those kernels read

XLA:CPU does not form multi-output loop fusions by default, so the least it can
do is one kernel per full-size output (params, m, v [, v_hat] [, average]), each
reading its inputs, plus one reduction per leaf for ``clipnorm`` (the only extra
read allowed). The established numbers (jaxlib 0.10, identical to optax's for the
same options) are asserted as upper bounds, and optadam is also compared live
against the matching optax transformation, so that a change that adds a pass
(a full-size temporary, a second read of u or p, a copy) fails here, while a
better XLA (fewer kernels) does not.

Memory: with donation and outputs in input order, XLA updates every buffer in
place: the compiled step's temporaries must be tiny, every full-size output must
alias a donated input, no full-size ``copy`` may appear, and the step's peak
(arguments + outputs - aliased + temporaries) must stay within 5% of
params + grads + optimizer state.

CPU only: other backends fuse differently (GPU forms multi-output fusions).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optadam
from benchmarks.hlo import leaf_traffic


@pytest.fixture(autouse=True)
def _on_cpu():
  """The counts are established for XLA:CPU: compile there on any machine."""
  with jax.default_device(jax.devices("cpu")[0]):
    yield


SHAPES = {"a": (256, 512), "b": (65536,), "c": (32, 32, 24)}  # distinct: a shape names its leaf


def compile_step(tx: Any, dtype: Any = jnp.float32):
  """The donated train step of `tx`, compiled, and the byte sizes of its inputs."""
  params = {k: jnp.full(s, 0.5, dtype) for k, s in SHAPES.items()}
  grads = {k: jnp.full(s, 0.25, dtype) for k, s in SHAPES.items()}
  state = tx.init(params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optadam.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  return compiled, {"params": nbytes(params), "grads": nbytes(grads), "state": nbytes(state)}


def traffic(tx: Any, dtype: Any = jnp.float32) -> dict[str, dict[str, Any]]:
  compiled, _ = compile_step(tx, dtype)
  text = compiled.as_text()
  return {k: leaf_traffic(text, s) for k, s in SHAPES.items()}


# optadam.adam kwargs -> (kernels, writes, reads) per leaf, upper bounds (jaxlib 0.10, XLA:CPU).
# writes = the full-size outputs (p, m, v [, v_hat] [, average]): no full-size temporary;
# kernels = writes (+1 norm reduction with clipnorm / global_clipnorm: its one extra read).
ESTABLISHED = {
  "defaults": ({}, (3, 3, 7)),  # m: m,g | v: v,g | p: p,m,v  (= optax.adam)
  "amsgrad": ({"amsgrad": True}, (4, 4, 9)),  # + v_hat: v_hat,v; p reads v_hat not v
  "weight_decay": ({"weight_decay": 0.004}, (3, 3, 7)),  # decay fused into the p kernel
  "clipnorm": ({"clipnorm": 1.0}, (4, 3, 8)),  # + norm reduction: one read of g
  "global_clipnorm": ({"global_clipnorm": 1.0}, (4, 3, 8)),
  "clipvalue": ({"clipvalue": 1.0}, (3, 3, 7)),  # clipping fused into m and v
  "use_ema": ({"use_ema": True}, (4, 4, 9)),  # + average: average, p_new
  "all_on": (
    {"amsgrad": True, "weight_decay": 0.004, "clipnorm": 1.0, "use_ema": True},
    (6, 5, 12),
  ),
  "wd_exclude": ({"weight_decay": 0.004, "exclude_from_weight_decay": ["b"]}, (3, 3, 7)),
  "schedule": ({"learning_rate": optax.cosine_decay_schedule(1e-3, 1000)}, (3, 3, 7)),
  # The overwrite select costs one more read in the p kernel (the old average), nothing
  # else: the stored average is formed from the parameter output, so neither the Adam step
  # u nor the pre-overwrite average is materialised (it was: 6 kernels, 14 reads and a
  # param-sized temporary, allocated at every step).
  "ema_overwrite": ({"use_ema": True, "ema_overwrite_frequency": 100}, (4, 4, 10)),
  "all_on_overwrite": (
    {
      "amsgrad": True,
      "weight_decay": 0.004,
      "clipnorm": 1.0,
      "use_ema": True,
      "ema_overwrite_frequency": 100,
    },
    (6, 5, 13),
  ),
}


def _check(per_leaf: dict[str, dict[str, Any]], bound: tuple[int, int, int]) -> None:
  kernels, writes, reads = bound
  for leaf, st in per_leaf.items():
    got = (st["kernels"], st["writes"], st["reads"])
    assert st["copies"] == 0, f"leaf {leaf}: full-size copy in the step: {st['ops']}"
    assert got[0] <= kernels and got[1] <= writes and got[2] <= reads, (
      f"leaf {leaf}{SHAPES[leaf]}: (kernels, writes, reads) = {got}, established {bound}: "
      f"a change added a pass over full-size arrays: {st['ops']}"
    )


@pytest.mark.parametrize("config", sorted(ESTABLISHED))
def test_passes_per_leaf(config):
  kwargs, bound = ESTABLISHED[config]
  _check(traffic(optadam.adam(**kwargs)), bound)


@pytest.mark.parametrize(
  "ours,theirs",
  [
    (lambda: optadam.adam(1e-3), lambda: optax.adam(1e-3)),
    (lambda: optadam.adam(1e-3, amsgrad=True), lambda: optax.amsgrad(1e-3)),
    (lambda: optadam.adam(1e-3, weight_decay=0.004), lambda: optax.adamw(1e-3, weight_decay=0.004)),
    (
      lambda: optadam.adam(1e-3, clipnorm=1.0),
      lambda: optax.chain(optax.clip_by_block_rms(1.0), optax.adam(1e-3)),
    ),
  ],
  ids=["adam", "amsgrad", "adamw", "clip"],
)
def test_no_more_traffic_than_optax(ours, theirs):
  mine, ref = traffic(ours()), traffic(theirs())
  for leaf in SHAPES:
    for key in ("kernels", "writes", "reads"):
      assert mine[leaf][key] <= ref[leaf][key], (leaf, key, mine[leaf]["ops"], ref[leaf]["ops"])


def test_bfloat16_params_with_float32_moments():
  """mu_dtype / nu_dtype casts fuse: still one kernel per output, no temporaries."""
  _check(traffic(optadam.adam(mu_dtype=jnp.float32, nu_dtype=jnp.float32), jnp.bfloat16), (3, 3, 7))


def _memory_checks(tx: Any, dtype: Any = jnp.float32) -> None:
  compiled, size = compile_step(tx, dtype)
  ma = compiled.memory_analysis()
  assert ma is not None, "XLA:CPU gives a memory analysis"
  live = size["params"] + size["grads"] + size["state"]
  # every full-size output is written into a donated input buffer (scalars may not be)
  assert ma.output_size_in_bytes - ma.alias_size_in_bytes <= 1024, ma
  # no full-size temporary
  assert ma.temp_size_in_bytes <= 0.01 * size["params"], ma
  peak = (
    ma.argument_size_in_bytes
    + ma.output_size_in_bytes
    - ma.alias_size_in_bytes
    + ma.temp_size_in_bytes
  )
  assert peak <= 1.05 * live, (peak, live, ma)
  text = compiled.as_text()
  for leaf, dims in SHAPES.items():
    assert leaf_traffic(text, dims)["copies"] == 0, f"full-size copy of leaf {leaf}"


@pytest.mark.parametrize(
  "config",
  ["defaults", "amsgrad", "clipnorm", "use_ema", "all_on", "ema_overwrite", "all_on_overwrite"],
)
def test_donated_step_updates_in_place(config):
  _memory_checks(optadam.adam(**ESTABLISHED[config][0]))


def test_donated_step_updates_in_place_float32_average_of_bfloat16():
  """A float32 average of bfloat16 parameters reads the stored parameters, not the old p."""
  _memory_checks(optadam.adam(use_ema=True, ema_dtype=jnp.float32), jnp.bfloat16)


def test_mismatched_donation_is_detected():
  """The checks see the copies of the anti-pattern (donated inputs in another order)."""
  tx = optax.adam(1e-3)
  params = {k: jnp.full(s, 0.5) for k, s in SHAPES.items()}
  state = tx.init(params)

  def step(s, p, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(state, params, params).compile()
  text = compiled.as_text()
  copies = sum(leaf_traffic(text, d)["copies"] for d in SHAPES.values())
  assert copies > 0, "the mismatched donation order copies buffers (else update this test)"
  assert compiled.memory_analysis().temp_size_in_bytes > 0.5 * sum(
    4 * math.prod(s) for s in SHAPES.values()
  )
