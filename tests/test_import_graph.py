"""The import direction of the design (shared/DESIGN.md §1), read from the source with ``ast``.

- core (``ctr/*.py`` and ``ctr/recipe/``: batch, schema, registry, recipe, errors, typed, atomic, metrics) imports
  nothing of ours beyond core, not even lazily;
- kernels import nothing of ours outside ``ctr.kernels``;
- models, embeddings, datasets and train reach kernels only through an op's public function
  (``ctr.kernels.<op>``), never a backend module of an op (``reference``, ``native``,
  ``triton``, ...) or ``ctr.kernels.native``; no module outside kernels imports ``ctypes``;
- each op's ``reference.py`` imports no native code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ctr": ROOT / "ctr", "ctr.embeddings": ROOT / "embeddings", "ctr.kernels": ROOT / "kernels",
            "ctr.datasets": ROOT / "datasets"}
CORE = {"ctr.batch", "ctr.schema", "ctr.registry", "ctr.recipe", "ctr.errors", "ctr.typed", "ctr.atomic",
        "ctr.metrics", "ctr"}
CLIENTS = ("ctr.models", "ctr.embeddings", "ctr.datasets", "ctr.train")


def modules() -> dict[str, Path]:
    """Every module of ours: dotted name → file."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "ctr" and parts[0] in ("embeddings", "kernels", "datasets"):
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


ALL = modules()


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n == "ctr" or n.startswith("ctr.")}


def test_the_walk_sees_the_packages():
    assert {"ctr.recipe", "ctr.kernels.embedding_bag.triton", "ctr.embeddings.full", "ctr.train.loop"} <= set(ALL)


def in_core(name: str) -> bool:
    return name in CORE or any(name.startswith(c + ".") for c in CORE - {"ctr"})


@pytest.mark.parametrize("name", sorted(n for n in ALL if in_core(n)))
def test_core_imports_only_core(name):
    outside = {n for n in ours(imports(ALL[name])) if not in_core(n)}
    outside.discard("ctr")
    assert not outside, f"{name} imports {sorted(outside)}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith("ctr.kernels")))
def test_kernels_import_nothing_of_ours_outside_kernels(name):
    outside = {n for n in ours(imports(ALL[name])) if not n.startswith("ctr.kernels")}
    assert not outside, f"{name} imports {sorted(outside)}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith(CLIENTS)))
def test_clients_reach_kernels_through_op_functions_only(name):
    found = imports(ALL[name])
    assert "ctypes" not in found, f"{name} imports ctypes"
    ops = {p.name for p in PACKAGES["ctr.kernels"].iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for module in ours(found):
        parts = module.split(".")
        if parts[:2] != ["ctr", "kernels"]:
            continue
        assert len(parts) >= 3 and parts[2] in ops - {"native"}, f"{name} imports {module} (not an op)"
        if len(parts) > 3:  # ctr.kernels.<op>.<name>: a public name of the op package, not a module
            assert f"ctr.kernels.{parts[2]}.{parts[3]}" not in ALL, f"{name} imports the op module {module}"


@pytest.mark.parametrize("op", sorted(p.name for p in PACKAGES["ctr.kernels"].iterdir() if (p / "reference.py").exists()))
def test_references_are_pure_torch(op):
    found = imports(PACKAGES["ctr.kernels"] / op / "reference.py")
    native = {n for n in found if n == "ctypes" or ".native" in n or "triton" in n or "fbgemm" in n}
    assert not native, f"{op}/reference.py imports {sorted(native)}"
