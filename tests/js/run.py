"""Runs one of the npm SDK smoke scripts of this folder against a silo server (shared by the
pytest suites that drive the JS SDKs)."""

import os
import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parent


def run_node_smoke(script: str, env: dict) -> subprocess.CompletedProcess:
    if not all((JS / "node_modules" / pkg).exists() for pkg in ("e2b", "@e2b/code-interpreter")):
        npm = shutil.which("npm")
        assert npm, "node and npm are needed for the JS SDK tests"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
    return subprocess.run(
        ["node", script],
        cwd=JS,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
