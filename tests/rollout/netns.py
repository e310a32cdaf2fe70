"""Network namespaces as stand-in "nodes" on one machine (root only): each node is a namespace
with one veth interface on a private 10.213.0.0/24 bridge (the bridge in a namespace of its
own), so processes started in different namespaces talk over non-loopback addresses and never
touch the machine's own interfaces."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET = "10.213.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"mt-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"`ip netns add` failed: {getattr(exc, 'stderr', exc)}"
    return None


@dataclass
class Nodes:
    """``count`` namespaces with addresses 10.213.0.1, .2, ... on one bridge."""

    count: int
    tag: str = field(default_factory=lambda: str(os.getpid() % 100000))
    names: list[str] = field(default_factory=list)

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def __enter__(self) -> Nodes:
        switch = f"mt-sw-{self.tag}"
        try:
            _ip("netns", "add", switch)
            self.names.append(switch)
            _ip("-n", switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", switch, "link", "set", "br0", "up")
            for node in range(self.count):
                ns = f"mt-n{node}-{self.tag}"
                _ip("netns", "add", ns)
                self.names.append(ns)
                inner, outer = f"mt{self.tag}n{node}", f"mt{self.tag}s{node}"
                _ip("link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer,
                    "netns", switch)  # fmt: skip
                _ip("-n", switch, "link", "set", outer, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", inner)
                _ip("-n", ns, "link", "set", inner, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self.names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.names = []

    def command(self, node: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside node ``node``'s namespace."""
        return ["ip", "netns", "exec", f"mt-n{node}-{self.tag}", *argv]
