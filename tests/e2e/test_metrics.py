"""Seeing inside (issue 8): per-sandbox metrics through the SDK's `get_metrics`, the
server's Prometheus `/metrics`, and each sandbox's log and timeline (`/logs`, `silo
sandbox logs`). The session's server samples and collects every second
(`--metrics-interval 1`, see conftest.py)."""

import datetime
import os
import subprocess

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_text_families

from silo_server import wait_for

pytestmark = pytest.mark.server_only

MIB = 1 << 20


def test_get_metrics_sees_memory_grow_when_the_sandbox_allocates(sandbox):
    first = wait_for("first sample", sandbox.get_metrics)[-1]
    assert first.cpu_count == 2 and first.mem_total == 512 * MIB
    assert 0 < first.mem_used < first.mem_total
    assert 0 < first.disk_used < first.disk_total <= 1024 * MIB
    assert 0 <= first.cpu_used_pct <= 100

    # 100 MiB, every page written, held until the sandbox goes.
    sandbox.commands.run(
        "python3 -c 'import time; b = b\"x\" * (100 << 20); open(\"/tmp/held\", \"w\").close(); time.sleep(600)'",
        background=True,
    )
    wait_for("allocation", lambda: sandbox.files.exists("/tmp/held"))
    grown = wait_for(
        "sample with the 100 MiB",
        lambda: [m for m in sandbox.get_metrics() if m.mem_used >= first.mem_used + 90 * MIB],
    )
    assert grown[-1].timestamp > first.timestamp

    # Writing to the disk shows in its figure.
    sandbox.commands.run("head -c 50M /dev/urandom > /home/user/blob && sync")
    wait_for(
        "sample with the 50 MB file",
        lambda: [m for m in sandbox.get_metrics() if m.disk_used >= first.disk_used + 45 * MIB],
    )

    # start/end select a window; samples come oldest first.
    samples = sandbox.get_metrics()
    assert [m.timestamp for m in samples] == sorted(m.timestamp for m in samples)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert sandbox.get_metrics(start=now + datetime.timedelta(hours=1), end=now + datetime.timedelta(hours=2)) == []
    assert len(sandbox.get_metrics(start=samples[-1].timestamp)) >= 1


def test_metrics_of_an_unknown_or_killed_sandbox_are_not_found(silo):
    from e2b import Sandbox
    from e2b.exceptions import NotFoundException

    with pytest.raises(NotFoundException):
        Sandbox.get_metrics("i" + "1" * 19)
    sbx = Sandbox.create("base", timeout=60)
    sbx.kill()
    with pytest.raises(NotFoundException):
        Sandbox.get_metrics(sbx.sandbox_id)
    # A malformed window: a 400 in E2B's shape.
    r = httpx.get(f"{silo.url}/sandboxes/{sbx.sandbox_id}/metrics?start=x",
                  headers={"X-API-Key": silo.api_key})
    assert r.status_code == 400 and r.json()["code"] == 400


def test_latest_metrics_of_several_sandboxes(silo, sandbox):
    wait_for("first sample", sandbox.get_metrics)
    r = httpx.get(
        f"{silo.url}/sandboxes/metrics",
        params={"sandbox_ids": f"{sandbox.sandbox_id},i1111111111111111111,not-an-id"},
        headers={"X-API-Key": silo.api_key},
    )
    assert r.status_code == 200
    latest = r.json()["sandboxes"]
    assert list(latest) == [sandbox.sandbox_id]
    assert latest[sandbox.sandbox_id]["memTotal"] == 512 * MIB


def scrape(silo) -> dict:
    """`/metrics` parsed as OpenMetrics: {(sample name, labels as a sorted tuple): value}."""
    r = httpx.get(f"{silo.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    # Prometheus' own text parser reads it too (OpenMetrics is its successor format);
    # a family shows once it has a sample.
    assert all(f.name.startswith("silo_") for f in prometheus_text_families(r.text))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_prometheus_metrics_count_creates_sandboxes_and_errors(silo):
    from e2b import Sandbox

    creates = ("silo_sandbox_create_seconds_count", (("template", "base"),))
    running = ("silo_sandboxes", (("state", "running"), ("template", "base")))
    not_found = ("silo_errors_total", (("kind", "sandbox_not_found"), ("status", "404")))
    before = scrape(silo)
    sbx = Sandbox.create("base", timeout=60)
    try:
        sbx.commands.run("true")
        httpx.get(f"{silo.url}/sandboxes/i1111111111111111111", headers={"X-API-Key": silo.api_key})
        after = scrape(silo)
        assert after[creates] == before.get(creates, 0) + 1
        assert after[running] >= 1
        text = httpx.get(f"{silo.url}/metrics").text
        assert "silo_sandboxes" in {f.name for f in prometheus_text_families(text)}
        assert after[not_found] == before.get(not_found, 0) + 1
        assert after[("silo_sandbox_call_seconds_count", (("call", "command"),))] >= 1
    finally:
        sbx.kill()


def logs(silo, sandbox_id, **params) -> list:
    r = httpx.get(f"{silo.url}/v2/sandboxes/{sandbox_id}/logs", params=params,
                  headers={"X-API-Key": silo.api_key})
    assert r.status_code == 200, r.text
    return r.json()["logs"]


def test_timeline_lists_a_failed_command_pause_resume_and_kill_in_order(silo):
    from e2b import CommandExitException, Sandbox

    sbx = Sandbox.create("base", timeout=60)
    sbx.commands.run("echo to-stdout; echo to-stderr >&2")
    with pytest.raises(CommandExitException):
        sbx.commands.run("exit 3")
    sbx.pause()
    sbx.connect()
    sbx.kill()

    # Killed (its teardown finishes in the background), it stays readable.
    entries = wait_for(
        "killed in the timeline",
        lambda: (lambda got: got if any(e["fields"].get("state") == "killed" for e in got) else None)(
            logs(silo, sbx.sandbox_id)),
    )
    timeline = []
    for e in entries:
        kind = e["fields"]["type"]
        if kind == "lifecycle" and e["fields"]["state"] in ("running", "paused", "killed"):
            timeline.append(e["fields"]["state"])
        elif kind == "process.exit" and e["fields"]["exitCode"] == "3":
            timeline.append("exit 3")
    assert timeline == ["running", "exit 3", "paused", "running", "killed"], entries
    lines = {(e["fields"]["type"], e["message"]) for e in entries}
    assert ("stdout", "to-stdout") in lines and ("stderr", "to-stderr") in lines
    exits = [e for e in entries if e["fields"]["type"] == "process.exit"]
    assert exits[-1]["level"] == "error" and exits[0]["level"] == "info"
    reasons = [e["fields"]["reason"] for e in entries if e["fields"].get("state") == "killing"]
    assert len(reasons) == 1 and reasons[0].startswith(f"killed by request (API key {silo.api_key[:8]}")
    timestamps = [e["timestamp"] for e in entries]
    assert timestamps == sorted(timestamps)

    # Filters: level, search, direction, cursor, limit.
    assert all(e["level"] == "error" for e in logs(silo, sbx.sandbox_id, level="error"))
    found = [e["message"] for e in logs(silo, sbx.sandbox_id, search="to-stderr")]
    assert "to-stderr" in found and all("to-stderr" in m for m in found)
    newest = logs(silo, sbx.sandbox_id, direction="backward", limit=1)
    assert newest[0]["fields"]["state"] == "killed"
    assert len(logs(silo, sbx.sandbox_id, limit=2)) == 2

    # The v1 shape, and the CLI.
    r = httpx.get(f"{silo.url}/sandboxes/{sbx.sandbox_id}/logs", headers={"X-API-Key": silo.api_key})
    assert r.status_code == 200 and "to-stdout" in [l["line"] for l in r.json()["logs"]]
    out = subprocess.run([silo.bin, "sandbox", "logs", sbx.sandbox_id], capture_output=True,
                         text=True, timeout=30, env={**os.environ, **silo.env()})
    assert out.returncode == 0, out.stderr
    assert "to-stderr" in out.stdout and "exited with code 3" in out.stdout

    r = httpx.get(f"{silo.url}/v2/sandboxes/i1111111111111111111/logs", headers={"X-API-Key": silo.api_key})
    assert r.status_code == 404


def test_logs_follow_prints_new_lines_until_the_sandbox_is_killed(silo):
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=60)
    follower = subprocess.Popen([silo.bin, "sandbox", "logs", "-f", sbx.sandbox_id],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, **silo.env()})
    try:
        sbx.commands.run("echo first-line")
        sbx.commands.run("sleep 1; echo second-line")
        sbx.kill()
        out, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0
    printed = [line.split(None, 2)[2] for line in out.splitlines()]
    assert printed.index("first-line") < printed.index("second-line")
    assert printed.count("second-line") == 1
    assert printed[-1] == "killing → killed: released"
