"""Imports go downward only: no module of the package imports one of a higher layer.

The declared order (lowest first) is the package's architecture: a small core that
every part imports, the leaf algorithms and kernels, the runtime and the hardware
models, the compression algorithms, the model registry, the file format, training,
the stages composed from recipes, the rendering of reports and the command line.  A
module may import modules of its own layer and of the layers below.  The test reads
every import statement of the source (function-level imports included) with ``ast``,
so it does not depend on what happens to be imported at run time.

Package ``__init__`` modules are facades that re-export their children and are not
checked as importers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "efficientdl"

#: lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("efficientdl.errors", "efficientdl.core"),
    ("efficientdl.kernels", "efficientdl.compress.coding", "efficientdl.report.results", "efficientdl.data"),
    ("efficientdl.nn", "efficientdl.hardware"),
    ("efficientdl.compress",),                        # the algorithms: pruning, quantization, low rank, ...
    ("efficientdl.models",),
    ("efficientdl.format",),
    ("efficientdl.train",),
    ("efficientdl.compress.pipeline", "efficientdl.compress.methods", "efficientdl.compress.workload",
     "efficientdl.compress.support", "efficientdl.compress.recipe"),
    ("efficientdl.report",),
    ("efficientdl.cli", "efficientdl.__main__"),
]


def layer_of(module: str) -> int:
    """Index of the layer whose longest prefix matches ``module`` (``-1`` outside the package)."""
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(source: str, this: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import of the package's own modules in the
    source of module ``this``."""
    package = this if is_package else this.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, this)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:     # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else target))
    return [(line, name) for line, name in found if name == "efficientdl" or name.startswith("efficientdl.")]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_every_module_has_a_layer():
    assert all(layer_of(module_name(p)) >= 0 for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_downward(path):
    here = module_name(path)
    upward = [f"line {line}: {here} (layer {layer_of(here)}) imports {target} (layer {layer_of(target)})"
              for line, target in imports(path.read_text(), here) if layer_of(target) > layer_of(here)]
    assert not upward, "\n".join(upward)


def test_the_check_sees_upward_imports():
    """Relative, absolute and function-level imports are resolved: hardware importing compress is caught."""
    source = "import os\nfrom ..compress import prune\n\ndef f():\n    from efficientdl.cli import main\n"
    found = imports(source, "efficientdl.hardware.energy")
    assert found == [(2, "efficientdl.compress"), (5, "efficientdl.cli.main")]
    assert all(layer_of(t) > layer_of("efficientdl.hardware.energy") for _, t in found)
    assert imports("from . import cpu\n", "efficientdl.kernels", is_package=True) == [(1, "efficientdl.kernels.cpu")]
