"""A template build cut short in the middle of a RUN step. By the server's death
(SIGKILL, a crash, power loss): at the next start the server ends the step's gVisor
container, unmounts and removes its layer's temp dir, releases the step's netns, veth
and firewall rules, and fails the build with a reason, so a client polling it stops
waiting; the template then builds again. By a stop signal: the server does all that
itself before it exits."""

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from e2b import Template
from e2b.api.client.models import TemplateBuildStatus

from silo_server import SiloServer, host_links, host_netns, own_template_dir, wait_for

pytestmark = pytest.mark.server_only

MARKER = "the-step-is-running"
INTERRUPTED = "interrupted: the server stopped during the build; start it again"


@pytest.fixture
def templates():
    with own_template_dir("silo-build-interrupted-") as templates:
        yield templates


@pytest.fixture
def server(templates, monkeypatch):
    server = SiloServer(subnet="10.242.0.0/16")
    server.template_dir = str(templates)
    server.start()
    server.use_env(monkeypatch)
    yield server
    if build_containers(templates):
        # A test that failed with the build still running: a stopped server leaves the
        # build for its next start to remove.
        server.terminate(wait=30)
        server.start()
    server.stop()


def build_containers(templates: Path) -> list:
    out = subprocess.run(["runsc", "--root", str(templates / ".runsc"), "list", "-quiet"],
                         capture_output=True, text=True).stdout
    return out.split()


def mounts_under(path: Path) -> list:
    with open("/proc/self/mountinfo") as info:
        points = [line.split(" ")[4] for line in info]
    return [p for p in points if p.startswith(f"{path}/")]


def step_leases(server) -> list:
    """The holders of address leases: with no sandbox, each is a RUN step's network."""
    root = server.data_dir / "node" / "addresses"
    if not root.exists():
        return []
    return [p.read_text().strip() for p in root.iterdir() if not p.name.startswith(".")]


def network_of(lease: str) -> dict:
    """The host's netns and links named after a step's network id."""
    return {
        "netns": sorted(n for n in host_netns() if lease[1:12] in n),
        "links": sorted(n for n in host_links() if lease[1:12] in n),
    }


def wait_for_the_step(info):
    def step_runs():
        status = Template.get_build_status(info, logs_offset=0)
        # Output lines are logged as "  | <line>".
        return any(e.message.rstrip().endswith(f"| {MARKER}") for e in status.log_entries)

    wait_for("output of the RUN step", step_runs, seconds=240)


def a_build_in_its_run_step(templates, server, name: str, sleep_seconds: int) -> tuple:
    """A build of `name` started and waited for until its RUN step (a sleep) runs, with
    what the step holds: its container, lease and network, rules and mounts. The build's
    info, its container and its lease."""
    template = Template().from_base_image().run_cmd(f"echo {MARKER} && sleep {sleep_seconds}")
    info = Template.build_in_background(template, name)
    wait_for_the_step(info)
    [container] = build_containers(templates)
    [lease] = step_leases(server)
    network = network_of(lease)
    assert network["netns"] and network["links"], network
    assert server.firewall_chains()
    assert mounts_under(templates)
    return info, container, lease


def catalog_build(server, build_id: str) -> tuple:
    """The build's status, reason and log lines, as the catalog on disk holds them."""
    db = sqlite3.connect(f"file:{server.data_dir / 'catalog.db'}?mode=ro", uri=True)
    try:
        status, reason = db.execute(
            "SELECT status, reason FROM template_builds WHERE id = ?", (build_id,)).fetchone()
        log = [row[0] for row in db.execute(
            "SELECT message FROM template_build_logs WHERE build_id = ? ORDER BY seq", (build_id,))]
    finally:
        db.close()
    return status, reason, log


def processes_with(text: str) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_build_killed_mid_step_is_failed_and_cleaned_at_the_next_start(templates, server):
    info, container, lease = a_build_in_its_run_step(templates, server, "e2e-interrupted", 3600)

    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)
    # What the build held outlives the server: the step still runs.
    assert build_containers(templates) == [container]
    assert processes_with(container)

    server.start()
    status = Template.get_build_status(info, logs_offset=0)
    assert status.status == TemplateBuildStatus.ERROR, status
    assert status.reason.message == INTERRUPTED
    assert status.log_entries[-1].message == status.reason.message
    # Nothing of it is left: its container and processes, mounts, network and rules.
    assert build_containers(templates) == []
    wait_for("the end of the step's runsc processes", lambda: not processes_with(container), seconds=60)
    assert mounts_under(templates) == []
    assert not [d for d in (templates / ".layers").iterdir() if d.name.startswith(".")]
    assert step_leases(server) == []
    assert network_of(lease) == {"netns": [], "links": []}
    assert server.firewall_chains() == []

    # The template builds again.
    logs = []
    rebuilt = Template.build(
        Template().from_base_image().run_cmd("echo rebuilt > /home/user/rebuilt.txt"),
        "e2e-interrupted",
        on_build_logs=lambda entry: logs.append(entry.message),
    )
    assert Template.get_build_status(rebuilt, logs_offset=0).status == TemplateBuildStatus.READY, logs
    assert build_containers(templates) == []


def test_a_build_stopped_mid_step_by_sigterm_is_failed_and_cleaned_before_the_server_exits(
        templates, server):
    info, container, lease = a_build_in_its_run_step(templates, server, "e2e-stopped", 600)

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0, server.log()
    # Before any restart, nothing of the build is left: its container and processes,
    # mounts, temp dirs, network and rules (the table too: no sandbox needs it).
    assert build_containers(templates) == []
    assert processes_with(container) == []
    assert mounts_under(templates) == []
    assert not [d for d in (templates / ".layers").iterdir() if d.name.startswith(".")]
    assert step_leases(server) == []
    assert network_of(lease) == {"netns": [], "links": []}
    assert server.firewall_chains() == []
    assert server.firewall_tables() == []
    # And the catalog says why it failed, as a restart after a kill would.
    status, reason, log = catalog_build(server, info.build_id)
    assert (status, reason) == ("error", INTERRUPTED), log
    assert log[-1] == INTERRUPTED

    # The next start has nothing left to fail: a client sees the same, once.
    server.start()
    status = Template.get_build_status(info, logs_offset=0)
    assert status.status == TemplateBuildStatus.ERROR, status
    assert status.reason.message == INTERRUPTED
    assert [e.message for e in status.log_entries].count(INTERRUPTED) == 1
    assert "left unfinished by the previous run" not in server.log()
    assert "cut short left" not in server.log()


def test_a_build_stopped_while_its_check_waits_for_the_ready_command_ends_at_once(
        templates, server):
    # The check sandbox waits for a ready command that never passes (up to its limit).
    template = Template().from_base_image().run_cmd("true").set_start_cmd("sleep 3600", "false")
    info = Template.build_in_background(template, "e2e-stopped-check")

    def checking():
        status = Template.get_build_status(info, logs_offset=0)
        return any("booting a sandbox to run the start command" in e.message
                   for e in status.log_entries)

    wait_for("the build's check sandbox", checking, seconds=240)
    wait_for("the check sandbox's address", lambda: step_leases(server), seconds=60)

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0, server.log()
    # The check was given up, not waited out: the build failed as interrupted, and its
    # sandbox is gone with what it held.
    status, reason, log = catalog_build(server, info.build_id)
    assert (status, reason) == ("error", INTERRUPTED), log
    db = sqlite3.connect(f"file:{server.data_dir / 'catalog.db'}?mode=ro", uri=True)
    try:
        states = [row[0] for row in db.execute("SELECT state FROM sandboxes")]
    finally:
        db.close()
    assert states == ["killed"], states
    assert step_leases(server) == []
    assert server.firewall_chains() == []
    # The build's unpublished rootfs went too.
    unpublished = templates / "e2e-stopped-check"
    assert not unpublished.exists() or not [d for d in unpublished.iterdir() if d.name.startswith(".")]
    server.start()  # for the fixture, which stops it
