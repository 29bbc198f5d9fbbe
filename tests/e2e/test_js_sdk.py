"""The official npm `e2b` SDK against the same server: tests/js/smoke.mjs."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.server_only

JS = Path(__file__).resolve().parents[1] / "js"


def test_js_sdk_smoke(silo):
    if not (JS / "node_modules" / "e2b").exists():
        npm = shutil.which("npm")
        assert npm, "node and npm are needed for the JS SDK test"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
    result = subprocess.run(
        ["node", "smoke.mjs"],
        cwd=JS,
        env={**os.environ, **silo.env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
