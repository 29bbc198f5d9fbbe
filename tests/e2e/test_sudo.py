"""`sudo` in a real gVisor sandbox, as the template user runs it (docs/adr/0005).

gVisor ignores setuid bits, so `/usr/bin/sudo` is the agent's client, which asks the
agent's broker (root) over /run/silo/sudo.sock to run the command."""

import json
import uuid

import pytest
from e2b import CommandExitException, Sandbox

pytestmark = pytest.mark.server_only


@pytest.fixture(scope="module")
def sbx(silo):
    """One sandbox for the module: each test leaves only files of its own names."""
    sandbox = Sandbox.create("base", timeout=300)
    yield sandbox
    sandbox.kill()


def run(sbx, cmd, **kw):
    return sbx.commands.run(cmd, **kw)


def fails(sbx, cmd, **kw):
    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run(cmd, **kw)
    return exc.value


def test_sudo_runs_as_root(sbx):
    assert run(sbx, "whoami").stdout == "user\n"
    assert run(sbx, "sudo whoami").stdout == "root\n"
    assert run(sbx, "sudo id -u; sudo id -g").stdout.split() == ["0", "0"]
    assert run(sbx, "sudo sh -c 'echo $SUDO_USER $SUDO_UID $HOME $USER'").stdout.split() == [
        "user", "1000", "/root", "root",
    ]


def test_sudo_as_another_user(sbx):
    assert run(sbx, "sudo -u user id -u").stdout == "1000\n"
    assert run(sbx, "sudo -u user sh -c 'echo $HOME'").stdout == "/home/user\n"
    assert run(sbx, "sudo -u '#1000' whoami").stdout == "user\n"
    # root may use sudo too (no setuid involved either way).
    assert run(sbx, "sudo -u user whoami", user="root").stdout == "user\n"


def test_environment_reset_and_preserved(sbx):
    envs = {"SILO_SUDO_VAR": "kept"}
    assert run(sbx, "sudo sh -c 'echo \"[$SILO_SUDO_VAR]\"'", envs=envs).stdout == "[]\n"
    assert run(sbx, "sudo -E sh -c 'echo \"[$SILO_SUDO_VAR]\"'", envs=envs).stdout == "[kept]\n"
    assert (
        run(sbx, "sudo --preserve-env=SILO_SUDO_VAR sh -c 'echo $SILO_SUDO_VAR'", envs=envs).stdout
        == "kept\n"
    )
    # VAR=value before the command, as in `sudo DEBIAN_FRONTEND=noninteractive apt-get ...`
    assert run(sbx, "sudo DEBIAN_FRONTEND=noninteractive sh -c 'echo $DEBIAN_FRONTEND'").stdout == (
        "noninteractive\n"
    )
    assert "/usr/sbin" in run(sbx, "sudo sh -c 'echo $PATH'").stdout


def test_exit_codes_and_signals_pass_through(sbx):
    assert fails(sbx, "sudo sh -c 'exit 42'").exit_code == 42
    assert run(sbx, "sudo sh -c 'kill -TERM $$'; echo $?").stdout == "143\n"
    missing = fails(sbx, "sudo no-such-command-here")
    assert missing.exit_code == 1
    assert "command not found" in missing.stderr


def test_stdin_is_the_callers(sbx):
    assert run(sbx, "echo hi | sudo cat").stdout == "hi\n"
    assert run(sbx, "printf 'a\\nb\\n' | sudo wc -l").stdout.strip() == "2"
    # stdout and stderr too: redirections made by the caller's shell apply.
    assert run(sbx, "sudo sh -c 'echo out; echo err >&2' 2>&1 >/dev/null").stdout == "err\n"


def test_options(sbx):
    run(sbx, "sudo -n true")
    run(sbx, "sudo -k; sudo -v; sudo -nv")
    assert "NOPASSWD: ALL" in run(sbx, "sudo -l").stdout
    assert run(sbx, "sudo -i pwd").stdout == "/root\n"
    assert run(sbx, "sudo -s -- echo '$USER'").stdout == "root\n"
    assert run(sbx, "cd /tmp && sudo pwd").stdout == "/tmp\n"
    assert run(sbx, "sudo -D /etc pwd").stdout == "/etc\n"
    assert run(sbx, "sudo -h").stdout.startswith("usage: sudo")
    bad = fails(sbx, "sudo -x true")
    assert bad.exit_code == 1
    assert "invalid option" in bad.stderr


def test_root_owned_paths_and_packages(sbx):
    name = f"/etc/silo-sudo-{uuid.uuid4().hex[:8]}"
    assert fails(sbx, f"touch {name}").exit_code == 1
    run(sbx, f"sudo touch {name}")
    assert run(sbx, f"stat -c %U {name}").stdout == "root\n"
    run(sbx, f"echo line | sudo tee -a {name} >/dev/null")
    assert sbx.files.read(name) == "line\n"
    run(sbx, f"sudo rm {name}")
    assert run(sbx, "sudo apt-get --version").stdout.startswith("apt ")
    assert "ii  sudo" in run(sbx, "sudo dpkg -l sudo").stdout
    # The real sudo is diverted, not removed.
    assert "sudo.distrib" in run(sbx, "dpkg-divert --list /usr/bin/sudo").stdout


def test_a_user_outside_group_sudo_is_refused(sbx):
    guest = f"g{uuid.uuid4().hex[:8]}"
    run(sbx, f"useradd --create-home {guest}", user="root")
    try:
        refused = fails(sbx, "sudo true", user=guest)
        assert refused.exit_code == 1
        assert "is not in the sudoers file" in refused.stderr
        assert fails(sbx, "sudo -v", user=guest).exit_code == 1
        # Once in group sudo, the same user may (the group file is read per request).
        run(sbx, f"usermod -aG sudo {guest}", user="root")
        assert run(sbx, "sudo whoami", user=guest).stdout == "root\n"
    finally:
        run(sbx, f"userdel -r {guest}", user="root")


# Speaks the broker's protocol directly (4-byte big-endian length + JSON), so the check
# is shown to be the broker's, not the client's. The identity travels as SCM_CREDENTIALS,
# which the kernel checks: `forge` claims root's uid, which only root may.
ASK_BROKER = r"""
import json, os, socket, struct, sys
mode, forge = sys.argv[1], len(sys.argv) > 2
s = socket.socket(socket.AF_UNIX)
s.connect("/run/silo/sudo.sock")
body = json.dumps({"mode": mode, "command": ["id"], "cwd": "/"}).encode()
creds = struct.pack("3i", os.getpid(), 0 if forge else os.getuid(), os.getgid())
cmsgs = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]
if mode == "Run":
    cmsgs.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", 0, 1, 2)))
try:
    s.sendmsg([struct.pack(">I", len(body)) + body], cmsgs)
except PermissionError:
    print(json.dumps({"SendRefused": "EPERM"}))
    sys.exit(0)
data = b""
while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data[4:].decode())
"""


def test_the_socket_refuses_non_members(sbx):
    st = run(sbx, "stat -c '%a %U' /run/silo/sudo.sock").stdout.split()
    assert st == ["666", "root"]
    sbx.files.write("/tmp/ask_broker.py", ASK_BROKER)
    guest = f"g{uuid.uuid4().hex[:8]}"
    run(sbx, f"useradd {guest}", user="root")
    try:
        for mode in ["Check", "Run"]:
            reply = json.loads(run(sbx, f"python3 /tmp/ask_broker.py {mode}", user=guest).stdout)
            assert "Denied" in reply, reply
            # Claiming to be root is refused by the kernel, before the broker sees it.
            forged = json.loads(
                run(sbx, f"python3 /tmp/ask_broker.py {mode} forge", user=guest).stdout
            )
            assert forged == {"SendRefused": "EPERM"}, forged
        allowed = json.loads(run(sbx, "python3 /tmp/ask_broker.py Check").stdout)
        assert allowed == {"Allowed": {"caller": "user"}}
    finally:
        run(sbx, f"userdel {guest}", user="root")
