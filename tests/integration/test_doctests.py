"""The ``Example:`` blocks of every optadam module's docstrings, run with the stdlib `doctest`.

One test per module and subpackage module (found with `pkgutil.walk_packages`, so a new module
is picked up without editing this file); a failing example shows doctest's report of what it
expected and what it got.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import optadam

MODULES = sorted(m.name for m in pkgutil.walk_packages(optadam.__path__, "optadam."))
WITH_EXAMPLES = (  # doctest finds an example in the module that defines the object
  "optadam._indexed_slices",
  "optadam.alias",
  "optadam.keras_file",
  "optadam.loss_scaling",
  "optadam.scale",
  "optadam.schedules._cosine",
  "optadam.schedules._exponential",
  "optadam.schedules._piecewise",
  "optadam.schedules._polynomial",
  "optadam.schedules._serialization",
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
  module = importlib.import_module(module_name)
  runner = doctest.DocTestRunner(optionflags=FLAGS)
  report: list[str] = []
  for test in doctest.DocTestFinder().find(module, module_name):
    runner.run(test, out=report.append)
  results = runner.summarize(verbose=False)
  assert results.failed == 0, "".join(report)
  if module_name in WITH_EXAMPLES:
    assert results.attempted > 0, f"{module_name} lost its examples"


def test_every_module_is_collected():
  assert set(WITH_EXAMPLES) <= set(MODULES)
  assert "optadam.alias" in MODULES and "optadam.__init__" not in MODULES
