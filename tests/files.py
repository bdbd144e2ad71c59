"""Helpers for tests that run repository scripts on hand-made files."""

import importlib.util
import json
import os


def load_script(path, name: str):
  """The Python file at `path` (an experiments/ script, not a package module), as a module."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_json(path, obj) -> None:
  """`obj` as JSON at `path` (one row per line for .jsonl), creating its directory."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    if str(path).endswith(".jsonl"):
      f.write("".join(json.dumps(r) + "\n" for r in obj))
    else:
      json.dump(obj, f)
