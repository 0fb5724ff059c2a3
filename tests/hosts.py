"""Hosts on one machine, for the multi-host tests: each a network namespace of its own (`ip netns`)
with one interface, a veth pair into a switch (a bridge in a namespace of its own), and an address
in a /24 of the test's own (10.231.N.0/24). The test process joins the switch too, with .1, so it
can serve the source and look at every server. A process runs "on" a host with `ip netns exec`;
killing a host kills every process in its namespace; cutting it takes its link down.

These addresses exist only inside this machine (in namespaces the test made, and on one veth
interface of the test's own): nothing here is reachable from beyond the machine, which is what
"tests bind to 127.0.0.1 only" protects. Needs root (CAP_NET_ADMIN).

Everything made is named with a prefix unique to the run (its process id), and `network()`
removes it all on the way out, failure or not: deleting a namespace deletes the interfaces in it,
and deleting the switch's end of a veth pair deletes the other end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from typing import Iterator


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Host:
    def __init__(self, name: str, netns: str, address: str):
        self.name, self.netns, self.address = name, netns, address

    def command(self, *argv: str) -> list[str]:
        """``argv`` run on this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> list[int]:
        """SIGKILL every process on the host, as a machine that loses power; the pids killed."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def link(self, up: bool) -> None:
        """The host's only link up or down: down, it reaches nothing and nothing reaches it."""
        ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")

    @contextlib.contextmanager
    def slow_to(self, address: str, kbit: int) -> Iterator[None]:
        """What this host sends to ``address`` at ``kbit`` kbit/s at most while the block runs (a
        rate-limited class on its link, for that address alone): an upload there takes seconds, so a
        fault can strike in it."""
        tc = ["ip", "netns", "exec", self.netns, "tc"]
        shaping = [  # HTB (this kernel has no prio qdisc): class 1:20 for ``address``, 1:10 unbounded
            "qdisc add dev eth0 root handle 1: htb default 10",
            "class add dev eth0 parent 1: classid 1:10 htb rate 10gbit",
            f"class add dev eth0 parent 1: classid 1:20 htb rate {kbit}kbit ceil {kbit}kbit",
            f"filter add dev eth0 protocol ip parent 1: prio 1 u32 match ip dst {address}/32 flowid 1:20",
        ]
        for args in shaping:
            subprocess.run([*tc, *args.split()], check=True, capture_output=True, text=True)
        try:
            yield
        finally:
            subprocess.run([*tc, "qdisc", "del", "dev", "eth0", "root"], capture_output=True)

    def __repr__(self) -> str:
        return f"Host({self.name} {self.address})"


class Network:
    def __init__(self, prefix: str, subnet: int):
        self.prefix, self.subnet = prefix, subnet
        self.switch = f"{prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self.local = f"10.231.{subnet}.1"  # the test process's own address on the switch
        self._veth = f"{prefix}h"  # its interface, in the root namespace

    def add(self, name: str) -> Host:
        """A new host on the switch, with the next address."""
        host = Host(name, f"{self.prefix}-{name}", f"10.231.{self.subnet}.{10 + len(self.hosts)}")
        ip("netns", "add", host.netns)
        self.hosts[name] = host
        port = f"p{len(self.hosts)}"
        ip("link", "add", "eth0", "netns", host.netns, "type", "veth", "peer", "name", port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def _start(self) -> None:
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        ip("link", "add", self._veth, "type", "veth", "peer", "name", "p0", "netns", self.switch)
        ip("-n", self.switch, "link", "set", "p0", "master", "br0", "up")
        ip("addr", "add", f"{self.local}/24", "dev", self._veth)
        ip("link", "set", self._veth, "up")

    def _remove(self) -> None:
        for host in self.hosts.values():
            host.kill()
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self._veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)

    def leftovers(self) -> list[str]:
        """Namespaces and interfaces of this network still there (none, after `network()`)."""
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        return [line for line in (namespaces + links).splitlines() if self.prefix in line]


_runs = itertools.count(1)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A switch, the test process on it, and hosts added with `Network.add`; all removed (every
    process on a host killed first) when the block ends."""
    pid, run = os.getpid(), next(_runs)
    net = Network(f"tlc{pid}n{run}", 1 + (pid + run) % 250)
    try:
        net._start()
        yield net
    finally:
        net._remove()
