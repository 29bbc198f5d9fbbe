"""Pause and resume through the official SDK: a paused sandbox comes back with its files,
env, background processes, open listeners and interpreter variables, as often as asked;
timeouts can pause instead of kill, and traffic can wake a paused sandbox."""

import time
import urllib.request
from datetime import datetime, timezone

import pytest
from e2b import Sandbox
from e2b.exceptions import NotFoundException, SandboxException

pytestmark = pytest.mark.server_only

CYCLES = 20


def via_proxy(silo, sandbox_id: str, port: int, path: str) -> str:
    """A request from outside, through silo's proxy, to a port inside the sandbox."""
    req = urllib.request.Request(f"{silo.url}{path}")
    req.add_header("E2b-Sandbox-Id", sandbox_id)
    req.add_header("E2b-Sandbox-Port", str(port))
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


def wait_for_state(sandbox_id: str, state: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if Sandbox.get_info(sandbox_id).state.value == state:
            return
        time.sleep(0.2)
    raise AssertionError(f"sandbox {sandbox_id} did not become {state} within {within}s")


def test_pause_resume_keeps_everything_every_time(silo):
    from e2b_code_interpreter import Sandbox as CodeSandbox
    from e2b import SandboxQuery, SandboxState

    sbx = CodeSandbox.create(timeout=600, envs={"PAUSE_TEST": "kept"})
    try:
        sbx.files.write("/home/user/note.txt", "written before the first pause")
        sbx.commands.run(
            "python3 -m http.server 8000 --directory /home/user >/dev/null 2>&1",
            background=True,
        )
        assert sbx.run_code("counter = 0").error is None
        deadline = time.monotonic() + 20
        while True:
            try:
                via_proxy(silo, sbx.sandbox_id, 8000, "/note.txt")
                break
            except OSError:
                assert time.monotonic() < deadline, "the HTTP server never came up"
                time.sleep(0.2)

        for cycle in range(1, CYCLES + 1):
            assert sbx.pause() is True, f"cycle {cycle}"
            assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
            paused = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()]
            assert sbx.sandbox_id in paused

            sbx.connect()
            assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
            assert sbx.files.read("/home/user/note.txt") == "written before the first pause"
            assert sbx.commands.run("echo $PAUSE_TEST").stdout == "kept\n"
            assert via_proxy(silo, sbx.sandbox_id, 8000, "/note.txt") == "written before the first pause"
            assert sbx.run_code("counter += 1; counter").text == str(cycle), f"cycle {cycle}"
    finally:
        sbx.kill()


def test_bad_pause_and_resume_requests(silo, sandbox):
    assert sandbox.pause() is True
    # Pausing a paused sandbox: 409, which the SDK reports as False.
    assert sandbox.pause() is False
    status, body, _ = silo.api("POST", f"/sandboxes/{sandbox.sandbox_id}/pause", {})
    assert (status, body["code"]) == (409, 409)
    assert "already paused" in body["message"]

    # A paused sandbox has no timeout to set: 404, as on E2B. It gets one as it resumes.
    with pytest.raises(NotFoundException):
        sandbox.set_timeout(3600)
    status, body, _ = silo.api("POST", f"/sandboxes/{sandbox.sandbox_id}/timeout", {"timeout": 3600})
    assert status == 404 and "paused" in body["message"]

    # The legacy resume endpoint resumes once, then a running sandbox is a conflict.
    status, body, _ = silo.api("POST", f"/sandboxes/{sandbox.sandbox_id}/resume", {"timeout": 60})
    assert status == 201 and body["sandboxID"] == sandbox.sandbox_id
    left = Sandbox.get_info(sandbox.sandbox_id).end_at - datetime.now(timezone.utc)
    assert left.total_seconds() <= 60
    status, body, _ = silo.api("POST", f"/sandboxes/{sandbox.sandbox_id}/resume", {})
    assert status == 409

    # Connect to a running sandbox is 200; to a paused one 201 (it resumed).
    status, _, _ = silo.api("POST", f"/v2/sandboxes/{sandbox.sandbox_id}/connect", {"timeout": 60})
    assert status == 200
    sandbox.pause()
    status, _, _ = silo.api("POST", f"/v2/sandboxes/{sandbox.sandbox_id}/connect", {"timeout": 60})
    assert status == 201
    assert sandbox.commands.run("echo back").stdout == "back\n"

    # A killed sandbox is gone for pause and resume alike.
    sandbox.pause()
    sandbox.kill()
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox.sandbox_id)
    with pytest.raises(NotFoundException):
        Sandbox.pause(sandbox.sandbox_id)
    status, _, _ = silo.api("POST", "/sandboxes/inotasandbox000000000/pause", {})
    assert status == 404
    status, body, _ = silo.api("POST", f"/sandboxes/{sandbox.sandbox_id}/resume", b"{not json")
    assert status in (400, 404), body


def test_timeout_pauses_and_traffic_resumes(silo):
    sbx = Sandbox.create(
        "base", timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": True}
    )
    try:
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}
        sbx.files.write("/home/user/state.txt", "survives the timeout")
        wait_for_state(sbx.sandbox_id, "paused")

        # Any traffic through the proxy wakes it: here the SDK's own file read.
        assert sbx.files.read("/home/user/state.txt") == "survives the timeout"
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
    finally:
        sbx.kill()


def test_a_signed_file_url_resumes_a_paused_secure_sandbox(silo):
    """The SDK's download URL carries a signature instead of the envd token: it wakes a
    secure autoResume sandbox as the token does, where a request with neither is refused
    and leaves the sandbox paused."""
    import urllib.error

    sbx = Sandbox.create(
        "base", timeout=600, secure=True, lifecycle={"on_timeout": "pause", "auto_resume": True}
    )
    try:
        sbx.files.write("/home/user/signed.txt", "read by its URL")
        assert sbx.pause()
        routing = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}

        unsigned = urllib.request.Request(
            f"{silo.url}/files?path=/home/user/signed.txt", headers=routing
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(unsigned, timeout=30)
        assert err.value.code == 401 and "signed" in err.value.read().decode()
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"

        url = sbx.download_url("/home/user/signed.txt")
        assert "signature=" in url
        with urllib.request.urlopen(urllib.request.Request(url, headers=routing), timeout=60) as resp:
            assert resp.read().decode() == "read by its URL"
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"

        # The upload URL, the same way: paused again, a POST to it wakes it and writes.
        assert sbx.pause()
        url = sbx.upload_url("/home/user/uploaded.txt")
        assert "signature=" in url
        upload = urllib.request.Request(
            url, data=b"written by its URL", method="POST",
            headers={**routing, "Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(upload, timeout=60) as resp:
            assert resp.status == 200
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
        assert sbx.files.read("/home/user/uploaded.txt") == "written by its URL"
    finally:
        sbx.kill()


def test_timeout_without_auto_resume_stays_paused(silo):
    sbx = Sandbox.create("base", timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        wait_for_state(sbx.sandbox_id, "paused")
        with pytest.raises(SandboxException):
            sbx.commands.run("echo no", request_timeout=10)
        # Raw traffic is told what to do about it.
        import urllib.error
        import urllib.request
        req = urllib.request.Request(f"{silo.url}/", headers={
            "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000",
        })
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 502 and "paused; connect to it" in err.value.read().decode()
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        sbx.connect(timeout=60)
        assert sbx.commands.run("echo yes").stdout == "yes\n"
    finally:
        sbx.kill()


def test_kill_9_of_silo_loses_no_sandbox(monkeypatch):
    """silo killed with SIGKILL mid-workload: at the next start the running sandbox is
    adopted with its work still going, the paused one resumes, and nothing leaks."""
    import signal

    from silo_server import SiloServer

    server = SiloServer(subnet="10.219.0.0/16").start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        busy = Sandbox.create("base", timeout=120)
        busy.commands.run(
            "while true; do date +%s%N >> /home/user/ticks; sleep 0.1; done", background=True
        )
        resting = Sandbox.create("base", timeout=120)
        resting.files.write("/home/user/kept.txt", "kept across kill -9")
        assert resting.pause() is True

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        server.start()

        assert Sandbox.get_info(busy.sandbox_id).state.value == "running"
        assert Sandbox.get_info(resting.sandbox_id).state.value == "paused"
        before = int(busy.commands.run("wc -l < /home/user/ticks").stdout)
        time.sleep(0.5)
        assert int(busy.commands.run("wc -l < /home/user/ticks").stdout) > before

        resting.connect()
        assert resting.files.read("/home/user/kept.txt") == "kept across kill -9"
        # Timeouts still fire after the restart.
        busy.set_timeout(1)
        deadline = time.monotonic() + 30
        while busy.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not busy.is_running()
    finally:
        server.stop()
