"""Templates from Dockerfiles and from the official SDK's `Template` builder, built by a
running `silo serve`: each step runs (RUN in gVisor), layers are cached, the start
command runs in every sandbox and the ready command gates it, and sandboxes made from
the template with the official SDK have its files, packages, ENV, WORKDIR and USER.
Bad builds fail with a clear message and register nothing; templates are listed,
aliased, and deleted only when nothing uses them."""

import io
import os
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from e2b import Sandbox, Template

from silo_server import SiloServer, free_port, own_template_dir, wait_for

pytestmark = pytest.mark.server_only

DOCKERFILE = """\
FROM base
ARG GREETING=hello
ENV APP_HOME=/srv/app MESSAGE="${GREETING} from silo"
WORKDIR $APP_HOME
COPY app.txt ./
COPY wheels/ /opt/wheels/
RUN pip install -q --break-system-packages --no-index /opt/wheels/silohello-1.0-py3-none-any.whl
COPY --chown=user:user data.txt /home/user/data.txt
USER user
RUN echo "$MESSAGE" > /home/user/built-by.txt && whoami >> /home/user/built-by.txt
"""

# Serves the workdir (/srv/app) on port 8000; ready once it answers.
START_CMD = "python3 -m http.server 8000"
READY_CMD = "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8000/\")'"


def make_wheel(path: Path) -> None:
    """A minimal pure-Python wheel, so the build installs a local package, offline."""
    dist = "silohello-1.0.dist-info"
    files = {
        "silohello/__init__.py": 'GREETING = "hi from a wheel"\n',
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: silohello\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: silo-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
        whl.writestr(f"{dist}/RECORD", record)


@pytest.fixture(scope="module")
def workspace():
    """A template dir holding the suite's `base` (linked) and a build context."""
    with own_template_dir("silo-templates-e2e-") as templates:
        context = templates.parent / "context"
        (context / "wheels").mkdir(parents=True)
        make_wheel(context / "wheels" / "silohello-1.0-py3-none-any.whl")
        (context / "app.txt").write_text("copied from the context\n")
        (context / "data.txt").write_text("first version\n")
        (context / "secret.txt").write_text("must not be copied\n")
        (context / ".dockerignore").write_text("secret.txt\n")
        (context / "Dockerfile").write_text(DOCKERFILE)
        yield templates, context


# A local registry for FROM <registry>/<image> (docker-registry, plain http).
REGISTRY = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def registry(workspace):
    templates, _ = workspace
    storage = templates.parent / "registry"
    storage.mkdir()
    config = storage / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {storage}/data\n"
                      f"http:\n  addr: {REGISTRY}\nlog:\n  level: warn\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=1)
            break
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    yield REGISTRY
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(workspace):
    templates, _ = workspace
    server = SiloServer(subnet="10.225.0.0/16", extra_args=("--insecure-registry", REGISTRY))
    server.template_dir = str(templates)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sdk_env(server, monkeypatch):
    server.use_env(monkeypatch)


def build(server, context: Path, name: str, *flags: str, dockerfile: str | None = None):
    args = [os.environ.get("SILO_BIN", "target/release/silo"), "template", "build",
            "-n", name, *flags, str(context)]
    if dockerfile is not None:
        path = context / f"{name}.Dockerfile"
        path.write_text(dockerfile)
        args[5:5] = ["-f", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **server.env()})


def silo(server, *args: str):
    return subprocess.run([os.environ.get("SILO_BIN", "target/release/silo"), "template", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **server.env()})


def leases(server) -> list:
    """The address leases the server holds: a sandbox's, or a RUN step's network."""
    root = server.data_dir / "node" / "addresses"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def builds_of(templates: Path, name: str) -> list:
    """The template's complete builds on disk."""
    path = templates / name
    return [d for d in path.iterdir() if not d.name.startswith(".")] if path.exists() else []


def test_dockerfile_template_builds_caches_and_starts_sandboxes(workspace, server, sdk_env):
    templates, context = workspace
    first = build(server, context, "e2e-app", "--start-cmd", START_CMD, "--ready-cmd", READY_CMD,
                  "--cpu", "1", "--memory-mb", "384")
    assert first.returncode == 0, first.stderr
    assert "hi from a wheel" not in first.stderr  # pip ran quietly; RUN output is streamed
    assert "step 9/9: RUN echo" in first.stderr
    assert "uploading the build context" in first.stderr
    assert "booting a sandbox to run the start command" in first.stderr

    sbx = Sandbox.create("e2e-app", timeout=120)
    try:
        run = lambda cmd: sbx.commands.run(cmd).stdout.strip()  # noqa: E731
        assert run("cat /srv/app/app.txt") == "copied from the context"
        assert run("python3 -c 'import silohello; print(silohello.GREETING)'") == "hi from a wheel"
        assert run("echo $MESSAGE") == "hello from silo"
        assert run("pwd") == "/srv/app"
        assert run("whoami") == "user"
        assert run("stat -c %U /home/user/data.txt") == "user"
        assert (sbx.get_info().cpu_count, sbx.get_info().memory_mb) == (1, 384)
        assert sbx.files.read("/home/user/built-by.txt") == "hello from silo\nuser\n"
        assert not sbx.files.exists("/srv/app/secret.txt")
        # The start command is up when the sandbox is handed out: no waiting here.
        fetched = run("python3 -c 'import urllib.request; "
                      "print(urllib.request.urlopen(\"http://127.0.0.1:8000/app.txt\").read().decode())'")
        assert fetched == "copied from the context"
        # And from outside, through silo's proxy, as any client reaches a sandbox port.
        through_proxy = urllib.request.Request(
            f"{server.url}/app.txt", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"})
        with urllib.request.urlopen(through_proxy, timeout=30) as resp:
            assert resp.read().decode() == "copied from the context\n"
        starts = [p for p in sbx.commands.list() if p.tag == "start_cmd"]
        assert [p.args[-1] for p in starts] == [START_CMD]
        # What the create asks for wins over the template's ENV.
        other = Sandbox.create("e2e-app", timeout=60, envs={"MESSAGE": "mine"})
        try:
            assert other.commands.run("echo $MESSAGE").stdout.strip() == "mine"
        finally:
            other.kill()
    finally:
        sbx.kill()

    # What a build killed mid-step left behind goes at the next build.
    stale = templates / ".layers" / ".tmp-0123456789abcdef-4194303"
    (stale / "diff").mkdir(parents=True)

    # Unchanged: nothing is uploaded, every layer and the template come from the cache.
    again = build(server, context, "e2e-app", "--start-cmd", START_CMD, "--ready-cmd", READY_CMD)
    assert not stale.exists()
    assert again.returncode == 0, again.stderr
    assert "build context" in again.stderr and "unchanged: not uploaded" in again.stderr
    assert "this exact template is built already" in again.stderr
    assert "step 6/9 (cached)" in again.stderr and "step 9/9 (cached)" in again.stderr

    # One COPY changed: the steps before it are reused, it and those after run again.
    (context / "data.txt").write_text("second version\n")
    changed = build(server, context, "e2e-app", "--start-cmd", START_CMD, "--ready-cmd", READY_CMD)
    assert changed.returncode == 0, changed.stderr
    assert "step 6/9 (cached): RUN pip install" in changed.stderr
    assert "step 7/9: COPY --chown=user:user data.txt" in changed.stderr
    assert "step 9/9: RUN echo" in changed.stderr
    # The older build, which nothing holds, is pruned just after the new one is ready.
    wait_for("the older e2e-app build pruned", lambda: len(builds_of(templates, "e2e-app")) == 1)

    # The API kept each build's status and log.
    status, info, _ = server.api("GET", "/templates/e2e-app")
    assert status == 200, info
    assert [b["status"] for b in info["builds"]] == ["ready", "ready", "ready"]
    build_id = info["builds"][0]["buildID"]
    status, report, _ = server.api("GET", f"/templates/e2e-app/builds/{build_id}/status?logsOffset=0")
    assert status == 200 and report["status"] == "ready"
    assert any("step 7/9: COPY" in e["message"] for e in report["logEntries"])


@pytest.mark.parametrize(
    "flags, dockerfile, expected",
    [
        ([], "FROM base\nRUN true\nFROBNICATE now\n", "Dockerfile line 3: unknown instruction \"FROBNICATE\""),
        ([], "FROM base\nRUN echo about to fail && exit 3\n",
         "step 1 (Dockerfile line 2) `RUN echo about to fail && exit 3` failed: exit status: 3; last output:\nabout to fail"),
        ([], "FROM base\nCOPY missing.txt /x\n", "COPY source \"missing.txt\" is not in the build context"),
        ([], "FROM no-such-template\n", "template \"no-such-template\" is not built here"),
        ([], "FROM base\nCMD [\"sleep\", \"1\"]\n", "--start-cmd"),
        (["--start-cmd", "echo boom; exit 4", "--ready-cmd", "false"], "FROM base\nRUN true\n",
         "the template's start command exited with code 4 before its ready command passed; its last output: boom"),
    ],
)
def test_bad_builds_fail_clearly_and_register_nothing(workspace, server, flags, dockerfile, expected):
    templates, context = workspace
    result = build(server, context, "e2e-broken", *flags, dockerfile=dockerfile)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert not builds_of(templates, "e2e-broken")
    assert "e2e-broken" not in silo(server, "list").stdout
    # No build sandbox, check sandbox, overlay mount or half-made layer is left behind.
    assert "silo-build" not in subprocess.run(
        ["runsc", "--root", str(templates / ".runsc"), "list"], capture_output=True, text=True
    ).stdout
    assert server.runsc_containers() == []
    assert str(templates) not in Path("/proc/mounts").read_text()
    layers = templates / ".layers"
    assert not layers.exists() or not [d for d in layers.iterdir() if d.name.startswith(".")]
    # A failed RUN step's network is released too.
    assert leases(server) == []


# Run by a RUN step: what it reaches (connect within 3 s) must be what a sandbox with
# default rules reaches. Exits 1 if it reached something it must not, or not the
# internet (a package registry, by name).
PROBE = """\
import socket, sys, urllib.request

def reaches(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False

reached = False
for host, port in [("127.0.0.1", int(sys.argv[1])), ("169.254.169.254", 80), (sys.argv[2], 49983)]:
    verdict = "REACHED" if reaches(host, port) else "blocked"
    reached |= verdict == "REACHED"
    print(verdict, f"{host}:{port}", flush=True)
with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=60) as resp:
    print("registry answered", resp.status, flush=True)
sys.exit(1 if reached else 0)
"""


def test_run_steps_reach_the_internet_but_not_the_host_or_sandboxes(workspace, server, sdk_env):
    # A Dockerfile is untrusted: its RUN steps get a sandbox's network, never the host's
    # (whose loopback has silo's API, and which reaches every sandbox's agent).
    templates, _ = workspace
    context = templates.parent / "probe-context"
    context.mkdir()
    (context / "probe.py").write_text(PROBE)
    neighbour = Sandbox.create("base", timeout=120)
    try:
        address = neighbour.commands.run(
            "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.connect(('203.0.113.1', 80)); print(s.getsockname()[0])\"").stdout.strip()
        made = build(server, context, "e2e-probe", dockerfile=(
            "FROM base\nCOPY probe.py /probe.py\n"
            f"RUN python3 /probe.py {server.port} {address}\n"))
        assert made.returncode == 0, made.stderr
        for target in (f"127.0.0.1:{server.port}", "169.254.169.254:80", f"{address}:49983"):
            assert f"blocked {target}" in made.stderr, made.stderr
        assert "registry answered 200" in made.stderr, made.stderr
        # The step's network is gone with it: only the neighbour holds an address.
        assert len(leases(server)) == 1, leases(server)
    finally:
        neighbour.kill()
    assert silo(server, "delete", "e2e-probe").returncode == 0


def test_sdk_template_builder_builds_with_start_and_ready(workspace, server, sdk_env):
    _, context = workspace
    logs = []
    template = (
        Template(file_context_path=str(context))
        .from_base_image()
        .copy("app.txt", "/opt/site/")
        .run_cmd("echo made-by-root > /opt/root.txt", user="root")
        .set_envs({"SITE": "sdk"})
        .make_dir("/opt/made", mode=0o750)
        .set_workdir("/opt/site")
        .set_start_cmd("python3 -m http.server 8001",
                       "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8001))'")
    )
    info = Template.build(template, "e2e-sdk", cpu_count=1, memory_mb=384,
                          on_build_logs=lambda entry: logs.append(entry.message))
    assert info.template_id == "e2e-sdk" and info.build_id
    assert any("Uploaded 'app.txt'" in line for line in logs), logs
    assert any("step 2/5: RUN echo made-by-root > /opt/root.txt (as root)" in line for line in logs), logs
    assert Template.exists("e2e-sdk") and not Template.exists("e2e-no-such")

    sbx = Sandbox.create("e2e-sdk", timeout=60)
    try:
        out = sbx.commands.run("cat app.txt /opt/root.txt; echo $SITE; pwd").stdout.split()
        assert out == ["copied", "from", "the", "context", "made-by-root", "sdk", "/opt/site"]
        fetched = sbx.commands.run(
            "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:8001/app.txt\").read().decode())'"
        )
        assert fetched.stdout.strip() == "copied from the context"
        assert sbx.commands.run("stat -c %a /opt/made").stdout.strip() == "750"
        assert sbx.get_info().cpu_count == 1 and sbx.get_info().memory_mb == 384
    finally:
        sbx.kill()

    # Unchanged: the SDK skips the upload, the server reuses the build.
    logs.clear()
    Template.build(template, "e2e-sdk", on_build_logs=lambda entry: logs.append(entry.message))
    assert any("already cached" in line for line in logs), logs
    assert any("this exact template is built already" in line for line in logs), logs
    # skip_cache: every step runs again.
    logs.clear()
    Template.build(template, "e2e-sdk", skip_cache=True, on_build_logs=lambda entry: logs.append(entry.message))
    assert not any("(cached)" in line for line in logs), logs

    # A step silo cannot build is refused when the build starts, with the reason.
    status, requested, _ = server.api("POST", "/v3/templates", {"name": "e2e-sdk-odd"})
    status, body, _ = server.api(
        "POST", f"/v2/templates/e2e-sdk-odd/builds/{requested['buildID']}",
        {"fromTemplate": "base", "steps": [{"type": "EXPOSE", "args": ["80"]}]})
    assert status == 400 and 'step type "EXPOSE" is not supported' in body["message"], body


def test_a_dockerfiles_symlinks_never_lead_its_copies_onto_the_host(workspace, server, sdk_env):
    # silo writes COPY, ADD and WORKDIR into the layer as root on the host: a symlink a
    # step made (`/h -> /`) must lead where it leads in the sandbox, not to the host's /.
    templates, _ = workspace
    escape = f"/srv/silo-e2e-escape-{os.getpid()}-{time.monotonic_ns()}"
    context = templates.parent / "hostile-context"
    context.mkdir()
    (context / "app.txt").write_text("copied\n")
    with tarfile.open(context / "bundle.tar.gz", "w:gz") as bundle:
        inner = b"added\n"
        info = tarfile.TarInfo("inner.txt")
        info.size = len(inner)
        bundle.addfile(info, io.BytesIO(inner))
    dockerfile = (
        "FROM base\n"
        "RUN ln -s / /h\n"
        f"COPY app.txt /h{escape}/copied.txt\n"
        f"ADD bundle.tar.gz /h{escape}/added/\n"
        f"WORKDIR /h{escape}/workdir\n"
    )
    made = build(server, context, "e2e-hostile", dockerfile=dockerfile)
    assert made.returncode == 0, made.stderr
    assert not Path(escape).exists(), "the build wrote onto the host"

    sbx = Sandbox.create("e2e-hostile", timeout=60)
    try:
        assert sbx.files.read(f"{escape}/copied.txt") == "copied\n"
        assert sbx.files.read(f"{escape}/added/inner.txt") == "added\n"
        assert sbx.commands.run("pwd -P").stdout.strip() == f"{escape}/workdir"
    finally:
        sbx.kill()
    assert silo(server, "delete", "e2e-hostile").returncode == 0


def test_templates_are_listed_aliased_and_deleted_only_when_unused(workspace, server, sdk_env):
    templates, context = workspace
    made = build(server, context, "e2e-small", dockerfile="FROM base\nRUN echo small > /small.txt\n")
    assert made.returncode == 0, made.stderr

    alias = silo(server, "alias", "e2e-nick", "e2e-small")
    assert alias.returncode == 0, alias.stderr
    listed = silo(server, "list")
    assert any(line.startswith("e2e-small ") and line.endswith("e2e-nick")
               for line in listed.stdout.splitlines()), listed.stdout
    status, body, _ = server.api("GET", "/templates/aliases/e2e-nick")
    assert (status, body["templateID"]) == (200, "e2e-small")

    sbx = Sandbox.create("e2e-nick", timeout=60)
    try:
        assert sbx.files.read("/small.txt") == "small\n"
        refused = silo(server, "delete", "e2e-small")
        assert refused.returncode != 0
        assert "409" in refused.stderr and sbx.sandbox_id in refused.stderr, refused.stderr
    finally:
        sbx.kill()

    assert silo(server, "delete", "e2e-nick").returncode == 0
    assert not (templates / "e2e-small").exists()
    assert "e2e-small" not in silo(server, "list").stdout
    status, _, _ = server.api("GET", "/templates/aliases/e2e-nick")
    assert status == 404
    with pytest.raises(Exception, match="not found"):
        Sandbox.create("e2e-small", timeout=30)
    assert "own templates" in silo(server, "delete", "base").stderr


def test_a_snapshot_and_a_fork_keep_the_build_their_sandbox_booted_on(workspace, server, sdk_env):
    # Rebuilding a template leaves its running sandboxes on the build they booted on; a
    # snapshot or fork of one must restore onto those files too, not the newer build's.
    _, context = workspace
    dockerfile = "FROM base\nRUN echo {} > /build.txt\n"
    made = build(server, context, "e2e-rebuilt", dockerfile=dockerfile.format("first"))
    assert made.returncode == 0, made.stderr
    sbx = Sandbox.create("e2e-rebuilt", timeout=180)
    snapshot = None
    try:
        sbx.files.write("/home/user/mine.txt", "kept")
        made = build(server, context, "e2e-rebuilt", dockerfile=dockerfile.format("second"))
        assert made.returncode == 0, made.stderr
        fresh = Sandbox.create("e2e-rebuilt", timeout=60)
        try:
            assert fresh.files.read("/build.txt") == "second\n"
        finally:
            fresh.kill()
        snapshot = sbx.create_snapshot()
        copies = [Sandbox.create(snapshot.snapshot_id, timeout=60), *sbx.fork(count=1)]
        try:
            for copy in copies:
                assert copy.files.read("/build.txt") == "first\n"
                assert copy.files.read("/home/user/mine.txt") == "kept"
        finally:
            for copy in copies:
                copy.kill()
    finally:
        sbx.kill()
        if snapshot is not None:
            Sandbox.delete_snapshot(snapshot.snapshot_id)
        silo(server, "delete", "e2e-rebuilt")


def test_uploads_and_build_calls_refuse_bad_input(server):
    status, body, _ = server.api("GET", "/templates/x/files/not-hex")
    assert status == 400 and "hex digest" in body["message"]
    status, body, _ = server.api("POST", "/v2/templates/x/builds/00000000-0000-0000-0000-000000000000", {})
    assert status == 404
    status, body, _ = server.api("POST", "/v3/templates", {"name": "../etc"})
    assert status == 400 and "invalid template name" in body["message"]
    status, body, _ = server.api("POST", "/v3/templates", b"{not json")
    assert status == 400
    status, requested, _ = server.api("POST", "/v3/templates", {"name": "e2e-unused"})
    assert status == 202
    # A COPY of files never uploaded is refused when the build starts.
    status, body, _ = server.api(
        "POST", f"/v2/templates/e2e-unused/builds/{requested['buildID']}",
        {"fromTemplate": "base", "steps": [{"type": "COPY", "args": ["a", "/a"], "filesHash": "ab" * 32}]},
    )
    assert status == 400 and "were not uploaded" in body["message"]
    # An upload URL works once, and only with its token.
    status, upload, _ = server.api("GET", f"/templates/e2e-unused/files/{'cd' * 32}")
    assert status == 201 and not upload["present"]
    bad = urllib.request.Request(upload["url"] + "x", data=b"", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=30)
    assert err.value.code == 404


def write_oci_layout(layout: Path, base_rootfs: Path) -> None:
    """An OCI image layout tagged v1: layer 1 is silo's base tree (plain tar) plus
    /opt/data/old.txt; layer 2 (gzip) drops user `user` from passwd/group, whites out
    /home/user, /etc/motd and everything under /opt/data, and adds /srv and a new file."""
    import gzip
    import hashlib
    import json
    import shutil
    import tarfile

    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    extra = layout.parent / "extra"
    (extra / "opt/data").mkdir(parents=True)
    (extra / "opt/data/old.txt").write_text("old\n")
    layer1 = layout.parent / "layer1.tar"
    subprocess.run(["tar", "-C", str(base_rootfs), "-cf", str(layer1), "."], check=True)
    subprocess.run(["tar", "-C", str(extra), "-rf", str(layer1), "./opt/data"], check=True)
    layer1_bytes = layer1.read_bytes()
    layer1.unlink()
    shutil.rmtree(extra)

    def member(tar, name, text=None, mode=0o644, kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.type, info.mode = kind, mode
        data = (text or "").encode()
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    strip = lambda text: "".join(  # noqa: E731
        line.replace(",user", "").replace(":user", ":") + "\n"
        for line in text.splitlines() if not line.startswith("user:"))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member(tar, "etc/passwd", strip((base_rootfs / "etc/passwd").read_text()))
        member(tar, "etc/group", strip((base_rootfs / "etc/group").read_text()))
        member(tar, "etc/.wh.motd")
        member(tar, "home/.wh.user")
        member(tar, "opt/data/.wh..wh..opq")
        member(tar, "opt/data/new.txt", "new\n")
        member(tar, "srv", mode=0o755, kind=tarfile.DIRTYPE)
    layer2_raw = raw.getvalue()
    layer2 = gzip.compress(layer2_raw)

    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "IMAGE_VAR=from-image"],
                   "WorkingDir": "/srv", "Labels": {"made-by": "silo-test"}},
        "rootfs": {"type": "layers", "diff_ids": [
            "sha256:" + hashlib.sha256(layer1_bytes).hexdigest(),
            "sha256:" + hashlib.sha256(layer2_raw).hexdigest()]},
    }
    config_bytes = json.dumps(config).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config_bytes), "size": len(config_bytes)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": put(layer1_bytes), "size": len(layer1_bytes)},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": put(layer2), "size": len(layer2)},
        ],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def test_from_an_oci_image_layout_and_a_registry(workspace, server, registry, sdk_env):
    templates, _ = workspace
    shared = Path(os.environ.get("SILO_TEST_TEMPLATE_DIR", "/var/lib/silo/templates"))
    base_rootfs = max((shared / "base").glob("*/rootfs"), key=lambda p: p.stat().st_mtime)
    context = templates.parent / "oci-context"
    write_oci_layout(context / "image", base_rootfs)
    (context / "Dockerfile").write_text(
        'FROM oci:image:v1\nRUN echo "$IMAGE_VAR" > /built.txt && id -un >> /built.txt\n')
    made = build(server, context, "e2e-oci")
    assert made.returncode == 0, made.stderr
    assert "unpacking the image" in made.stderr

    sbx = Sandbox.create("e2e-oci", timeout=60)
    try:
        run = lambda cmd: sbx.commands.run(cmd).stdout.strip()  # noqa: E731
        assert run("cat /built.txt") == "from-image\nroot"
        assert run("echo $IMAGE_VAR; pwd; whoami") == "from-image\n/srv\nuser"
        assert run("ls /opt/data") == "new.txt"
        assert run("test -e /etc/motd && echo there || echo gone") == "gone"
        # silo made it fit: user `user` again, with a home and sudo through the agent.
        assert run("stat -c %U /home/user") == "user"
        assert run("sudo -n id -un") == "root"
    finally:
        sbx.kill()

    broken = build(server, context, "e2e-oci-broken", dockerfile="FROM oci:image:v2\n")
    assert broken.returncode != 0
    assert 'no image tagged "v2"' in broken.stderr and "it has: v1" in broken.stderr, broken.stderr
    escape = build(server, context, "e2e-oci-broken", dockerfile="FROM oci:../../etc\n")
    assert escape.returncode != 0 and "leaves the build context" in escape.stderr, escape.stderr

    # The same image from a registry: pushed with skopeo, pulled by the build.
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{context / 'image'}:v1",
                    f"docker://{registry}/silo/test:v1"], check=True, timeout=300)
    pulled = build(server, context, "e2e-pulled",
                   dockerfile=f"FROM {registry}/silo/test:v1\nRUN echo pulled > /pulled.txt\n")
    assert pulled.returncode == 0, pulled.stderr
    assert f"pulling {registry}/silo/test:v1" in pulled.stderr
    template = Template().from_image(f"{registry}/silo/test:v1").run_cmd("echo sdk > /sdk.txt")
    Template.build(template, "e2e-pulled-sdk")
    for name, marker in [("e2e-pulled", "/pulled.txt"), ("e2e-pulled-sdk", "/sdk.txt")]:
        sbx = Sandbox.create(name, timeout=60)
        try:
            out = sbx.commands.run(f"echo $IMAGE_VAR; cat {marker}; whoami").stdout.split()
            assert out == ["from-image", marker.strip("/").removesuffix(".txt"), "user"]
        finally:
            sbx.kill()
    missing = build(server, context, "e2e-oci-broken", dockerfile=f"FROM {registry}/silo/nope:v1\n")
    assert missing.returncode != 0 and "no such image or tag" in missing.stderr, missing.stderr
    unreachable = build(server, context, "e2e-oci-broken", dockerfile="FROM 127.0.0.1:1/silo/test:v1\n")
    assert unreachable.returncode != 0
    assert "cannot reach the registry 127.0.0.1:1" in unreachable.stderr, unreachable.stderr


def test_the_build_cache_forgets_what_no_build_used_for_days(workspace, server, sdk_env):
    templates, context = workspace
    dockerfile = "FROM base\nRUN echo kept > /kept.txt\nCOPY app.txt /app.txt\n"
    first = build(server, context, "e2e-cache", dockerfile=dockerfile)
    assert first.returncode == 0, first.stderr
    # Every entry of the cache (layers, unpacked images, uploads), as if no build had used
    # it for 30 days: more than --build-cache-days' 7.
    month_ago = time.time() - 30 * 86400
    stores = [templates / ".layers", templates / ".images", templates / ".uploads"]
    aged = [entry for store in stores if store.exists() for entry in store.iterdir()
            if not entry.name.startswith(".") and entry.name != "pulled"]
    assert len(aged) > 3
    for path in [*aged, *(entry / "rootfs" for entry in aged)]:
        if path.exists():
            os.utime(path, (month_ago, month_ago))

    # An unchanged rebuild finds its own layers and context, which stay; the prune just
    # after it takes the rest.
    again = build(server, context, "e2e-cache", dockerfile=dockerfile)
    assert again.returncode == 0, again.stderr
    assert "unchanged: not uploaded" in again.stderr
    assert "step 1/2 (cached)" in again.stderr and "step 2/2 (cached)" in again.stderr
    left = lambda store: [e for e in (templates / store).iterdir() if not e.name.startswith(".")]  # noqa: E731
    wait_for("the cache entries no build used removed",
             lambda: len(left(".layers")) == 2 and len(left(".uploads")) == 1)
    assert [e.name for e in left(".images")] in ([], ["pulled"])
    third = build(server, context, "e2e-cache", dockerfile=dockerfile)
    assert "step 1/2 (cached)" in third.stderr and "step 2/2 (cached)" in third.stderr
    assert silo(server, "delete", "e2e-cache").returncode == 0
