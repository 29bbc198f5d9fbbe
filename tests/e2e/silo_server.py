"""A real `silo serve` for the end-to-end tests: started on a free port with its own
data dir (templates shared from SILO_TEST_TEMPLATE_DIR), stopped at the end, and checked for
leaks: every sandbox it made must be gone from runsc, and no netns or veth may remain.

Environment (set by scripts/test.sh):
  SILO_BIN           the silo binary (default target/release/silo)
  SILO_AGENT_BIN     the static agent (default target/release/silo-agent)
  SILO_TEST_TEMPLATE_DIR  where `silo template build` put the templates (/var/lib/silo/templates)
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what, check, seconds=60):
    """`check()` until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.5)


@contextlib.contextmanager
def own_template_dir(prefix: str):
    """A template dir of a test's own, `<temp root>/templates`, holding the suite's built
    `base` (linked): what the test builds stays out of the shared one. The root (free for
    the test's other files) is removed after."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    templates = root / "templates"
    templates.mkdir()
    shared = Path(os.environ.get("SILO_TEST_TEMPLATE_DIR", "/var/lib/silo/templates"))
    (templates / "base").symlink_to(shared / "base")
    try:
        yield templates
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_netns() -> set:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def host_links() -> set:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


class SiloServer:
    def __init__(self, subnet: str = "", extra_args: tuple = ()):
        # SILO_E2E_SUBNET lets a second test run share the host (tests that start their
        # own servers pick their own ranges).
        subnet = subnet or os.environ.get("SILO_E2E_SUBNET", "10.213.0.0/16")
        self.bin = os.environ.get("SILO_BIN", str(ROOT / "target/release/silo"))
        self.agent = os.environ.get("SILO_AGENT_BIN", str(ROOT / "target/release/silo-agent"))
        self.template_dir = os.environ.get("SILO_TEST_TEMPLATE_DIR", "/var/lib/silo/templates")
        self.subnet = subnet
        self.extra_args = list(extra_args)
        self.data_dir = Path(tempfile.mkdtemp(prefix="silo-e2e-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "serve.log"
        self.proc = None
        self.api_key = None
        self.netns_before = host_netns()
        self.links_before = host_links()

    def start(self):
        # Made again if a failed start removed it.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The child keeps its own descriptor of the log.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.bin, "serve",
                    "--listen", f"127.0.0.1:{self.port}",
                    "--data-dir", str(self.data_dir),
                    "--template-dir", self.template_dir,
                    "--agent", self.agent,
                    "--subnet", self.subnet,
                    *self.extra_args,
                    # SILO_E2E_SERVE_ARGS: extra flags, e.g. "--pause-mode checkpoint".
                    *os.environ.get("SILO_E2E_SERVE_ARGS", "").split(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.abandon(f"silo serve exited {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        else:
            self.abandon("silo serve did not answer /health")
        self.api_key = subprocess.run(
            [self.bin, "keys", "--data-dir", str(self.data_dir)],
            check=True, capture_output=True, text=True,
        ).stdout.split()[0]
        return self

    def abandon(self, why: str):
        """A server that did not come up: stop it, drop its data dir (its log goes into
        the error) and fail."""
        log = self.log()
        self.terminate(wait=30)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        raise RuntimeError(f"{why}:\n{log}")

    def terminate(self, wait: float):
        """SIGTERM, and SIGKILL if it has not stopped within `wait` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self) -> dict:
        return {
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
            "E2B_API_KEY": self.api_key,
        }

    def use_env(self, monkeypatch):
        """Point the SDK (and `silo` client commands) at this server for one test."""
        for key, value in self.env().items():
            monkeypatch.setenv(key, value)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def api(self, method: str, path: str, body=None, key=None):
        """A raw control-plane call: (status, parsed JSON body or None, headers)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("X-API-KEY", self.api_key if key is None else key)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None), resp.headers
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            return err.code, parsed, err.headers

    def kill_all(self):
        status, body, _ = self.api("GET", "/v2/sandboxes?state=running,paused")
        if status == 200:
            for sbx in body:
                self.api("DELETE", f"/sandboxes/{sbx['sandboxID']}")

    def runsc_containers(self) -> list:
        root = self.data_dir / "node" / "runsc"
        if not root.exists():
            return []
        out = subprocess.run(
            ["runsc", "--root", str(root), "list", "-quiet"], capture_output=True, text=True
        ).stdout
        return [line for line in out.split() if line]

    def sandbox_dirs(self) -> list:
        """Bundles and checkpoint images still on disk."""
        root = self.data_dir / "node" / "sandboxes"
        return sorted(p.name for p in root.iterdir()) if root.exists() else []

    def firewall_table(self) -> str:
        base, length = self.subnet.split("/")
        return "silo_" + base.replace(".", "_") + "_" + length

    def firewall_chains(self) -> list:
        """Per-sandbox nftables chains left in this server's table."""
        out = subprocess.run(
            ["nft", "list", "table", "inet", self.firewall_table()], capture_output=True, text=True
        ).stdout
        per_sandbox = ("chain sb_", "chain src_")
        return [line.split()[1] for line in out.splitlines() if line.strip().startswith(per_sandbox)]

    def firewall_tables(self) -> list:
        """This server's table, if it is there (it goes when silo stops with no sandbox)."""
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        return [t for t in out.split() if t == self.firewall_table()]

    def own_network_names(self) -> set:
        """The part of a netns or veth name that is a sandbox's (characters 1-11 of its
        id), for every sandbox this server made: another server running beside it makes
        its own, which are not this one's leaks."""
        try:
            db = sqlite3.connect(f"file:{self.data_dir / 'catalog.db'}?mode=ro", uri=True)
            try:
                return {row[0][1:12] for row in db.execute("SELECT id FROM sandboxes")}
            finally:
                db.close()
        except sqlite3.Error:
            return set()

    def leaks(self) -> dict:
        """What this server still holds on the host."""
        stopped = self.proc is not None and self.proc.poll() is not None
        own = self.own_network_names()

        def owned(names):
            return sorted(n for n in names if n.removeprefix("silo-").removeprefix("silo") in own)

        return {
            "firewall": self.firewall_chains() + (self.firewall_tables() if stopped else []),
            "runsc": self.runsc_containers(),
            "netns": owned(host_netns() - self.netns_before),
            "links": owned(host_links() - self.links_before),
            "sandbox_dirs": self.sandbox_dirs(),
        }

    def stop(self, check_leaks: bool = True, keep_data: bool = False, wait: float = 30):
        """Kill every sandbox, then SIGTERM, giving the server `wait` seconds to release
        them (hundreds of sandboxes on a loaded host need more than the default)."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.kill_all()
        finally:
            self.terminate(wait)
        leaks = self.leaks()
        if check_leaks and any(leaks.values()):
            raise AssertionError(f"silo serve leaked {leaks}; log kept in {self.log_path}")
        if not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
