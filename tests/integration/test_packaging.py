"""The built wheel, installed alone into a fresh venv outside the checkout, trains.

Catches what the editable install of `make test` hides: a module left out of the wheel (a wrong
`packages.find`, a subpackage missed), a missing `py.typed`, a version that is not single-sourced.
The fresh venv gets the wheel with `--no-deps`; jax and the other dependencies come from this
interpreter's site-packages through a `.pth` file of plain paths, which does not run the `.pth`
hooks inside those directories, so the checkout's editable optadam stays invisible there.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

# Run inside the fresh venv, from a directory outside the checkout: Keras's Adam (epsilon-hat form)
# on f(w) = sum(w**2), three jitted updates, against the float64 formula.
SMOKE = r"""
import importlib.resources, json, sys
import jax, jax.numpy as jnp, numpy as np
import optadam

w0 = np.array([1.0, -2.0, 0.5], np.float32)
tx = optadam.adam(learning_rate=0.1)
params = {"w": jnp.asarray(w0)}
state = tx.init(params)

@jax.jit
def step(params, state):
  grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
  updates, state = tx.update(grads, state, params)
  return optadam.apply_updates(params, updates), state

for _ in range(3):
  params, state = step(params, state)

w, m, v = w0.astype(np.float64), 0.0, 0.0
for t in range(1, 4):
  g = 2 * w
  m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
  w = w - 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-5)
assert int(state.adam.count) == 3, state.adam.count
print(json.dumps({
  "file": optadam.__file__,
  "version": optadam.__version__,
  "py_typed": importlib.resources.files("optadam").joinpath("py.typed").is_file(),
  "w": np.asarray(params["w"]).tolist(),
}))
"""


def _can_build_without_isolation() -> bool:
  """setuptools with bdist_wheel built in (>= 70.1), or older with `wheel`: no download needed."""
  try:
    from importlib.metadata import version

    major, minor = (int(x) for x in version("setuptools").split(".")[:2])
  except Exception:
    return False
  return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  """sdist, then the wheel built from it (as `make dist` does), in a temporary directory."""
  out = tmp_path_factory.mktemp("dist")
  cmd = [sys.executable, "-m", "build", "--outdir", str(out), ROOT]
  if _can_build_without_isolation():
    cmd.insert(3, "--no-isolation")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (whl,) = glob.glob(str(out / "optadam-*.whl"))
  assert len(glob.glob(str(out / "optadam-*.tar.gz"))) == 1
  return whl


def test_wheel_holds_every_module_and_py_typed(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  source = {
    os.path.relpath(p, ROOT).replace(os.sep, "/")
    for p in glob.glob(os.path.join(ROOT, "optadam", "**", "*.py"), recursive=True)
  }
  assert source, "no optadam/*.py found in the checkout"
  assert source <= names, sorted(source - names)
  assert "optadam/py.typed" in names
  meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
  with zipfile.ZipFile(wheel) as z:
    metadata = z.read(meta).decode()
  version = re.search(r"^Version: (.+)$", metadata, re.M).group(1).strip()
  with open(os.path.join(ROOT, "optadam", "__init__.py"), encoding="utf-8") as f:
    init = f.read()
  assert f'__version__ = "{version}"' in init  # single-sourced from optadam.__version__
  assert re.search(r"^Requires-Dist: jax>=", metadata, re.M)


def test_installed_wheel_trains_outside_the_checkout(wheel, tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel]
  proc = subprocess.run(pip, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]

  # Dependencies: this interpreter's site-packages, as plain path lines (no hooks run from them).
  venv_site = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  deps = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
  with open(os.path.join(venv_site, "_optadam_test_deps.pth"), "w", encoding="utf-8") as f:
    f.write("\n".join(dict.fromkeys(d for d in deps if os.path.isdir(d))) + "\n")

  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [python, "-c", SMOKE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert os.path.realpath(out["file"]).startswith(os.path.realpath(str(venv))), out["file"]
  assert out["py_typed"]
  assert out["version"] in os.path.basename(wheel)
  assert out["w"][0] < 1.0 and out["w"][1] > -2.0  # it moved, downhill
