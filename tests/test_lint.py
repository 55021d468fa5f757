"""Code format: isort, black and flake8 at line length 120, like MONAI (the model zoo runs the same checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ["ideal_components", "tests", "benchmarks"]


@pytest.mark.parametrize(
    "cmd",
    [["isort", "--check-only", "--diff"], ["black", "--check", "-l", "120", "--skip-magic-trailing-comma"], ["flake8"]],
    ids=["isort", "black", "flake8"],
)
def test_code_format(cmd):
    pytest.importorskip(cmd[0])
    proc = subprocess.run([sys.executable, "-m", *cmd, *PATHS], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
