"""The package's layering: no module imports a higher layer, not even inside a function.

Layers, lowest first::

    core (fmrilm/*.py helpers) → brain → tokenizer → corpus → llm → retrieval → evaluation
        → stimulation → stages → pipeline → cli

A module may import its own layer and any lower one. Every ``import`` / ``from … import`` node of
every ``fmrilm/**/*.py`` counts, wherever it sits (module level, inside a function or a class,
under ``if``), relative imports resolved, and so do ``importlib.import_module("fmrilm…")`` calls with
a literal name, which would otherwise hide a dependency in a string. The one allowance: a
package's ``commands.py`` (its sub-commands) may use the shared argument helpers of
``fmrilm/cli.py``, which imports every ``commands.py`` only by name to route to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmrilm"
ORDER = ("core", "brain", "tokenizer", "corpus", "llm", "retrieval", "evaluation", "stimulation", "stages",
         "pipeline", "cli")
# Top-level modules: the shared helpers at the bottom, the pipeline and the command line at the top.
TOP_LEVEL = {"__init__": "core", "artifacts": "core", "config": "core", "device": "core", "engine": "core",
             "errors": "core", "io": "core", "seeds": "core", "textembed": "core",
             "pipeline": "pipeline", "commands": "cli", "cli": "cli"}


def layer(module: str) -> str | None:
    """Layer of a dotted ``fmrilm…`` module name; None outside the package."""
    parts = module.split(".")
    if parts[0] != "fmrilm":
        return None
    if len(parts) == 1:
        return "core"
    head = parts[1]
    if head in TOP_LEVEL:
        return TOP_LEVEL[head]
    if head in ORDER:
        return head
    return f"unplaced subpackage {head!r}"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The module names an AST node imports (empty for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            return [node.module]
        # `from . import x` inside package p (its __init__) is relative to p itself, else to the parent
        base = module.split(".")[: len(module.split(".")) - node.level + is_package]
        target = ".".join(base + ([node.module] if node.module else []))
        return [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """``path:line (layer) imports module (layer)`` for every import of a higher layer or an unplaced one."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        own = layer(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in imported(node, module, path.name == "__init__.py"):
                other = layer(target)
                if other is None or (path.name == "commands.py" and target == "fmrilm.cli"):
                    continue
                if other not in ORDER or own not in ORDER or ORDER.index(other) > ORDER.index(own):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} ({own}) imports {target} ({other})")
    return found


def test_no_module_imports_a_higher_layer():
    violations = upward_imports()
    assert not violations, "imports of a higher layer:\n" + "\n".join(violations)


def test_every_subpackage_has_a_place_in_the_order():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(ORDER), f"add {sorted(packages - set(ORDER))} to ORDER in {__file__}"
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules <= set(TOP_LEVEL), f"add {sorted(modules - set(TOP_LEVEL))} to TOP_LEVEL in {__file__}"


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from fmrilm.stages import lm_common\n", ["(brain) imports fmrilm.stages (stages)"]),
    ("import fmrilm.evaluation.heldout as h\n", ["(brain) imports fmrilm.evaluation.heldout (evaluation)"]),
    ("from ..llm import model\n", ["(brain) imports fmrilm.llm (llm)"]),
    ("import importlib\nimportlib.import_module('fmrilm.cli')\n", ["(brain) imports fmrilm.cli (cli)"]),
    ("from fmrilm.io import read_json\nfrom . import store\n", []),
])
def test_the_check_sees_every_kind_of_import(tmp_path, source, expected):
    """Function-local, aliased, relative and by-name imports are all caught; lower ones pass."""
    (tmp_path / "fmrilm" / "brain").mkdir(parents=True)
    (tmp_path / "fmrilm" / "brain" / "probe.py").write_text(source)
    found = upward_imports(tmp_path / "fmrilm")
    assert [f.split(":", 1)[1].split(" ", 1)[1] for f in found] == expected
