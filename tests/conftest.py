"""Test setup: Keras 3 on the JAX backend, and a report of the worst parity errors."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
# `import reference` / `import helpers` from any test file: the support code is in tests/support/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

import jax
import pytest

# Older jax (the version floor, `make test-min`) has only jax.experimental.enable_x64.
if not hasattr(jax, "enable_x64"):
  from jax.experimental import enable_x64 as _enable_x64

  jax.enable_x64 = _enable_x64

_REPORT: dict[str, str] = {}


@pytest.fixture(scope="session")
def report():
  """`report(name, text)` records a line shown in the terminal summary."""

  def add(name: str, text: str) -> None:
    _REPORT[name] = text

  return add


# Under pytest-xdist (`make test` runs `-n 2`), each worker sends its lines to the controller.
def pytest_sessionfinish(session):
  workeroutput = getattr(session.config, "workeroutput", None)
  if workeroutput is not None:
    workeroutput["optadam_report"] = dict(_REPORT)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist (make test-min) never called
def pytest_testnodedown(node, error):
  _REPORT.update(getattr(node, "workeroutput", {}).get("optadam_report", {}))


def pytest_terminal_summary(terminalreporter):
  if _REPORT:
    terminalreporter.section("optadam parity report (worst error per configuration)")
    for name in sorted(_REPORT):
      terminalreporter.write_line(f"{name:48s} {_REPORT[name]}")
