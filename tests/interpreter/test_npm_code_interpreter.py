"""The official npm `@e2b/code-interpreter` SDK against a real server: tests/js/interpreter.mjs."""

import sys
from pathlib import Path

import pytest

from conftest import MODE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "js"))
from run import run_node_smoke  # noqa: E402

pytestmark = pytest.mark.skipif(MODE != "server", reason="needs a real silo serve")


def test_npm_code_interpreter_sdk(request):
    silo = request.getfixturevalue("silo")
    result = run_node_smoke("interpreter.mjs", silo.env())
    assert result.returncode == 0, result.stdout + result.stderr
