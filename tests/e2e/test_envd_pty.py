"""Pseudo-terminals: create, input, resize, kill."""

import pytest
from e2b import CommandExitException, PtySize, Sandbox


def test_pty_create_send_input_and_exit(sandbox: Sandbox):
    out = []
    pty = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(pty.pid, b"echo pty-$((40+2))\n")
    sandbox.pty.send_stdin(pty.pid, b"exit 0\n")
    result = pty.wait(on_pty=out.append)
    assert result.exit_code == 0
    assert b"pty-42" in b"".join(out)


def test_pty_is_a_terminal_with_size(sandbox: Sandbox):
    out = []
    pty = sandbox.pty.create(PtySize(rows=33, cols=101))
    sandbox.pty.send_stdin(pty.pid, b"tty -s && echo IS-TTY; stty size; exit\n")
    pty.wait(on_pty=out.append)
    text = b"".join(out)
    assert b"IS-TTY" in text
    assert b"33 101" in text


def test_pty_resize(sandbox: Sandbox):
    out = []
    pty = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(pty.pid, PtySize(rows=50, cols=120))
    sandbox.pty.send_stdin(pty.pid, b"stty size; exit\n")
    pty.wait(on_pty=out.append)
    assert b"50 120" in b"".join(out)


def test_pty_kill(sandbox: Sandbox):
    pty = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert sandbox.pty.kill(pty.pid)
    with pytest.raises(CommandExitException) as exc:
        pty.wait()
    assert exc.value.exit_code == -1
    assert pty.pid not in [p.pid for p in sandbox.commands.list()]
