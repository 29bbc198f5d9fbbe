"""Dozing (issue 7, `silo serve --doze` and `--doze-after`): a running sandbox idle for
that long is frozen in place (its freezer cgroup) and costs no CPU; the next request
thaws it without the caller noticing. A sandbox running a background process, or
serving a request, stays awake; so, by default (`--doze empty`), does one where a daemon
a command left behind still runs, which `--doze idle` lets doze. Pause, kill and snapshot
work on a dozing sandbox."""

import time
from pathlib import Path

import httpx
import pytest

from silo_server import SiloServer

pytestmark = pytest.mark.server_only

DOZE_AFTER = 2


@pytest.fixture(scope="module")
def server():
    server = SiloServer(subnet="10.227.0.0/16", extra_args=(
        "--doze-after", str(DOZE_AFTER), "--metrics-interval", "1")).start()
    yield server
    server.stop()


@pytest.fixture
def sdk(server, monkeypatch):
    server.use_env(monkeypatch)


def freezer_state(sandbox_id: str) -> str:
    return Path(f"/sys/fs/cgroup/freezer/silo/{sandbox_id}/freezer.state").read_text().strip()


def wait_state(sandbox_id: str, state: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while freezer_state(sandbox_id) != state:
        assert time.monotonic() < deadline, f"{sandbox_id} not {state} within {seconds} s"
        time.sleep(0.2)


def test_an_idle_sandbox_dozes_and_the_next_request_wakes_it(server, sdk):
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=120)
    try:
        sbx.files.write("/home/user/before.txt", "written awake")
        wait_state(sbx.sandbox_id, "FROZEN")
        assert httpx.get(f"{server.url}/health").json()["dozing"] >= 1
        # Commands, files and info all work as if nothing happened.
        assert sbx.commands.run("echo awake").stdout == "awake\n"
        assert freezer_state(sbx.sandbox_id) == "THAWED"
        assert sbx.files.read("/home/user/before.txt") == "written awake"
        # And it dozes off again.
        wait_state(sbx.sandbox_id, "FROZEN")
        # Its timeline shows no trace of it: it was running all along.
        assert sbx.get_info().state.value == "running"
    finally:
        sbx.kill()


def test_a_request_without_its_token_does_not_wake_a_secure_sandbox(server, sdk):
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=120, secure=True)
    try:
        wait_state(sbx.sandbox_id, "FROZEN")
        envd = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
        list_processes = f"{server.url}/process.Process/List"
        for token in (None, "a guess"):
            headers = {**envd, "Content-Type": "application/json"}
            if token:
                headers["X-Access-Token"] = token
            refused = httpx.post(list_processes, headers=headers, content=b"{}")
            assert refused.status_code == 401, refused.text
            assert "envdAccessToken" in refused.json()["message"]
        # Its health needs no token, and is answered without waking it.
        assert httpx.get(f"{server.url}/health", headers=envd).status_code == 204
        assert freezer_state(sbx.sandbox_id) == "FROZEN"
        # With its token, as the SDK sends it, it wakes.
        assert sbx.commands.run("echo awake").stdout == "awake\n"
        assert freezer_state(sbx.sandbox_id) == "THAWED"
    finally:
        sbx.kill()


def test_a_sandbox_with_work_in_progress_stays_awake(server, sdk):
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=120)
    try:
        sbx.commands.run("sleep 600", background=True)
        # A streaming request in flight keeps it awake too.
        handle = sbx.commands.run("sleep 6; echo done", background=True)
        time.sleep(DOZE_AFTER * 2 + 1)
        assert freezer_state(sbx.sandbox_id) == "THAWED"
        assert handle.wait().stdout == "done\n"
        assert freezer_state(sbx.sandbox_id) == "THAWED"  # sleep 600 still runs
    finally:
        sbx.kill()


# A daemon: started by a command that has ended, so no request or started process
# accounts for it; only a look at the sandbox's processes sees it.
DAEMON = "setsid nohup sleep 600 >/dev/null 2>&1 &"


def test_a_daemon_left_behind_keeps_a_sandbox_awake_by_default(server, sdk):
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=120)
    try:
        sbx.commands.run(DAEMON)
        assert sbx.commands.list() == []
        time.sleep(DOZE_AFTER * 2 + 1)
        assert freezer_state(sbx.sandbox_id) == "THAWED"
        # Once it is gone, nothing runs but the agent: the sandbox dozes.
        sbx.commands.run("pkill -x sleep; true")
        wait_state(sbx.sandbox_id, "FROZEN")
    finally:
        sbx.kill()


def test_doze_idle_lets_a_sandbox_with_a_daemon_doze(monkeypatch):
    from e2b import Sandbox

    # Beside the module's server (10.227): a range of its own.
    idle = SiloServer(subnet="10.228.0.0/16", extra_args=(
        "--doze", "idle", "--doze-after", str(DOZE_AFTER), "--metrics-interval", "1")).start()
    try:
        idle.use_env(monkeypatch)
        sbx = Sandbox.create("base", timeout=120)
        sbx.commands.run(DAEMON)
        wait_state(sbx.sandbox_id, "FROZEN")
        assert sbx.commands.run("pgrep -x sleep >/dev/null && echo running").stdout == "running\n"
        sbx.kill()
    finally:
        idle.stop()


def test_pause_snapshot_and_kill_work_on_a_dozing_sandbox(server, sdk):
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=120)
    sbx.commands.run("echo state > /home/user/state.txt")
    wait_state(sbx.sandbox_id, "FROZEN")
    snap = sbx.create_snapshot()
    copy = Sandbox.create(snap.snapshot_id, timeout=60)
    try:
        assert copy.files.read("/home/user/state.txt") == "state\n"
    finally:
        copy.kill()
    wait_state(sbx.sandbox_id, "FROZEN")
    sbx.pause()
    sbx.connect()
    assert sbx.commands.run("cat /home/user/state.txt").stdout == "state\n"
    wait_state(sbx.sandbox_id, "FROZEN")
    sbx.kill()
    Sandbox.delete_snapshot(snap.snapshot_id)
    # (The server's stop checks that nothing of it is left.)
