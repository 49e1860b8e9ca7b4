"""Print the version floor of pyproject.toml as exact pins, for `make test-min`.

Every runtime dependency (`[project] dependencies`) becomes `name==floor`, and so does each test
tool named on the command line, taken from the `dev` extra (pytest, hypothesis, keras): the
environment `make test-min` builds holds exactly the lowest versions the package claims to support.
A dependency without a `>=` floor is an error, so the claim cannot silently go untested.

  python tools/min_requirements.py pytest hypothesis keras > requirements-min.txt
"""

from __future__ import annotations

import os
import re
import sys

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  import tomli as tomllib  # type: ignore[no-redef]

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?$")


def floor_pin(requirement: str) -> tuple[str, str]:
  """`"jax>=0.5"` -> `("jax", "jax==0.5")`; anything without a `>=` floor raises."""
  m = _FLOOR.match(requirement.split(";")[0])
  if m is None:
    raise SystemExit(f"min_requirements: {requirement!r} declares no `>=` floor")
  return m.group(1).lower(), f"{m.group(1)}=={m.group(2)}"


def main(argv: list[str]) -> None:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  pins = [floor_pin(r)[1] for r in project["dependencies"]]
  dev = dict(floor_pin(r) for r in project["optional-dependencies"]["dev"])
  for name in argv:
    if name.lower() not in dev:
      raise SystemExit(f"min_requirements: {name!r} is not in the dev extra")
    pins.append(dev[name.lower()])
  print("\n".join(pins))


if __name__ == "__main__":
  main(sys.argv[1:])
