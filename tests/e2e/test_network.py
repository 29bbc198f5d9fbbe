"""Egress rules, NAT and isolation, against a stand-in internet: a network namespace the
test makes (these machines reach no outside address), with HTTP servers on two networks,
HTTPS and DNS on the first.

  sandbox ── veth ── host (NAT) ── tinet0 198.18.0.1 ── netns inet-test
                                                          198.18.0.2:80,443,8080
                                                          198.19.0.2:80
                                                          198.18.0.53:53/udp
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from e2b import Sandbox

from silo_server import SiloServer

pytestmark = pytest.mark.server_only

NETNS = "inet-test"
HOST_END = "tinet0"
SITE_A = "198.18.0.2"
SITE_B = "198.19.0.2"
# The stand-in internet's resolver. A sandbox with host-name rules may reach its
# resolvers at every port (as E2B), so it is not one of the sites.
RESOLVER = "198.18.0.53"
# A service of the host listening on every address.
HOST_SERVICE = ("198.18.0.1", 8099)


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def internet():
    sh("ip", "netns", "add", NETNS)
    servers = []
    root = None
    try:
        sh("ip", "link", "add", HOST_END, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        sh("ip", "addr", "add", "198.18.0.1/24", "dev", HOST_END)
        sh("ip", "link", "set", HOST_END, "up")
        for cmd in (
            ["addr", "add", f"{SITE_A}/24", "dev", "eth0"],
            ["addr", "add", f"{SITE_B}/24", "dev", "eth0"],
            ["addr", "add", f"{RESOLVER}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", "default", "via", "198.18.0.1"],
        ):
            sh("ip", "-n", NETNS, *cmd)
        sh("ip", "route", "add", "198.19.0.0/24", "via", SITE_A)
        root = tempfile.mkdtemp(prefix="silo-inet-")
        servers.append(subprocess.Popen(
            ["ip", "netns", "exec", NETNS, "python3", "-m", "http.server", "80",
             "--bind", "0.0.0.0", "--directory", root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        servers.append(subprocess.Popen(
            ["python3", "-m", "http.server", str(HOST_SERVICE[1]), "--bind", "0.0.0.0",
             "--directory", root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=site-a", "-keyout", f"{root}/key.pem", "-out", f"{root}/cert.pem"],
            check=True, capture_output=True,
        )
        helpers = os.path.join(os.path.dirname(__file__), "inet_services.py")
        for service in (["https", root], ["dns", RESOLVER, SITE_A]):
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", NETNS, sys.executable, helpers, *service],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        time.sleep(1)
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "route", "del", "198.19.0.0/24"], capture_output=True)
        subprocess.run(["ip", "link", "del", HOST_END], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        if root:
            shutil.rmtree(root, ignore_errors=True)


def reaches(sbx, ip: str, port: int = 80) -> bool:
    """Whether a TCP connection from inside the sandbox gets through (2 s to try)."""
    probe = f"timeout 2 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' && echo open || echo closed"
    return sbx.commands.run(probe).stdout.strip() == "open"


def own_address(sbx) -> str:
    out = sbx.commands.run(
        "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.connect(('{SITE_A}', 80)); print(s.getsockname()[0])\""
    )
    return out.stdout.strip()


def test_internet_is_on_by_default(silo, internet):
    sbx = Sandbox.create("base", timeout=120)
    try:
        assert reaches(sbx, SITE_A) and reaches(sbx, SITE_B)
        page = sbx.commands.run(
            f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://{SITE_A}/').status)\""
        )
        assert page.stdout.strip() == "200"
    finally:
        sbx.kill()


def test_internet_off_reaches_nothing(silo, internet):
    sbx = Sandbox.create("base", timeout=120, allow_internet_access=False)
    try:
        assert not reaches(sbx, SITE_A) and not reaches(sbx, SITE_B)
    finally:
        sbx.kill()


def test_deny_and_allow_by_cidr(silo, internet):
    denied = Sandbox.create("base", timeout=120, network={"deny_out": ["198.18.0.0/24"]})
    only = Sandbox.create(
        "base", timeout=120, network={"allow_out": [SITE_B], "deny_out": ["0.0.0.0/0"]}
    )
    try:
        assert not reaches(denied, SITE_A) and reaches(denied, SITE_B)
        # allowOut wins over denyOut.
        assert reaches(only, SITE_B) and not reaches(only, SITE_A)
    finally:
        denied.kill()
        only.kill()


def test_rules_change_live(silo, internet):
    sbx = Sandbox.create("base", timeout=120)
    try:
        assert reaches(sbx, SITE_A)
        sbx.update_network({"deny_out": ["198.18.0.0/24"]})
        assert not reaches(sbx, SITE_A) and reaches(sbx, SITE_B)
        # An update replaces everything: omitted fields are cleared.
        sbx.update_network({})
        assert reaches(sbx, SITE_A)
        sbx.update_network({"allow_internet_access": False})
        assert not reaches(sbx, SITE_B)
    finally:
        sbx.kill()


def test_never_the_host_other_sandboxes_or_metadata(silo, internet):
    """Whatever the rules allow: no host service, no other sandbox, no link-local."""
    neighbour = Sandbox.create("base", timeout=120)
    sbx = Sandbox.create("base", timeout=120, network={"allow_out": ["0.0.0.0/0"]})
    try:
        assert reaches(sbx, SITE_A), "the rules themselves allow the internet"
        assert not reaches(sbx, *HOST_SERVICE)
        # The host's loopback is not the sandbox's: 127.0.0.1 is its own (nothing there).
        assert not reaches(sbx, "127.0.0.1", HOST_SERVICE[1])
        assert not reaches(sbx, own_address(neighbour), 49983)
        assert not reaches(sbx, "169.254.169.254")
        # The sandbox's gateway is the host too (its /30: gateway = own address - 1).
        own = own_address(sbx).split(".")
        gateway = ".".join(own[:3] + [str(int(own[3]) - 1)])
        assert not reaches(sbx, gateway, HOST_SERVICE[1])
        # No IPv6 on its link: the veth's link-local addresses would reach host services
        # on [::], which the IPv4 rules do not see.
        addresses = sbx.commands.run("cat /proc/net/if_inet6").stdout
        assert not [line for line in addresses.splitlines() if line.endswith("eth0")], addresses
        # The neighbour is untouched and still reachable through the proxy.
        assert neighbour.commands.run("echo fine").stdout == "fine\n"
    finally:
        neighbour.kill()
        sbx.kill()


def test_bad_rules_are_refused(silo):
    for network in (
        {"deny_out": ["example.com"]},
        {"allow_out": ["not a name"]},
        {"deny_out": ["1.2.3.4/40"]},
        {"allow_out": ["example.com"], "dns_servers": ["dns.example.com"]},
        # silo asks a sandbox's resolver for it: never one sandboxes may not reach.
        {"allow_out": ["example.com"], "dns_servers": ["169.254.169.254"]},
        {"allow_out": ["example.com"], "dns_servers": ["127.0.0.53"]},
    ):
        with pytest.raises(Exception) as err:
            Sandbox.create("base", timeout=60, network=network)
        assert "network." in str(err.value), err.value
    status, body, _ = silo.api("PUT", "/sandboxes/inotasandbox000000000/network", {})
    assert status == 404, body


def test_private_ports_need_the_traffic_token(silo):
    import urllib.error
    import urllib.request

    sbx = Sandbox.create("base", timeout=120, network={"allow_public_traffic": False})
    try:
        token = sbx.traffic_access_token
        assert token
        sbx.commands.run("python3 -m http.server 8000 >/dev/null 2>&1", background=True)

        def get(headers):
            req = urllib.request.Request(f"{silo.url}/", headers={
                "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000", **headers,
            })
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as err:
                return err.code
            except OSError:
                return None

        deadline = time.monotonic() + 20
        while get({"E2B-Traffic-Access-Token": token}) != 200:
            assert time.monotonic() < deadline, "the server never answered with the token"
            time.sleep(0.2)
        assert get({}) == 403
        assert get({"E2B-Traffic-Access-Token": "wrong"}) == 403
        # envd has its own token and needs no traffic token: the SDK works as ever.
        assert sbx.commands.run("echo ok").stdout == "ok\n"
        status, body, _ = silo.api("POST", f"/v2/sandboxes/{sbx.sandbox_id}/connect", {"timeout": 60})
        assert status == 200 and body["trafficAccessToken"] == token
    finally:
        sbx.kill()


def test_rules_come_back_after_the_host_flushes_them(silo, internet):
    table = "silo_" + silo.subnet.split("/")[0].replace(".", "_") + "_" + silo.subnet.split("/")[1]
    subprocess.run(["nft", "delete", "table", "inet", table], check=True)
    sbx = Sandbox.create("base", timeout=120, network={"deny_out": ["198.18.0.0/24"]})
    try:
        assert not reaches(sbx, SITE_A) and reaches(sbx, SITE_B)
    finally:
        sbx.kill()


# Host names for the stand-in internet's DNS (inet_services.py): every name under .test
# resolves to SITE_A.
WEB_RULES = {
    "allow_out": ["allowed.test", "*.wild.test"],
    "deny_out": ["0.0.0.0/0"],
    "dns_servers": [RESOLVER],
}


def resolve(sbx, name: str) -> str:
    out = sbx.commands.run(f"getent hosts {name} | cut -d' ' -f1 || true", timeout=20)
    return out.stdout.strip()


def http_status(sbx, ip: str, host: str) -> str:
    """GET http://ip/ with Host: host from inside; the status, or the error's name."""
    code = (
        "import urllib.request, urllib.error\n"
        f"req = urllib.request.Request('http://{ip}/', headers={{'Host': '{host}'}})\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode().strip())\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    sbx.files.write("/tmp/get.py", code)
    return sbx.commands.run("python3 /tmp/get.py", timeout=20).stdout.strip()


def tls_handshake(sbx, ip: str, name: str) -> str:
    """A TLS handshake to ip:443 asking for `name`: "ok", or the error."""
    code = (
        "import socket, ssl\n"
        "ctx = ssl.create_default_context()\n"
        "ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        "try:\n"
        f"    with socket.create_connection(('{ip}', 443), timeout=5) as raw:\n"
        f"        with ctx.wrap_socket(raw, server_hostname='{name}') as tls:\n"
        "            print('ok')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    sbx.files.write("/tmp/tls.py", code)
    return sbx.commands.run("python3 /tmp/tls.py", timeout=20).stdout.strip()


def test_host_names_in_allow_out(silo, internet):
    sbx = Sandbox.create("base", timeout=120, network=WEB_RULES)
    try:
        # DNS: allowed names resolve (through the resolver named in dnsServers), others
        # are refused on the host.
        assert resolve(sbx, "allowed.test") == SITE_A
        assert resolve(sbx, "x.wild.test") == SITE_A
        assert resolve(sbx, "denied.test") == ""
        # HTTP by Host header, TLS by server name; the same address either way.
        assert http_status(sbx, SITE_A, "allowed.test") == "200"
        assert http_status(sbx, SITE_A, "deep.x.wild.test") == "200"
        refused = http_status(sbx, SITE_A, "denied.test")
        assert refused.startswith("403") and "denied.test" in refused, refused
        assert http_status(sbx, SITE_A, "wild.test").startswith("403"), "*. means below only"
        assert tls_handshake(sbx, SITE_A, "allowed.test") == "ok"
        denied = tls_handshake(sbx, SITE_A, "denied.test")
        assert "ACCESS_DENIED" in denied.upper(), denied
        # Other ports follow the address rules only: denied here.
        assert not reaches(sbx, SITE_A, 8080)
    finally:
        sbx.kill()


def test_host_names_and_addresses_together(silo, internet):
    sbx = Sandbox.create(
        "base", timeout=120,
        network={**WEB_RULES, "allow_out": ["allowed.test", SITE_B]},
    )
    try:
        # An allowed address is allowed whatever name the client asks for.
        assert http_status(sbx, SITE_B, "anything.example") == "200"
        assert http_status(sbx, SITE_A, "anything.example").startswith("403")
    finally:
        sbx.kill()


def test_host_name_rules_change_live(silo, internet):
    sbx = Sandbox.create("base", timeout=120)
    try:
        assert http_status(sbx, SITE_A, "denied.test") == "200"
        sbx.update_network(WEB_RULES)
        assert http_status(sbx, SITE_A, "denied.test").startswith("403")
        assert http_status(sbx, SITE_A, "allowed.test") == "200"
        assert resolve(sbx, "denied.test") == ""
        sbx.update_network({})
        assert http_status(sbx, SITE_A, "denied.test") == "200"
    finally:
        sbx.kill()


def test_host_name_rules_survive_a_restart(internet, monkeypatch):
    """The egress filter lives in silo's process (new ports at each start): a kill -9
    and a restart must give a kept sandbox its host-name rules back, not open it up."""
    server = SiloServer(subnet="10.218.0.0/16").start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        sbx = Sandbox.create("base", timeout=120, network=WEB_RULES)
        assert http_status(sbx, SITE_A, "allowed.test") == "200"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        server.start()
        assert http_status(sbx, SITE_A, "allowed.test") == "200"
        assert http_status(sbx, SITE_A, "denied.test").startswith("403")
        assert resolve(sbx, "allowed.test") == SITE_A
        assert resolve(sbx, "denied.test") == ""
    finally:
        server.stop()
