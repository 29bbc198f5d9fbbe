"""Snapshots and fork through the official SDK: a sandbox saved whole (files, env,
processes and their memory) starts again as many independent sandboxes."""

import time

import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException

pytestmark = pytest.mark.server_only

# A background server holding a value that exists only in its memory: a copy that
# answers with the same value was restored with its processes, not rebooted.
MEMORY_SERVER = (
    "import http.server, secrets\n"
    "TOKEN = secrets.token_hex(8).encode()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200)\n"
    "        self.end_headers()\n"
    "        self.wfile.write(TOKEN)\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "http.server.HTTPServer(('127.0.0.1', 8000), H).serve_forever()\n"
)


def memory_token(sbx) -> str:
    deadline = time.monotonic() + 20
    while True:
        out = sbx.commands.run("curl -s http://127.0.0.1:8000/ || true", timeout=20)
        if out.stdout.strip():
            return out.stdout.strip()
        assert time.monotonic() < deadline, "the memory server never answered"
        time.sleep(0.2)


@pytest.fixture
def source(silo):
    sbx = Sandbox.create("base", timeout=180, envs={"ORIGIN": "source"})
    sbx.files.write("/home/user/state.txt", "v1")
    sbx.files.write("/home/user/server.py", MEMORY_SERVER)
    sbx.commands.run("python3 /home/user/server.py", background=True)
    yield sbx
    sbx.kill()


def test_a_snapshot_starts_twice_with_the_same_state_then_diverges(source):
    token = memory_token(source)
    snap = source.create_snapshot()
    assert snap.snapshot_id
    listed = [s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=source.sandbox_id).next_items()]
    assert snap.snapshot_id in listed
    copies = [Sandbox.create(snap.snapshot_id, timeout=120) for _ in range(2)]
    try:
        assert len({c.sandbox_id for c in copies + [source]}) == 3
        for copy in copies:
            assert copy.files.read("/home/user/state.txt") == "v1"
            assert copy.commands.run("echo $ORIGIN").stdout == "source\n"
            assert memory_token(copy) == token
        # From here on each goes its own way.
        copies[0].files.write("/home/user/state.txt", "first")
        copies[1].files.write("/home/user/state.txt", "second")
        assert copies[0].files.read("/home/user/state.txt") == "first"
        assert copies[1].files.read("/home/user/state.txt") == "second"
        assert source.files.read("/home/user/state.txt") == "v1"
        assert source.commands.run("echo alive").stdout == "alive\n"
    finally:
        for copy in copies:
            copy.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    with pytest.raises(SandboxException):
        Sandbox.create(snap.snapshot_id, timeout=60)


def test_named_snapshot_and_a_paused_source(source):
    assert source.pause() is True
    snap = source.create_snapshot(name="e2e-named")
    try:
        assert snap.names == ["e2e-named"]
        copy = Sandbox.create("e2e-named", timeout=60)
        try:
            assert copy.files.read("/home/user/state.txt") == "v1"
        finally:
            copy.kill()
        # The source was paused and stays so until it is resumed.
        assert Sandbox.get_info(source.sandbox_id).state.value == "paused"
        source.connect()
        assert source.files.read("/home/user/state.txt") == "v1"
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id)


def test_fork_of_three(source):
    token = memory_token(source)
    forks = source.fork(count=3)
    try:
        assert len(forks) == 3 and all(isinstance(f, Sandbox) for f in forks), forks
        assert len({f.sandbox_id for f in forks}) == 3
        for fork in forks:
            assert fork.files.read("/home/user/state.txt") == "v1"
            assert memory_token(fork) == token
            fork.files.write("/home/user/state.txt", fork.sandbox_id)
        for fork in forks:
            assert fork.files.read("/home/user/state.txt") == fork.sandbox_id
        assert source.files.read("/home/user/state.txt") == "v1"
    finally:
        for fork in forks:
            if isinstance(fork, Sandbox):
                fork.kill()


def test_bad_snapshot_and_fork_requests(silo, source):
    missing = "i" + "0" * 19
    status, body, _ = silo.api("POST", f"/sandboxes/{missing}/snapshots", {})
    assert status == 404, body
    status, body, _ = silo.api("POST", f"/sandboxes/{missing}/fork", {"count": 1})
    assert status == 404, body
    status, body, _ = silo.api("POST", f"/sandboxes/{source.sandbox_id}/fork", {"count": 0})
    assert status == 400 and "count" in body["message"], body
    status, body, _ = silo.api("POST", f"/sandboxes/{source.sandbox_id}/snapshots", {"memory": False})
    assert status == 400 and "filesystem-only" in body["message"], body
    status, body, _ = silo.api("DELETE", "/templates/snapnothing")
    assert status == 404, body


def test_a_disk_too_full_for_the_image_fails_clearly_and_the_sandbox_runs_on(monkeypatch):
    """The server's data dir on a 96 MiB tmpfs, a sandbox holding 200 MiB of memory: its
    image cannot be written. The error says why, and the sandbox runs on untouched."""
    import subprocess

    from silo_server import SiloServer

    server = SiloServer(subnet="10.224.0.0/16")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "silo-e2e-full", str(server.data_dir)], check=True)
    try:
        server.start()
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        sbx = Sandbox.create("base", timeout=120)
        sbx.files.write("/home/user/kept.txt", "kept")
        sbx.commands.run(
            # Random bytes: the image is compressed, so zeros would fit.
            "python3 -c \"import os, time; b = os.urandom(200 << 20); "
            "open('/tmp/ready', 'w').close(); time.sleep(600)\"",
            background=True,
        )
        deadline = time.monotonic() + 60
        while sbx.commands.run("test -e /tmp/ready && echo yes || true").stdout != "yes\n":
            assert time.monotonic() < deadline, "the allocation never finished"
            time.sleep(0.5)
        status, body, _ = server.api("POST", f"/sandboxes/{sbx.sandbox_id}/snapshots", {})
        assert status == 500, body
        assert "no space left on device" in body["message"].lower(), body
        assert "runs on" in body["message"], body
        assert sbx.files.read("/home/user/kept.txt") == "kept"
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
        assert server.api("GET", "/snapshots")[1] == []
        snapshots_dir = server.data_dir / "snapshots"
        assert not snapshots_dir.exists() or list(snapshots_dir.iterdir()) == [], "no half-written image"
    finally:
        server.stop(keep_data=True)
        subprocess.run(["umount", str(server.data_dir)], check=False)
        subprocess.run(["rm", "-rf", str(server.data_dir)], check=False)
