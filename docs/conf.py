"""Sphinx configuration of the optadam documentation (`make docs`).

Pages are MyST markdown and reStructuredText; the API pages under `api/` use autodoc with
napoleon (Google-style docstrings). The notebooks of `notebooks/` are copied into
`docs/notebooks/` (git-ignored) when the build starts, so the files exist once in git and every
new `notebooks/*.ipynb` appears on the notebooks page by itself (a glob toctree).

Nothing is fetched over the network, at build time or by a reader's browser: no intersphinx
inventories, no remote images (the notebooks' Colab badges become plain links in the copies).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's optadam, not an installed one

optadam = importlib.import_module("optadam")

# -- Project -------------------------------------------------------------------------------------

project = "optadam"
author = "The optadam authors"
copyright = "2026, The optadam authors"
release = optadam.__version__
version = release

# -- Extensions ----------------------------------------------------------------------------------

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
  "myst_nb",  # MyST markdown pages and .ipynb notebooks (brings myst_parser)
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# Single backticks in the docstrings (`optadam.apply_updates`, `params`) are Python
# cross-references: a link where the name is documented here, code-formatted text elsewhere.
default_role = "py:obj"

# -- autodoc / napoleon --------------------------------------------------------------------------

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # `learning_rate=0.001`, not an evaluated repr
autoclass_content = "class"
python_maximum_signature_line_length = 88  # long signatures: one parameter per line
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- MyST / notebooks ----------------------------------------------------------------------------

myst_enable_extensions = ["colon_fence"]  # no dollarmath: MathJax would load from a CDN
myst_heading_anchors = 3

# The notebooks are committed without outputs and executed by `make test`
# (tests/integration/test_notebooks.py). The docs show them as they are committed; to render
# them with outputs, run the build with OPTADAM_DOCS_EXECUTE=force (needs the dev/examples extras).
nb_execution_mode = os.environ.get("OPTADAM_DOCS_EXECUTE", "off")
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_merge_streams = True


# A remote image in a markdown cell (the "Open In Colab" badge) becomes a plain link, so that
# the site loads nothing from elsewhere: [![alt](https://image)](https://target) -> [alt](target).
_LINKED_REMOTE_IMAGE = re.compile(r"\[!\[([^\]]*)\]\(https?://[^)\s]+\)\]\(([^)\s]+)\)")
_REMOTE_IMAGE = re.compile(r"!\[([^\]]*)\]\((https?://[^)\s]+)\)")


def _local_images_only(notebook: bytes) -> bytes:
  nb = json.loads(notebook)
  for cell in nb.get("cells", []):
    if cell.get("cell_type") != "markdown":
      continue
    text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    text = _LINKED_REMOTE_IMAGE.sub(r"[\1](\2)", text)
    cell["source"] = _REMOTE_IMAGE.sub(r"[\1](\2)", text)
  return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _copy_notebooks() -> None:
  """Mirrors ../notebooks/*.ipynb into docs/notebooks/ (unchanged files are not rewritten)."""
  source = ROOT / "notebooks"
  target = DOCS / "notebooks"
  target.mkdir(exist_ok=True)
  wanted = {p.name: p for p in sorted(source.glob("*.ipynb"))}
  for stale in target.glob("*.ipynb"):
    if stale.name not in wanted:
      stale.unlink()
  for name, path in wanted.items():
    data = _local_images_only(path.read_bytes())
    copy = target / name
    if not copy.exists() or copy.read_bytes() != data:
      copy.write_bytes(data)


_copy_notebooks()

# -- HTML ----------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"optadam {release}"
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}
html_show_sourcelink = False


# -- Hooks ---------------------------------------------------------------------------------------


def _drop_builtin_type_docstrings(app, what, name, obj, options, lines):
  """Module-level data (e.g. `optadam.schedules.SCHEDULES`, a dict) has no docstring of its own:
  autodoc would show its type's (``dict``'s). The API page writes the description instead."""
  if (
    what == "data"
    and lines
    and type(obj).__doc__
    and inspect.getdoc(obj) == inspect.getdoc(type(obj))
  ):
    lines.clear()


def setup(app):
  app.connect("autodoc-process-docstring", _drop_builtin_type_docstrings)
