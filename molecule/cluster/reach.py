#!/usr/bin/env python3
"""Tries a TCP connection to each address:port given and says what happened.

    reach.py 10.89.20.11:8011 10.89.20.13:6379  ->  {"10.89.20.11:8011": "open", "10.89.20.13:6379": "refused"}

"open": the handshake completed. "refused": a reset or an ICMP error came
back (the firewall's reject, or nothing listening). "timeout": no answer in
3 s (dropped). Runs on the hosts with their own python3 (Ansible's script
module) and on the control node, so it uses the standard library only.
"""

import json
import socket
import sys


def reach(target):
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            return "open"
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as error:  # EHOSTUNREACH, EACCES: an ICMP "prohibited" answer
        return f"refused: {error.strerror}"


if __name__ == "__main__":
    print(json.dumps({target: reach(target) for target in sys.argv[1:]}))
