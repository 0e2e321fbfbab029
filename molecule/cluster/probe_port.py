#!/usr/bin/env python3
"""Tries Redis or PostgreSQL from the host it runs on, and says what happened.

    probe_port.py redis 10.89.20.13 6379      -> refused | open
    probe_port.py postgres 10.89.20.14 5432 [user database]   -> refused: <server's reason> | open

"open" means the server would let this host try to log in: Redis accepted
the connection, PostgreSQL asked for a password. Runs on the servers with
their own python3 (Ansible's script module), so it uses the standard library only.
"""

import socket
import struct
import sys


def probe_redis(host, port):
    try:
        with socket.create_connection((host, port), timeout=5) as connection:
            connection.sendall(b"PING\r\n")
            answer = connection.recv(200)
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError) as error:
        return f"refused: {type(error).__name__}"
    return "open" if answer else "refused: closed without an answer"


def probe_postgres(host, port, user="chat", database="chat"):
    # A protocol 3.0 StartupMessage for the chat's user and database.
    body = struct.pack("!I", 196608) + b"user\0%s\0database\0%s\0\0" % (user.encode(), database.encode())
    try:
        with socket.create_connection((host, port), timeout=5) as connection:
            connection.sendall(struct.pack("!I", len(body) + 4) + body)
            answer = connection.recv(2000)
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError) as error:
        return f"refused: {type(error).__name__}"
    if answer[:1] == b"R":
        return "open"
    if answer[:1] == b"E":
        fields = [part.decode(errors="replace") for part in answer[5:].split(b"\0") if part]
        message = next((field[1:] for field in fields if field.startswith("M")), "error")
        return f"refused: {message}"
    return f"refused: unexpected answer {answer[:20]!r}"


if __name__ == "__main__":
    kind, host, port, *login = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]
    print({"redis": probe_redis, "postgres": probe_postgres}[kind](host, port, *login))
