"""The import layers of ``[tool.importlinter]`` (pyproject.toml) hold, and the check can fail.

``lint-imports`` runs in a subprocess on *this* checkout's ``src/`` (not whatever ``mixmag`` happens
to be installed), without its cache. A second test plants one violation per contract in a copy of
the package and expects every contract to break, so the check cannot pass vacuously (for example
because the configuration went unread or the imports inside functions went uncounted).

A third contract is checked on the source itself: only ``mixmag.report`` imports matplotlib, so
every figure is drawn there (import-linter cannot express it: matplotlib is not a mixmag module).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "pyproject.toml"

# importlinter.cli.lint_imports(config_filename, no_cache) is the API behind the `lint-imports` command
_RUN = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))\n"
)


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", _RUN, str(CONFIG)], cwd=src, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_import_contracts_are_kept() -> None:
    """Layers, the synth leaf and acyclic packages hold; on failure the output names the imports."""
    result = _lint(REPO_ROOT / "src")
    report = result.stdout + result.stderr
    assert "No module named 'importlinter'" not in report, "install the test extra: pip install -e '.[test]'"
    assert result.returncode == 0, f"an import contract is broken (fix the import, not the contract):\n{report}"
    assert "0 broken" in report


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_each_contract_catches_a_violation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "src" / "mixmag", src / "mixmag", ignore=shutil.ignore_patterns("__pycache__"))
    pkg = src / "mixmag"
    # layers: io imports the tiler, lazily inside a function (which counts all the same)
    _append(pkg / "io" / "manifest.py", "\n\ndef _upward() -> object:\n    from mixmag.tiling import grid\n\n    return grid\n")
    # synth leaf: the tiler (above synth in the layers, so allowed there) imports the generator
    _append(pkg / "tiling" / "qc.py", "\n\nimport mixmag.synth  # noqa: E402\n")
    # acyclic: embed.errors -> embed.engine -> embed.batcher -> embed.errors
    _append(pkg / "embed" / "errors.py", "\n\nimport mixmag.embed.engine  # noqa: E402\n")

    result = _lint(src)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "0 kept, 3 broken" in report, report
    assert "mixmag.io.manifest -> mixmag.tiling.grid" in report, report


PACKAGE = REPO_ROOT / "src" / "mixmag"
DRAWING_PACKAGE = PACKAGE / "report"
_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _matplotlib_imports(path: Path) -> list[int]:
    """Line numbers where ``path`` imports matplotlib (any form, at module level or in a function)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in _IMPORT_FUNCTIONS):
            names = [node.args[0].value]
        else:
            continue
        if any(name == "matplotlib" or name.startswith("matplotlib.") for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def test_only_report_imports_matplotlib() -> None:
    """Plotting lives in ``mixmag.report``: no other module imports matplotlib, not even lazily."""
    found = {path: _matplotlib_imports(path) for path in sorted(PACKAGE.rglob("*.py"))}
    outside = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path, lines in found.items()
               if not path.is_relative_to(DRAWING_PACKAGE) for line in lines]
    assert not outside, ("matplotlib imported outside mixmag.report (draw with the Figure functions of "
                         "mixmag.report and save with mixmag.report.figures.save_png):\n" + "\n".join(outside))
    # the scan sees the imports that are allowed, so it cannot pass because it sees nothing
    assert found[DRAWING_PACKAGE / "figures.py"], "the matplotlib scan found no import in report/figures.py"


def test_matplotlib_scan_sees_every_import_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nimport matplotlib.pyplot as plt\nfrom matplotlib import colormaps\n"
                      "def f():\n    import importlib\n    return importlib.import_module('matplotlib.figure')\n"
                      "from .matplotlib import x\n", encoding="utf-8")
    assert _matplotlib_imports(module) == [2, 3, 6]
