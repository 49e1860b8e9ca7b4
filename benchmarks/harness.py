"""What every benchmark here shares: timing, memory, child processes and results files.

Standard library only, so that a process that must not load jaxlib (the PyTorch side of
`benchmarks.step`) can use it too. Nothing here decides what is measured: the benchmarks
pass their own step functions, warm-up and repeat counts.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))  # benchmarks/
ROOT = os.path.dirname(HERE)  # the repository (children run from here)

# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """``fn(*args)`` and the wall seconds it took (`time.perf_counter`)."""
  t0 = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t0


def seconds_per_call(fn: Callable[[], Any], n: int, sync: Callable[[], Any]) -> float:
  """Calls ``fn()`` `n` times then ``sync()`` once (waits for the work): seconds per call."""
  t0 = time.perf_counter()
  for _ in range(n):
    fn()
  sync()
  return (time.perf_counter() - t0) / n


def interleaved_rounds(
  timers: dict[str, Callable[[], float]], rounds: int
) -> dict[str, list[float]]:
  """`rounds` rounds, each calling every timer once in order: each timer's results by name.

  Interleaving puts the implementations side by side in time, so that the machine's
  drift (other load, frequency, page cache) hits them all alike.
  """
  times: dict[str, list[float]] = {name: [] for name in timers}
  for _ in range(rounds):
    for name, timer in timers.items():
      times[name].append(timer())
  return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
  """The median of each list."""
  return {name: statistics.median(ts) for name, ts in times.items()}


def paired_ratios(a: list[float], b: list[float]) -> tuple[float, float, float]:
  """Median, min and max over rounds of ``a[r] / b[r]`` (two timings taken side by side)."""
  rs = [x / y for x, y in zip(a, b)]
  return statistics.median(rs), min(rs), max(rs)


def train_step(tx: Any, apply_updates: Callable[[Any, Any], Any]) -> Callable[..., Any]:
  """``step(params, opt_state, grads) -> (params, opt_state)`` of an optax transformation.

  The outputs are in the order of the inputs: under ``jax.jit(step, donate_argnums=(0, 1))``
  XLA then writes every output into its donated input's buffer.
  """

  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return apply_updates(params, updates), opt_state

  return step


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def proc_status_kb(field: str) -> int:
  """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), -1 if absent (Linux)."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return -1


def reset_peak_rss() -> bool:
  """Resets VmHWM (the peak resident set) to the current RSS; False where that is not possible."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss() -> int:
  """This process's peak RSS in bytes: VmHWM (Linux), else ru_maxrss.

  ru_maxrss survives ``exec`` on Linux (a child would report its parent's peak, where that
  is larger); VmHWM belongs to the new address space.
  """
  try:
    kb = proc_status_kb("VmHWM")
  except OSError:
    kb = -1
  if kb >= 0:
    return kb * 1024
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def xla_memory(compiled: Any) -> dict[str, int] | None:
  """Bytes of a compiled XLA executable's arguments, outputs, donated aliases and temporaries.

  None where the backend gives no ``memory_analysis()``.
  """
  ma = compiled.memory_analysis()
  if ma is None:
    return None
  return {
    "argument": ma.argument_size_in_bytes,
    "output": ma.output_size_in_bytes,
    "alias": ma.alias_size_in_bytes,
    "temp": ma.temp_size_in_bytes,
  }


def xla_peak(mem: dict[str, int]) -> int:
  """Peak bytes of an `xla_memory` record: arguments + outputs + temporaries - donated aliases."""
  return mem["argument"] + mem["output"] + mem["temp"] - mem["alias"]


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------

RESULT = "@@RESULT"  # the tag of the line that carries a child's result


class ChildFailed(RuntimeError):
  """A child process timed out, or ended without printing its result line."""


def log(msg: str) -> None:
  """A progress line on stderr (stdout carries results)."""
  print(msg, file=sys.stderr, flush=True)


def emit(tag: str, obj: Any) -> None:
  """Prints ``TAG {json}`` on stdout for the parent to read (see `read_tagged`)."""
  print(f"{tag} {json.dumps(obj)}", flush=True)


def read_tagged(lines: Iterable[str], tag: str) -> Any | None:
  """The JSON of the first line that starts with ``TAG ``, None if none does."""
  for line in lines:
    if line.startswith(tag + " "):
      return json.loads(line[len(tag) + 1 :])
  return None


def child_env(**defaults: str) -> dict[str, str]:
  """This environment, with `defaults` where unset, and the repository first on PYTHONPATH."""
  env = dict(os.environ)
  for key, value in defaults.items():
    env.setdefault(key, value)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def child_cmd(module: str, args: list[str]) -> list[str]:
  """``python -m module args`` with this interpreter."""
  return [sys.executable, "-m", module, *args]


def run_child(
  module: str, args: list[str], timeout: float | None = None, env: dict[str, str] | None = None
) -> Any:
  """Runs ``python -m module args`` in a fresh process; the JSON of its `RESULT` line.

  The child runs from the repository root (`child_env` unless `env` is given) and calls
  ``emit(RESULT, ...)``. Raises `ChildFailed`, with the ends of its output, if it times
  out or prints no result line.
  """
  cmd = child_cmd(module, args)
  try:
    proc = subprocess.run(
      cmd,
      cwd=ROOT,
      env=env or child_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )
  except subprocess.TimeoutExpired as e:
    raise ChildFailed(f"timed out after {timeout} s: {cmd}") from e
  result = read_tagged(proc.stdout.splitlines(), RESULT)
  if result is None:
    raise ChildFailed(
      f"exit {proc.returncode}, no result: {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
  return result


# ----------------------------------------------------------------------------------------------
# Results files
# ----------------------------------------------------------------------------------------------


def results_path(name: str) -> str:
  """A results file of this folder (the benchmarks' default outputs)."""
  return os.path.join(HERE, name)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` (UTF-8)."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_lines(path: str, lines: list[str]) -> None:
  """Writes `lines`, one a line, to `path`."""
  write_text(path, "\n".join(lines) + "\n")


def command_line(module: str, argv: list[str] | None) -> str:
  """The command that ran: ``python -m module`` and `argv` (default: this process's)."""
  return f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)


def options_command(prefix: str, options: Iterable[tuple[str, Any]]) -> str:
  """`prefix` and ``--name value`` for each (argparse dest, value) of `options`."""
  return prefix + "".join(f" --{k.replace('_', '-')} {v}" for k, v in options)


def md_row(cells: list[str]) -> str:
  """One Markdown table row."""
  return "| " + " | ".join(cells) + " |"


def md_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
  """A Markdown table; `align` has one letter a column, ``r`` for right-aligned (else left)."""
  rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
  return "\n".join([md_row(header), "|" + "|".join(rule) + "|"] + [md_row(r) for r in rows])


def machine_info() -> dict[str, str]:
  """Date, CPU, memory, caches, OS and the versions of the packages benchmarked."""
  info = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "cpus": str(os.cpu_count()),
  }
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      m = re.search(r"model name\s*:\s*(.*)", f.read())
      info["cpu"] = m.group(1).strip() if m else "?"
    with open("/proc/meminfo", encoding="utf-8") as f:
      m = re.search(r"MemTotal:\s*(\d+)", f.read())
      info["memory"] = f"{int(m.group(1)) / 2**20:.1f} GiB" if m else "?"
  except OSError:
    pass
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    caches = re.findall(r"^(L\d\w?) cache:\s*(.*)$", out, re.M)
    info["caches"] = ", ".join(f"{k} {v}" for k, v in caches)
  except OSError:
    pass
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  for pkg in ("jax", "jaxlib", "optax", "numpy", "keras", "torch", "optadam"):
    try:
      info[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      info[pkg] = "not installed"
  return info
