"""A restart of `silo serve` forgets no sandbox and leaks none: running sandboxes are
picked up with their files, and one that died while the server was down is cleaned up."""

import os
import signal
import subprocess

import pytest

from silo_server import SiloServer, wait_for

pytestmark = pytest.mark.server_only


def cli(server, *args):
    env = {**os.environ, **server.env()}
    return subprocess.run([server.bin, "sandbox", *args], env=env, capture_output=True, text=True)


def test_restart_keeps_running_sandboxes_and_reaps_dead_ones():
    # Its own server and address range, beside the session's.
    server = SiloServer(subnet="10.214.0.0/16").start()
    try:
        kept = cli(server, "create", "base", "--timeout", "120").stdout.strip()
        doomed = cli(server, "create", "base", "--timeout", "120").stdout.strip()
        assert cli(server, "exec", kept, "echo survived > /home/user/f").returncode == 0

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.log()
        # While silo is down, one sandbox dies behind its back.
        root = server.data_dir / "node" / "runsc"
        subprocess.run(["runsc", "--root", str(root), "delete", "--force", doomed], check=True)
        server.start()

        listed = cli(server, "ls").stdout
        assert kept in listed and doomed not in listed
        out = cli(server, "exec", kept, "cat /home/user/f")
        assert (out.returncode, out.stdout) == (0, "survived\n"), out.stderr
        assert server.api("GET", f"/sandboxes/{doomed}")[0] == 404
        assert doomed not in server.runsc_containers()
    finally:
        server.stop()


def test_a_dozing_sandbox_survives_a_restart_and_dead_ones_are_still_noticed(monkeypatch):
    # runsc's status of a container asks its sandbox, which a frozen one never answers:
    # silo must list containers without it, or a stop waits on it and the next start
    # cannot reconcile (and the sweep for dead sandboxes stalls while any one dozes).
    server = SiloServer(subnet="10.214.0.0/16", extra_args=("--doze-after", "1")).start()
    freezer = "/sys/fs/cgroup/freezer/silo/{}/freezer.state"

    def frozen(sandbox_id):
        with open(freezer.format(sandbox_id)) as f:
            return f.read().strip() == "FROZEN"

    try:
        dozing = cli(server, "create", "base", "--timeout", "120").stdout.strip()
        doomed = cli(server, "create", "base", "--timeout", "120").stdout.strip()
        # A process the agent started keeps `doomed` awake (a frozen one cannot be killed).
        server.use_env(monkeypatch)
        from e2b import Sandbox

        Sandbox.connect(doomed).commands.run("sleep 600", background=True)
        wait_for("a sandbox to doze", lambda: frozen(dozing), 30)
        # Killed behind silo's back while the other dozes: the sweep still sees it go.
        root = server.data_dir / "node" / "runsc"
        subprocess.run(["runsc", "--root", str(root), "delete", "--force", doomed], check=True)
        wait_for("the dead sandbox to be released",
                 lambda: server.api("GET", f"/sandboxes/{doomed}")[0] == 404, 60)

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0, server.log()
        assert frozen(dozing)
        server.start()
        out = cli(server, "exec", dozing, "echo awake")
        assert (out.returncode, out.stdout) == (0, "awake\n"), out.stderr + server.log()
    finally:
        server.stop()


def test_a_second_server_on_a_range_in_use_refuses_to_start():
    # Two servers on one address range hand out the same addresses, and the host routes a
    # sandbox's traffic to whichever link came first: the second server refuses to start,
    # naming what holds the range, and starts once the range is free.
    first = SiloServer(subnet="10.214.0.0/16").start()
    second = SiloServer(subnet="10.214.0.0/16")
    # Servers on one range share its firewall table: each one's leak check runs while the
    # other is down.
    try:
        try:
            sandbox = cli(first, "create", "base", "--timeout", "120").stdout.strip()
            with pytest.raises(RuntimeError) as refused:
                second.start()
            message = str(refused.value)
            assert "--subnet 10.214.0.0/16 cannot be used" in message, message
            assert f"10.214.0.0/30 on silo{sandbox[1:12]}" in message, message
            assert "choose another range" in message, message
        finally:
            first.stop()
        second.start()
        assert cli(second, "create", "base", "--timeout", "60").returncode == 0
    finally:
        second.stop()


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process on the host."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The name in parentheses may hold spaces: split after its closing one.
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while listed
        found[int(entry)] = (int(ppid), state, cmdline)
    return found


def test_the_server_runs_below_a_reaper_that_adopts_and_reaps_sandbox_processes():
    # `runsc create` leaves a sandbox's processes orphaned, and `runsc delete` waits until
    # they are reaped: `silo serve`'s first process adopts them (a child subreaper) and
    # reaps them as they end, whatever the host's PID 1 does; the server is its child.
    server = SiloServer(subnet="10.214.0.0/16").start()
    try:
        sandbox = cli(server, "create", "base", "--timeout", "120").stdout.strip()
        reaper = server.proc.pid
        listed = processes()
        below = {pid for pid, (ppid, _, _) in listed.items() if ppid == reaper}
        servers = [pid for pid in below if listed[pid][2].startswith(f"{server.bin} serve ")]
        assert len(servers) == 1, [listed[pid][2] for pid in below]
        of_sandbox = {pid for pid, (_, _, cmdline) in listed.items() if sandbox in cmdline}
        assert of_sandbox and of_sandbox <= below, (of_sandbox, below)

        assert cli(server, "kill", sandbox).returncode == 0
        wait_for(
            "end of the sandbox's processes",
            lambda: not any(sandbox in cmdline for _, _, cmdline in processes().values()),
            seconds=30,
        )
        wait_for(
            "reaping of every zombie below the reaper",
            lambda: not any(ppid == reaper and state == "Z" for ppid, state, _ in processes().values()),
            seconds=30,
        )
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.log()
        assert not any(ppid == reaper for ppid, _, _ in processes().values())
    finally:
        server.stop()
