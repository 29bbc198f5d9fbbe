"""The code interpreter (crates/silo-interpreter) against real Jupyter kernels on this host,
driven by the official `e2b-code-interpreter` SDK.

No sandbox is involved: the crate's `serve` example runs the interpreter on a free local
port, and the SDK is pointed at it with `E2B_DEBUG=true` (no control-plane calls) and
`E2B_SANDBOX_URL` (all sandbox traffic to that port).

Environment:
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

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parents[2]
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


def needs_kernel(language: str):
    return pytest.mark.skipif(
        language not in kernel_languages(), reason=f"no {language} kernel installed"
    )
