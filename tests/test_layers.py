"""The package's import layering: each layer imports only the layers below it, no module
imports another in a cycle, and no module uses another module's private (``_name``) names.

Layers, lowest first (``embedlab/<layer>/`` folders, or single modules):

  core      pure JAX: tables, pooling, table variants, sparse and dense optimizer helpers,
            sharding; no config, no files
  data      numpy: text, sources, synthetic data, encoded cache, batches, pretrained vectors
  models    the classifiers and the Flax modules, over core
  analysis  numpy + matplotlib over arrays: neighbours, plots, exports
  config    the experiment config (choices come from the registries below it)
  run       build, steps, loop, checkpoints, run directory, summary, resources, loading a run
  cli       the command line

``embedlab/__init__.py`` (the public names, loaded lazily) sits above all of them.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "embedlab"
LAYERS = ("core", "data", "models", "analysis", "config", "run", "cli")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def layer_of(module: str) -> str | None:
  parts = module.split(".")
  if parts[0] != "embedlab" or len(parts) < 2:
    return None
  return parts[1] if parts[1] in LAYERS else None


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path, known: dict[str, pathlib.Path]) -> list[tuple[int, str, str]]:
  """``(line, module, name)`` for every embedlab import in the file, function-local ones
  included; ``name`` is the imported attribute ('' for a module import)."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name, "") for a in node.names if a.name.startswith("embedlab")]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if not node.module.startswith("embedlab"):
        continue
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        if sub in known:
          out.append((node.lineno, sub, ""))
        else:
          out.append((node.lineno, node.module, a.name))
  return out


def graph():
  known = modules()
  return known, {m: imports(p, known) for m, p in known.items()}


def test_every_module_is_in_a_layer():
  known, _ = graph()
  loose = [m for m in known if m != "embedlab" and layer_of(m) is None]
  assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_no_module_imports_a_layer_above_its_own():
  known, edges = graph()
  wrong = []
  for m, deps in edges.items():
    mine = layer_of(m)
    if mine is None:
      continue
    for line, dep, _ in deps:
      theirs = layer_of(dep)
      if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
        wrong.append(f"{known[m].relative_to(PACKAGE.parent)}:{line} ({mine}) imports {dep} "
                     f"({theirs})")
  assert not wrong, "imports of a higher layer:\n" + "\n".join(wrong)


def test_no_import_cycles():
  known, edges = graph()
  deps = {m: {d for _, d, _ in e if d in known and d != m and not m.startswith(d + ".")}
          for m, e in edges.items()}
  deps = {m: {d for d in ds if not known[d].name == "__init__.py"} for m, ds in deps.items()}
  state: dict[str, int] = {}
  cycles = []

  def visit(m, stack):
    state[m] = 1
    for d in sorted(deps[m]):
      if state.get(d) == 1:
        cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
      elif d not in state:
        visit(d, stack + [d])
    state[m] = 2

  for m in sorted(deps):
    if m not in state:
      visit(m, [m])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_modules():
  known, edges = graph()
  wrong = []
  for m, deps in edges.items():
    for line, dep, name in deps:
      if name.startswith("_") and dep != m:
        wrong.append(f"{known[m].relative_to(PACKAGE.parent)}:{line} imports {dep}.{name}")
  # attribute access on an imported module: ``alias._name``
  for m, path in known.items():
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedlab"):
        for a in node.names:
          if f"{node.module}.{a.name}" in known:
            aliases[a.asname or a.name] = f"{node.module}.{a.name}"
      elif isinstance(node, ast.Import):
        for a in node.names:
          if a.name.startswith("embedlab") and a.asname:
            aliases[a.asname] = a.name
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses "
                     f"{aliases[node.value.id]}.{node.attr}")
  assert not wrong, "private names used outside their module:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("source, message", [
    ("from embedlab.run import train\n", "imports of a higher layer"),
    ("from embedlab.core.tables import _table\n", "private names"),
])
def test_the_checks_catch_a_bad_module(tmp_path, monkeypatch, source, message):
  """The checks can fail: a core module importing run, or a private name, is reported."""
  fake = tmp_path / "embedlab"
  for p in PACKAGE.rglob("*.py"):
    target = fake / p.relative_to(PACKAGE)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(p.read_text())
  (fake / "core" / "bad_module.py").write_text(source)
  monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
  checks = {"imports of a higher layer": test_no_module_imports_a_layer_above_its_own,
            "private names": test_no_private_names_across_modules}
  with pytest.raises(AssertionError, match=message):
    checks[message]()


@pytest.mark.parametrize("old, names", [
    ("text", ("tokenize", "Vocab", "encode", "encode_corpus", "ngram_ids", "subword_ids")),
    ("sparse", ("sparse_lazy_adam", "localize", "apply_rule")),
    ("sharding", ("sharded_bag", "make_mesh", "place")),
    ("train", ("train",)),
])
def test_moved_module_attributes_warn_and_still_hold_their_names(old, names):
  import embedlab  # noqa: PLC0415

  with pytest.warns(DeprecationWarning, match=f"embedlab.{old} moved to"):
    module = getattr(embedlab, old)
  for name in names:
    assert callable(getattr(module, name)), (old, name)


def test_the_old_models_module_names_warn_and_lead_to_the_classifiers():
  from embedlab import models  # noqa: PLC0415
  from embedlab.models import classifiers  # noqa: PLC0415

  with pytest.warns(DeprecationWarning, match="moved to embedlab.models.classifiers.make_model"):
    assert models.make_model is classifiers.make_model
  with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
    models.nothing_here  # noqa: B018


@pytest.mark.parametrize("old, name, home", [
    ("sparse", "localize", "localize"),
    ("sparse", "sum_duplicates", "localize"),
    ("sparse", "choose_update_strategy", "sparse_rules"),
    ("sparse", "apply_rule", "sparse_rules"),
    ("sharding", "make_mesh", "meshes"),
    ("sharding", "state_shardings", "meshes"),
])
def test_names_moved_out_of_a_core_module_warn_and_lead_to_their_new_module(old, name, home):
  import importlib  # noqa: PLC0415

  module = importlib.import_module(f"embedlab.core.{old}")
  new = importlib.import_module(f"embedlab.core.{home}")
  with pytest.warns(DeprecationWarning, match=f"embedlab.core.{old}.{name} moved to "
                                              f"embedlab.core.{home}.{name}"):
    assert getattr(module, name) is getattr(new, name)
  with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
    module.nothing_here  # noqa: B018
