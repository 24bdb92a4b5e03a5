"""Addresses: parsing host:port, and finding a free port."""

from __future__ import annotations

import socket


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """('host', port) of 'host:port' (an IPv6 host may be bracketed); ValueError naming `what` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} '{address}' is not of the form host:port")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (another process may still take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
