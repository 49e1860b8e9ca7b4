"""Checks on a Keras 2 Adam golden run: the json's "observations", and ``--compare-modes``."""

from __future__ import annotations

import re
import sys

import numpy as np

from golden_run import run_scenario
from golden_scenarios import Scenario


def _prev(arrays, s, i):
  return arrays[f"param_{s - 1}_{i}"] if s > 0 else arrays[f"param_{i}_init"]


def _ulp(a: np.ndarray, dtype: str) -> np.ndarray:
  """One unit in the last place of |a| in the scenario's parameter dtype (as float64)."""
  a = np.abs(np.asarray(a, dtype=np.float64))
  if dtype == "bfloat16":
    return np.spacing(a.astype(np.float32)).astype(np.float64) * 2.0**16
  return np.spacing(a.astype(dtype)).astype(np.float64)


def _update_sizes(sc: Scenario, arrays: dict, lr) -> dict:
  """16-bit parameters: did they move, and by how much relative to the learning rate."""
  n, count = sc.steps, len(sc.params)
  obs = {}
  obs["params_moved_at_all"] = [
    bool(np.any(arrays[f"param_{n - 1}_{i}"] != arrays[f"param_{i}_init"])) for i in range(count)
  ]
  if lr:
    obs["max_abs_update_over_lr_per_step"] = [
      round(
        max(
          float(np.max(np.abs(arrays[f"param_{s}_{i}"].astype(np.float64) - _prev(arrays, s, i))))
          for i in range(count)
        )
        / lr,
        3,
      )
      for s in range(n)
    ]
    d0 = [
      np.abs(arrays[f"param_0_{i}"].astype(np.float64) - arrays[f"param_{i}_init"])
      for i in range(count)
    ]
    obs["elements_with_update_over_10lr_at_step0"] = [int((d > 10 * lr).sum()) for d in d0]
  return obs


def _constants(dtype: str) -> dict:
  """Adam's default constants as TF casts them to the parameter dtype."""
  import tensorflow as tf

  consts = [0.9, 0.999, 1e-7, 1 - 0.9, 1 - 0.999, 0.001, 0.01]
  cast = tf.cast(tf.constant(consts, tf.float64), getattr(tf, dtype)).numpy()
  names = ["beta_1", "beta_2", "epsilon", "1-beta_1", "1-beta_2", "lr_0.001", "lr_0.01"]
  return {name: float(c) for name, c in zip(names, cast)}


def _none_steps(sc: Scenario, arrays: dict, meta: dict) -> dict:
  """Parameters with None gradients: unchanged on those steps; their first update's size."""
  obs = {}
  names = [p for p, _ in sc.params]
  lr0 = meta["config"]["learning_rate"]
  for name, steps in meta["none_grad_steps"].items():
    i = names.index(name)
    obs[f"{name}: bit-identical to previous value on each None step"] = [
      bool(np.array_equal(_prev(arrays, s, i), arrays[f"param_{s}_{i}"])) for s in steps
    ]
    # first real update of a parameter whose gradient is None on step 0
    if 0 in steps and isinstance(lr0, float):
      first = next(s for s in range(sc.steps) if s not in steps)
      d = np.abs(arrays[f"param_{first}_{i}"].astype(np.float64) - _prev(arrays, first, i))
      obs[f"{name}: first update at step {first} (t={first + 1}), max |dparam|/lr"] = round(
        float(d.max()) / lr0, 4
      )
  return obs


def _sparse(sc: Scenario, arrays: dict) -> dict:
  """The embedding: which rows move, and how far it is from the same run with dense grads."""
  n, obs = sc.steps, {}
  emb_init = arrays["param_0_init"]
  obs["never_touched_rows_moved"] = [
    bool(np.any(arrays[f"param_{n - 1}_0"][r] != emb_init[r])) for r in (0, 5, 9)
  ]
  seen, moved_without_grad, total = set(), 0, 0
  for s in range(n):
    idx = set(arrays[f"grad_{s}_0_indices"].tolist())
    for r in sorted(seen - idx):
      total += 1
      moved_without_grad += bool(np.any(arrays[f"param_{s}_0"][r] != _prev(arrays, s, 0)[r]))
    seen |= idx
  obs["rows_with_earlier_grad_but_none_this_step_that_moved"] = (
    f"{moved_without_grad} of {total} (row, step) pairs"
  )
  dense, _ = run_scenario(sc, densify=True)
  worst = 0.0
  for s in range(n):
    a, b = arrays[f"param_{s}_0"], dense[f"param_{s}_0"]
    worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b) / _ulp(a, sc.dtype))))
  obs[
    "embedding vs same run with tf.convert_to_tensor(IndexedSlices) dense grads: max ulp difference"
  ] = worst
  return obs


def _ema(sc: Scenario, arrays: dict, meta: dict) -> dict:
  """EMA: the overwrite steps, and whether the final average follows the EMA recurrence."""
  n = sc.steps
  freq = meta["config"]["ema_overwrite_frequency"]
  over = [s for s in range(n) if freq and (s + 1) % freq == 0]
  # with EMA momentum mu, between overwrites avg_s = mu*avg_{s-1} + (1-mu)*param_s, and
  # on an overwrite step param_s == avg_s; check that against the final average
  mu = meta["config"]["ema_momentum"]
  ok = True
  for i, (name, _) in enumerate(sc.params):
    avg = arrays[f"param_{i}_init"].astype(np.float64)
    for s in range(n):
      if s in sc.none_steps.get(name, ()):
        continue
      if s in over:
        avg = arrays[f"param_{s}_{i}"].astype(np.float64)
      else:
        avg = mu * avg + (1 - mu) * arrays[f"param_{s}_{i}"]
    ok &= bool(np.allclose(avg, arrays[f"final_{i}"], rtol=1e-4, atol=1e-6))
  return {"overwrite_steps_0based": over, "final_average_consistent_with_that_recurrence": ok}


def observe(sc: Scenario, arrays: dict, meta: dict) -> dict:
  """Scenario-specific notes (numbers) recorded into the json's "observations"."""
  obs = {}
  if sc.dtype in ("float16", "bfloat16"):
    lr0 = meta["config"]["learning_rate"]
    obs.update(_update_sizes(sc, arrays, lr0 if isinstance(lr0, float) else None))
    obs["constants_in_param_dtype"] = _constants(sc.dtype)
  if sc.none_steps:
    obs.update(_none_steps(sc, arrays, meta))
  if sc.grads.inf_at is not None:
    obs["nan_count_per_step_per_param"] = [
      [int(np.isnan(arrays[f"param_{s}_{i}"]).sum()) for i in range(len(sc.params))]
      for s in range(sc.steps)
    ]
  if sc.grads.sparse:
    obs.update(_sparse(sc, arrays))
  if sc.kwargs.get("use_ema"):
    obs.update(_ema(sc, arrays, meta))
  return obs


def _differences(sc: Scenario, ref: dict, other: dict) -> tuple[int, float, int | None]:
  """(arrays differing, max difference in ulp, first step whose parameters differ)."""
  worst, nd, first = 0.0, 0, None
  for k, a in ref.items():
    b = other[k]
    if a.dtype.kind != "f":
      nd += int(not np.array_equal(a, b))
      continue
    ok = (a == b) | (np.isnan(a) & np.isnan(b))
    if not ok.all():
      nd += 1
      dt = "float32" if k.startswith("lr_") else sc.dtype
      d = np.abs(a.astype(np.float64) - b) / _ulp(a, dt)
      worst = max(worst, float(np.nanmax(np.where(ok, 0, d))))
      m = re.match(r"param_(\d+)_\d+$", k)
      if m and (first is None or int(m.group(1)) < first):
        first = int(m.group(1))
  return nd, worst, first


def compare_modes(scenarios: list) -> None:
  """Run scenarios eagerly, in tf.function and with forced XLA; print the differences.

  Differences are in ulp of the parameter dtype at the tf.function value, over all stored
  float arrays (params, optimizer variables, lr).
  """
  for sc in scenarios:
    ref, _ = run_scenario(sc, "function")
    for mode in ("eager", "xla"):
      try:
        other, _ = run_scenario(sc, mode)
      except Exception as e:  # pragma: no cover - diagnostic only
        print(f"{sc.name:36s} {mode:6s} ERROR {type(e).__name__}: {str(e)[:100]}")
        continue
      nd, worst, first = _differences(sc, ref, other)
      print(
        f"{sc.name:36s} {mode:6s} arrays differing: {nd:4d}/{len(ref)}  "
        f"max {worst:7.1f} ulp  first differing step: {first}"
      )
    sys.stdout.flush()
