"""What the golden tools share: the schedule record, storage, JSON, writing and the CLI.

Used by ``make_keras2_golden.py`` and ``make_loss_scale_golden.py`` (and their modules). Imports
only the standard library and numpy; TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

K_STEPS = 10  # optvarK_* is the optimizer state after this many steps
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")


class Schedule(NamedTuple):
  """A ``tf.keras.optimizers.schedules`` class, by name, and its constructor's keyword arguments."""

  class_name: str
  config: dict


def tf_kwargs(kwargs: dict) -> dict:
  """Fresh optimizer kwargs for TF: each ``Schedule`` becomes a new schedule object."""
  import tensorflow as tf

  schedules = tf.keras.optimizers.schedules
  return {
    k: getattr(schedules, v.class_name)(**v.config) if isinstance(v, Schedule) else v
    for k, v in kwargs.items()
  }


def is_schedule(x) -> bool:
  import tensorflow as tf

  return isinstance(x, tf.keras.optimizers.schedules.LearningRateSchedule)


def serialized_kwargs(kwargs: dict) -> dict:
  """TF optimizer kwargs, JSON-safe: a schedule as ``schedules.serialize(schedule)``."""
  import tensorflow as tf

  serialize = tf.keras.optimizers.schedules.serialize
  return jsonable({k: serialize(v) if is_schedule(v) else v for k, v in kwargs.items()})


def store(x) -> np.ndarray:
  """Tensor/array -> numpy for storage (16-bit floats as float32, exactly)."""
  a = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
  if a.dtype == np.float16 or a.dtype.name == "bfloat16":
    a = a.astype(np.float32)
  return np.asarray(a)


def jsonable(x):
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.bool_,)):
    return bool(x)
  if hasattr(x, "numpy"):
    return jsonable(x.numpy())
  return x


def compact_json(obj) -> str:
  """Indented JSON with lists of scalars kept on one line."""
  text = json.dumps(obj, indent=1, allow_nan=True)
  return re.sub(
    r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text
  )


def write_golden(out: str, stem: str, arrays: dict, json_text: str) -> None:
  """``<stem>.npz`` (``np.savez_compressed``) and ``<stem>.json`` in ``out``.

  Byte-reproducible: numpy writes the zip entries in ``arrays`` order with a fixed timestamp.
  """
  os.makedirs(out, exist_ok=True)
  np.savez_compressed(os.path.join(out, f"{stem}.npz"), **arrays)
  with open(os.path.join(out, f"{stem}.json"), "w") as f:
    f.write(json_text + "\n")


def remove_stale(out: str, owned: Callable[[str], bool], registered) -> None:
  """Delete the golden pairs in ``out`` that this tool owns but no longer registers.

  A pair is golden when its ``.json`` is an object with a ``"scenario"`` key.
  """
  for fn in sorted(os.listdir(out)):
    stem, ext = os.path.splitext(fn)
    if ext != ".json" or not owned(stem) or stem in registered:
      continue
    with open(os.path.join(out, fn)) as f:
      try:
        is_golden = "scenario" in json.load(f)
      except ValueError:
        is_golden = False
    if is_golden:
      for e in (".json", ".npz"):
        if os.path.exists(os.path.join(out, stem + e)):
          os.remove(os.path.join(out, stem + e))
          print(f"removed stale {os.path.join(out, stem + e)}")


def parser(description: str, only_help: str) -> argparse.ArgumentParser:
  """The golden tools' common options: ``--out``, ``--only NAME ...`` and ``--list``."""
  ap = argparse.ArgumentParser(description=description)
  ap.add_argument("--out", default=DEFAULT_OUT)
  ap.add_argument("--only", nargs="*", help=only_help)
  ap.add_argument("--list", action="store_true", help="list scenarios and exit")
  return ap


def scenario_names(ap, args, scenarios, prefix="", width=36):
  """The scenarios `--only` names (default: all); `--list` prints them. Unknown ones: an error."""
  names = args.only or list(scenarios)
  unknown = [n for n in names if n not in scenarios]
  if unknown:
    ap.error(f"unknown scenarios: {unknown}")
  if args.list:
    for n in names:
      print(f"{prefix + n:{width}s} {scenarios[n].description}")
  return names
