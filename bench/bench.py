"""silo's benchmark: what a user of the E2B SDK waits for, beside raw gVisor.

Starts its own `silo serve` (like the e2e tests), then measures with the official SDK:
  - Sandbox.create("base") latency, N_CREATE times (each sandbox killed after), and 10
    and 50 creates at once (all must succeed);
  - files.write / files.read of 32 MiB, N_FILES times: throughput;
  - memory per idle base sandbox, N_IDLE held at once: RSS and PSS of its host processes;
  - commands.run("echo hi") round trip, N_RUN times on one sandbox, back to back and
    with a 100 ms pause before each (an agent's think time, in which a shell is warmed),
    and commands.run("ls /") (a program, which bash execs) with the same pause, and after
    `cd /tmp;` (bash execs it too) and `cd /tmp &&` (bash forks for it), and "echo hi"
    with an environment no shell was warmed with (a cold start);
  - with e2e-code-interpreter: create → first run_code("1+1") result, N_FIRST times, and
    run_code("1+1") round trip, N_CODE times on one sandbox;
  - a template built from a Dockerfile (the e2e suite's: COPY, a wheel pip-installed,
    ENV, WORKDIR, USER, and a start command serving HTTP with a ready check): the build
    cold (a build arg never used before changes every layer's key), the rebuild
    unchanged, and Sandbox.create from it (the sandbox is
    handed out once its ready command passes), N_TEMPLATE_CREATE times;
  - raw `runsc run` of the same base rootfs (an OCI bundle running /bin/true, no
    network, memory overlay), N_RAW times, for comparison;
  - with a warm pool of 50 (a server of its own): 50 creates at once, then create, and
    create → first command, one at a time; with a pool of 2 code-interpreter sandboxes:
    create → first run_code;
  - a plain host process spawn (/bin/true), the floor under everything, and 100 system
    calls timed by bash on the host, beside the same in a sandbox (the first 100 of a
    command 100 ms after the last, then the next 100);
  - density (a server of its own, idle sandboxes dozing after `silo serve`'s default
    30 s, or BENCH_DOZE_AFTER seconds if set; BENCH_DOZE_AFTER=0: never): idle
    base sandboxes created two at a time and held,
    until BENCH_DENSITY (500) are up, a create fails or takes over 60 s, or the host has
    less than 2 GiB available: how many, PSS per sandbox then, the host memory they took,
    the load, and whether the first and the last still answer a command;
each latency as p50/p95/p99/mean. Writes a Markdown table to stdout and
bench/results/<date>-<host>/results.md, and the rows as results.json for comparing runs.

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
N_FILES = int(os.environ.get("BENCH_FILES", 5))
N_IDLE = int(os.environ.get("BENCH_IDLE", 20))
N_DENSITY = int(os.environ.get("BENCH_DENSITY", 500))


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
        "p99_ms": round(pct(ms, 99), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def value_row(name, n, value, unit):
    """A row that is one figure (a throughput, a size), not a latency."""
    return {"name": name, "n": n, "value": round(value, 1), "unit": unit}


def bench_concurrent_creates(concurrency):
    """`concurrency` creates at once: every one must succeed; their latencies."""
    from concurrent.futures import ThreadPoolExecutor

    from e2b import Sandbox

    def create(_):
        start = time.perf_counter()
        sbx = Sandbox.create("base", timeout=300)
        return time.perf_counter() - start, sbx

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(create, range(concurrency)))
    for _, sbx in results:
        sbx.kill()
    return [summary(f"SDK Sandbox.create(\"base\"), {concurrency} at once", [t for t, _ in results])]


def bench_files():
    """Upload and download of a 32 MiB file through the SDK (files.write / files.read)."""
    from e2b import Sandbox

    size = 32 << 20
    data = os.urandom(size)
    ups, downs = [], []
    sbx = Sandbox.create("base", timeout=300)
    try:
        for _ in range(N_FILES):
            start = time.perf_counter()
            sbx.files.write("/tmp/bench.bin", data)
            ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            back = sbx.files.read("/tmp/bench.bin", format="bytes")
            downs.append(time.perf_counter() - start)
            assert len(back) == size
    finally:
        sbx.kill()
    mib = size / (1 << 20)
    return [
        value_row("files.write 32 MiB, throughput (median)", N_FILES, mib / statistics.median(ups), "MiB/s"),
        value_row("files.read 32 MiB, throughput (median)", N_FILES, mib / statistics.median(downs), "MiB/s"),
    ]


def sandbox_memory_kib(sandbox_id):
    """RSS and PSS (KiB) of the host processes that run one sandbox (runsc's sandbox and
    gofer: every process whose command line names it)."""
    rss = pss = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if sandbox_id.encode() not in (proc / "cmdline").read_bytes():
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def bench_memory():
    """Host memory per idle base sandbox, N_IDLE held at once: RSS and PSS of its
    processes (PSS shares what sandboxes have in common among them)."""
    from e2b import Sandbox

    held = [Sandbox.create("base", timeout=600) for _ in range(N_IDLE)]
    try:
        time.sleep(5)  # let them settle into idle
        per = [sandbox_memory_kib(s.sandbox_id) for s in held]
    finally:
        for sbx in held:
            sbx.kill()
    return [
        value_row(f"idle sandbox RSS (median of {N_IDLE} held)", N_IDLE,
                  statistics.median(r for r, _ in per) / 1024, "MiB"),
        value_row(f"idle sandbox PSS (median of {N_IDLE} held)", N_IDLE,
                  statistics.median(p for _, p in per) / 1024, "MiB"),
    ]


def pool_server(size, template="base"):
    """A server of its own with `--pool TEMPLATE=SIZE`, once the pool is full."""
    server = SiloServer(subnet="10.216.0.0/16", extra_args=("--pool", f"{template}={size}")).start()
    os.environ.update(server.env())
    wait_pool_full(server, size, template)
    return server


def wait_pool_full(server, size, template="base"):
    deadline = time.monotonic() + 300
    while server.api("GET", "/health")[1]["pooled"].get(template, 0) < size:
        assert time.monotonic() < deadline, "the pool never filled"
        time.sleep(0.5)
    time.sleep(3)  # the last one settles and dozes


def bench_pool():
    """With a warm pool of 50 (a server of its own): 50 creates at once, all handed out
    from the pool; then, the pool full again, create alone and create → first command
    done, one create every 0.5 s (which the refill keeps up with)."""
    from concurrent.futures import ThreadPoolExecutor

    from e2b import Sandbox

    size = 50

    def create(_):
        start = time.perf_counter()
        sbx = Sandbox.create("base", timeout=300)
        return time.perf_counter() - start, sbx

    server = pool_server(size)
    try:
        # The SDK's first create in a process sets up its clients: not the server's time.
        Sandbox.create("base", timeout=60).kill()
        wait_pool_full(server, size)
        with ThreadPoolExecutor(max_workers=size) as pool:
            at_once = list(pool.map(create, range(size)))
        for _, sbx in at_once:
            sbx.kill()
        wait_pool_full(server, size)
        creates, firsts = [], []
        for _ in range(N_CREATE):
            start = time.perf_counter()
            sbx = Sandbox.create("base", timeout=120)
            created = time.perf_counter()
            assert sbx.commands.run("echo hi").stdout == "hi\n"
            creates.append(created - start)
            firsts.append(time.perf_counter() - start)
            sbx.kill()
            time.sleep(0.5)
    finally:
        server.stop()
    return [
        summary(f"pooled: Sandbox.create(\"base\"), {size} at once from a pool of {size}",
                [t for t, _ in at_once]),
        summary("pooled: Sandbox.create(\"base\")", creates),
        summary("pooled: Sandbox.create(\"base\") → first commands.run done", firsts),
    ]


def bench_pool_code_interpreter():
    """With `--pool code-interpreter=2` (a server of its own; pooled sandboxes have their
    kernel up): create → first run_code result, one create every 3 s (a refill, kernel
    included, takes ~2 s)."""
    from e2b_code_interpreter import Sandbox

    server = pool_server(2, "code-interpreter")
    try:
        Sandbox.create(timeout=60).kill()  # the SDK's own set-up
        wait_pool_full(server, 2, "code-interpreter")
        firsts = first_run_code_latencies(pause=3)
    finally:
        server.stop()
    return [summary("pooled (code-interpreter=2): create → first run_code(\"1+1\") result", firsts)]


def available_mib():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def bench_density():
    """How many idle sandboxes one host holds (see the module doc for when it stops)."""
    from concurrent.futures import ThreadPoolExecutor

    from e2b import Sandbox

    # BENCH_DOZE_AFTER=5: idle sandboxes doze after 5 s rather than 30 (ADR 0017).
    doze = os.environ.get("BENCH_DOZE_AFTER", "30")
    extra = ("--doze-after", doze)
    server = SiloServer(subnet="10.217.0.0/16", extra_args=extra).start()
    held, stopped_by, create_s = [], f"the cap of {N_DENSITY}", []
    before_mib = available_mib()
    started = time.monotonic()
    try:
        os.environ.update(server.env())

        def create(_):
            t = time.perf_counter()
            sbx = Sandbox.create("base", timeout=3600)
            return time.perf_counter() - t, sbx

        with ThreadPoolExecutor(max_workers=2) as pool:
            while len(held) < N_DENSITY:
                if available_mib() < 2048:
                    stopped_by = "less than 2 GiB of host memory available"
                    break
                try:
                    batch = list(pool.map(create, range(min(2, N_DENSITY - len(held)))))
                except Exception as err:  # noqa: BLE001 - any failed create ends the run
                    stopped_by = f"a create failed: {str(err)[:120]}"
                    break
                held += [sbx for _, sbx in batch]
                create_s += [t for t, _ in batch]
                if max(t for t, _ in batch) > 60:
                    stopped_by = "a create took over 60 s"
                    break
        elapsed = time.monotonic() - started
        time.sleep(5)
        answers = all(s.commands.run("echo hi", timeout=120).stdout == "hi\n" for s in (held[0], held[-1]))
        sample = held[:: max(1, len(held) // 20)]
        pss = statistics.median(sandbox_memory_kib(s.sandbox_id)[1] for s in sample) / 1024
        used_mib = before_mib - available_mib()
        load = os.getloadavg()[0]
        print(f"density: {len(held)} held in {elapsed:.0f} s, stopped by {stopped_by}", flush=True)
    finally:
        server.stop(wait=900)
    last = create_s[-20:] or [0]
    return [
        value_row(f"idle sandboxes held at once{f', dozing after {doze} s' if doze != '0' else ', never dozing'} "
                  f"(stopped by {stopped_by}; first and last "
                  f"{'answer' if answers else 'do NOT answer'} a command)", len(held), len(held), "sandboxes"),
        value_row("  time to create them, two at a time", len(held), elapsed, "s"),
        summary("  Sandbox.create, the last 20 of them", last),
        value_row("  PSS per sandbox at that count (median of a sample)", len(sample), pss, "MiB"),
        value_row("  host memory they took (MemAvailable before - after)", len(held), used_mib, "MiB"),
        value_row("  host load average (1 min) with them all idle", len(held), load, ""),
    ]


# Two blocks of 100 system calls (`kill -0`, which does nothing else) timed by bash itself:
# prints the microseconds each took. Under gVisor's systrap a call's cost depends on
# whether the platform's threads are spinning for work or asleep, which it adapts to load.
SYSCALL_BLOCKS = ("a=${EPOCHREALTIME/./}; for ((i=0;i<100;i++)); do kill -0 $$; done; "
                  "b=${EPOCHREALTIME/./}; for ((i=0;i<100;i++)); do kill -0 $$; done; "
                  "c=${EPOCHREALTIME/./}; echo $((b-a)) $((c-b))")


def syscall_blocks(output):
    """The two blocks' durations in seconds, from SYSCALL_BLOCKS' output."""
    first, then = output.split()
    return int(first) / 1e6, int(then) / 1e6


def bench_spawn():
    """The floors under everything: a plain process spawn on the host, and system calls."""
    samples, blocks = [], []
    for _ in range(N_RUN):
        start = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        samples.append(time.perf_counter() - start)
        out = subprocess.run(["bash", "-c", SYSCALL_BLOCKS], check=True, capture_output=True,
                             text=True).stdout
        blocks.append(syscall_blocks(out)[0])
    return [summary("host process spawn (/bin/true), floor", samples),
            summary("100 system calls on the host (`kill -0` in bash), floor", blocks)]


def bench_sdk(server):
    os.environ.update(server.env())
    from e2b import Sandbox

    creates = []
    for _ in range(N_CREATE):
        start = time.perf_counter()
        sbx = Sandbox.create("base", timeout=120)
        creates.append(time.perf_counter() - start)
        sbx.kill()

    return [summary("SDK Sandbox.create(\"base\")", creates)] + bench_commands()


def bench_commands():
    """Round trips of commands on one sandbox: a shell builtin back to back, then, as an
    agent runs them, with a pause (its model thinking) before each, in which the agent
    warms the next shell (ADR 0018): the builtin, and a program bash execs."""
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=300)

    def timed(command, expect, pause=0.0, fresh_env=False):
        samples = []
        for i in range(N_RUN):
            time.sleep(pause)
            # A variable never sent before: no shell was warmed with that environment.
            envs = {"BENCH_RUN": str(i)} if fresh_env else None
            start = time.perf_counter()
            result = sbx.commands.run(command, envs=envs)
            samples.append(time.perf_counter() - start)
            assert expect in result.stdout, result
        return samples

    try:
        sbx.commands.run("true")  # warm the connection like any steady user
        runs = timed("echo hi", "hi\n")
        paced = timed("echo hi", "hi\n", pause=0.1)
        external = timed("ls /", "usr\n", pause=0.1)
        after_list = timed("cd /tmp; ls /", "usr\n", pause=0.1)
        after_ands = timed("cd /tmp && ls /", "usr\n", pause=0.1)
        cold = timed("echo hi", "hi\n", pause=0.1, fresh_env=True)
        first_calls, next_calls = [], []
        for _ in range(N_RUN):
            time.sleep(0.1)
            first, then = syscall_blocks(sbx.commands.run(SYSCALL_BLOCKS).stdout)
            first_calls.append(first)
            next_calls.append(then)
    finally:
        sbx.kill()
    return [summary('SDK commands.run("echo hi"), back to back', runs),
            summary('SDK commands.run("echo hi"), 100 ms after the last', paced),
            summary('SDK commands.run("ls /"), 100 ms after the last', external),
            summary('SDK commands.run("cd /tmp; ls /") (bash execs ls), 100 ms after the last',
                    after_list),
            summary('SDK commands.run("cd /tmp && ls /") (bash forks ls), 100 ms after the last',
                    after_ands),
            summary('SDK commands.run("echo hi", envs=...) (a new environment, so no warm '
                    'shell), 100 ms after the last', cold),
            summary("100 system calls in the sandbox (`kill -0` in bash), a command's first, "
                    "100 ms after the last", first_calls),
            summary("  the next 100 in the same command", next_calls)]


def first_run_code_latencies(pause=0.0):
    """N_FIRST times, `pause` seconds apart: create → first run_code("1+1") result."""
    from e2b_code_interpreter import Sandbox

    firsts = []
    for _ in range(N_FIRST):
        start = time.perf_counter()
        sbx = Sandbox.create(timeout=120)
        assert sbx.run_code("1+1").text == "2"
        firsts.append(time.perf_counter() - start)
        sbx.kill()
        time.sleep(pause)
    return firsts


def bench_code_interpreter():
    from e2b_code_interpreter import Sandbox

    firsts = first_run_code_latencies()

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


def all_benches():
    server = SiloServer(subnet="10.216.0.0/16").start()
    try:
        rows = (bench_sdk(server) + bench_concurrent_creates(10) + bench_concurrent_creates(50)
                + bench_files() + bench_memory() + bench_code_interpreter() + bench_pause_resume()
                + bench_fork() + bench_template(server))
    finally:
        server.stop()
    rows += (bench_pool() + bench_pool_code_interpreter() + bench_raw_runsc(server.template_dir)
             + bench_spawn())
    if N_DENSITY:
        rows += bench_density()
    return rows


def on_a_server(bench):
    """`bench` alone, against a server of its own (for BENCH_ONLY)."""
    server = SiloServer(subnet="10.216.0.0/16").start()
    try:
        os.environ.update(server.env())
        return bench()
    finally:
        server.stop()


def main():
    # BENCH_ONLY=density|pool|spawn|code|commands runs that group alone (into results-<group>.md/.json).
    only = os.environ.get("BENCH_ONLY")
    if os.environ.get("BENCH_DOZE_AFTER") and only == "density":
        only = "density-doze"
    benches = {"density": bench_density, "density-doze": bench_density,
               "pool": lambda: bench_pool() + bench_pool_code_interpreter(),
               "spawn": bench_spawn, "code": lambda: on_a_server(bench_code_interpreter),
               "commands": lambda: on_a_server(bench_commands)}
    if only and only not in benches:
        groups = ", ".join(name for name in benches if name != "density-doze")
        raise SystemExit(f"BENCH_ONLY={only}: use one of {groups}")
    rows = benches[only]() if only else all_benches()
    machine = f"{platform.node()}-{os.cpu_count()}cpu"
    lines = [
        f"Measured {date.today()} on {machine} ({platform.release()}), runsc systrap.",
        "",
        "| what | n | p50 | p95 | p99 | mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "value" in r:
            lines.append(f"| {r['name']} | {r['n']} | {r['value']} {r['unit']} | | | |")
        else:
            lines.append(f"| {r['name']} | {r['n']} | {r['p50_ms']} ms | {r['p95_ms']} ms "
                         f"| {r['p99_ms']} ms | {r['mean_ms']} ms |")
    report = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{date.today()}-{machine}"
    out.mkdir(parents=True, exist_ok=True)
    name = f"results-{only}" if only else "results"
    (out / f"{name}.md").write_text(report)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    main()
