"""The same training as 2 JAX processes on localhost (4 fake CPU devices each, one mesh of 8).

`multiprocess_worker.py` is started twice (process ids 0 and 1) with
``jax.distributed.initialize(coordinator_address="127.0.0.1:<free port>")``;
collectives go over Gloo on 127.0.0.1. The state is sharded across the two
processes; trajectories must equal the single-process one (<= 1e-6 relative),
an Orbax checkpoint written by both processes mid-training must resume
bit for bit, and `optadam.loss_scale_optimizer` must take one finiteness decision
per step for a kernel whose rows live on both processes when the non-finite
gradients sit in one process's rows only. Both processes are always ended
(bounded waits, then kill).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, above integration/
WORKER = os.path.join(TESTS, "support", "multiprocess_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 240
SCENARIOS = (
  "train_mesh8",
  "zero1_across_processes",
  "orbax_multiprocess",
  "loss_scale_across_processes",
)
# initial_scale 2**8, doubled after 2 finite steps, halved on the bad steps 2, 5 and 6.
LOSS_SCALE_HISTORY = [256.0, 512.0, 256.0, 256.0, 512.0, 256.0, 128.0, 128.0, 256.0, 256.0]


def _free_loopback_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(work_dir: str) -> tuple[list[int | None], list[str]]:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_ENABLE_X64", None)
  env["JAX_PLATFORMS"] = "cpu"
  port = _free_loopback_port()
  logs = [
    open(os.path.join(work_dir, f"process_{i}.log"), "w+", encoding="utf-8")  # noqa: SIM115
    for i in range(NUM_PROCESSES)
  ]
  procs = []
  try:
    for i in range(NUM_PROCESSES):
      procs.append(
        subprocess.Popen(
          [sys.executable, WORKER, str(i), str(NUM_PROCESSES), str(port), work_dir],
          env=env,
          stdout=logs[i],
          stderr=subprocess.STDOUT,
          cwd=os.path.dirname(TESTS),
        )
      )
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        break
      if any(c not in (None, 0) for c in codes):
        # One process failed: give the other a moment to finish, then stop waiting.
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait(timeout=30)
    outputs = []
    for f in logs:
      f.seek(0)
      outputs.append(f.read())
      f.close()
  return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def process_results(tmp_path_factory):
  work_dir = str(tmp_path_factory.mktemp("multiprocess"))
  codes, outputs = _run_processes(work_dir)
  results = []
  for out in outputs:
    per = {}
    for line in out.splitlines():
      if line.startswith("RESULT "):
        r = json.loads(line[len("RESULT ") :])
        per[r["scenario"]] = r
    results.append(per)
  if not all(results):
    logs = "\n".join(
      f"--- process {i} (exit {c}) ---\n{o[-3000:]}" for i, (c, o) in enumerate(zip(codes, outputs))
    )
    pytest.fail(f"a worker process produced no results:\n{logs}")
  return codes, results, outputs


def _check(process_results, name, report=None):
  codes, results, outputs = process_results
  for i, per in enumerate(results):
    assert name in per, f"process {i} did not run {name!r} (exit {codes[i]}):\n{outputs[i][-3000:]}"
    assert per[name]["ok"], f"process {i}, scenario {name!r}:\n{per[name]['error']}"
  if report is not None:
    report(f"multiprocess/{name}", json.dumps(results[0][name]["info"]))
  return [per[name]["info"] for per in results]


def test_two_process_sharded_training_matches_single_process(process_results, report):
  for info in _check(process_results, "train_mesh8", report):
    assert info["worst_relative"] <= 1e-6 and info["ema_worst_relative"] <= 1e-6


def test_two_process_zero1_moments_split_across_processes(process_results, report):
  infos = _check(process_results, "zero1_across_processes", report)
  assert [info["rows_here"] for info in infos] == [[0, 4], [4, 8]]
  for info in infos:
    assert info["worst_relative"] <= 1e-6


def test_two_process_orbax_checkpoint_resume(process_results):
  for info in _check(process_results, "orbax_multiprocess"):
    assert info["worst_relative_final"] <= 1e-6


def test_two_process_loss_scale_one_decision_across_processes(process_results, report):
  infos = _check(process_results, "loss_scale_across_processes", report)
  assert [info["keras2"]["rows_here"] for info in infos] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  for style in ("keras2", "keras3"):
    first, second = (info[style] for info in infos)
    # Alone, process 0 would skip only step 5 and process 1 only steps 2 and 6.
    assert first["locally_bad"] == [5] and second["locally_bad"] == [2, 6], style
    for info in (first, second):
      assert info["scales"] == LOSS_SCALE_HISTORY, (style, info["scales"])
      assert info["good_steps"] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 1], (style, info["good_steps"])
      assert info["halved"] == [2, 5, 6] and info["doubled"] == [1, 4, 8], style
      assert info["worst_relative"] <= 1e-6 and info["state_worst_relative"] <= 1e-6, style


def test_both_processes_exit_cleanly(process_results):
  codes, results, _ = process_results
  assert codes == [0] * NUM_PROCESSES, codes
  assert all(set(per) == set(SCENARIOS) for per in results)
