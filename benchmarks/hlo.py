"""Reading XLA's optimized HLO text: the full-size traffic of a step, leaf by leaf.

Shared by the step and many-leaf benchmarks (`benchmarks/step_workers.py`,
`benchmarks/many_leaves.py`) and the tests that pin the number of passes over memory
(`tests/integration/test_hlo.py`). Standard library only.
"""

from __future__ import annotations

import re
from typing import Any

_FREE_OPS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all"}
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")


def _dims(type_str: str) -> list[tuple[int, ...]]:
  """The array dimensions in an HLO type: 'f32[2,3]{1,0}' or '(f32[2], s32[])'."""
  return [
    tuple(int(x) for x in dims.split(",") if x)
    for dims in re.findall(r"\b[a-z]+\d*\[([\d,]*)\]", type_str)
  ]


def _operands(rest: str) -> list[str]:
  depth = 1
  for i, ch in enumerate(rest):
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth == 0:
        return re.findall(r"%([\w.\-]+)", rest[:i])
  return re.findall(r"%([\w.\-]+)", rest)


def entry_instructions(hlo_text: str) -> list[tuple[str, list[tuple[int, ...]], str, list[str]]]:
  """(name, output dims, opcode, operand names) of every instruction of the ENTRY computation."""
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  body = entry[entry.index("{") + 1 :]
  out = []
  for line in body.splitlines():
    if line.strip() == "}":
      break
    m = _DEF.match(line)
    if m:
      name, type_str, opcode, rest = m.groups()
      out.append((name, _dims(type_str), opcode, _operands(rest)))
  return out


def leaf_traffic(hlo_text: str, dims: tuple[int, ...]) -> dict[str, Any]:
  """Kernels, full-size writes / reads and full-size copies of one leaf's shape."""
  instrs = entry_instructions(hlo_text)
  dims_of = {name: d for name, d, _, _ in instrs}
  st: dict[str, Any] = {"kernels": 0, "writes": 0, "reads": 0, "copies": 0, "ops": []}
  for name, out_dims, opcode, operands in instrs:
    if opcode in _FREE_OPS:
      continue
    w = sum(1 for d in out_dims if d == dims)
    r = sum(1 for o in operands if dims_of.get(o) == [dims])
    if w or r:
      st["kernels"] += 1
      st["writes"] += w
      st["reads"] += r
      st["copies"] += int(opcode == "copy" and w > 0)
      st["ops"].append(f"{name}={opcode}")
  return st
