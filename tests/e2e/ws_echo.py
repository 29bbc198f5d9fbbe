"""A WebSocket echo server on the standard library only (runs inside a sandbox, whose
template has no WebSocket package): text frames come back as "echo: <text>".

  python3 ws_echo.py PORT
"""

import base64
import hashlib
import socket
import struct
import sys
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    key = next(line.split(":", 1)[1].strip() for line in head.decode().split("\r\n")
               if line.lower().startswith("sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    while True:
        first, second = read_exact(conn, 2)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            length = struct.unpack("!H", read_exact(conn, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", read_exact(conn, 8))[0]
        mask = read_exact(conn, 4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(conn, length)))
        if opcode == 8:  # close
            conn.sendall(b"\x88\x00")
            return
        if opcode == 1:  # text
            reply = b"echo: " + payload
            size = struct.pack("!B", len(reply)) if len(reply) < 126 else b"\x7e" + struct.pack("!H", len(reply))
            conn.sendall(b"\x81" + size + reply)


def main(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen()
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]))
