"""docs/examples/python_api.py (the executed example of docs/python-api.md) runs and does what it says."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mixmag

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "docs" / "examples" / "python_api.py"
DOC = REPO_ROOT / "docs" / "python-api.md"


def _mm_names(source: str) -> set[str]:
    """Attributes read from ``mm`` in a Python source."""
    tree = ast.parse(source)
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "mm"}


def test_the_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "out")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "tiny.d16" in out and "virchow2" in out  # the zoo table
    assert "tiled 8 slides: 16 regions" in out
    assert "region embeddings of 8 slides" in out
    assert "features (2, 21, 16), cls (2, 32), tokens (2, 21, 32)" in out
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "evaluate" / "comparison.csv").is_file()
    assert (tmp_path / "out" / "study" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written outside OUT_DIR


def test_the_example_and_the_page_use_only_the_public_api() -> None:
    used = _mm_names(EXAMPLE.read_text(encoding="utf-8"))
    assert used <= set(mixmag.__all__), sorted(used - set(mixmag.__all__))
    assert {"tile_slides", "embed_slides", "pretrain_region_encoder", "encode_regions", "train_mil",
            "compare_runs", "build_report", "run_study", "list_encoders", "embed_slide"} <= used
    text = DOC.read_text(encoding="utf-8")
    blocks = [b.split("\n", 1)[1] for b in text.split("```python")[1:]]
    code = "\n".join(b.split("```", 1)[0] for b in blocks)
    page_names = _mm_names(code)
    assert page_names <= set(mixmag.__all__), sorted(page_names - set(mixmag.__all__))
    assert "docs/examples/python_api.py" in text or "examples/python_api.py" in text
