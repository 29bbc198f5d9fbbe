"""silo's benchmark: what a user of the E2B SDK waits for, beside raw gVisor.

Starts its own `silo serve` (like the e2e tests), then measures with the official SDK:
  - Sandbox.create("base") latency, N_CREATE times (each sandbox killed after);
  - commands.run("echo hi") round trip, N_RUN times on one sandbox;
  - with e2e-code-interpreter: create → first run_code("1+1") result, N_FIRST times, and
    run_code("1+1") round trip, N_CODE times on one sandbox;
  - a template built from a Dockerfile (the e2e suite's: COPY, a wheel pip-installed,
    ENV, WORKDIR, USER, and a start command serving HTTP with a ready check): the build
    cold (a build arg never used before changes every layer's key), the rebuild
    unchanged, and Sandbox.create from it (the sandbox is
    handed out once its ready command passes), N_TEMPLATE_CREATE times;
  - raw `runsc run` of the same base rootfs (an OCI bundle running /bin/true, no
    network, memory overlay), N_RAW times, for comparison;
and writes a Markdown table to stdout and bench/results/<date>-<host>/results.md.

Run it with scripts/bench.sh (which builds first), as root.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from silo_server import SiloServer  # noqa: E402

N_CREATE = int(os.environ.get("BENCH_CREATES", 20))
N_RUN = int(os.environ.get("BENCH_RUNS", 100))
N_RAW = int(os.environ.get("BENCH_RAW", 10))
N_FIRST = int(os.environ.get("BENCH_FIRST_CODE", 10))
N_CODE = int(os.environ.get("BENCH_CODE", 100))
N_PAUSE = int(os.environ.get("BENCH_PAUSES", 10))
N_TEMPLATE_CREATE = int(os.environ.get("BENCH_TEMPLATE_CREATES", 10))


def pct(samples, p):
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def summary(name, samples_s):
    ms = [s * 1000 for s in samples_s]
    return {
        "name": name,
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 1),
        "p95_ms": round(pct(ms, 95), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def bench_sdk(server):
    os.environ.update(server.env())
    from e2b import Sandbox

    creates = []
    for _ in range(N_CREATE):
        start = time.perf_counter()
        sbx = Sandbox.create("base", timeout=120)
        creates.append(time.perf_counter() - start)
        sbx.kill()

    runs = []
    sbx = Sandbox.create("base", timeout=300)
    try:
        sbx.commands.run("true")  # warm the connection like any steady user
        for _ in range(N_RUN):
            start = time.perf_counter()
            result = sbx.commands.run("echo hi")
            runs.append(time.perf_counter() - start)
            assert result.stdout == "hi\n"
    finally:
        sbx.kill()
    return [summary("SDK Sandbox.create(\"base\")", creates), summary('SDK commands.run("echo hi")', runs)]


def bench_code_interpreter():
    from e2b_code_interpreter import Sandbox

    firsts = []
    for _ in range(N_FIRST):
        start = time.perf_counter()
        sbx = Sandbox.create(timeout=120)
        assert sbx.run_code("1+1").text == "2"
        firsts.append(time.perf_counter() - start)
        sbx.kill()

    codes = []
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.run_code("1+1")
        for _ in range(N_CODE):
            start = time.perf_counter()
            assert sbx.run_code("1+1").text == "2"
            codes.append(time.perf_counter() - start)
    finally:
        sbx.kill()
    return [
        summary("create → first run_code(\"1+1\") result", firsts),
        summary('run_code("1+1")', codes),
    ]


def bench_pause_resume():
    """Pause then resume (connect) of an idle sandbox and of one holding 256 MiB it wrote."""
    from e2b import Sandbox

    rows = []
    for label, setup in (
        ("idle", None),
        ("256 MiB touched", "python3 -c \"import time; b = bytearray(256 << 20); "
         "b[::4096] = b'x' * len(b[::4096]); time.sleep(3600)\""),
    ):
        sbx = Sandbox.create("base", timeout=600)
        try:
            if setup:
                sbx.commands.run(setup, background=True)
                time.sleep(3)
            pauses, resumes = [], []
            for _ in range(N_PAUSE):
                start = time.perf_counter()
                assert sbx.pause()
                pauses.append(time.perf_counter() - start)
                start = time.perf_counter()
                sbx.connect()
                resumes.append(time.perf_counter() - start)
            assert sbx.commands.run("echo back").stdout == "back\n"
        finally:
            sbx.kill()
        rows += [summary(f"pause ({label})", pauses), summary(f"resume by connect ({label})", resumes)]
    return rows


def bench_fork():
    """fork(count=1) and fork(count=10) of a sandbox: the save and every copy restored."""
    from e2b import Sandbox

    rows = []
    sbx = Sandbox.create("base", timeout=600)
    try:
        sbx.files.write("/home/user/state.txt", "forked")
        for count, rounds in ((1, N_PAUSE), (10, 3)):
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                forks = sbx.fork(count=count)
                samples.append(time.perf_counter() - start)
                assert all(isinstance(f, Sandbox) for f in forks), forks
                for fork in forks:
                    fork.kill()
            rows.append(summary(f"fork, {count} cop{'y' if count == 1 else 'ies'}", samples))
    finally:
        sbx.kill()
    return rows


def bench_raw_runsc(template_dir):
    rootfs = sorted(Path(template_dir, "base").glob("*/rootfs"), key=lambda p: p.stat().st_mtime)[-1]
    work = Path(tempfile.mkdtemp(prefix="silo-bench-raw-"))
    bundle = work / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"]},
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
    }))
    samples = []
    try:
        for i in range(N_RAW):
            cid = f"silobenchraw{i:08d}"
            start = time.perf_counter()
            subprocess.run(
                ["runsc", "--root", str(work / "state"), "--platform=systrap", "--network=none",
                 "--overlay2=root:memory", "run", "--bundle", str(bundle), cid],
                check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
            samples.append(time.perf_counter() - start)
            subprocess.run(["runsc", "--root", str(work / "state"), "delete", "--force", cid],
                           stderr=subprocess.DEVNULL)
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    return [summary("raw `runsc run` /bin/true, same rootfs", samples)]


def bench_template(server):
    from e2b import Sandbox
    from test_templates import DOCKERFILE, READY_CMD, START_CMD, make_wheel

    silo = os.environ.get("SILO_BIN", str(ROOT / "target/release/silo"))
    env = {**os.environ, **server.env()}
    with tempfile.TemporaryDirectory(prefix="silo-bench-context-") as context:
        context = Path(context)
        (context / "wheels").mkdir()
        make_wheel(context / "wheels" / "silohello-1.0-py3-none-any.whl")
        (context / "app.txt").write_text("copied from the context\n")
        (context / "data.txt").write_text("bench\n")
        (context / "Dockerfile").write_text(DOCKERFILE)
        build = [silo, "template", "build", "-n", "bench-web", "--start-cmd", START_CMD,
                 "--ready-cmd", READY_CMD, "--build-arg", f"GREETING=bench-{time.time_ns()}",
                 str(context)]
        timings = []
        for _ in ("cold", "cached"):
            start = time.perf_counter()
            subprocess.run(build, check=True, capture_output=True, env=env)
            timings.append(time.perf_counter() - start)
    creates = []
    try:
        for _ in range(N_TEMPLATE_CREATE):
            start = time.perf_counter()
            sbx = Sandbox.create("bench-web", timeout=120)
            creates.append(time.perf_counter() - start)
            sbx.kill()
    finally:
        server.kill_all()
        subprocess.run([silo, "template", "delete", "bench-web"], capture_output=True, env=env)
    return [
        summary("template build from a Dockerfile, cold", timings[:1]),
        summary("the same build again, unchanged (cached)", timings[1:]),
        summary('SDK Sandbox.create from it (start command up, ready check passed)', creates),
    ]


def main():
    server = SiloServer(subnet="10.216.0.0/16").start()
    try:
        rows = (bench_sdk(server) + bench_code_interpreter() + bench_pause_resume() + bench_fork()
                + bench_template(server))
    finally:
        server.stop()
    rows += bench_raw_runsc(server.template_dir)
    machine = f"{platform.node()}-{os.cpu_count()}cpu"
    lines = [
        f"Measured {date.today()} on {machine} ({platform.release()}), runsc systrap.",
        "",
        "| what | n | p50 | p95 | mean |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['n']} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['mean_ms']} ms |" for r in rows]
    report = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{date.today()}-{machine}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    main()
