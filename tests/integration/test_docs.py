"""The API reference covers the public API: every public name has a docstring and an autodoc entry.

Reads the pages under docs/api/ as text (no Sphinx build): every name of `optadam.__all__`
must appear as ``optadam.<name>`` in an autodoc directive, every public name of
`optadam.schedules` as ``optadam.schedules.<name>``; every directive must name an existing
object with the directive that fits it; every public name needs a docstring of its own.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import types

import pytest

import optadam
from optadam import schedules

API_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api"

# `.. autofunction:: optadam.adam` (reST, also inside MyST's {eval-rst}) and
# ```{autofunction} optadam.adam``` (MyST directive syntax).
_RST = re.compile(r"^(?P<indent>[ \t]*)\.\.[ \t]+auto(?P<kind>\w+)::[ \t]+(?P<name>\S+)[ \t]*$")
_MYST = re.compile(r"^(?P<indent>[ \t]*)(?:```|:::)\{auto(?P<kind>\w+)\}[ \t]+(?P<name>\S+)[ \t]*$")

# Which autodoc directive documents which kind of object.
_KINDS = {"module": "module", "function": "function", "class": "class", "data": "data"}


def _directives() -> list[dict]:
  """Every autodoc directive of docs/api/: kind, name, page, and its content lines."""
  found = []
  for page in sorted(API_DIR.glob("*")):
    if page.suffix not in (".rst", ".md"):
      continue
    lines = page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
      match = _RST.match(line) or _MYST.match(line)
      if not match:
        continue
      indent = len(match["indent"])
      body = []
      for follow in lines[i + 1 :]:
        if follow.strip() and (len(follow) - len(follow.lstrip())) <= indent:
          break
        if follow.strip() and not follow.strip().startswith(":"):  # content, not an option
          body.append(follow.strip())
      found.append({"kind": match["kind"], "name": match["name"], "page": page.name, "body": body})
  return found


DIRECTIVES = _directives()
DOCUMENTED = {d["name"]: d for d in DIRECTIVES}


def _schedules_public() -> list[str]:
  names = getattr(schedules, "__all__", None)
  if names is None:
    names = [
      n
      for n in vars(schedules)
      if not n.startswith("_") and not inspect.ismodule(getattr(schedules, n))
    ]
  return sorted(names)


PUBLIC = sorted(
  [f"optadam.{name}" for name in optadam.__all__]
  + [f"optadam.schedules.{name}" for name in _schedules_public()]
)


def _resolve(full_name: str):
  obj = optadam
  for part in full_name.split(".")[1:]:
    obj = getattr(obj, part)
  return obj


def _kind(obj) -> str:
  if isinstance(obj, types.ModuleType):
    return "module"
  if inspect.isclass(obj):
    return "class"
  if callable(obj):
    return "function"
  return "data"


def _own_docstring(obj) -> str:
  """The object's own docstring: not its type's, not the one NamedTuple generates."""
  if _kind(obj) == "data":
    return ""  # a dict or a constant: its __doc__ is its type's
  if inspect.isclass(obj):
    doc = vars(obj).get("__doc__") or ""
    fields = getattr(obj, "_fields", None)
    if fields is not None and doc == f"{obj.__name__}({', '.join(fields)})":
      return ""  # collections.namedtuple's placeholder
    return inspect.cleandoc(doc)
  return inspect.getdoc(obj) or ""


def test_the_api_pages_exist_and_hold_directives():
  pages = {p.name for p in API_DIR.iterdir()}
  assert "index.md" in pages, sorted(pages)
  assert len(DIRECTIVES) >= len(PUBLIC), (len(DIRECTIVES), len(PUBLIC))
  assert {"optadam.adam", "optadam.schedules", "optadam.schedules.ExponentialDecay"} <= set(
    DOCUMENTED
  )


def test_public_names_cover_all_of_optadam_and_schedules():
  assert "optadam.adam" in PUBLIC and "optadam.schedules" in PUBLIC
  assert "optadam.schedules.CosineDecayRestarts" in PUBLIC
  for name in PUBLIC:
    assert _resolve(name) is not None


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_an_autodoc_entry_under_its_full_name(name):
  assert name in DOCUMENTED, (
    f"{name} is public but no page in docs/api/ documents it: add "
    f"`.. auto{_kind(_resolve(name))}:: {name}` to the page of its theme."
  )


@pytest.mark.parametrize("directive", DIRECTIVES, ids=[d["name"] for d in DIRECTIVES])
def test_every_autodoc_entry_names_a_public_object_with_the_fitting_directive(directive):
  name = directive["name"]
  assert name in PUBLIC, f"{directive['page']} documents {name}, which is not a public name."
  kind = _kind(_resolve(name))
  assert directive["kind"] == _KINDS[kind], (
    f"{directive['page']}: {name} is a {kind}; document it with `.. auto{_KINDS[kind]}::`, "
    f"not `.. auto{directive['kind']}::`."
  )


def test_no_name_is_documented_twice():
  names = [d["name"] for d in DIRECTIVES]
  assert sorted(set(names)) == sorted(names), [n for n in set(names) if names.count(n) > 1]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring(name):
  obj = _resolve(name)
  if _kind(obj) == "data":  # no docstring of its own: the API page must describe it
    body = DOCUMENTED.get(name, {}).get("body", [])
    assert len(" ".join(body)) >= 40, f"{name}: write its description under its autodata entry."
    return
  doc = _own_docstring(obj)
  assert doc, f"{name} has no docstring."
  summary = doc.splitlines()[0].strip()
  assert summary.endswith("."), (
    f"{name}: the docstring's first line is a one-line summary: {summary!r}"
  )
