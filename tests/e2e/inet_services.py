"""Services of the stand-in internet (test_network.py runs them inside its netns).

  inet_services.py https ROOT      HTTPS on :443 (ROOT/cert.pem, ROOT/key.pem) and plain
                                   HTTP on :8080, both serving ROOT
  inet_services.py dns R A         DNS on R:53/udp: every name under .test is A, others
                                   NXDOMAIN
"""

import functools
import http.server
import socket
import ssl
import struct
import sys
import threading


def https(root: str) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), handler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    secure = http.server.ThreadingHTTPServer(("0.0.0.0", 443), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{root}/cert.pem", f"{root}/key.pem")
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    secure.serve_forever()


def question(packet: bytes) -> tuple[str, int, int]:
    """The first question's name, its type, and where the question section ends."""
    labels, pos = [], 12
    while packet[pos]:
        size = packet[pos]
        labels.append(packet[pos + 1:pos + 1 + size].decode())
        pos += 1 + size
    qtype = struct.unpack("!H", packet[pos + 1:pos + 3])[0]
    return ".".join(labels).lower(), qtype, pos + 5


def dns(resolver: str, site_a: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((resolver, 53))
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            name, qtype, end = question(packet)
        except (IndexError, struct.error):
            continue
        ident = packet[:2]
        flags = 0x8180  # response, recursion desired and available, no error
        answers = b""
        if name.endswith(".test"):
            if qtype == 1:  # A
                answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(site_a)
        else:
            flags |= 3  # NXDOMAIN
        count = 1 if answers else 0
        header = ident + struct.pack("!HHHHH", flags, 1, count, 0, 0)
        sock.sendto(header + packet[12:end] + answers, peer)


if __name__ == "__main__":
    {"https": https, "dns": dns}[sys.argv[1]](*sys.argv[2:])
