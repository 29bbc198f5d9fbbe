"""Warm shells (ADR 0018): `commands.run` goes to a bash started before it was asked for,
and must not be told from a cold `bash -l -c CMD` in what matters: login files read when
the command runs, nothing carried over between commands, the same variables, line numbers,
exit codes; other users, directories and environments work as before."""

import time

from e2b import CommandExitException, Sandbox
import pytest

MARKER = "silo: warm shell"


def aside(sandbox: Sandbox, command: str, user: str | None = None) -> str:
    """Run `command` where no warm shell is used or made: a command with stdin starts
    cold and leaves the warm shell alone."""
    return sandbox.commands.run(command, stdin=True, user=user).stdout


def other_warm_shells(sandbox: Sandbox) -> list[str]:
    """Pids of the waiting warm shells."""
    return aside(sandbox, f"for p in $(pgrep -f '{MARKER}'); do [ $p = $$ ] || echo $p; done").split()


def wait_for_warm_shell(sandbox: Sandbox) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if shells := other_warm_shells(sandbox):
            return shells
        time.sleep(0.2)
    raise AssertionError("no warm shell came up")


def test_commands_run_in_a_warm_shell_and_the_next_is_warmed(sandbox: Sandbox):
    waiting = wait_for_warm_shell(sandbox)
    handle = sandbox.commands.run("echo $$; tr '\\0' ' ' < /proc/$$/cmdline", background=True)
    result = handle.wait()
    pid, cmdline = result.stdout.splitlines()
    assert int(pid) == handle.pid
    assert waiting == [pid]
    assert MARKER in cmdline
    assert wait_for_warm_shell(sandbox) != [pid]


def test_login_files_are_read_when_the_command_runs(sandbox: Sandbox):
    # The shell is waiting before the login files change.
    sandbox.commands.run("true")
    waiting = wait_for_warm_shell(sandbox)
    aside(sandbox, "echo 'export HOME_PROBE=home' >> ~/.profile")
    aside(sandbox, "echo 'export ETC_PROBE=etc' > /etc/profile.d/probe.sh", user="root")
    out = sandbox.commands.run('echo "$HOME_PROBE $ETC_PROBE $$"').stdout
    assert out == f"home etc {waiting[0]}\n"


def test_nothing_carries_over_between_commands(sandbox: Sandbox):
    sandbox.commands.run("X=1; export Y=2; cd /tmp; f() { :; }; alias ll=ls; set -e; trap 'echo trapped' EXIT; true")
    wait_for_warm_shell(sandbox)
    out = sandbox.commands.run(
        'echo "${X-unset} ${Y-unset} ${PWD#$HOME} [$(type -t f)] [$(alias)] $-"; false; echo after'
    ).stdout
    assert out.splitlines() == ["unset unset  [] [] hBc", "after"]


def test_the_shell_reads_like_bash_dash_l_dash_c(sandbox: Sandbox):
    wait_for_warm_shell(sandbox)
    time.sleep(2)  # the warm shell has waited: $SECONDS must still start at 0
    command = 'echo "$0|$LINENO|$SECONDS|$SHLVL|$BASH_EXECUTION_STRING"; shopt -q login_shell && echo login; echo $?'
    out = sandbox.commands.run(command).stdout.splitlines()
    assert out == [f"/bin/bash|1|0|1|{command}", "login", "0"]


def test_errors_name_the_line_and_exit_codes_pass_through(sandbox: Sandbox):
    wait_for_warm_shell(sandbox)
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("echo one\nno-such-command-here\nexit 7")
    assert exc.value.exit_code == 7
    assert exc.value.stdout == "one\n"
    assert "line 2: no-such-command-here: command not found" in exc.value.stderr

    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("echo (")
    assert exc.value.exit_code == 2
    assert "syntax error" in exc.value.stderr


def test_users_directories_and_environments_each_get_their_own(sandbox: Sandbox):
    for _ in range(2):
        assert sandbox.commands.run("id -u").stdout == "1000\n"
        assert sandbox.commands.run("id -u", user="root").stdout == "0\n"
        assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
        assert sandbox.commands.run("echo ${E-unset}", envs={"E": "x"}).stdout == "x\n"
        assert sandbox.commands.run('echo ${E-unset} "${PWD#$HOME}"').stdout == "unset \n"


def test_a_working_directory_made_again_is_the_new_one(sandbox: Sandbox):
    sandbox.commands.run("mkdir -p /tmp/wd && echo old > /tmp/wd/f")
    sandbox.commands.run("true", cwd="/tmp/wd")
    wait_for_warm_shell(sandbox)
    aside(sandbox, "rm -rf /tmp/wd && mkdir /tmp/wd && echo new > /tmp/wd/f")
    assert sandbox.commands.run("cat f", cwd="/tmp/wd").stdout == "new\n"


def test_a_killed_warm_shell_is_replaced(sandbox: Sandbox):
    for _ in range(2):
        victims = wait_for_warm_shell(sandbox)
        aside(sandbox, f"kill -9 {' '.join(victims)}")
        assert sandbox.commands.run("echo still here").stdout == "still here\n"
    wait_for_warm_shell(sandbox)


def test_stdin_and_start_up_variables_start_cold(sandbox: Sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "fed\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "fed\n"

    sandbox.files.write("/tmp/bash_env", "export FROM_BASH_ENV=yes\n")
    out = sandbox.commands.run("echo $FROM_BASH_ENV", envs={"BASH_ENV": "/tmp/bash_env"})
    assert out.stdout == "yes\n"


def warm_and_cold(sandbox: Sandbox, command: str) -> tuple:
    """`command`'s exit code, stdout and stderr from the warm shell, then from a cold one."""

    def run(**kwargs):
        try:
            result = sandbox.commands.run(command, **kwargs)
        except CommandExitException as exc:
            result = exc
        return result.exit_code, result.stdout, result.stderr

    wait_for_warm_shell(sandbox)
    return run(), run(stdin=True)


def test_a_lone_external_command_replaces_the_shell_as_bash_dash_c_does(sandbox: Sandbox):
    wait_for_warm_shell(sandbox)
    handle = sandbox.commands.run("ps -o pid=,comm=", background=True)
    processes = dict(line.split() for line in handle.wait().stdout.splitlines())
    assert processes[str(handle.pid)] == "ps", processes
    assert "bash" not in processes.values(), "no shell waits on it (nor a new warm one yet)"
    # What it inherits is a cold shell's: $_ is its path, SHLVL one less; no extra descriptor.
    warm, cold = warm_and_cold(sandbox, "env")
    assert sorted(warm[1].splitlines()) == sorted(cold[1].splitlines())
    assert "_=/usr/bin/env" in warm[1].splitlines()
    warm, cold = warm_and_cold(sandbox, "ls /proc/self/fd")
    assert warm == cold == (0, "0\n1\n2\n3\n", "")
    # Quoted words without expansions are literal too: quote removal only.
    warm, cold = warm_and_cold(sandbox, "sh -c 'echo $PPID $0' \"a b\"")
    assert warm == cold, "bash execs sh in place too: the agent is its parent"
    assert warm[1].split()[1:] == ["a", "b"]


@pytest.mark.server_only  # installs a script into /usr/local/bin, the host's in agent mode
def test_failures_scripts_and_what_bash_would_not_exec_read_as_in_a_cold_shell(sandbox: Sandbox):
    # Not found, not executable, a script without #! (by path and on PATH): the same
    # words, exit codes and $0.
    sandbox.files.write("plain-script", "echo script $0 $SHLVL\n")
    sandbox.commands.run("chmod +x ~/plain-script && sudo cp ~/plain-script /usr/local/bin/")
    for command in ["no-such-command-here", "/etc/passwd", "/tmp", "./plain-script", "plain-script"]:
        warm, cold = warm_and_cold(sandbox, command)
        assert warm == cold, command
    # A function, an EXIT trap or alias expansion set by the login files: bash runs the
    # command as its child (or the function), and so does the warm shell.
    sandbox.files.write(".bash_profile", "ls() { echo function ls; }\n")
    assert warm_and_cold(sandbox, "ls /") == ((0, "function ls\n", ""),) * 2
    sandbox.files.write(".bash_profile", "trap 'echo trap ran' EXIT\n")
    assert warm_and_cold(sandbox, "/bin/true") == ((0, "trap ran\n", ""),) * 2
    sandbox.files.write(
        "/home/user/.bash_profile", "shopt -s expand_aliases\nalias hello='echo alias'\n"
    )
    assert warm_and_cold(sandbox, "hello world") == ((0, "alias world\n", ""),) * 2


def test_the_last_program_of_a_list_cut_by_semicolons_replaces_the_shell_as_bash_dash_c_does(
    sandbox: Sandbox,
):
    def processes(command: str) -> tuple[dict, str]:
        wait_for_warm_shell(sandbox)
        handle = sandbox.commands.run(command, background=True)
        listed = dict(line.split() for line in handle.wait().stdout.splitlines())
        return listed, listed[str(handle.pid)]

    listed, program = processes("cd /tmp; ps -o pid=,comm=")
    assert program == "ps" and "bash" not in listed.values(), listed
    listed, program = processes("cd /tmp && ps -o pid=,comm=")
    assert program == "bash", "bash forks for the last command after &&; so does the warm shell"

    # What runs before it, and what it inherits, read as in a cold shell.
    sandbox.files.write("defs", "ls() { echo function ls; }\nX=from-defs\n")
    for command in [
        "cd /nonexistent; ls -d .",
        "false; ls -d /",
        "set -e; false; ls",
        "set -e; ls -d /",
        "exit 3; ls",
        "cd /; ls /proc/self/fd",
        "trap 'echo bye' EXIT; /bin/true",
        "BASH_EXECUTION_STRING=x; ls -d /",
        "echo 'a;b'; ls -d /",
        "cd /nonexistent && ls; ls -d .",
        ". ~/defs; ls /",
        "cd /tmp; no-such-command-here",
    ]:
        warm, cold = warm_and_cold(sandbox, command)
        assert warm == cold, command
    warm, cold = warm_and_cold(sandbox, "export X=1; cd /tmp; env")
    assert sorted(warm[1].splitlines()) == sorted(cold[1].splitlines())
    assert {"_=/usr/bin/env", "X=1", "PWD=/tmp"} <= set(warm[1].splitlines())
