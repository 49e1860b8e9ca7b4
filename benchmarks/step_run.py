"""The orchestrator of `benchmarks.step`: every measurement in fresh worker processes.

Step times come from two served workers (JAX/Keras and PyTorch, `step_workers.worker_serve`)
driven round by round; HLO, compile time and peak memory each from a one-shot worker.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from typing import Any

from benchmarks import harness
from benchmarks.step_peers import COMPILE_IMPLS, IMPLS, available, uses_torch
from benchmarks.trees import case_label, n_params, tree_spec

WORKER = "benchmarks.step"  # run as ``python -m benchmarks.step --worker SPEC``


def _worker_env() -> dict[str, str]:
  # KERAS_BACKEND before keras is imported in the worker
  return harness.child_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")


def _worker_args(spec: dict[str, Any]) -> list[str]:
  return ["--worker", json.dumps(spec)]


def run_worker(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any] | None:
  """The result of a one-shot worker (`step_workers.worker_main`); None, logged, if it failed."""
  try:
    return harness.run_child(WORKER, _worker_args(spec), timeout, _worker_env())
  except harness.ChildFailed as e:
    harness.log(f"  worker failed: {spec}\n{e}")
    return None


class _Server:
  """A served worker: builds its implementations, then times one round per request."""

  def __init__(self, tree: str, impls: list[str], batch_s: float):
    self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by close())
    spec = {"kind": "serve", "tree": tree, "impls": impls, "batch_s": batch_s}
    self.proc = subprocess.Popen(
      harness.child_cmd(WORKER, _worker_args(spec)),
      cwd=harness.ROOT,
      env=_worker_env(),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
      bufsize=1,
    )

  def ready(self) -> dict[str, Any] | None:
    """Waits until built: its batch sizes (``reps``) and first-call times."""
    return harness.read_tagged(self.proc.stdout, "@@READY")  # type: ignore[arg-type]

  def round(self, r: int) -> dict[str, float] | None:
    """Round `r`: seconds per step of each implementation."""
    self.proc.stdin.write(f"round {r}\n")  # type: ignore[union-attr]
    self.proc.stdin.flush()  # type: ignore[union-attr]
    return harness.read_tagged(self.proc.stdout, "@@ROUND")  # type: ignore[arg-type]

  def failed(self) -> None:
    self.log.seek(0)
    harness.log(f"  worker failed: {self.log.read()[-3000:]}")

  def close(self) -> None:
    try:
      self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
      self.proc.stdin.flush()  # type: ignore[union-attr]
    except (BrokenPipeError, OSError):
      pass
    try:
      self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.proc.kill()
    self.log.close()


def _rounds(servers: list[_Server], impls: list[str], rounds: int) -> dict[str, list[float]] | None:
  """Interleaved rounds; the servers take turns, which one goes first alternating."""
  times: dict[str, list[float]] = {n: [] for n in impls}
  for r in range(rounds):
    order = list(range(len(servers)))
    for i in order if r % 2 == 0 else order[::-1]:
      got = servers[i].round(r)
      if got is None:
        servers[i].failed()
        return None
      for k, v in got.items():
        times[k].append(v)
  return times


def time_case(tree: str, impls: list[str], rounds: int, batch_s: float) -> dict[str, Any] | None:
  """Interleaved rounds over `impls` on `tree`: JAX and PyTorch in two served processes."""
  impls, skipped = available(impls)
  groups = [n for n in impls if not uses_torch(n)], [n for n in impls if uses_torch(n)]
  servers: list[_Server] = []
  ready: dict[str, dict[str, Any]] = {"reps": {}, "first_call_s": {}}
  try:
    for g in [g for g in groups if g]:  # one after the other: compiling does not overlap timing
      servers.append(_Server(tree, g, batch_s))
      info = servers[-1].ready()
      if info is None:
        servers[-1].failed()
        return None
      for k in ready:
        ready[k].update(info[k])
    times = _rounds(servers, impls, rounds)
    if times is None:
      return None
  finally:
    for server in servers:
      server.close()
  spec = tree_spec(tree)
  return {
    "tree": tree,
    "n_params": n_params(spec),
    "n_leaves": len(spec),
    "times": times,
    "reps": ready["reps"],
    "first_call_s": ready["first_call_s"],
    "skipped": skipped,
  }


def time_cases(impls: list[str], trees: list[str], rounds: int, batch_s: float) -> list[Any]:
  """`time_case` of every tree (``leaf:N`` first), logging progress."""
  cases = []
  for tree in trees:
    case_impls = [n for n in impls if not (tree == "tiny50" and IMPLS[n][0] == "roof")]
    if tree == f"leaf:{5 * 10**7}" or (tree.startswith("leaf:") and int(tree[5:]) > 2 * 10**7):
      case_impls = [n for n in case_impls if n != "optax.adam mismatched"]  # RAM: skip the extra
    harness.log(f"timing {case_label(tree)} ({len(case_impls)} implementations) ...")
    res, dt = harness.timed(time_case, tree, case_impls, rounds, batch_s)
    cases.append(res)
    harness.log(f"  {dt:.0f} s")
  return cases


def compile_times(impls: list[str], leaves: int, reps: int) -> list[Any]:
  """Compile time of `COMPILE_IMPLS` on a tree of `leaves` leaves, `reps` interleaved times."""
  out = []
  tree = f"tree:{leaves}"
  for rep in range(reps):
    for name in COMPILE_IMPLS if rep % 2 == 0 else COMPILE_IMPLS[::-1]:
      if name not in impls:
        continue
      harness.log(f"compile time {name} on {leaves} leaves (rep {rep + 1}/{reps}) ...")
      r = run_worker({"kind": "compile", "name": name, "tree": tree})
      if r:
        harness.log(f"  {r['total_s']:.1f} s")
      out.append(r)
  return out


def peak_memory(impls: list[str], n: int) -> list[Any]:
  """Peak memory of each installed implementation on one leaf of `n` parameters."""
  out = []
  for name in impls:
    ok, _ = available([name])
    if not ok:
      continue
    harness.log(f"peak memory {name} ...")
    out.append(run_worker({"kind": "memory", "name": name, "n": n}))
  return out


def run(opts: dict[str, Any], command: str) -> dict[str, Any]:
  """Everything `opts` asks for; the results (as saved by ``--json``)."""
  t_start = time.perf_counter()
  impls = opts["impls"]
  results: dict[str, Any] = {
    "machine": harness.machine_info(),
    "rounds": opts["rounds"],
    "batch_s": opts["batch_s"],
    "cases": [],
    "memory": [],
    "compile": [],
    "command": command,
  }
  harness.log("HLO analysis ...")
  results["hlo"] = run_worker({"kind": "hlo", "names": [n for n in impls if IMPLS[n][0] == "jax"]})
  trees = [f"leaf:{n}" for n in opts["sizes"]] + opts["trees"]
  results["cases"] = time_cases(impls, trees, opts["rounds"], opts["batch_s"])
  if opts["compile"]:
    results["compile"] = compile_times(impls, opts["compile_leaves"], opts["compile_reps"])
  if opts["memory"]:
    results["memory"] = peak_memory(opts["memory_impls"], opts["memory_n"])
  results["wall_s"] = time.perf_counter() - t_start
  return results
