"""Templates from Dockerfiles: `silo template build` runs each step (RUN in gVisor),
caches layers, and sandboxes made from the template with the official SDK have its
files, packages, ENV, WORKDIR and USER. Bad Dockerfiles fail with a clear message and
register nothing."""

import os
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest
from e2b import Sandbox

from silo_server import SiloServer

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
    root = Path(tempfile.mkdtemp(prefix="silo-templates-e2e-"))
    templates = root / "templates"
    templates.mkdir()
    shared = Path(os.environ.get("SILO_TEST_TEMPLATE_DIR", "/var/lib/silo/templates"))
    (templates / "base").symlink_to(shared / "base")
    context = root / "context"
    (context / "wheels").mkdir(parents=True)
    make_wheel(context / "wheels" / "silohello-1.0-py3-none-any.whl")
    (context / "app.txt").write_text("copied from the context\n")
    (context / "data.txt").write_text("first version\n")
    (context / "secret.txt").write_text("must not be copied\n")
    (context / ".dockerignore").write_text("secret.txt\n")
    (context / "Dockerfile").write_text(DOCKERFILE)
    yield templates, context
    subprocess.run(["rm", "-rf", str(root)], check=False)


def build(templates: Path, context: Path, name: str, dockerfile: str | None = None):
    args = [os.environ.get("SILO_BIN", "target/release/silo"), "template", "build",
            "-n", name, "--template-dir", str(templates), str(context)]
    if dockerfile is not None:
        path = context / f"{name}.Dockerfile"
        path.write_text(dockerfile)
        args[5:5] = ["-f", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def test_dockerfile_template_builds_caches_and_starts_sandboxes(workspace, monkeypatch):
    templates, context = workspace
    first = build(templates, context, "e2e-app")
    assert first.returncode == 0, first.stderr
    assert "hi from a wheel" not in first.stderr  # pip ran quietly; RUN output is streamed
    assert "step 9/9: RUN echo" in first.stderr

    server = SiloServer(subnet="10.225.0.0/16")
    server.template_dir = str(templates)
    server.start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        sbx = Sandbox.create("e2e-app", timeout=120)
        try:
            run = lambda cmd: sbx.commands.run(cmd).stdout.strip()  # noqa: E731
            assert run("cat /srv/app/app.txt") == "copied from the context"
            assert run("python3 -c 'import silohello; print(silohello.GREETING)'") == "hi from a wheel"
            assert run("echo $MESSAGE") == "hello from silo"
            assert run("pwd") == "/srv/app"
            assert run("whoami") == "user"
            assert run("stat -c %U /home/user/data.txt") == "user"
            assert sbx.files.read("/home/user/built-by.txt") == "hello from silo\nuser\n"
            assert not sbx.files.exists("/srv/app/secret.txt")
            # What the create asks for wins over the template's ENV.
            other = Sandbox.create("e2e-app", timeout=60, envs={"MESSAGE": "mine"})
            try:
                assert other.commands.run("echo $MESSAGE").stdout.strip() == "mine"
            finally:
                other.kill()
        finally:
            sbx.kill()
    finally:
        server.stop()

    # What a build killed mid-step left behind goes at the next build.
    stale = templates / ".layers" / ".tmp-0123456789abcdef-4194303"
    (stale / "diff").mkdir(parents=True)

    # Unchanged: every layer and the template itself come from the cache.
    again = build(templates, context, "e2e-app")
    assert not stale.exists()
    assert again.returncode == 0, again.stderr
    assert "cached: a complete build" in again.stderr
    assert "step 6/9 (cached)" in again.stderr and "step 9/9 (cached)" in again.stderr

    # One COPY changed: the steps before it are reused, it and those after run again.
    (context / "data.txt").write_text("second version\n")
    changed = build(templates, context, "e2e-app")
    assert changed.returncode == 0, changed.stderr
    assert "step 6/9 (cached): RUN pip install" in changed.stderr
    assert "step 7/9: COPY --chown=user:user data.txt" in changed.stderr
    assert "step 9/9: RUN echo" in changed.stderr
    assert len([d for d in (templates / "e2e-app").iterdir() if not d.name.startswith(".")]) == 2


@pytest.mark.parametrize(
    "dockerfile, expected",
    [
        ("FROM base\nRUN true\nFROBNICATE now\n", "Dockerfile line 3: unknown instruction \"FROBNICATE\""),
        ("FROM base\nRUN echo about to fail && exit 3\n",
         "step 1 (Dockerfile line 2) `RUN echo about to fail && exit 3` failed: exit status: 3; last output:\nabout to fail"),
        ("FROM base\nCOPY missing.txt /x\n", "COPY source \"missing.txt\" is not in the build context"),
        ("FROM no-such-template\n", "template \"no-such-template\" is not built here"),
        ("FROM base\nCMD [\"sleep\", \"1\"]\n", "--start-cmd"),
    ],
)
def test_bad_dockerfiles_fail_clearly_and_register_nothing(workspace, dockerfile, expected):
    templates, context = workspace
    result = build(templates, context, "e2e-broken", dockerfile)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert not (templates / "e2e-broken").exists() or not [
        d for d in (templates / "e2e-broken").iterdir() if not d.name.startswith(".")
    ]
    # No build sandbox, overlay mount or half-made layer is left behind.
    assert "silo-build" not in subprocess.run(
        ["runsc", "--root", str(templates / ".runsc"), "list"], capture_output=True, text=True
    ).stdout
    assert str(templates) not in Path("/proc/mounts").read_text()
    layers = templates / ".layers"
    assert not layers.exists() or not [d for d in layers.iterdir() if d.name.startswith(".")]
