"""Commands through the SDK: output, exit codes, env, cwd, background processes, stdin,
timeouts, and Connect-protocol edge cases sent as raw HTTP."""

import base64
import json
import struct

import pytest
from e2b import CommandExitException, InvalidArgumentException, Sandbox, TimeoutException


def test_run_stdout_stderr_exit_code(sandbox: Sandbox):
    r = sandbox.commands.run("echo out; echo err >&2")
    assert r.exit_code == 0
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"


def test_nonzero_exit_raises_with_stderr(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("echo boom >&2; exit 3")
    assert exc.value.exit_code == 3
    assert "boom" in exc.value.stderr


def test_runs_as_default_user_with_login_env(sandbox: Sandbox):
    r = sandbox.commands.run('echo "$USER $LOGNAME"; echo $HOME; pwd')
    user, home, cwd = r.stdout.splitlines()
    assert user == "user user"
    assert cwd == home


def test_root_user(sandbox: Sandbox):
    assert sandbox.commands.run("id -u", user="root").stdout.strip() == "0"


def test_envs(sandbox: Sandbox):
    r = sandbox.commands.run("echo $FOO-$BAR", envs={"FOO": "foo", "BAR": "b a r"})
    assert r.stdout.strip() == "foo-b a r"


def test_cwd(sandbox: Sandbox, unique):
    sandbox.files.make_dir(unique)
    r = sandbox.commands.run("pwd", cwd=unique)
    assert r.stdout.strip().endswith("/" + unique)
    assert sandbox.commands.run("pwd", cwd="/").stdout.strip() == "/"


def test_missing_cwd_is_invalid_argument(sandbox: Sandbox):
    with pytest.raises(Exception) as exc:
        sandbox.commands.run("pwd", cwd="/definitely/not/here")
    assert "not usable" in str(exc.value) or "invalid" in str(exc.value).lower()


def test_nul_byte_is_invalid_argument(sandbox: Sandbox):
    # exec takes C strings: no program can be given one.
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("echo a\0b")
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("echo hi", envs={"A": "1\0"})


def test_streaming_callbacks(sandbox: Sandbox):
    out, err = [], []
    sandbox.commands.run(
        "for i in 1 2 3; do echo $i; echo e$i >&2; done",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == "1\n2\n3\n"
    assert "".join(err) == "e1\ne2\ne3\n"


def test_large_output_is_complete(sandbox: Sandbox):
    r = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' 'a'")
    assert len(r.stdout) == 3_000_000


def test_background_connect_list_kill(sandbox: Sandbox):
    cmd = sandbox.commands.run("sleep 30", background=True)
    pids = [p.pid for p in sandbox.commands.list()]
    assert cmd.pid in pids
    again = sandbox.commands.connect(cmd.pid)
    assert sandbox.commands.kill(cmd.pid)
    with pytest.raises(CommandExitException) as exc:
        again.wait()
    assert exc.value.exit_code == -1
    assert cmd.pid not in [p.pid for p in sandbox.commands.list()]
    assert not sandbox.commands.kill(cmd.pid)


def test_background_output_after_connect(sandbox: Sandbox):
    cmd = sandbox.commands.run("sleep 0.5; echo late", background=True)
    handle = sandbox.commands.connect(cmd.pid)
    assert handle.wait().stdout == "late\n"


def test_background_grandchild_does_not_hold_command(sandbox: Sandbox):
    # bash exits at once; the sleep keeps stdout open but must not delay the end event.
    r = sandbox.commands.run("sleep 20 & echo started", timeout=10)
    assert r.stdout == "started\n"


def test_send_stdin(sandbox: Sandbox):
    cmd = sandbox.commands.run("head -n 2", background=True, stdin=True)
    sandbox.commands.send_stdin(cmd.pid, "one\n")
    sandbox.commands.send_stdin(cmd.pid, "two\n")
    assert cmd.wait().stdout == "one\ntwo\n"


def test_close_stdin(sandbox: Sandbox):
    cmd = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(cmd.pid, "data")
    sandbox.commands.close_stdin(cmd.pid)
    assert cmd.wait().stdout == "data"


def test_stdin_closed_by_default(sandbox: Sandbox):
    assert sandbox.commands.run("cat").stdout == ""


def test_timeout_kills_process(sandbox: Sandbox):
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)
    r = sandbox.commands.run("pgrep -x 'sleep' -a || true")
    assert "sleep 30" not in r.stdout


def test_timeout_of_a_chatty_command_is_a_timeout(sandbox: Sandbox):
    # Output keeps the client's read timer from firing: the server's deadline ends the
    # stream with deadline_exceeded, which the SDK raises as its timeout error.
    with pytest.raises(TimeoutException):
        sandbox.commands.run("echo $$ > /tmp/chatty; while true; do echo tick; sleep 0.2; done", timeout=2)
    # And it was killed.
    assert sandbox.commands.run("kill -0 $(cat /tmp/chatty) 2>/dev/null || echo gone").stdout == "gone\n"


def test_a_connection_outliving_its_timeout_ends_but_the_process_runs_on(sandbox: Sandbox):
    cmd = sandbox.commands.run("while true; do echo tock; sleep 0.2; done", background=True, timeout=0)
    try:
        attached = sandbox.commands.connect(cmd.pid, timeout=1)
        with pytest.raises(TimeoutException):
            attached.wait()
        assert cmd.pid in [p.pid for p in sandbox.commands.list()]
    finally:
        sandbox.commands.kill(cmd.pid)


def test_exit_status_by_signal(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("kill -9 $$")
    assert exc.value.exit_code == -1
    assert "killed" in (exc.value.error or "") or exc.value.exit_code == -1


def _envelope(obj_bytes: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(obj_bytes)) + obj_bytes


def _envelopes(body: bytes):
    out = []
    while body:
        flag, n = struct.unpack(">BI", body[:5])
        out.append((flag, json.loads(body[5 : 5 + n])))
        body = body[5 + n :]
    return out


def test_malformed_json_unary_is_invalid_argument(envd):
    r = envd.post("/process.Process/List",
        content=b"{not json",
        headers={"content-type": "application/json", "connect-protocol-version": "1"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"


def test_wrong_field_types_are_invalid_argument(envd):
    r = envd.post("/process.Process/SendSignal",
        json={"process": {"pid": "abc"}, "signal": "SIGNAL_SIGKILL"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"


def test_unknown_pid_signal_is_not_found(envd):
    r = envd.post("/process.Process/SendSignal",
        json={"process": {"pid": 999999}, "signal": 9},
    )
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_stream_with_oversized_envelope_ends_with_error(envd):
    body = struct.pack(">BI", 0, 0x7FFFFFFF) + b"{}"
    r = envd.post("/process.Process/Start",
        content=body,
        headers={"content-type": "application/connect+json"},
    )
    assert r.status_code == 200
    (flag, end), = _envelopes(r.content)
    assert flag == 2
    assert end["error"]["code"] == "invalid_argument"


def test_raw_start_stream_shape(envd):
    req = json.dumps({"process": {"cmd": "/bin/echo", "args": ["hi"]}}).encode()
    r = envd.post("/process.Process/Start",
        content=_envelope(req),
        headers={"content-type": "application/connect+json"},
    )
    assert r.headers["content-type"] == "application/connect+json"
    msgs = _envelopes(r.content)
    assert "start" in msgs[0][1]["event"]
    assert msgs[-2][1]["event"]["end"]["status"] == "exit status 0"
    assert msgs[-1] == (2, {})


def test_raw_start_without_stdin_field_gets_a_stdin_pipe(envd):
    # As envd: a request from before the flag has stdin open; the SDKs send the flag.
    script = "if [ -p /dev/stdin ]; then echo pipe; else echo none; fi"
    for extra, expected in [({}, "pipe"), ({"stdin": True}, "pipe"), ({"stdin": False}, "none")]:
        req = {"process": {"cmd": "/bin/sh", "args": ["-c", script]}, **extra}
        r = envd.post("/process.Process/Start",
            content=_envelope(json.dumps(req).encode()),
            headers={"content-type": "application/connect+json"},
        )
        out = b"".join(
            base64.b64decode(m["event"]["data"]["stdout"])
            for _, m in _envelopes(r.content)
            if "data" in m.get("event", {})
        )
        assert out.decode() == expected + "\n", extra


def test_unary_request_over_the_limit_is_the_callers_argument(envd):
    # Not resource_exhausted: the SDKs read that as a rate limit ("try again later").
    r = envd.post("/filesystem.Filesystem/Stat",
        json={"path": "/tmp/" + "x" * (17 << 20)},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    assert "bytes" in r.json()["message"]
