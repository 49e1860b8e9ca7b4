"""The targets of issue 8, checked against a run of `benchmarks.step` (one table row each)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from benchmarks import harness
from benchmarks.step_peers import COMPILE_IMPLS, IMPLS, roofline
from benchmarks.trees import case_label

Row = list[str]


def _verdict(ok: bool | None, near: bool = False) -> str:
  if ok is None:
    return "–"
  return "met" if ok else ("≈ within ±5% run-to-run noise" if near else "**missed**")


def _hlo_bytes(hlo: dict[str, Any], name: str) -> int | None:
  """Full-size bytes per parameter that `name`'s step moves, by its optimized HLO."""
  if name not in hlo:
    return None
  st = next(iter(hlo[name]["per_leaf"].values()))
  return 4 * (st["reads"] + st["writes"])


def _defaults(cases: list[Any], hlo: dict[str, Any]) -> list[Row]:
  """1. default optadam <= 1.0x optax.adam everywhere."""
  vals = []
  for c in cases:
    t = c["times"]
    if "optadam.adam" in t and "optax.adam" in t:
      m, _, _ = harness.paired_ratios(t["optadam.adam"], t["optax.adam"])
      vals.append((case_label(c["tree"]), m, min(t["optadam.adam"]) / min(t["optax.adam"])))
  if not vals:
    return []
  worst = max(v[1] for v in vals)
  mine = _hlo_bytes(hlo, "optadam.adam")
  same = mine is not None and mine == _hlo_bytes(hlo, "optax.adam")
  return [
    [
      "default `optadam.adam` ≤ 1.0× `optax.adam` (every case)",
      ", ".join(f"{x[0]}: {x[1]:.2f} ({x[2]:.2f})" for x in vals)
      + ("; identical per-leaf kernels and traffic in the HLO" if same else ""),
      _verdict(worst <= 1.0, worst <= 1.05),
    ]
  ]


def _roofline(cases: list[Any], hlo: dict[str, Any]) -> list[Row]:
  """2. >= 0.9 of triad roofline at >= 1e7."""
  vals = []
  for c in cases:
    if c["n_params"] >= 1e7 and c["tree"].startswith("leaf:") and "optadam.adam" in c["times"]:
      triad, inplace = roofline(c)
      if triad:
        t = statistics.median(c["times"]["optadam.adam"])
        n, b = c["n_params"], _hlo_bytes(hlo, "optadam.adam") or 28
        vals.append((case_label(c["tree"]), 28 * n / t / 1e9 / triad, b * n / t / 1e9 / inplace))
  if not vals:
    return []
  return [
    [
      "`optadam.adam` ≥ 0.9 of the triad roofline at ≥ 1e7 params (28 B/param)",
      ", ".join(f"{v[0]}: {v[1]:.2f}" for v in vals)
      + f"; XLA:CPU moves {_hlo_bytes(hlo, 'optadam.adam')} B/param (HLO), at "
      + ", ".join(f"{v[2]:.2f}" for v in vals)
      + " of the in-place roofline",
      _verdict(min(v[1] for v in vals) >= 0.9),
    ]
  ]


def _traffic_note(hlo: dict[str, Any], name: str) -> str:
  """HLO traffic of `name` (and of its matched optax chain) over optax.adam's."""
  mine, base_bytes = _hlo_bytes(hlo, name), _hlo_bytes(hlo, "optax.adam")
  if not (mine and base_bytes):
    return ""
  note = f"; HLO traffic {mine}/{base_bytes} = {mine / base_bytes:.2f}"
  base = IMPLS[name][2]
  if base and base != "optax.adam" and _hlo_bytes(hlo, base):
    note += f" ({base}: {_hlo_bytes(hlo, base) / base_bytes:.2f})"
  return note


def _extras(cases: list[Any], hlo: dict[str, Any]) -> list[Row]:
  """3. AMSGrad / EMA <= 1.3x optax.adam."""
  rows = []
  for name in ("optadam amsgrad", "optadam ema", "optadam ema+overwrite"):
    vals = [
      (case_label(c["tree"]), harness.paired_ratios(c["times"][name], c["times"]["optax.adam"])[0])
      for c in cases
      if name in c["times"] and "optax.adam" in c["times"] and c["n_params"] >= 1e6
    ]
    if vals:
      worst = max(v[1] for v in vals)
      rows.append(
        [
          f"`{name}` ≤ 1.3× `optax.adam` (≥ 1e6 params)",
          ", ".join(f"{v[0]}: {v[1]:.2f}" for v in vals) + _traffic_note(hlo, name),
          _verdict(worst <= 1.3, worst <= 1.3 * 1.05),
        ]
      )
  return rows


def _compile(comp: list[Any]) -> list[Row]:
  """4. compile all-on <= 1.2x optax.adam at 2000 leaves."""
  rows = []
  for tree in sorted({r["tree"] for r in comp}):
    tot = {
      n: statistics.median(
        [r["total_s"] for r in comp if r["tree"] == tree and r["impl"] == n] or [float("nan")]
      )
      for n in COMPILE_IMPLS
    }
    if math.isnan(tot["optadam all-on"]) or math.isnan(tot["optax.adam"]):
      continue
    ratio = tot["optadam all-on"] / tot["optax.adam"]
    extra = (
      f"; optax's own chain with clipping, AMSGrad and weight decay: "
      f"{tot['optax all-on'] / tot['optax.adam']:.2f}"
      if not math.isnan(tot["optax all-on"])
      else ""
    )
    if not math.isnan(tot["optadam.adam"]):
      extra += f"; `optadam.adam` defaults: {tot['optadam.adam'] / tot['optax.adam']:.2f}"
    rows.append(
      [
        f"compile `optadam all-on` ≤ 1.2× `optax.adam` ({tree})",
        f"{tot['optadam all-on']:.1f} s / {tot['optax.adam']:.1f} s = {ratio:.2f}" + extra,
        _verdict(ratio <= 1.2),
      ]
    )
  return rows


def _torch(cases: list[Any], hlo: dict[str, Any]) -> list[Row]:
  """5. within 1.3x of torch fused at >= 1e7."""
  vals = [
    (
      case_label(c["tree"]),
      harness.paired_ratios(c["times"]["optadam.adam"], c["times"]["torch fused"])[0],
    )
    for c in cases
    if c["n_params"] >= 1e7 and "optadam.adam" in c["times"] and "torch fused" in c["times"]
  ]
  if not vals:
    return []
  return [
    [
      "`optadam.adam` ≤ 1.3× `torch fused` at ≥ 1e7 params",
      ", ".join(f"{v[0]}: {v[1]:.2f}" for v in vals)
      + f"; traffic {_hlo_bytes(hlo, 'optadam.adam')} B/param (XLA:CPU) vs 28 (one fused pass)",
      _verdict(max(v[1] for v in vals) <= 1.3),
    ]
  ]


def targets(results: dict[str, Any]) -> list[str]:
  """The targets of issue 8, checked against this run (medians of per-round ratios)."""
  cases = [c for c in results["cases"] if c]
  hlo = results.get("hlo") or {}
  comp = [r for r in results.get("compile", []) if r]
  rows = (
    _defaults(cases, hlo)
    + _roofline(cases, hlo)
    + _extras(cases, hlo)
    + _compile(comp)
    + _torch(cases, hlo)
  )
  return [harness.md_table(["target", "measured", "verdict"], rows)]
