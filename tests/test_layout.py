"""The layering of the package: training never stands on deployment, and the deployed
runtime never loads training code."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pwl"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_training_layers_never_import_the_runtime():
    lower = [*PKG.glob("lit/*.py"), *PKG.glob("losses/*.py"), *PKG.glob("data/*.py"),
             *PKG.glob("stages/*.py"), *PKG.glob("callbacks/*.py"), PKG / "weights.py",
             PKG / "hybrid.py", PKG / "masks.py", PKG / "build.py", PKG / "train.py"]
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p)
                                                 if m.startswith("pwl.runtime"))
                 for p in lower}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_training_loads_no_runtime_module():
    # Transitive imports too: a helper of training that reaches into runtime/ shows here.
    code = ("import sys, pwl.train, pwl.lit, pwl.losses, pwl.data, pwl.callbacks, pwl.stages; "
            "print(sorted(m for m in sys.modules if m.startswith('pwl.runtime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


def test_the_runtime_imports_nothing_of_training():
    for path in PKG.glob("runtime/*.py"):
        bad = sorted(m for m in imported_modules(path)
                     if m.startswith(("pwl.lit", "pwl.losses", "pwl.callbacks", "pwl.train",
                                      "pwl.export", "lightning")))
        assert bad == [], path


def test_opening_bundles_loads_no_training_or_data_code():
    # Transitive imports: an app that only opens bundles must not pay for Lightning (over
    # a second of start-up here) or the data modules, which a model file alone never needs.
    # (wandb is not listed: timm itself imports it when it is installed.)
    code = ("import sys, pwl.runtime; print(sorted({m.split('.')[0] if m.startswith('lightning') "
            "else m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'pwl.data', 'pwl.lit', 'pwl.losses', 'pwl.callbacks', 'pwl.train', 'pwl.export', "
            "'torchmetrics'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"

