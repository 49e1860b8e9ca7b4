"""The Colab notebooks in notebooks/: they run top to bottom, are committed clean, and are linked.

Every notebook is a jupytext pair: ``notebooks/<name>.py`` (percent format, the source that is
edited) and ``notebooks/<name>.ipynb`` (what Colab opens), kept in sync with
``jupytext --sync notebooks/<name>.py``. Notebooks are discovered by glob over both extensions, so
a new pair is tested without editing this file; every ``notebooks/*.py`` is a notebook source.

Each notebook is executed with nbclient in a fresh kernel running *this* interpreter (a
kernel spec written to a temporary JUPYTER_PATH, so no installed `python3` spec of another
environment can be picked up), with the repository on PYTHONPATH and a temporary directory as
its working directory. The notebooks assert on what they show (parity, shardings, EMA
overwrite), so a failing claim fails the test. Execution times go to the terminal summary.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import sys
import time

import ipykernel  # noqa: F401  (the kernel the notebooks run in; installed by `make test`)
import jupytext
import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
# A name with only one of the two files is still listed, so that the missing twin fails the tests.
NAMES = sorted(
  {
    os.path.splitext(os.path.basename(p))[0]
    for ext in ("ipynb", "py")
    for p in glob.glob(os.path.join(NOTEBOOK_DIR, f"*.{ext}"))
  }
)
EXPECTED = {  # at least these
  "quickstart",
  "keras_to_jax",
  "ema_and_clipping",
  "sharded_training",
  "keras_file_resume",
  "loss_scaling",
}
PAIRED_FORMATS = "ipynb,py:percent"
CELL_TIMEOUT_S = 300
KERNEL_NAME = "optadam-test-python"
COLAB_URL = "https://colab.research.google.com/github/optadam/optadam/blob/main/notebooks/{}.ipynb"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
  """A kernel spec for sys.executable on JUPYTER_PATH; the environment for the kernel."""
  base = tmp_path_factory.mktemp("jupyter")
  spec_dir = base / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "optadam test (this interpreter)",
        "language": "python",
      }
    )
  )
  monkeypatch_module.setenv("JUPYTER_PATH", str(base))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  env.pop("JAX_ENABLE_X64", None)  # the notebooks are float32 demonstrations
  return env


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


def _execute(nb, cwd, env):
  client = nbclient.NotebookClient(
    nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(cwd)}}
  )
  client.execute(env=env)
  return nb


def _outputs(nb):
  for cell in nb.cells:
    if cell.cell_type == "code":
      yield from cell.get("outputs", [])


def test_the_notebooks_are_there():
  assert set(NAMES) >= EXPECTED, f"missing notebooks: {sorted(EXPECTED - set(NAMES))}"


def test_kernel_runs_this_interpreter(kernel_env, tmp_path):
  nb = nbformat.v4.new_notebook(
    cells=[
      nbformat.v4.new_code_cell(
        "import sys, optadam\nprint(sys.executable)\nprint(optadam.__file__)"
      )
    ]
  )
  _execute(nb, tmp_path, kernel_env)
  text = "".join(o.get("text", "") for o in _outputs(nb)).splitlines()
  assert os.path.realpath(text[0]) == os.path.realpath(sys.executable)
  assert os.path.realpath(text[1]).startswith(os.path.realpath(ROOT) + os.sep)


@pytest.fixture(scope="module")
def executed(kernel_env, tmp_path_factory):
  """Every notebook, executed two at a time (each kernel is its own process; a notebook is
  mostly single-threaded compiles, so two share a 2-core machine without slowing each other):
  name -> (executed notebook, seconds) or the exception its execution raised."""

  def run(name):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)
    cwd = tmp_path_factory.mktemp(f"nb_{name}")
    start = time.perf_counter()
    try:
      _execute(nb, cwd, kernel_env)  # raises CellExecutionError on any failing cell
    except Exception as e:  # re-raised by the notebook's own test
      return e
    return nb, time.perf_counter() - start

  names = [n for n in NAMES if os.path.exists(os.path.join(NOTEBOOK_DIR, f"{n}.ipynb"))]
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    return dict(zip(names, pool.map(run, names)))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, executed, report):
  assert name in executed, f"notebooks/{name}.ipynb is missing"
  result = executed[name]
  if isinstance(result, BaseException):
    raise result
  nb, seconds = result
  report(f"notebook / {name}", f"executed in {seconds:.1f} s (two at a time)")
  outputs = list(_outputs(nb))
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, f"{name} shows no plot"
  assert "JAX" in "".join(o.get("text", "") for o in outputs)  # the backend line of the setup cell


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
  """Pre-commit style: valid nbformat v4, no outputs, no execution counts."""
  path = os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")
  nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
  assert nb.nbformat == 4
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{name} cell {i} has outputs: clear them before committing"
      assert cell.execution_count is None, f"{name} cell {i} has an execution count"
  assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NAMES)
def test_first_cell_installs_in_colab_and_prints_backend(name):
  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code").source
  assert 'if "google.colab" in sys.modules:' in first
  assert '%pip install -q "optadam[examples] @ git+https://github.com/optadam/optadam"' in first
  assert "jax.default_backend()" in first and "jax.devices()" in first


def _cells(nb):
  return [(cell.cell_type, cell.source) for cell in nb.cells]


@pytest.mark.parametrize("name", NAMES)
def test_py_twin_exists_and_is_in_sync(name):
  """notebooks/<name>.py (jupytext percent) and notebooks/<name>.ipynb hold the same cells."""
  ipynb_path = os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")
  py_path = os.path.join(NOTEBOOK_DIR, f"{name}.py")
  assert os.path.exists(py_path), (
    f"notebooks/{name}.ipynb has no jupytext twin: run "
    f"jupytext --set-formats {PAIRED_FORMATS} notebooks/{name}.ipynb"
  )
  assert os.path.exists(ipynb_path), (
    f"notebooks/{name}.py has no .ipynb: run jupytext --sync notebooks/{name}.py"
  )
  ipynb = jupytext.read(ipynb_path)
  text = jupytext.read(py_path)
  for label, nb in (("ipynb", ipynb), ("py", text)):
    formats = nb.metadata.get("jupytext", {}).get("formats")
    assert formats == PAIRED_FORMATS, (
      f"notebooks/{name}.{label}: jupytext formats {formats!r}, expected {PAIRED_FORMATS!r}"
    )
  representation = text.metadata["jupytext"].get("text_representation", {})
  assert representation.get("format_name") == "percent", (
    f"notebooks/{name}.py is not in jupytext's percent format: {representation}"
  )
  cells_ipynb, cells_py = _cells(ipynb), _cells(text)
  if cells_ipynb != cells_py:
    first = next(
      (i for i, (a, b) in enumerate(zip(cells_ipynb, cells_py)) if a != b),
      min(len(cells_ipynb), len(cells_py)),
    )
    pytest.fail(
      f"notebooks/{name}.ipynb ({len(cells_ipynb)} cells) and notebooks/{name}.py "
      f"({len(cells_py)} cells) differ from cell {first} on: edit the .py, then run "
      f"jupytext --sync notebooks/{name}.py"
    )


def test_readme_links_every_notebook_with_a_colab_badge():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  missing = [
    name
    for name in NAMES
    if not any(COLAB_URL.format(name) in line and COLAB_BADGE in line for line in lines)
  ]
  assert not missing, (
    f"README.md has no 'Open in Colab' badge line for {missing} "
    f"(expected [![Open In Colab]({COLAB_BADGE})]({COLAB_URL.format('<name>')}))"
  )
