"""Template tags with the official SDK: a build asked for as `name:tag` is named by that
tag, and `default` (the bare name) moves to each new build; a tag is assigned to the build
another names, listed and removed; sandboxes start from the build their `name:tag` names.
Bad tags and unknown ones fail with a message that says what exists."""

import os
import subprocess
from pathlib import Path

import pytest
from e2b import Sandbox, Template

from silo_server import SiloServer, own_template_dir, wait_for

pytestmark = pytest.mark.server_only


@pytest.fixture(scope="module")
def server():
    """A server whose template dir holds the suite's `base` (linked) and what it builds."""
    with own_template_dir("silo-tags-e2e-") as templates:
        server = SiloServer(subnet="10.229.0.0/16")  # beside the session's server
        server.template_dir = str(templates)
        server.start()
        yield server
        server.stop()


@pytest.fixture
def sdk_env(server, monkeypatch):
    server.use_env(monkeypatch)


def marked(version: str):
    """A tiny template whose build leaves `version` in /marker."""
    return Template().from_template("base").run_cmd(f"echo {version} > /marker", user="root")


def marker_of(template: str) -> str:
    sbx = Sandbox.create(template, timeout=60)
    try:
        return sbx.commands.run("cat /marker").stdout.strip()
    finally:
        sbx.kill()


def tags_of(name: str) -> dict:
    return {t.tag: t.build_id for t in Template.get_tags(name)}


def test_tags_name_builds_and_default_is_the_newest(server, sdk_env):
    v1 = Template.build(marked("one"), "e2e-tags:v1")
    assert v1.template_id == "e2e-tags"
    assert v1.tags == ["v1", "default"]
    v2 = Template.build(marked("two"), "e2e-tags:v2", tags=["latest"])
    assert v2.tags == ["v2", "latest", "default"]
    assert tags_of("e2e-tags") == {
        "v1": v1.build_id,
        "v2": v2.build_id,
        "latest": v2.build_id,
        "default": v2.build_id,
    }

    assert marker_of("e2e-tags:v1") == "one"
    assert marker_of("e2e-tags") == "two"
    assert marker_of("e2e-tags:default") == "two"
    # A template built on a tag's build, as FROM e2e-tags:v1.
    Template.build(Template().from_template("e2e-tags:v1").run_cmd("echo child >> /marker", user="root"),
                   "e2e-tags-child")
    assert marker_of("e2e-tags-child") == "one\nchild"

    assigned = Template.assign_tags("e2e-tags:v1", ["stable"])
    assert (assigned.build_id, assigned.tags) == (v1.build_id, ["stable"])
    assert marker_of("e2e-tags:stable") == "one"
    # A tag taken moves to the build named.
    Template.assign_tags("e2e-tags:v1", "latest")
    assert tags_of("e2e-tags")["latest"] == v1.build_id

    Template.remove_tags("e2e-tags", ["stable", "latest"])
    assert set(tags_of("e2e-tags")) == {"v1", "v2", "default"}
    with pytest.raises(Exception, match=r'has no tag "stable"; its tags: default, v1, v2'):
        Sandbox.create("e2e-tags:stable", timeout=60)


def test_bad_tags_are_refused_with_what_exists(server, sdk_env):
    Template.build(marked("only"), "e2e-tags-bad:v1")
    with pytest.raises(Exception, match=r'has no tag "v9"; its tags: default, v1'):
        Template.assign_tags("e2e-tags-bad:v9", ["x"])
    with pytest.raises(Exception, match="cannot be removed"):
        Template.remove_tags("e2e-tags-bad", "default")
    # All or none: the known tag stays when another is unknown.
    with pytest.raises(Exception, match=r'has no tag "nope"'):
        Template.remove_tags("e2e-tags-bad", ["v1", "nope"])
    assert set(tags_of("e2e-tags-bad")) == {"v1", "default"}
    with pytest.raises(Exception, match="invalid tag"):
        Template.assign_tags("e2e-tags-bad:v1", ["no/slash"])
    with pytest.raises(Exception, match="invalid tag"):
        Template.build(marked("x"), "e2e-tags-bad:a b")
    with pytest.raises(Exception, match="not found"):
        Template.get_tags("e2e-tags-none")


def builds_of(server, name: str) -> int:
    """How many complete builds of `name` are on disk."""
    return sum(1 for p in (Path(server.template_dir) / name).iterdir() if not p.name.startswith("."))


def test_builds_nothing_uses_are_pruned(server, sdk_env):
    Template.build(marked("one"), "e2e-prune:keep")
    Template.build(marked("two"), "e2e-prune")
    on_two = Sandbox.create("e2e-prune", timeout=120)
    try:
        Template.build(marked("three"), "e2e-prune")
        # Kept: the tagged build, the one a sandbox stands on, the default.
        assert builds_of(server, "e2e-prune") == 3
        assert on_two.commands.run("cat /marker").stdout.strip() == "two"
    finally:
        on_two.kill()
    Template.build(marked("four"), "e2e-prune")
    # A prune runs just after the build is reported ready.
    wait_for("the unused builds of e2e-prune pruned", lambda: builds_of(server, "e2e-prune") == 2)
    assert marker_of("e2e-prune:keep") == "one"
    assert marker_of("e2e-prune") == "four"


def silo(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.environ.get("SILO_BIN", "target/release/silo"), "template", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **server.env()})


def test_the_cli_builds_tags_lists_and_untags(server, sdk_env, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM base\nENV WHICH=cli-one\n")
    built = silo(server, "build", "-n", "e2e-tags-cli:v1", "-t", "stable", str(tmp_path))
    assert built.returncode == 0, built.stderr
    assert "tags v1, stable, default" in built.stderr
    (tmp_path / "Dockerfile").write_text("FROM base\nENV WHICH=cli-two\n")
    assert silo(server, "build", "-n", "e2e-tags-cli", str(tmp_path)).returncode == 0

    listed = silo(server, "tags", "e2e-tags-cli")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {"default", "stable", "v1"}
    assert rows["stable"] == rows["v1"] != rows["default"]

    # `default` may be pointed back at an older build; the bare name follows it.
    tagged = silo(server, "tag", "e2e-tags-cli:v1", "default", "prod")
    assert tagged.returncode == 0, tagged.stderr
    assert f"default, prod -> build {rows['v1']}" in tagged.stderr
    info = silo(server, "inspect", "e2e-tags-cli")
    assert f'"buildID": "{rows["v1"]}"' in info.stdout
    sbx = Sandbox.create("e2e-tags-cli", timeout=60)
    try:
        assert sbx.commands.run("echo $WHICH").stdout.strip() == "cli-one"
    finally:
        sbx.kill()

    assert silo(server, "untag", "e2e-tags-cli", "prod", "stable").returncode == 0
    left = silo(server, "tags", "e2e-tags-cli").stdout
    assert [line.split()[0] for line in left.splitlines()[1:]] == ["default", "v1"]
    refused = silo(server, "untag", "e2e-tags-cli", "nope")
    assert refused.returncode != 0 and 'has no tag "nope"' in refused.stderr

    # A sandbox started by tag holds its template as one started by name does.
    sbx = Sandbox.create("e2e-tags-cli:v1", timeout=60)
    try:
        held = silo(server, "delete", "e2e-tags-cli")
        assert held.returncode != 0 and sbx.sandbox_id in held.stderr, held.stderr
    finally:
        sbx.kill()
    deleted = silo(server, "delete", "e2e-tags-cli")
    assert deleted.returncode == 0, deleted.stderr
    assert not (Path(server.template_dir) / "e2e-tags-cli").exists()
