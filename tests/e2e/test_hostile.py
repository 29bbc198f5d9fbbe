"""Hostile code inside a sandbox, each attack run while a neighbour sandbox does steady
work that must not be disturbed. The README's table says what each attack sees."""

import subprocess
import threading
import time

import pytest
from e2b import Sandbox, SandboxException

pytestmark = pytest.mark.server_only


class Neighbour:
    """A second sandbox running a command in a loop; every round must succeed."""

    def __init__(self):
        self.sbx = Sandbox.create("base", timeout=300)
        self.rounds = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self):
        while not self._stop.is_set():
            try:
                out = self.sbx.commands.run("echo steady", request_timeout=30)
                if out.stdout != "steady\n":
                    self.failures.append(out.stdout)
                self.rounds += 1
            except Exception as err:  # any failure of the neighbour is the finding
                self.failures.append(repr(err))
            time.sleep(0.2)

    def check(self):
        self._stop.set()
        self._thread.join(timeout=60)
        self.sbx.kill()
        assert self.failures == [] and self.rounds > 0, (self.rounds, self.failures)


@pytest.fixture
def neighbour(silo):
    n = Neighbour()
    yield n
    n.check()


@pytest.fixture
def attacker(silo):
    sbx = Sandbox.create("base", timeout=300)
    yield sbx
    sbx.kill()


def wait_gone(sandbox_id: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            Sandbox.get_info(sandbox_id)
        except Exception:
            return
        time.sleep(0.5)
    raise AssertionError(f"sandbox {sandbox_id} is still reported after {within}s")


def test_host_paths_are_not_there(neighbour, attacker):
    out = attacker.commands.run(
        "ls /work /var/lib/silo 2>&1; cat /proc/1/cmdline | tr '\\0' ' '; echo; uname -r"
    ).stdout
    assert "No such file or directory" in out
    assert "/opt/silo/silo-agent" in out, "PID 1 is the sandbox's own agent"
    assert "4.4.0" in out, "gVisor's kernel answers, not the host's"


def test_mount_raw_sockets_and_ptrace_are_refused(neighbour, attacker):
    mount = attacker.commands.run("sudo mount -t tmpfs none /mnt; echo rc=$?").stdout
    assert "rc=32" in mount
    raw = attacker.commands.run(
        "sudo python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, "
        "socket.IPPROTO_TCP)\" 2>&1; echo rc=$?"
    ).stdout
    assert "Operation not permitted" in raw and "rc=1" in raw
    ptrace = attacker.commands.run(
        "python3 -c \"import ctypes; print(ctypes.CDLL(None).ptrace(16, 1, 0, 0))\""
    ).stdout
    assert ptrace.strip() == "-1", "a user cannot trace the agent"


def test_memory_bomb_fails_inside_and_the_sandbox_lives(neighbour, attacker):
    bomb = attacker.commands.run(
        "python3 -c \"b = []\nwhile True: b.append(bytearray(50 << 20))\"; echo rc=$?",
        timeout=120,
    )
    assert "rc=1" in bomb.stdout
    assert attacker.commands.run("echo alive").stdout == "alive\n"


def test_disk_fill_gets_enospc_and_the_sandbox_lives(neighbour, attacker):
    # The sandbox's disk (1024 MiB by default) holds the root filesystem's writes and
    # /tmp's together.
    fill = "dd if=/dev/zero of={} bs=1M count=2000 2>&1; echo rc=$?"
    out = attacker.commands.run(fill.format("/home/user/fill"), timeout=180).stdout
    assert "No space left on device" in out and "rc=1" in out, out
    size = int(attacker.commands.run("stat -c %s /home/user/fill").stdout)
    assert 900 << 20 < size <= 1024 << 20, size
    out = attacker.commands.run(fill.format("/tmp/fill"), timeout=180).stdout
    assert "No space left on device" in out, "/tmp is on the same disk"
    # Deleting frees the space again.
    attacker.commands.run("rm /home/user/fill /tmp/fill")
    assert attacker.commands.run("head -c 10M /dev/zero > /home/user/ok && echo written").stdout == "written\n"


FORK_BOMB = """
import os, sys, time
hold = sys.argv[1:] == ["hold"]
n = 0
refused = False
while True:
    try:
        pid = os.fork()
    except OSError as err:
        if not refused:
            print(f"refused after {n}: errno {err.errno}", flush=True)
            refused = True
        if not hold:
            break
        # Holding: every task that ends is taken again at once.
        time.sleep(0.005)
        continue
    if pid == 0:
        os.execvp("sleep", ["sleep", "600"])
    n += 1
"""


def test_fork_bomb_stops_at_the_task_limit_and_the_sandbox_lives(neighbour, attacker):
    # Forks as fast as it can, each child parked in `sleep`, until the per-user task
    # limit (silo serve --pids-limit, 512) refuses with EAGAIN.
    attacker.files.write("/home/user/bomb.py", FORK_BOMB)
    out = attacker.commands.run("python3 /home/user/bomb.py", timeout=300).stdout
    assert "errno 11" in out, out
    forked = int(out.split()[2].rstrip(":"))
    assert 400 <= forked <= 512, forked
    # Root is another user: the agent still works, and clears the bomb.
    attacker.commands.run("pkill -9 -u user sleep; true", user="root", timeout=120)
    assert attacker.commands.run("echo alive").stdout == "alive\n"


def test_a_fork_bomb_as_root_stops_at_the_limit_and_later_starts_say_why(neighbour, attacker):
    # Root's tasks count against the same limit, the agent's own included: while root's
    # bomb holds it, nothing can start in that sandbox, and the client is told so instead
    # of a bare "Resource temporarily unavailable". The bomb takes back every task that
    # ends (the agent's idle threads, a shell it had warmed), so a start may slip through
    # a gap now and then; the refusal is what a start meets. The neighbour runs on
    # unharmed (checked by its fixture).
    attacker.files.write("/home/user/bomb.py", FORK_BOMB)
    bomb = attacker.commands.run("python3 /home/user/bomb.py hold", user="root", background=True)
    for stdout, _, _ in bomb:
        if stdout and "errno 11" in stdout:
            break
    refusals = []
    for _ in range(20):
        try:
            attacker.commands.run("echo refused")
        except SandboxException as err:
            refusals.append(str(err))
    assert refusals, "every start got through while the bomb held the limit"
    assert all("512 tasks per user" in refusal for refusal in refusals), refusals


def test_a_sandbox_killed_outside_silo_is_reported_gone(silo, neighbour):
    victim = Sandbox.create("base", timeout=300)
    root = silo.data_dir / "node" / "runsc"
    subprocess.run(["runsc", "--root", str(root), "kill", victim.sandbox_id, "KILL"], check=True)
    wait_gone(victim.sandbox_id)
    deadline = time.monotonic() + 60
    while victim.sandbox_id in silo.runsc_containers():
        assert time.monotonic() < deadline, "its container was never released"
        time.sleep(0.5)


def test_endless_output_is_held_back_not_buffered(neighbour, attacker):
    # Nobody reads this stream: the agent must push back, not buffer without end.
    unread = attacker.commands.run("yes flood", background=True)
    time.sleep(5)
    rss_kib = int(attacker.commands.run("ps -o rss= -p 1").stdout)
    assert rss_kib < 100 * 1024, f"the agent grew to {rss_kib} KiB"
    unread.kill()
    # A reader gets the flood as it comes and can stop it.
    read = attacker.commands.run("yes flood", background=True)
    chunks = 0
    for _ in read:
        chunks += 1
        if chunks >= 200:
            break
    read.kill()
    assert chunks >= 200
    assert attacker.commands.run("echo alive").stdout == "alive\n"
