"""The package's layering (docs/architecture.md) holds: import-linter's contracts in
pyproject.toml, checked by its own command line.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_layers_only_point_down():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "Layers only point down KEPT" in result.stdout


def test_every_folder_of_modules_is_a_regular_package():
    """setuptools' find_packages (a non-editable install) skips folders without __init__.py."""
    folders = {path.parent for path in (ROOT / "fedrec").rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []
