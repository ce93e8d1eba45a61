"""The layers the tree shows, enforced: core imports no Lightning or Hydra and names no command-line
key, sampling imports no Lightning, results import no torch, and no layer imports one below it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lit_gpt_char"
HEAVY = ("lightning", "lightning_fabric", "pytorch_lightning", "torch", "hydra", "matplotlib", "tensorboard")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split()) & set(HEAVY)


@pytest.mark.parametrize(
    "statement, forbidden",
    [
        ("import lit_gpt_char.sample", {"lightning", "lightning_fabric", "pytorch_lightning"}),
        ("import lit_gpt_char.serve, lit_gpt_char.playground", {"lightning", "lightning_fabric", "pytorch_lightning"}),
        ("import lit_gpt_char.evaluate", {"lightning", "lightning_fabric", "pytorch_lightning"}),
        ("from lit_gpt_char import load_generator; load_generator", {"lightning", "lightning_fabric", "hydra"}),
        (
            "import lit_gpt_char.core.model, lit_gpt_char.core.generation, lit_gpt_char.core.checkpoint, "
            "lit_gpt_char.core.exports, lit_gpt_char.loading",
            {"lightning", "lightning_fabric", "hydra"},
        ),
        ("import lit_gpt_char.plot, lit_gpt_char.report", {"torch", "lightning", "lightning_fabric"}),
    ],
)
def test_what_each_entry_loads(statement, forbidden):
    assert not loaded_after(statement) & forbidden


def imports_of(path: Path) -> set[str]:
    """lit_gpt_char modules a file imports (at any depth in the file, lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lit_gpt_char"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lit_gpt_char")}
    return found


# What each layer may import of ours (besides itself).
ALLOWED = {
    "core": ("lit_gpt_char.errors", "lit_gpt_char.options", "lit_gpt_char.files", "lit_gpt_char.core"),
    "training": (
        "lit_gpt_char.errors",
        "lit_gpt_char.options",
        "lit_gpt_char.files",
        "lit_gpt_char.core",
        "lit_gpt_char.loading",
        "lit_gpt_char.training",
        "lit_gpt_char.results",
        "lit_gpt_char.config",
        "lit_gpt_char.console",  # the composed config printed at a run's start (console imports only errors)
    ),
    "results": ("lit_gpt_char.errors", "lit_gpt_char.files", "lit_gpt_char.results"),
    # Modules between the layers: atomic writes (nothing of ours), and the loader that knows training's
    # file layout without importing training.
    "files.py": ("lit_gpt_char.files",),
    "loading.py": ("lit_gpt_char.errors", "lit_gpt_char.options", "lit_gpt_char.files", "lit_gpt_char.core"),
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_a_layer_below_it(layer):
    paths = [SRC / layer] if layer.endswith(".py") else list((SRC / layer).rglob("*.py"))
    for path in paths:
        for module in imports_of(path):
            assert module.startswith(ALLOWED[layer]) or module == "lit_gpt_char", f"{path.name} imports {module}"


# What only the layers above core know: the train command's groups and the sampling commands' ckpt= key,
# and the LightningModule's and data module's names.
ABOVE_CORE = re.compile(
    r"\b(data|model|optim|trainer|paths|callbacks|logger)\.[a-z_]+\s*(=|is required)|\bckpt=|ckpt_path"
    r"|TextDataModule|\bLitGPT\b|LightningModule|lightning"
)


def messages_of(path: Path) -> list[str]:
    """The text of every string a module's code holds (f-strings' literal parts too), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("path", sorted((SRC / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_names_no_command_line_key_and_no_lightning(path):
    """core's messages and help name options as its schemas do (n_layer=0, path=...); the train command's
    subclasses add their group through Options.key."""
    found = [s for s in messages_of(path) if ABOVE_CORE.search(s)]
    assert not found, f"{path.name}: {found}"
