"""The code interpreter driven by the official `e2b-code-interpreter` SDK, in one of two
modes chosen by `SILO_INTERPRETER_MODE`:

- **server** (default; what scripts/test.sh runs): a real `silo serve` (tests/e2e/
  silo_server.py) and sandboxes of the `code-interpreter` template, the SDK's default
  template name `code-interpreter-v1`; the kernels run inside gVisor.
- **host**: no sandbox. The crate's `serve` example runs the interpreter on a free local
  port against kernels installed on this host, and the SDK is pointed at it with
  `E2B_DEBUG=true` and `E2B_SANDBOX_URL`. Quick to iterate on the interpreter alone.

Tests use only the fixtures `sandbox`, `async_sandbox`, `raw` (an HTTP client for the
interpreter's port), `touch` (create a file the code can see) and `needs_kernel`.

Host-mode environment:
  SILO_INTERPRETER_BIN   the serve example (default: built with cargo into $CARGO_TARGET_DIR
                         or target/)
  SILO_KERNELSPEC_DIRS   colon-separated kernelspec dirs (default: the kernels venv,
                         tests/.venv-kernels/share/jupyter/kernels)
Set-up of the kernels venv: see tests/interpreter/README.md.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parents[2]
MODE = os.environ.get("SILO_INTERPRETER_MODE", "server")
if MODE not in ("server", "host"):
    raise SystemExit(f"SILO_INTERPRETER_MODE={MODE!r}: use server or host")
# What the code-interpreter template installs.
TEMPLATE_LANGUAGES = {"python", "bash", "javascript", "typescript"}
KERNELS_VENV = ROOT / "tests" / ".venv-kernels"
GLOBAL_ENVS = {"SILO_GLOBAL_VAR": "from-envd", "SILO_OVERRIDDEN": "global-value"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernelspec_dirs() -> list:
    env = os.environ.get("SILO_KERNELSPEC_DIRS")
    if env:
        return [d for d in env.split(":") if d]
    return [str(KERNELS_VENV / "share" / "jupyter" / "kernels")]


def _binary() -> str:
    explicit = os.environ.get("SILO_INTERPRETER_BIN")
    if explicit:
        return explicit
    subprocess.run(
        ["cargo", "build", "-q", "-p", "silo-interpreter", "--example", "serve"],
        cwd=ROOT,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "examples" / "serve")


def kernel_languages() -> set:
    if MODE == "server":
        return TEMPLATE_LANGUAGES
    langs = set()
    for d in _kernelspec_dirs():
        for spec in Path(d).glob("*/kernel.json"):
            try:
                langs.add(json.loads(spec.read_text())["language"].lower())
            except (OSError, ValueError, KeyError):
                pass
    return langs


def _descendants(pid: int) -> list:
    """Every live process under `pid` (kernels are children of the server)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pids: list) -> list:
    """The pids still running, after giving killed ones a moment to be reaped (a zombie
    waiting for init does not count)."""
    deadline = time.monotonic() + 5
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


class InterpreterServer:
    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cwd = tmp
        self.log_path = tmp / "serve.log"
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env["SILO_TEST_GLOBAL_ENVS"] = ",".join(f"{k}={v}" for k, v in GLOBAL_ENVS.items())
        env.setdefault("RUST_LOG", "info,silo_interpreter=debug")
        self.proc = subprocess.Popen(
            [_binary(), f"127.0.0.1:{self.port}", *_kernelspec_dirs()],
            cwd=self.cwd,
            env=env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("serve did not come up")

    def stop(self):
        kernels = _descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        leaked = _alive(kernels)
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not leaked, f"kernel processes left behind: {leaked}"


if MODE == "host":

    @pytest.fixture(scope="session")
    def server(tmp_path_factory):
        if not any(Path(d).is_dir() for d in _kernelspec_dirs()):
            pytest.skip("no kernelspecs: create tests/.venv-kernels (tests/interpreter/README.md)")
        srv = InterpreterServer(tmp_path_factory.mktemp("interpreter"))
        srv.start()
        yield srv
        srv.stop()
        print(f"interpreter log: {srv.log_path}")

    @pytest.fixture(scope="session", autouse=True)
    def sdk_env(server):
        os.environ["E2B_DEBUG"] = "true"
        os.environ["E2B_SANDBOX_URL"] = server.url
        yield

    @pytest.fixture
    def sandbox():
        from e2b_code_interpreter import Sandbox

        sbx = Sandbox.create()
        yield sbx
        sbx.kill()

    @pytest_asyncio.fixture
    async def async_sandbox():
        from e2b_code_interpreter import AsyncSandbox

        sbx = await AsyncSandbox.create()
        yield sbx
        await sbx.kill()

    @pytest.fixture
    def raw(server):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client

    @pytest.fixture
    def touch():
        return lambda path: open(path, "w").close()

else:
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from silo_server import SiloServer

    @pytest.fixture(scope="session", autouse=True)
    def silo():
        # Its own address range, so it may run beside other servers.
        server = SiloServer(subnet="10.217.0.0/16").start()
        os.environ.pop("E2B_DEBUG", None)
        os.environ.update(server.env())
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture
    def sandbox(silo):
        from e2b_code_interpreter import Sandbox

        sbx = Sandbox.create(envs=GLOBAL_ENVS, timeout=300)
        yield sbx
        sbx.kill()

    @pytest_asyncio.fixture
    async def async_sandbox(silo):
        from e2b_code_interpreter import AsyncSandbox

        sbx = await AsyncSandbox.create(envs=GLOBAL_ENVS, timeout=300)
        yield sbx
        await sbx.kill()

    @pytest.fixture
    def raw(silo, sandbox):
        headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999"}
        if sandbox._envd_access_token:
            headers["X-Access-Token"] = sandbox._envd_access_token
        with httpx.Client(base_url=silo.url, headers=headers, timeout=60) as client:
            yield client

    @pytest.fixture
    def touch(sandbox):
        # From the SDK's callback thread, while the code runs: a second connection.
        return lambda path: sandbox.files.write(path, "")


def needs_kernel(language: str):
    return pytest.mark.skipif(
        language not in kernel_languages(), reason=f"no {language} kernel installed"
    )
