"""Hosts on one machine: network namespaces cabled to a bridge, processes run on them, links cut."""

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SUBNET = "10.231.0"
PREFIX = 24
# Every namespace of a test session is named after its pid, so a later session can tell the
# leftovers of a killed one (pid gone) from those of a session still running beside it.
NAME_PREFIX = "lvmh"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process still running in `namespace`."""
    found = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30
    ).stdout
    for pid in found.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_stale_namespaces() -> None:
    """Delete the namespaces (and their processes) that a killed test session left behind."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = name[len(NAME_PREFIX) :].split("-", 1)[0]
        if name.startswith(NAME_PREFIX) and owner.isdigit() and not _alive(int(owner)):
            _kill_inside(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


class Network:
    """A switch (a bridge in a namespace of its own) and one namespace per host, each cabled to
    the switch by a veth pair: `eth0` on the host, a port named after the host on the switch.
    Every host also gets an /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts over it)
    naming all the others, plus the names in `aliases`."""

    def __init__(self, hosts: dict[str, int], aliases: dict[str, list[str]]) -> None:
        self.token = f"{NAME_PREFIX}{os.getpid()}"
        self.hosts = hosts
        self.aliases = aliases
        self.created: list[str] = []

    def namespace(self, host: str) -> str:
        return f"{self.token}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    def build(self) -> None:
        switch = self.namespace("switch")
        self._add_namespace(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        lines = ["127.0.0.1 localhost"]
        for host in self.hosts:
            names = " ".join([host, *self.aliases.get(host, [])])
            lines.append(f"{self.address(host)} {names}")
        for host in self.hosts:
            namespace = self.namespace(host)
            self._add_namespace(namespace)
            etc = Path("/etc/netns") / namespace
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(lines) + "\n")
            _ip("link", "add", "eth0", "netns", namespace, "type", "veth",
                "peer", "name", host, "netns", switch)  # fmt: skip
            _ip("-n", switch, "link", "set", host, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(host)}/{PREFIX}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self.created.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def cut(self, host: str) -> None:
        """Unplug the host at the switch: its own interface stays up (it sees no error, only
        silence), as when a switch port or a cable fails."""
        _ip("-n", self.namespace("switch"), "link", "set", host, "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.namespace("switch"), "link", "set", host, "up")

    def command(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run on `host`: in its network namespace, with its hostname (own UTS namespace),
        so a worker there names itself `celery@HOST` as on a machine of its own."""
        return [
            "ip", "netns", "exec", self.namespace(host),
            "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv,
        ]  # fmt: skip

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """This thread's sockets go through `host`'s network until the block ends (setns changes
        the calling thread only)."""
        with (
            open("/proc/thread-self/ns/net") as home,
            open(f"/run/netns/{self.namespace(host)}") as there,
        ):
            _setns(there.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def destroy(self) -> None:
        for namespace in reversed(self.created):
            _kill_inside(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        self.created = []


class Processes:
    """Processes started on hosts, each in its own process group, all stopped by `stop_all`."""

    def __init__(self, network: Network, logs: Path) -> None:
        self.network = network
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self,
        host: str,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        with log:
            process = subprocess.Popen(
                self.network.command(host, argv),
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((name, process, stop_signal))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop in reverse order of start (workers and APIs before the database): the stop signal
        to each process group, SIGKILL to what is left after `timeout`."""
        for _name, process, stop_signal in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self.started = []
