"""The warm pool (`silo serve --pool NAME=SIZE`): sandboxes booted ahead of demand and
handed to creates. A pooled sandbox never carries another's state, env vars, files or
token; the pool refills, and grows with demand; pooled sandboxes stay invisible until
handed out, and doze (frozen) while they wait; a rebuilt template drains its stale pooled sandboxes, a deleted one all of
them."""

import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from e2b import Sandbox

from silo_server import SiloServer, own_template_dir

pytestmark = pytest.mark.server_only


def pooled(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as resp:
        return json.loads(resp.read())["pooled"]


def wait_pooled(server, template: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while pooled(server).get(template, 0) != count:
        assert time.monotonic() < deadline, f"pool of {template} never reached {count}: {pooled(server)}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def workspace():
    with own_template_dir("silo-pool-e2e-") as templates:
        yield templates.parent, templates


@pytest.fixture(scope="module")
def server(workspace):
    _, templates = workspace
    server = SiloServer(subnet="10.226.0.0/16",
                        extra_args=("--pool", "base=2", "--pool", "e2e-pooled=1"))
    server.template_dir = str(templates)
    server.start()
    yield server
    server.stop()


def envd_status(sbx, token) -> int:
    """What the sandbox's envd answers to a files read made with `token`."""
    req = urllib.request.Request(
        f"{os.environ['E2B_API_URL']}/files?path=/etc/hostname",
        headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983",
                 "X-Access-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_pooled_sandboxes_are_handed_out_clean_and_the_pool_refills(server, monkeypatch):
    server.use_env(monkeypatch)
    wait_pooled(server, "base", 2)
    # Waiting sandboxes are no one's: not listed.
    assert Sandbox.list().next_items() == []

    first = Sandbox.create("base", timeout=120, envs={"ONLY_FIRST": "1"}, metadata={"who": "first"})
    second = Sandbox.create("base", timeout=120, envs={"ONLY_SECOND": "2"}, metadata={"who": "second"})
    try:
        first.files.write("/home/user/mine.txt", "first's")
        first.commands.run("echo first > /tmp/trace")
        out = second.commands.run("echo [$ONLY_FIRST][$ONLY_SECOND]; ls /home/user; cat /tmp/trace || true")
        assert out.stdout.splitlines()[0] == "[][2]"
        assert "mine.txt" not in out.stdout and "first" not in out.stdout
        assert first.commands.run("echo $ONLY_FIRST$ONLY_SECOND").stdout.strip() == "1"
        assert first.get_info().metadata == {"who": "first"}
        assert second.get_info().metadata == {"who": "second"}
        end_in = (second.get_info().end_at.timestamp() - time.time())
        assert 60 < end_in <= 125, end_in
        # Each has its own token; one's does not open the other.
        first_token, second_token = first._envd_access_token, second._envd_access_token
        assert first_token and second_token and first_token != second_token
        assert envd_status(second, first_token) == 401
        assert envd_status(second, second_token) == 200
        listed = {s.sandbox_id for s in Sandbox.list().next_items()}
        assert listed == {first.sandbox_id, second.sandbox_id}
        # The pool refills behind the creates.
        wait_pooled(server, "base", 2)
    finally:
        first.kill()
        second.kill()

    # Demand grows the pool (up to 4x its configured 2): five creates in a row.
    burst = [Sandbox.create("base", timeout=60) for _ in range(5)]
    for sbx in burst:
        sbx.kill()
    deadline = time.monotonic() + 60
    while pooled(server).get("base", 0) < 5:
        assert time.monotonic() < deadline, f"the pool did not grow with demand: {pooled(server)}"
        time.sleep(0.2)

    # A create without env vars gets the sandbox with the token it was booted with (its
    # agent is not configured again): still each its own, and the only one that opens it.
    plain = [Sandbox.create("base", timeout=60) for _ in range(2)]
    try:
        tokens = [sbx._envd_access_token for sbx in plain]
        assert all(tokens) and tokens[0] != tokens[1]
        assert envd_status(plain[0], tokens[1]) == 401
        assert envd_status(plain[0], tokens[0]) == 200
        assert plain[1].commands.run("echo ok").stdout == "ok\n"
    finally:
        for sbx in plain:
            sbx.kill()

    # A create asking for other resources, or a non-secure one, is served too.
    other = Sandbox.create("base", timeout=60, secure=False)
    try:
        assert other.commands.run("echo ok").stdout == "ok\n"
    finally:
        other.kill()


def cpu_shares(sandbox_id: str) -> int:
    return int(Path(f"/sys/fs/cgroup/cpu/silo/{sandbox_id}/cpu.shares").read_text())


def test_pooled_sandboxes_doze_until_handed_out(server, monkeypatch):
    # Frozen while they wait (an idle gVisor sandbox burns CPU), thawed by the hand-out;
    # booted at the smallest CPU share (running sandboxes win the cores from a refill),
    # handed out at the normal one.
    server.use_env(monkeypatch)
    deadline = time.monotonic() + 60  # (the pool may hold more: demand grew it)
    while server.api("GET", "/health")[1]["dozing"] < 2:
        assert time.monotonic() < deadline, server.api("GET", "/health")[1]
        time.sleep(0.2)
    db = sqlite3.connect(f"file:{server.data_dir / 'catalog.db'}?mode=ro", uri=True)
    try:
        waiting = [r[0] for r in db.execute("SELECT id FROM sandboxes WHERE state = 'pooled'")]
    finally:
        db.close()
    assert waiting and all(cpu_shares(w) == 2 for w in waiting), waiting
    sbx = Sandbox.create("base", timeout=60)
    try:
        assert cpu_shares(sbx.sandbox_id) == 1024
        assert sbx.commands.run("echo awake").stdout == "awake\n"
        sbx.files.write("/tmp/f", "x")
        assert sbx.files.read("/tmp/f") == "x"
    finally:
        sbx.kill()


def test_a_rebuilt_template_drains_its_stale_pooled_sandboxes(workspace, server, monkeypatch):
    server.use_env(monkeypatch)
    root, _ = workspace
    context = root / "context"
    context.mkdir(exist_ok=True)

    def build(version: str):
        (context / "Dockerfile").write_text(f"FROM base\nRUN echo {version} > /version.txt\n")
        done = subprocess.run(
            [os.environ.get("SILO_BIN", "target/release/silo"), "template", "build", "-n", "e2e-pooled",
             str(context)], capture_output=True, text=True, timeout=600, env={**os.environ, **server.env()})
        assert done.returncode == 0, done.stderr

    build("one")
    wait_pooled(server, "e2e-pooled", 1)
    build("two")
    # Never a sandbox of build one after build two is published; the pool refills
    # from build two.
    sbx = Sandbox.create("e2e-pooled", timeout=60)
    try:
        assert sbx.files.read("/version.txt").strip() == "two"
    finally:
        sbx.kill()
    wait_pooled(server, "e2e-pooled", 1)
    sbx = Sandbox.create("e2e-pooled", timeout=60)
    try:
        assert sbx.files.read("/version.txt").strip() == "two"
    finally:
        sbx.kill()

    # Deleting the template takes its pooled sandboxes with it (they are no one's).
    deleted = subprocess.run(
        [os.environ.get("SILO_BIN", "target/release/silo"), "template", "delete", "e2e-pooled"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **server.env()})
    assert deleted.returncode == 0, deleted.stderr
    wait_pooled(server, "e2e-pooled", 0)
    # Only base's pool is left running (it may still be growing or shrinking).
    deadline = time.monotonic() + 60
    while len(server.runsc_containers()) != pooled(server).get("base", 0):
        assert time.monotonic() < deadline, (server.runsc_containers(), pooled(server))
        time.sleep(0.2)


def test_a_stop_while_the_pool_refills_leaves_nothing_behind(monkeypatch):
    # A hand-out starts a refill (a boot of ~0.3 s); stopping at once used to end the
    # server mid-boot, leaving the sandbox's netns, firewall chain and directory.
    server = SiloServer(subnet="10.227.0.0/16", extra_args=("--pool", "base=1")).start()
    try:
        server.use_env(monkeypatch)
        wait_pooled(server, "base", 1)
        Sandbox.create("base", timeout=60)
    finally:
        server.stop()  # asserts that nothing leaked


def test_a_pooled_code_interpreter_sandbox_has_its_kernel_up(monkeypatch):
    # Pooled sandboxes join the pool once their default kernels have started, so the
    # first run_code after the hand-out does not wait for a kernel.
    from e2b_code_interpreter import Sandbox as CodeSandbox

    server = SiloServer(subnet="10.228.0.0/16", extra_args=("--pool", "code-interpreter=1")).start()
    try:
        server.use_env(monkeypatch)
        wait_pooled(server, "code-interpreter", 1, timeout=180)
        sbx = CodeSandbox.create(timeout=60)
        try:
            languages = [c.language for c in sbx.list_code_contexts()]
            assert "python" in languages, languages
            assert sbx.run_code("1+1").text == "2"
        finally:
            sbx.kill()
    finally:
        server.stop()
