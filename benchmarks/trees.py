"""Named parameter trees (leaf path -> shape) of the step and many-leaf benchmarks.

Standard library only: a tree is a flat ``{"a/b": shape}`` dict; `nest` turns a flat dict
of arrays into the pytree with those named paths.
"""

from __future__ import annotations

import math
from typing import Any


def _block(prefix: str, d: int, ff: int) -> dict[str, tuple[int, ...]]:
  """One transformer layer: 16 leaves."""
  leaves = {}
  for n in ("query", "key", "value", "out"):
    leaves[f"{prefix}/attn/{n}/kernel"] = (d, d)
    leaves[f"{prefix}/attn/{n}/bias"] = (d,)
  for n in ("ln1", "ln2"):
    leaves[f"{prefix}/{n}/scale"] = (d,)
    leaves[f"{prefix}/{n}/bias"] = (d,)
  leaves[f"{prefix}/mlp/up/kernel"] = (d, ff)
  leaves[f"{prefix}/mlp/up/bias"] = (ff,)
  leaves[f"{prefix}/mlp/down/kernel"] = (ff, d)
  leaves[f"{prefix}/mlp/down/bias"] = (d,)
  return leaves


def tree_spec(name: str) -> dict[str, tuple[int, ...]]:
  """Leaf path -> shape of a named parameter tree.

  ``leaf:N``: one leaf of N parameters. ``transformer300``: a 300-leaf BERT-like
  tree (18 layers, d=256, ff=1024, vocab 5000; 15.8M parameters). ``tiny50``: 50
  leaves of 15-64 parameters (dispatch overhead). ``tree:K``: K leaves of a
  transformer with d=64, ff=256 (compile time; ~3K parameters per leaf).
  """
  if name.startswith("leaf:"):
    return {"w": (int(float(name[5:])),)}
  if name == "transformer300":
    d, ff, vocab = 256, 1024, 5000
    spec = {
      "embed/token": (vocab, d),
      "embed/position": (512, d),
      "embed/type": (2, d),
      "embed/ln/scale": (d,),
      "embed/ln/bias": (d,),
    }
    for i in range(18):
      spec.update(_block(f"layer_{i:02d}", d, ff))
    spec.update(
      {
        "final_ln/scale": (d,),
        "final_ln/bias": (d,),
        "pooler/kernel": (d, d),
        "pooler/bias": (d,),
        "cls/transform/kernel": (d, d),
        "cls/transform/bias": (d,),
        "cls/bias": (vocab,),
      }
    )
    assert len(spec) == 300, len(spec)
    return spec
  if name == "tiny50":
    shapes = [(16,), (4, 8), (32,), (8, 8), (3, 5)]
    return {f"p{i:02d}": shapes[i % len(shapes)] for i in range(50)}
  if name.startswith("tree:"):
    k = int(name[5:])
    spec = {}
    for i in range(k // 16):
      spec.update(_block(f"layer_{i:04d}", 64, 256))
    for i in range(k - len(spec)):
      spec[f"extra/{i}"] = (64,)
    return spec
  raise ValueError(f"unknown tree {name!r}")


def n_params(spec: dict[str, tuple[int, ...]]) -> int:
  return sum(math.prod(s) for s in spec.values())


def case_label(tree: str) -> str:
  if tree.startswith("leaf:"):
    return f"1 leaf, {float(tree[5:]):.0e} params".replace("e+0", "e")
  if tree == "transformer300":
    return "300-leaf transformer, 15.8M"
  if tree == "tiny50":
    return "50 tiny leaves"
  return tree


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}} (a pytree with named paths)."""
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out
