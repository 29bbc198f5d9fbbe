"""Fixtures for the end-to-end tests: the official `e2b` SDK against silo.

Test files use only the fixtures below (`sandbox`, `async_sandbox`, `envd`, `silo`) and
the SDK, so the same tests run in either mode, chosen by `SILO_E2E_MODE`:

- **server** (default; what scripts/test.sh runs): a real `silo serve` (tests/e2e/
  silo_server.py) with gVisor sandboxes from the `base` template; the SDK is in mode A
  (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY). At the end the server must hold nothing:
  no runsc container, netns or veth.
- **agent**: the `silo-agent` binary runs on the host and the SDK talks to it in debug
  mode (`E2B_DEBUG=true`: envd at http://localhost:49983, no control plane). The agent
  gets its own passwd/group files, so its default user `user` (uid 1000) has a temporary
  home and commands really run as that user. Quick to iterate on the agent alone.
  `SILO_AGENT_BIN` points at the binary.
"""

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
import httpx

REPO = Path(__file__).resolve().parents[2]
MODE = os.environ.get("SILO_E2E_MODE", "server")
if MODE not in ("server", "agent"):
    raise SystemExit(f"SILO_E2E_MODE={MODE!r}: use server or agent")


def pytest_collection_modifyitems(config, items):
    """`server_only` tests need the control plane; agent mode skips them."""
    if MODE == "agent":
        skip = pytest.mark.skip(reason="needs the control plane (SILO_E2E_MODE=server)")
        for item in items:
            if "server_only" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "server_only: needs a real silo serve")


# --------------------------------------------------------------------------------------
# server mode

if MODE == "server":
    from silo_server import SiloServer

    @pytest.fixture(scope="session")
    def silo():
        """One real `silo serve` for the session, checked for leaks at the end."""
        # Metrics sampled every second, so test_metrics.py need not wait long.
        server = SiloServer(extra_args=("--metrics-interval", "1")).start()
        os.environ.pop("E2B_DEBUG", None)
        os.environ.update(server.env())
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture
    def sandbox(silo):
        from e2b import Sandbox

        sbx = Sandbox.create("base", timeout=120)
        yield sbx
        sbx.kill()

    @pytest_asyncio.fixture
    async def async_sandbox(silo):
        from e2b import AsyncSandbox

        sbx = await AsyncSandbox.create("base", timeout=120)
        yield sbx
        await sbx.kill()

    @pytest.fixture
    def envd(sandbox, silo):
        """A raw HTTP client for the sandbox's envd, through the proxy, for malformed input."""
        headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
        token = sandbox._envd_access_token
        if token:
            headers["X-Access-Token"] = token
        with httpx.Client(base_url=silo.url, headers=headers, timeout=60) as client:
            yield client


# --------------------------------------------------------------------------------------
# agent mode

if MODE == "agent":

    AGENT_BIN = Path(
        os.environ.get(
            "SILO_AGENT_BIN",
            REPO / "target-a/x86_64-unknown-linux-gnu/release/silo-agent",
        )
    )
    AGENT_PORT = 49983  # the SDK's debug mode always uses localhost:49983
    ENVD_URL = f"http://localhost:{AGENT_PORT}"
    USER_UID = 1000

    os.environ["E2B_DEBUG"] = "true"
    os.environ.pop("E2B_SANDBOX_URL", None)


    def _wait_healthy(proc, deadline):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"silo-agent exited with {proc.returncode}")
            try:
                if httpx.get(f"{ENVD_URL}/health", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("silo-agent did not become healthy")


    @pytest.fixture(scope="session")
    def agent():
        """The agent on the host, as root, with a throwaway user database and homes."""
        if not AGENT_BIN.exists():
            pytest.exit(f"silo-agent binary not found at {AGENT_BIN}; build it or set SILO_AGENT_BIN")
        base = Path(tempfile.mkdtemp(prefix="silo-agent-e2e-"))
        base.chmod(0o755)  # the unprivileged user must reach its home
        user_home = base / "home" / "user"
        root_home = base / "root"
        user_home.mkdir(parents=True)
        root_home.mkdir()
        os.chown(user_home, USER_UID, USER_UID)
        (base / "passwd").write_text(
            f"root:x:0:0:root:{root_home}:/bin/bash\n"
            f"user:x:{USER_UID}:{USER_UID}::{user_home}:/bin/bash\n"
        )
        (base / "group").write_text(f"root:x:0:\nuser:x:{USER_UID}:\n")
        log = open(base / "agent.log", "wb")
        proc = subprocess.Popen(
            [
                str(AGENT_BIN),
                "--listen", f"127.0.0.1:{AGENT_PORT}",
                "--default-user", "user",
                "--passwd", str(base / "passwd"),
                "--group", str(base / "group"),
                "--sudo-socket", str(base / "sudo.sock"),
                "--log", "silo_agent=debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(proc, time.monotonic() + 10)
            # As the control plane does once a sandbox is up (the agent then warms a shell).
            httpx.post(f"{ENVD_URL}/init", json={}, timeout=10).raise_for_status()
            yield {"url": ENVD_URL, "home": str(user_home)}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            failed = os.environ.get("SILO_KEEP_AGENT_LOG")
            if failed:
                print(f"agent log kept in {base / 'agent.log'}")
            else:
                shutil.rmtree(base, ignore_errors=True)


    @pytest.fixture
    def sandbox(agent):
        from e2b import Sandbox

        sbx = Sandbox.create()
        yield sbx
        sbx.kill()


    @pytest_asyncio.fixture
    async def async_sandbox(agent):
        from e2b import AsyncSandbox

        sbx = await AsyncSandbox.create()
        yield sbx
        await sbx.kill()


    @pytest.fixture
    def envd(agent):
        """A raw HTTP client for envd, for raw-HTTP tests of malformed input."""
        with httpx.Client(base_url=agent["url"], timeout=60) as client:
            yield client


# --------------------------------------------------------------------------------------
# shared helpers (every mode)


@pytest.fixture
def unique():
    """A fresh relative name, so tests never see each other's files."""
    return f"t-{uuid.uuid4().hex[:12]}"
