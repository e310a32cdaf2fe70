"""Addresses for processes on several nodes: which local address reaches a peer, which interface
holds an address, free ports. Pure Python sockets (no torch, no vLLM)."""

from __future__ import annotations

import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def route_source_address(target: str) -> str:
    """This machine's address on the route to ``target`` (a UDP ``connect`` only selects the
    route; it sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((socket.gethostbyname(target), 9))
        return sock.getsockname()[0]


def interface_of(address: str) -> str | None:
    """The name of the local interface whose IPv4 address is ``address`` (None: none is)."""
    import fcntl

    try:
        target = socket.inet_aton(socket.gethostbyname(address))
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            if reply[20:24] == target:
                return name
    return None


def free_port_on(host: str) -> int:
    """A TCP port free on ``host``'s interface."""
    with socket.socket() as sock:
        sock.bind((host if not is_loopback(host) else "127.0.0.1", 0))
        return sock.getsockname()[1]
