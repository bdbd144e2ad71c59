"""Layering of pavjax: no module reaches up (or sideways) into a layer above it.

Every module under pavjax/ is parsed with `ast` (nothing is imported), and each of
its references to a pavjax module is checked against the table below:

  * `import pavjax.x.y [as z]`, `from pavjax.x import y`, `from pavjax import x`,
    relative imports (`from . import x`, `from ..x import y`), at module level or
    inside functions (lazy imports count the same);
  * `importlib.import_module("pavjax.x")` / `__import__("pavjax.x")` with a string
    literal, or an f-string whose literal head names a package
    (`f"pavjax.jobs.{name}"` refers to any module of pavjax.jobs);
  * any string constant that is exactly the name of a pavjax module (registries
    such as `pavjax.tasks.TASKS` that are imported lazily by name).

`from pkg import x` refers to the submodule `pkg.x` when there is one, else to `pkg`
itself (x is then an attribute of the package).
"""

from __future__ import annotations

import ast
import dataclasses
import os
from typing import Iterable

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pavjax")

# Everything in pavjax except these is library code (never reaches up into a job).
ENTRY_POINTS = ("pavjax.jobs", "pavjax.main", "pavjax.bench", "pavjax.aot")


@dataclasses.dataclass(frozen=True)
class Rule:
  """Modules under any prefix in `importers` (minus `exempt`) may not import `forbidden`
  prefixes, or, when `only` is set, any pavjax module outside the `only` prefixes."""

  importers: tuple[str, ...]
  why: str
  forbidden: tuple[str, ...] = ()
  only: tuple[str, ...] | None = None
  exempt: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------
# THE LAYER RULES. A prefix covers the package and everything below it
# ("pavjax.rl" covers pavjax.rl.batch but not pavjax.rollout_data).
# ------------------------------------------------------------------------------------------
RULES = (
    Rule(importers=("pavjax.sampling",),
         forbidden=("pavjax.tasks", "pavjax.jobs", "pavjax.evaluation", "pavjax.trajectories",
                    "pavjax.verifiers", "pavjax.search", "pavjax.rl", "pavjax.rewards"),
         why="sampling knows tokens, not tasks"),
    Rule(importers=("pavjax.models",),
         only=("pavjax.models",),
         why="models are flax modules over token ids; they build on nothing else in pavjax"),
    Rule(importers=("pavjax.rewards", "pavjax.rl"),
         forbidden=("pavjax.models", "pavjax.sampling", "pavjax.jobs", "pavjax.tasks"),
         why="reward maths is pure arrays"),
    Rule(importers=("pavjax.tasks",),
         forbidden=("pavjax.jobs", "pavjax.models", "pavjax.sampling"),
         why="tasks are problems, tokens and grading; they never run a model"),
    Rule(importers=("pavjax",), exempt=ENTRY_POINTS,
         forbidden=("pavjax.jobs",),
         why="library code never reaches up into a job (jobs, main, bench and aot may)"),
)

# Modules directly in these packages must not import one another; the package itself
# (its __init__, e.g. the `run_job` registry of pavjax.jobs) may be imported.
NO_SIBLING_IMPORTS = {
    "pavjax.jobs": "a job shares code through library modules, never through another job",
}
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
  line: int
  target: str  # a pavjax module name; "pkg.*" for a dynamic name under pkg
  how: str  # the source form, for the report


@dataclasses.dataclass(frozen=True)
class Violation:
  path: str
  line: int
  module: str
  target: str
  how: str
  rules: tuple[str, ...]  # every rule the reference breaks

  def __str__(self):
    return (f"{self.path}:{self.line}: {self.module} -> {self.target}  [{self.how}]"
            + "".join(f"\n    rule: {r}" for r in self.rules))


def _within(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


def module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[:-len(".py")]
  parts = rel.split(os.sep)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def discover(root: str = ROOT) -> dict[str, str]:
  """Module name -> file path, for every .py under `root`."""
  out = {}
  for d, dirs, files in os.walk(root):
    dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")))
    for f in sorted(files):
      if f.endswith(".py"):
        path = os.path.join(d, f)
        out[module_name(path)] = path
  return out


def _is_package(module: str, path: str) -> bool:
  return os.path.basename(path) == "__init__.py" if path else module.count(".") == 0


def references(module: str, source: str, known: Iterable[str], path: str = ""
               ) -> list[Reference]:
  """Every reference from `module` (its `source`) to a pavjax module (see the docstring)."""
  known = set(known)
  tree = ast.parse(source)
  package = module if _is_package(module, path) else module.rpartition(".")[0]
  refs, seen = [], set()

  def sub_or_pkg(pkg: str, attr: str) -> str:
    return f"{pkg}.{attr}" if f"{pkg}.{attr}" in known else pkg

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if _within(alias.name, "pavjax"):
          refs.append(Reference(node.lineno, alias.name, f"import {alias.name}"))
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        pkg = ".".join(base + ([node.module] if node.module else []))
      else:
        pkg = node.module or ""
      if not _within(pkg, "pavjax"):
        continue
      dots = "." * node.level
      for alias in node.names:
        refs.append(Reference(node.lineno, sub_or_pkg(pkg, alias.name),
                              f"from {dots}{node.module or ''} import {alias.name}"))
    elif isinstance(node, ast.Call):
      func = node.func
      fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
      if fname not in ("import_module", "__import__") or not node.args:
        continue
      arg = node.args[0]
      if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        if _within(arg.value, "pavjax"):
          seen.add(id(arg))
          refs.append(Reference(node.lineno, arg.value, f"{fname}({arg.value!r})"))
      elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)  # f"pavjax.jobs.{x}": any module under pavjax.jobs
        pkg = head[:-1] if head.endswith(".") else (head.rpartition(".")[0] or head)
        if _within(pkg, "pavjax"):
          refs.append(Reference(node.lineno, pkg + ".*", f"{fname}(f{head!r}...)"))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in seen:
      if node.value in known and _within(node.value, "pavjax"):
        refs.append(Reference(node.lineno, node.value, f"string {node.value!r}"))
  return refs


def _breaks(rule: Rule, module: str, target: str) -> bool:
  if not any(_within(module, p) for p in rule.importers):
    return False
  if any(_within(module, p) for p in rule.exempt):
    return False
  dynamic = target.endswith(".*")
  base = target[:-2] if dynamic else target
  if rule.only is not None:
    return not any(_within(base, p) for p in rule.only)
  # A dynamic name under `base` may be any module below it.
  return any(_within(base, p) or (dynamic and _within(p, base)) for p in rule.forbidden)


def _sibling(module: str, target: str) -> str | None:
  for pkg, why in NO_SIBLING_IMPORTS.items():
    if module.rpartition(".")[0] != pkg:
      continue  # not a module directly in pkg (pkg's own __init__ is the registry)
    dynamic = target.endswith(".*")
    base = target[:-2] if dynamic else target
    if dynamic and base == pkg:
      return f"no imports between modules of {pkg}: {why}"
    if _within(base, pkg) and base != pkg and not _within(base, module):
      return f"no imports between modules of {pkg}: {why}"
  return None


def check(module: str, source: str, known: Iterable[str], path: str = "") -> list[Violation]:
  """The violations of `module` (given its source): one per reference, with every rule it breaks."""
  out = []
  for ref in references(module, source, known, path):
    broken = []
    for rule in RULES:
      if _breaks(rule, module, ref.target):
        scope = (f"{', '.join(rule.importers)} may only import {', '.join(rule.only)}"
                 if rule.only is not None else
                 f"{', '.join(rule.importers)} must not import {', '.join(rule.forbidden)}")
        broken.append(f"{scope} ({rule.why})")
    sib = _sibling(module, ref.target)
    if sib:
      broken.append(sib)
    if broken:
      out.append(Violation(path or module, ref.line, module, ref.target, ref.how,
                           tuple(broken)))
  return out


def check_tree(root: str = ROOT) -> tuple[dict[str, str], list[Violation]]:
  modules = discover(root)
  violations = []
  for name, path in sorted(modules.items()):
    with open(path, encoding="utf-8") as f:
      source = f.read()
    violations += check(name, source, modules, os.path.relpath(path, os.path.dirname(root)))
  return modules, violations


# ---------------------------------------------------------------------------- tests


def test_no_layer_violations():
  modules, violations = check_tree()
  assert len(modules) > 40, f"found only {len(modules)} modules under {ROOT}"
  assert not violations, (f"{len(violations)} layer violation(s):\n"
                          + "\n".join(str(v) for v in violations))


def test_rules_name_real_modules():
  """A renamed package must not silently turn a rule into a no-op."""
  modules = discover()
  prefixes = {p for r in RULES for p in (*r.importers, *r.forbidden, *(r.only or ()), *r.exempt)}
  prefixes |= set(NO_SIBLING_IMPORTS)
  missing = sorted(p for p in prefixes if not any(_within(m, p) for m in modules))
  assert not missing, f"rules name modules that do not exist: {missing}"


def test_checker_catches_violations():
  known = set(discover()) | {"pavjax.sampling.fake", "pavjax.jobs.fake", "pavjax.models.fake",
                             "pavjax.rewards.fake", "pavjax.search.fake"}

  def found(module, source, path=""):
    return sorted((v.line, v.target) for v in check(module, source, known, path))

  sampling = ("from pavjax.tasks import base\n"
              "import pavjax.jobs.sft as sft\n"
              "from pavjax import sharding, verifiers\n"
              "def f():\n"
              "  from pavjax.models import transformer\n"
              "  from pavjax.rewards import Q_LOSSES\n")
  assert found("pavjax.sampling.fake", sampling) == [
      (1, "pavjax.tasks.base"), (2, "pavjax.jobs.sft"),
      (3, "pavjax.verifiers"), (6, "pavjax.rewards")]

  job = ("from pavjax.jobs import run_job, sft\n"
         "from pavjax import jobs\n"
         "import importlib\n"
         "m = importlib.import_module('pavjax.jobs.rl')\n"
         "n = importlib.import_module(f'pavjax.jobs.{m}')\n")
  assert found("pavjax.jobs.fake", job) == [
      (1, "pavjax.jobs.sft"), (4, "pavjax.jobs.rl"), (5, "pavjax.jobs.*")]
  # The jobs package (the registry) may name its jobs; bench may import a job.
  assert found("pavjax.jobs", job, "pavjax/jobs/__init__.py") == []
  assert found("pavjax.bench.fake", job) == []

  assert found("pavjax.models.fake", "from pavjax import metrics\nfrom . import kv_cache\n"
               "from pavjax.models.transformer import Transformer\n") == [(1, "pavjax.metrics")]
  assert found("pavjax.rewards.fake", "from ..tasks import base\nfrom . import losses\n"
               "from .. import sampling\n") == [(1, "pavjax.tasks.base"), (3, "pavjax.sampling")]
  assert found("pavjax.search.fake", "import importlib\n"
               "def f():\n  return importlib.import_module('pavjax.jobs.search')\n"
               "REGISTRY = {'x': 'pavjax.jobs.rl'}\n") == [
                   (3, "pavjax.jobs.search"), (4, "pavjax.jobs.rl")]
  # A reference is reported once, with every rule it breaks.
  (v,) = check("pavjax.tasks.fake", "import pavjax.models\n", known)
  assert v.line == 1 and len(v.rules) == 1 and "never run a model" in v.rules[0]
  (v,) = check("pavjax.sampling.fake", "from pavjax.jobs import sft\n", known)
  assert len(v.rules) == 2 and "sampling knows tokens" in str(v) and "library code" in str(v)
