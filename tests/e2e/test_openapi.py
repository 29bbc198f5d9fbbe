"""`/openapi.json` (issue 8): the REST API described from the handlers themselves, and
schemathesis fuzzing every operation against a real server finds no 5xx and no answer
outside the document.

The server here has a template dir of its own (silo's templates linked in), so what the
fuzzer builds, aliases or deletes stays in it. Template build starts are left out of the
fuzzing: a generated `fromImage` would make the server reach for a registry outside this
machine."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from silo_server import ROOT, SiloServer

pytestmark = pytest.mark.server_only

SCHEMATHESIS = os.environ.get(
    "SILO_SCHEMATHESIS", str(ROOT / "tests/.venv-openapi/bin/schemathesis"))


@pytest.fixture(scope="module")
def server():
    root = Path(tempfile.mkdtemp(prefix="silo-openapi-e2e-"))
    shared = Path(os.environ.get("SILO_TEST_TEMPLATE_DIR", "/var/lib/silo/templates"))
    for name in ("base", "code-interpreter"):
        (root / name).symlink_to(shared / name)
    server = SiloServer(subnet="10.226.0.0/16")
    server.template_dir = str(root)
    server.start()
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_document_describes_every_route_it_names(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["api_key"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = doc["paths"]
    for path in ("/v2/sandboxes", "/sandboxes/{id}", "/sandboxes/{id}/metrics",
                 "/v2/sandboxes/{id}/logs", "/templates", "/v3/templates", "/health", "/metrics"):
        assert path in paths, sorted(paths)
    # Every operation it names is routed (answered by something other than the fallback).
    for path, operations in paths.items():
        concrete = path.replace("{id}", "i1111111111111111111").replace("{", "").replace("}", "")
        for method in operations:
            r = httpx.request(method.upper(), f"{server.url}{concrete}")
            assert "no route for" not in r.text, (method, path)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server):
    assert Path(SCHEMATHESIS).exists(), f"{SCHEMATHESIS} missing: scripts/test.sh installs it"
    run = subprocess.run(
        [SCHEMATHESIS, "run", f"{server.url}/openapi.json",
         "--header", f"X-API-Key: {server.api_key}",
         "--checks", "not_a_server_error,response_schema_conformance,"
                     "content_type_conformance,status_code_conformance",
         "--exclude-path-regex", "^/v2/templates/.*/builds/",
         "--max-examples", "15", "--workers", "1", "--request-timeout", "120",
         "--seed", "1", "--generation-deterministic"],
        # Its cache of found crashes goes there, not into the repo.
        cwd=server.data_dir, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
