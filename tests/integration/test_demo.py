"""The demo (`make demo`): a short training run, in process and as `python examples/demo.py`."""

import os
import struct
import subprocess
import sys

import importlib.util

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
DEMO = os.path.join(ROOT, "examples", "demo.py")


def _load_demo():
  """examples/demo.py as a module (it is not part of the installed package)."""
  spec = importlib.util.spec_from_file_location("optadam_demo", DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # needs the `examples` extra, which `make test` installs
  return module


demo = _load_demo()


def test_short_run_learns_and_writes_plot(tmp_path, capsys):
  metrics = demo.main(["--epochs", "5", "--seed", "0", "--out", str(tmp_path), "--quiet"])

  assert capsys.readouterr().out == ""  # --quiet prints nothing
  png = tmp_path / "loss_curve.png"
  assert metrics["plot"] == str(png)
  data = png.read_bytes()
  assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  assert width >= 500 and height >= 200
  assert len(data) > 10_000  # two panels of curves, not an empty figure

  history = metrics["history"]
  assert len(history["train_loss"]) == len(history["val_acc"]) == len(history["val_acc_ema"]) == 5
  assert metrics["train_loss"] == history["train_loss"][-1]
  assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]  # 5 seeds: ~1.7 -> ~0.2
  # Chance is 0.1; 5 seeds give 0.94-0.96 (raw) and 0.92-0.93 (EMA) after 5 epochs.
  assert metrics["val_accuracy"] > 0.85
  assert metrics["val_accuracy_ema"] > 0.8
  # finalize_variable_values puts the EMA weights into the parameters.
  assert metrics["val_accuracy_final"] == pytest.approx(metrics["val_accuracy_ema"])


def test_script_runs(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
    [sys.executable, DEMO, "--epochs", "1", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=tmp_path,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "validation accuracy" in proc.stdout.lower()
  assert "final train loss" in proc.stdout.lower()
  assert (tmp_path / "loss_curve.png").read_bytes()[:8] == PNG_SIGNATURE


def test_rejects_bad_epochs(tmp_path):
  with pytest.raises(SystemExit):
    demo.main(["--epochs", "0", "--out", str(tmp_path), "--quiet"])
