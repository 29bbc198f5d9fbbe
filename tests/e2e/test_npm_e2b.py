"""The official npm `e2b` SDK against the same server: tests/js/smoke.mjs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "js"))
from run import run_node_smoke  # noqa: E402

pytestmark = pytest.mark.server_only


def test_js_sdk_smoke(silo):
    result = run_node_smoke("smoke.mjs", silo.env())
    assert result.returncode == 0, result.stdout + result.stderr
