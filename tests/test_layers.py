"""The house as the docs draw it: the layers contract (pyproject.toml), a root of at most 10
modules, no module over 400 lines (issue 21). A build that breaks them fails here, not in review."""
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "tlearn"


def test_every_import_goes_down_the_layers():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                             "lint_imports_command()", "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_root_keeps_at_most_ten_modules():
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(modules) <= 10, modules


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(PACKAGE)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
