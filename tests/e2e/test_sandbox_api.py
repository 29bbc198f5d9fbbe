"""The control plane through the official SDK: lifecycle, listing, timeouts, auth and
errors, against a real `silo serve` with gVisor sandboxes."""

import json
import os
import socket
import subprocess
import time
import uuid

import httpx
import pytest
from e2b import (
    AuthenticationException,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    SandboxState,
)
from e2b.exceptions import SandboxException

pytestmark = pytest.mark.server_only


def wait_until(predicate, what: str, limit: float = 60.0):
    """Poll until `predicate()` holds; the limit only bounds a hang, it asserts no speed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_create_info_and_kill(silo):
    tag = uuid.uuid4().hex
    sbx = Sandbox.create("base", timeout=60, metadata={"test": tag}, envs={"GREETING": "hej"})
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == {"test": tag}
        assert info.state == SandboxState.RUNNING
        assert info.end_at > info.started_at
        assert sbx.is_running()
        # envVars from create reach every process.
        assert sbx.commands.run("echo $GREETING").stdout == "hej\n"
        # gVisor's kernel answers, not the host's.
        assert sbx.commands.run("uname -r").stdout.strip() != os.uname().release
    finally:
        assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_commands_run_as_user_with_home(sandbox):
    out = sandbox.commands.run("whoami; pwd").stdout.split()
    assert out == ["user", "/home/user"]
    assert sandbox.commands.run("whoami", user="root").stdout == "root\n"


def test_writes_stay_in_their_sandbox(silo):
    a = Sandbox.create("base", timeout=60)
    b = Sandbox.create("base", timeout=60)
    try:
        a.files.write("/home/user/mine.txt", "a")
        a.commands.run("touch /etc/written-by-a", user="root")
        assert not b.files.exists("/home/user/mine.txt")
        assert not b.files.exists("/etc/written-by-a")
    finally:
        a.kill()
        b.kill()


def test_unknown_sandbox_is_not_found(silo):
    missing = "i" + "0" * 19
    with pytest.raises(NotFoundException):
        Sandbox.get_info(missing)
    with pytest.raises(NotFoundException):
        Sandbox.connect(missing)
    assert Sandbox.kill(missing) is False
    # Ids of the wrong shape name no sandbox either.
    assert Sandbox.kill("../../etc") is False


def test_unknown_template_says_how_to_build_it(silo):
    with pytest.raises(SandboxException) as err:
        Sandbox.create("no-such-template")
    assert "silo template build" in str(err.value)


def test_bad_api_key_is_rejected(silo):
    with pytest.raises(AuthenticationException):
        Sandbox.create("base", api_key="e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "1" * 40).next_items()


def test_connect_returns_a_working_sandbox(sandbox):
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.sandbox_id == sandbox.sandbox_id
    assert again.commands.run("echo connected").stdout == "connected\n"


def test_list_filters_by_metadata_and_state_and_pages(silo):
    tag = uuid.uuid4().hex
    made = [Sandbox.create("base", timeout=60, metadata={"list": tag, "n": str(i)}) for i in range(3)]
    try:
        query = SandboxQuery(metadata={"list": tag}, state=[SandboxState.RUNNING])
        seen = []
        paginator = Sandbox.list(query=query, limit=2)
        pages = 0
        while paginator.has_next:
            seen += [s.sandbox_id for s in paginator.next_items()]
            pages += 1
        assert sorted(seen) == sorted(s.sandbox_id for s in made)
        assert pages == 2
        only = Sandbox.list(query=SandboxQuery(metadata={"list": tag, "n": "1"})).next_items()
        assert [s.sandbox_id for s in only] == [made[1].sandbox_id]
        paused = Sandbox.list(query=SandboxQuery(metadata={"list": tag}, state=[SandboxState.PAUSED]))
        assert paused.next_items() == []
    finally:
        for sbx in made:
            sbx.kill()


def test_list_orders_by_start_and_filters_by_start_time_and_template_alias(silo):
    from datetime import datetime

    tag = uuid.uuid4().hex
    made = []
    try:
        for _ in range(3):
            made.append(Sandbox.create("base", timeout=60, metadata={"order": tag}))
            # Start times apart, as the filter compares them.
            time.sleep(0.01)
        ids = [s.sandbox_id for s in made]
        query = SandboxQuery(metadata={"order": tag})

        def listed(query, order=None):
            paginator = Sandbox.list(query=query, limit=2, order=order)
            seen = []
            while paginator.has_next:
                seen += [s.sandbox_id for s in paginator.next_items()]
            return seen

        assert listed(query, "asc") == ids
        assert listed(query, "desc") == ids[::-1]
        second_start = Sandbox.get_info(ids[1]).started_at
        later = SandboxQuery(metadata={"order": tag}, started_after=second_start)
        assert listed(later, "asc") == ids[1:]
        assert listed(SandboxQuery(metadata={"order": tag}, started_after=datetime.now().astimezone())) == []
        by_template = SandboxQuery(metadata={"order": tag}, template="base")
        assert sorted(listed(by_template)) == sorted(ids)
        other = SandboxQuery(metadata={"order": tag}, template="code-interpreter-v1")
        assert listed(other) == []
        status, body, _ = silo.api("GET", "/v2/sandboxes?order=sideways")
        assert status == 400 and "asc" in body["message"], body
    finally:
        for sbx in made:
            sbx.kill()


def test_list_and_kill_page_by_page_reaches_every_sandbox(silo):
    # The next page starts after where the last one ended, though its sandboxes are gone.
    tag = uuid.uuid4().hex
    made = {Sandbox.create("base", timeout=60, metadata={"sweep": tag}).sandbox_id for _ in range(3)}
    killed = set()
    paginator = Sandbox.list(query=SandboxQuery(metadata={"sweep": tag}), limit=1)
    while paginator.has_next:
        for info in paginator.next_items():
            Sandbox.kill(info.sandbox_id)
            killed.add(info.sandbox_id)
    assert killed == made
    status, body, _ = silo.api("GET", "/v2/sandboxes?nextToken=not-a-token")
    assert status == 400 and "X-Next-Token" in body["message"], body


def test_timeout_kills_and_set_timeout_moves_it(silo):
    short = Sandbox.create("base", timeout=2)
    kept = Sandbox.create("base", timeout=2)
    kept.set_timeout(120)
    try:
        wait_until(
            lambda: short.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()],
            "the short sandbox to time out",
        )
        with pytest.raises(NotFoundException):
            Sandbox.get_info(short.sandbox_id)
        assert kept.is_running()
        assert kept.commands.run("echo alive").stdout == "alive\n"
    finally:
        kept.kill()


def test_a_refused_request_leaves_its_connection_usable(silo):
    # The proxy refuses traffic for a sandbox that is not running before it forwards any of
    # it; a client still sending the request's body, or sending its next request on the
    # same connection, must get the answer, not a broken pipe (seen once as an SDK error
    # after a kill, instead of "was not found").
    def post(body_size, delay):
        conn = socket.create_connection(("127.0.0.1", silo.port), timeout=10)
        conn.sendall(
            b"POST /process.Process/Start HTTP/1.1\r\nHost: x\r\n"
            b"E2b-Sandbox-Id: i0000000000000000000\r\n"
            b"Content-Type: application/connect+json\r\n"
            b"Content-Length: %d\r\n\r\n" % body_size
        )
        time.sleep(delay)
        conn.sendall(b"x" * body_size)
        return conn, conn.recv(65536)

    conn, answer = post(1000, 0.2)
    assert answer.startswith(b"HTTP/1.1 502") and b"was not found" in answer
    assert b"connection: close" not in answer.lower()
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    conn.close()
    # A body too large to read first: the answer says the connection ends.
    conn, answer = post(200_000, 0)
    assert answer.startswith(b"HTTP/1.1 502") and b"connection: close" in answer.lower()
    conn.close()


def test_a_create_whose_client_hangs_up_ends_running_and_leaks_nothing(silo):
    # hyper drops a request's handler when its client hangs up. The create must go on to
    # its end, the sandbox running, listed and killable, not stop half-made with a
    # container, netns and address that nobody owns and a row stuck in "creating".
    tag = uuid.uuid4().hex
    body = json.dumps({"templateID": "base", "timeout": 60, "metadata": {"hangup": tag}}).encode()
    conn = socket.create_connection(("127.0.0.1", silo.port), timeout=10)
    conn.sendall(
        b"POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (silo.api_key.encode(), len(body), body)
    )
    # Long enough for the handler to have begun (a boot takes far longer); the outcome
    # asserted below must hold whenever the hang-up lands.
    time.sleep(0.2)
    conn.close()
    listed = lambda: Sandbox.list(query=SandboxQuery(metadata={"hangup": tag})).next_items()
    wait_until(lambda: listed(), "the create to end with the sandbox running")
    [info] = listed()
    sbx = Sandbox.connect(info.sandbox_id)
    try:
        assert sbx.commands.run("echo up").stdout == "up\n"
    finally:
        sbx.kill()
    wait_until(lambda: not any(silo.leaks().values()), "its teardown")


def test_killed_sandbox_traffic_says_not_running(silo):
    sbx = Sandbox.create("base", timeout=60)
    sbx.kill()
    with pytest.raises(SandboxException) as err:
        sbx.commands.run("echo hi")
    assert "was not found" in str(err.value)


def test_malformed_requests_get_e2b_errors(silo):
    status, body, _ = silo.api("POST", "/v2/sandboxes", b"{not json")
    assert status == 400 and body["code"] == 400 and body["message"]
    status, body, _ = silo.api("POST", "/v2/sandboxes", {"timeout": 10})
    assert status in (400, 422) and body["code"] == status
    status, body, _ = silo.api("POST", "/v2/sandboxes", {"templateID": "../../etc"})
    assert status == 400 and "invalid template name" in body["message"]
    status, body, _ = silo.api("GET", "/v2/sandboxes?state=zombie")
    assert status == 400
    status, body, _ = silo.api("GET", "/v2/sandboxes", key="wrong")
    assert status == 401 and body["code"] == 401
    status, body, _ = silo.api("GET", "/nowhere")
    assert status == 404 and body["code"] == 404


def test_create_kill_cycles_leave_nothing_behind(silo):
    """20 create/kill cycles: no runsc container, netns, veth, firewall chain or sandbox
    dir stays behind."""
    nothing = lambda: not any(silo.leaks().values())
    # Kills answer before teardown ends: let the earlier tests' teardowns finish first.
    wait_until(nothing, "earlier teardowns to finish")
    for _ in range(20):
        sbx = Sandbox.create("base", timeout=60)
        assert sbx.commands.run("true").exit_code == 0
        sbx.kill()
    wait_until(nothing, "teardown to finish")


def test_cli_client_commands(silo):
    env = {**os.environ, **silo.env()}
    run = lambda *args: subprocess.run([silo.bin, "sandbox", *args], env=env, capture_output=True, text=True)
    created = run("create", "base", "--timeout", "60", "--metadata", "via=cli")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    try:
        listed = run("ls")
        assert sid in listed.stdout
        ok = run("exec", sid, "echo", "from-cli")
        assert (ok.returncode, ok.stdout) == (0, "from-cli\n")
        failed = run("exec", sid, "echo oops >&2; exit 3")
        assert (failed.returncode, failed.stderr) == (3, "oops\n")
    finally:
        assert run("kill", sid).returncode == 0
    gone = run("kill", sid)
    assert gone.returncode != 0 and "was not found" in gone.stderr


def test_proxy_routes_by_host_name(sandbox, silo):
    """Mode B: `{port}-{id}.{domain}` reaches the sandbox's port without E2b-* headers."""
    host = f"49983-{sandbox.sandbox_id}.sandboxes.test"
    r = httpx.get(f"{silo.url}/health", headers={"Host": host})
    assert r.status_code == 204  # envd's health, not the server's (200)
    r = httpx.get(f"{silo.url}/health", headers={"Host": f"49983-{'i' + '1' * 19}.sandboxes.test"})
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    r = httpx.get(f"{silo.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_websockets_and_streams_pass_through_the_proxy(sandbox, silo):
    from websockets.sync.client import connect

    echo = open(os.path.join(os.path.dirname(__file__), "ws_echo.py")).read()
    sandbox.files.write("/home/user/ws_echo.py", echo)
    sandbox.commands.run("python3 /home/user/ws_echo.py 8765", background=True)
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8765"}
    url = silo.url.replace("http://", "ws://") + "/"
    deadline = time.monotonic() + 20
    while True:
        try:
            ws = connect(url, additional_headers=headers, open_timeout=5)
            break
        except Exception:
            assert time.monotonic() < deadline, "the echo server never answered"
            time.sleep(0.2)
    with ws:
        for text in ("hello", "x" * 1000):
            ws.send(text)
            assert ws.recv(timeout=10) == f"echo: {text}"

    # A streamed response arrives piece by piece: the server sends its second line only
    # once the client has read the first (it waits for a file the test writes then).
    server = (
        "import http.server, os, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    protocol_version = 'HTTP/1.1'\n"
        "    def chunk(self, data):\n"
        "        self.wfile.write(b'%x\\r\\n%s\\r\\n' % (len(data), data))\n"
        "        self.wfile.flush()\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.send_header('Transfer-Encoding', 'chunked')\n"
        "        self.end_headers()\n"
        "        self.chunk(b'first\\n')\n"
        "        while not os.path.exists('/tmp/go'):\n"
        "            time.sleep(0.05)\n"
        "        self.chunk(b'second\\n')\n"
        "        self.wfile.write(b'0\\r\\n\\r\\n')\n"
        "http.server.HTTPServer(('0.0.0.0', 8766), H).serve_forever()\n"
    )
    sandbox.files.write("/home/user/stream.py", server)
    sandbox.commands.run("python3 /home/user/stream.py", background=True)
    headers["E2b-Sandbox-Port"] = "8766"
    deadline = time.monotonic() + 20
    while httpx.head(silo.url + "/", headers=headers).status_code == 502:
        assert time.monotonic() < deadline, "the streaming server never answered"
        time.sleep(0.2)
    with httpx.stream("GET", silo.url + "/", headers=headers, timeout=20) as r:
        lines = r.iter_lines()
        assert next(lines) == "first"
        sandbox.files.write("/tmp/go", "")
        assert list(lines) == ["second"]


def test_api_keys_are_created_listed_and_revoked_on_a_running_server(silo):
    keys = lambda *args: subprocess.run(
        [silo.bin, "keys", "--data-dir", str(silo.data_dir), *args], capture_output=True, text=True
    )
    created = keys("create")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("e2b_") and key != silo.api_key
    assert key in keys("ls").stdout
    assert silo.api("GET", "/v2/sandboxes", key=key)[0] == 200

    revoked = keys("revoke", key)
    assert revoked.returncode == 0, revoked.stderr
    status, body, _ = silo.api("GET", "/v2/sandboxes", key=key)
    assert (status, body["code"]) == (401, 401)
    assert key not in keys("ls").stdout
    assert keys("revoke", key).returncode != 0, "revoking twice says there is no such key"
    assert silo.api("GET", "/v2/sandboxes")[0] == 200, "other keys keep working"


def test_template_resources_are_defaults_a_create_may_override(monkeypatch):
    """A template build's resources.json (what `silo template build --memory-mb` writes)
    sets its sandboxes' defaults; a create body may ask otherwise within the maximums."""
    import json
    import tempfile
    from pathlib import Path

    from silo_server import SiloServer

    server = SiloServer(subnet="10.223.0.0/16")
    real = sorted(Path(server.template_dir, "base").glob("*/rootfs"), key=lambda p: p.stat().st_mtime)[-1]
    templates = Path(tempfile.mkdtemp(prefix="silo-templates-"))
    build = templates / "base" / "b1"
    build.mkdir(parents=True)
    (build / "rootfs").symlink_to(real)
    (build / "resources.json").write_text(json.dumps({"cpuCount": 1, "memoryMB": 384, "diskSizeMB": 256}))
    server.template_dir = str(templates)
    server.start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        sbx = Sandbox.create("base", timeout=60)
        info = Sandbox.get_info(sbx.sandbox_id)
        assert (info.cpu_count, info.memory_mb) == (1, 384)
        assert server.api("GET", f"/sandboxes/{sbx.sandbox_id}")[1]["diskSizeMB"] == 256
        # The disk is the template's size: a 300 MiB write does not fit.
        out = sbx.commands.run("dd if=/dev/zero of=/home/user/f bs=1M count=300 2>&1; echo rc=$?", timeout=120)
        assert "No space left on device" in out.stdout
        status, body, _ = server.api("POST", "/v2/sandboxes", {
            "templateID": "base", "timeout": 60, "memoryMB": 256, "envVars": {}, "metadata": {},
        })
        assert status == 201, body
        assert server.api("GET", f"/sandboxes/{body['sandboxID']}")[1]["memoryMB"] == 256
        status, body, _ = server.api("POST", "/v2/sandboxes", {
            "templateID": "base", "cpuCount": 99, "envVars": {}, "metadata": {},
        })
        assert status == 400 and "cpuCount 99" in body["message"], body
    finally:
        server.stop()
        import shutil
        shutil.rmtree(templates, ignore_errors=True)
