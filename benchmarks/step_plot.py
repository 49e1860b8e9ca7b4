"""step_time.png of `benchmarks.step`: step time against size on one leaf (matplotlib)."""

from __future__ import annotations

from statistics import median
from typing import Any

from benchmarks import harness
from benchmarks.step_peers import PLOT_IMPLS, roofline


def _draw_impls(ax: Any, cases: list[Any]) -> None:
  """Median step time with its min–max range, one line per implementation."""
  for name in PLOT_IMPLS:
    pts = [
      (c["n_params"], median(c["times"][name]), min(c["times"][name]), max(c["times"][name]))
      for c in cases
      if name in c["times"]
    ]
    if pts:
      xs, ys, lo, hi = zip(*pts)
      style = "-o" if name.startswith("optadam") else ("--s" if name.startswith("optax") else ":^")
      ax.errorbar(
        xs,
        [y * 1e3 for y in ys],
        yerr=[[(y - l) * 1e3 for y, l in zip(ys, lo)], [(h - y) * 1e3 for y, h in zip(ys, hi)]],
        fmt=style,
        label=name,
        capsize=2,
        ms=4,
        lw=1.2,
      )


def _draw_roofline(ax: Any, cases: list[Any]) -> None:
  """28 bytes per parameter at each case's triad bandwidth."""
  roof = [(c["n_params"], roofline(c)[0]) for c in cases]
  roof = [(n, r) for n, r in roof if r]
  if roof:
    xs = [n for n, _ in roof]
    ax.plot(
      xs,
      [28 * n / (r * 1e9) * 1e3 for n, r in roof],
      "k-",
      lw=2,
      alpha=0.35,
      label="28 B/param at triad roofline",
    )


def plot(results: dict[str, Any], path: str) -> bool:
  """Writes the plot of the one-leaf cases to `path`; False without matplotlib or such cases."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    harness.log("matplotlib not installed: no plot")
    return False
  cases = sorted(
    [c for c in results["cases"] if c and c["tree"].startswith("leaf:")],
    key=lambda c: c["n_params"],
  )
  if not cases:
    return False
  fig, ax = plt.subplots(figsize=(7.5, 5.2))
  _draw_impls(ax, cases)
  _draw_roofline(ax, cases)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("parameters (one float32 leaf)")
  ax.set_ylabel("step time (ms), median and min–max")
  ax.set_title(
    f"One Adam step, {results['machine'].get('cpu', 'CPU')[:40]}, "
    f"{results['machine']['cpus']} cores"
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True
