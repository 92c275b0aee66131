"""The import layers hold (README "Repository layout"): a module imports only from its own layer or lower.

    utils/ (0) < config.py (1) < models/ (2) < datasets/ (3) < training/, deploy/ (4) < top-level scripts (5)

Nothing imports a top-level script; ``bench/`` and ``tests/`` may import any library module. Every import
counts, including those inside functions and under ``if TYPE_CHECKING``.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = {"utils": 0, "config": 1, "models": 2, "datasets": 3, "training": 4, "deploy": 4}
SCRIPT_LAYER = 5
CONSUMERS = ("bench", "tests")  # import any library module, never a script
SKIPPED = {".venv", ".git", "__pycache__", "training_data", "runs", "outputs"}


def _modules(root: Path) -> list[Path]:
    """Every project .py file under ``root`` (virtualenvs, data and run folders aside)."""
    return sorted(p for p in root.rglob("*.py")
                  if not any(part in SKIPPED or part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def _imported(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``tree``; relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.append((node.lineno, name))
    return found


def layering_violations(root: Path) -> list[str]:
    """One line per import that breaks the layer rules in the tree at ``root``: file, line, import, rule."""
    files = _modules(root)
    scripts = {p.stem for p in files if p.parent == root and p.stem not in LAYERS}
    problems = []
    for path in files:
        rel = path.relative_to(root)
        top = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if top in CONSUMERS:
            layer = None
        elif top in LAYERS:
            layer = LAYERS[top]
        elif top in scripts:
            layer = SCRIPT_LAYER
        else:
            problems.append(f"{rel}: folder '{top}' has no layer; add it to LAYERS in tests/test_layering.py")
            continue
        package = list(rel.parts[:-1])
        for line, name in _imported(ast.parse(path.read_text(encoding="utf-8"), str(rel)), package):
            target = name.split(".")[0]
            if target in scripts:
                problems.append(f"{rel}:{line}: imports '{name}': nothing may import a top-level script")
            elif layer is not None and target in LAYERS and LAYERS[target] > layer:
                problems.append(f"{rel}:{line}: imports '{name}': layer {top} ({layer}) may not import "
                                f"{target} ({LAYERS[target]})")
    return problems


def test_the_repository_keeps_its_layers() -> None:
    problems = layering_violations(REPO)
    assert not problems, "\n".join(problems)


def test_the_checker_names_each_bad_import(tmp_path: Path) -> None:
    files = {
        "utils/__init__.py": "",
        "utils/plumbing.py": "import os\nfrom utils import other\n\n\ndef f():\n"
                             "    from models.detector import FaceDetector\n",
        "config.py": "from datasets.wider import read_wider_annotations\n",
        "models/__init__.py": "",
        "models/net.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import training.loop\n",
        "datasets/__init__.py": "",
        "datasets/reader.py": "from . import helpers\nfrom ..models import net\nimport train_stage\n",
        "training/__init__.py": "",
        "training/loop.py": "import models.net, datasets.reader, config, utils.plumbing\n",
        "bench/bench_x.py": "import training.loop\nfrom train_stage import main\n",
        "tests/test_x.py": "import deploy_tool\n",
        "train_stage.py": "import training.loop\n",
        "deploy_tool.py": "import train_stage\n",
        "extras/thing.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert sorted(layering_violations(tmp_path)) == [
        "bench/bench_x.py:2: imports 'train_stage': nothing may import a top-level script",
        "config.py:1: imports 'datasets.wider': layer config (1) may not import datasets (3)",
        "datasets/reader.py:3: imports 'train_stage': nothing may import a top-level script",
        "deploy_tool.py:1: imports 'train_stage': nothing may import a top-level script",
        "extras/thing.py: folder 'extras' has no layer; add it to LAYERS in tests/test_layering.py",
        "models/net.py:3: imports 'training.loop': layer models (2) may not import training (4)",
        "tests/test_x.py:1: imports 'deploy_tool': nothing may import a top-level script",
        "utils/plumbing.py:6: imports 'models.detector': layer utils (0) may not import models (2)",
    ]
