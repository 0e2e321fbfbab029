#!/usr/bin/env python3
"""Tries Redis or PostgreSQL from the host it runs on, and says what happened.

    probe_port.py redis 10.89.20.13 6379      -> refused | open
    probe_port.py postgres 10.89.20.14 5432 [user database]   -> refused: <server's reason> | open

    probe_port.py redis-tls 10.89.20.13 6379 CAFILE NAME   -> refused: <why> | open
    probe_port.py postgres-tls 10.89.20.14 5432 CAFILE NAME [user database]

"open" means the server would let this host try to log in: Redis accepted
the connection, PostgreSQL asked for a password. The -tls kinds speak TLS
first (PostgreSQL's SSLRequest, then the handshake), trusting CAFILE alone
and expecting the certificate to name NAME (a host name or an address), as
redis-py and libpq's sslmode=verify-full do. Runs on the servers with
their own python3 (Ansible's script module), so it uses the standard library only.
"""

import socket
import ssl
import struct
import sys


def tls_connection(host, port, cafile, name, before=None):
    """A TLS connection verified against cafile and name; before(sock) runs on the plain socket first."""
    context = ssl.create_default_context(cafile=cafile)
    sock = socket.create_connection((host, port), timeout=5)
    try:
        if before:
            before(sock)
        return context.wrap_socket(sock, server_hostname=name)
    except BaseException:
        sock.close()
        raise


def postgres_ssl_request(sock):
    sock.sendall(struct.pack("!II", 8, 80877103))
    if sock.recv(1) != b"S":
        raise ConnectionRefusedError("the server refused TLS")


def probe_redis(host, port, connect=None):
    try:
        with (connect or socket.create_connection)((host, port), timeout=5) as connection:
            connection.sendall(b"PING\r\n")
            answer = connection.recv(200)
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError) as error:
        return f"refused: {type(error).__name__}"
    except ssl.SSLError as error:
        return f"refused: {error}"
    return "open" if answer else "refused: closed without an answer"


def probe_postgres(host, port, user="chat", database="chat", connect=None):
    # A protocol 3.0 StartupMessage for the chat's user and database.
    body = struct.pack("!I", 196608) + b"user\0%s\0database\0%s\0\0" % (user.encode(), database.encode())
    try:
        with (connect or socket.create_connection)((host, port), timeout=5) as connection:
            connection.sendall(struct.pack("!I", len(body) + 4) + body)
            answer = connection.recv(2000)
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError) as error:
        return f"refused: {type(error).__name__}"
    except ssl.SSLError as error:
        return f"refused: {error}"
    if answer[:1] == b"R":
        return "open"
    if answer[:1] == b"E":
        fields = [part.decode(errors="replace") for part in answer[5:].split(b"\0") if part]
        message = next((field[1:] for field in fields if field.startswith("M")), "error")
        return f"refused: {message}"
    return f"refused: unexpected answer {answer[:20]!r}"


if __name__ == "__main__":
    kind, host, port, *rest = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]
    if kind.endswith("-tls"):
        cafile, name, *rest = rest
        before = postgres_ssl_request if kind == "postgres-tls" else None
        rest.append(lambda address, timeout: tls_connection(*address, cafile, name, before))
        kind = kind.removesuffix("-tls")
    print({"redis": probe_redis, "postgres": probe_postgres}[kind](host, port, *rest))
