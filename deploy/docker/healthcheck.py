#!/usr/bin/env python3
"""The app container's HEALTHCHECK: GET /readyz over uWSGI's unix socket, the way nginx asks.

The container publishes no HTTP port: uWSGI speaks only the uwsgi protocol, on APP_SOCKET.
So this sends one uwsgi-protocol request there and exits 0 on a 200 answer, 1 otherwise
(the app not ready yet, uWSGI down, or no answer within the timeout).

Standard library only, and it reads APP_SOCKET itself (the image sets it, as the systemd unit
does on a VM) instead of importing deploy/stack.py: that imports the app package, numpy and
ONNX Runtime with it, a quarter of a second of CPU on every check.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

TIMEOUT = 5.0


def uwsgi_packet(path: str) -> bytes:
    """A uwsgi-protocol request: a 4-byte header, then each WSGI variable as length-prefixed key and value."""
    variables = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": path,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "HTTP_USER_AGENT": "modelstack-healthcheck",
    }
    body = b"".join(
        struct.pack("<H", len(key)) + key.encode() + struct.pack("<H", len(value)) + value.encode()
        for key, value in variables.items()
    )
    # modifier1 0 (a WSGI request), body size, modifier2 0.
    return struct.pack("<BHB", 0, len(body), 0) + body


def status_of(socket_path: str, path: str = "/readyz") -> int:
    """The HTTP status uWSGI answers ``path`` with; OSError when nothing answers in time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(socket_path)
        sock.sendall(uwsgi_packet(path))
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("uWSGI closed the connection without an answer")
            head += chunk
    # "HTTP/1.1 200 OK"
    return int(head.split(b"\r\n", 1)[0].split()[1])


def main() -> int:
    socket_path = os.environ.get("APP_SOCKET", "").strip()
    if not socket_path:
        print("unhealthy: APP_SOCKET is not set (the image sets it)", file=sys.stderr)
        return 1
    try:
        status = status_of(socket_path)
    except (OSError, ValueError, IndexError) as error:
        print(f"unhealthy: no answer on {socket_path}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: /readyz answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
