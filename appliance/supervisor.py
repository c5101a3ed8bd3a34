"""The local supervisord: started from the state folder, spoken to over its
unix socket with supervisor's XML-RPC interface (what supervisorctl uses)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from appliance import system
from appliance.config import ROOT, Layout
from appliance.system import ApplianceError

RPC_TIMEOUT = 5.0
# Past the task hard limit (90 s by default): how long a stop may wait on a warm shutdown.
RESTART_TIMEOUT = 120.0
# Children get their settings from the rendered env file only, never from the
# shell that happened to run `make run`.
_OWN_PREFIXES = ("WECHAT_", "WXRELAY_")


@dataclass(frozen=True)
class ProcessInfo:
    name: str  # as supervisorctl names it: group:name, or name alone when they agree
    state: str
    pid: int
    description: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def stopped(self) -> bool:
        """Stopped for good: supervisor will not start it again by itself."""
        return self.state in ("STOPPED", "EXITED", "FATAL")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


class Supervisor:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def _rpc(self) -> Any:
        return _rpc_at(str(self.layout.socket))

    def pid(self) -> int | None:
        """The supervisord of this state folder, if its pid file names one that is alive."""
        pid = system.read_pid(self.layout.pidfile)
        if pid is None or not system.alive(pid) or str(self.layout.supervisord_conf) not in system.argv(pid):
            return None
        return pid

    def answers(self) -> bool:
        try:
            return self._rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def processes(self) -> list[ProcessInfo]:
        return processes_at(str(self.layout.socket))

    def start(self, name: str) -> None:
        try:
            self._rpc().startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            # ALREADY_STARTED: it came back by itself meanwhile.
            if fault.faultCode != 60:
                raise ApplianceError(f"supervisord could not start {name}: {fault.faultString}") from None

    def signal(self, name: str, signal_name: str) -> None:
        self._rpc().signalProcess(name, signal_name)

    def restart(self, name: str) -> None:
        """Stopped and started again, waiting for each: a worker's warm shutdown finishes its handlers."""
        rpc = self._rpc_waiting()
        try:
            rpc.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != 70:  # NOT_RUNNING
                raise ApplianceError(f"supervisord could not stop {name}: {fault.faultString}") from None
        try:
            rpc.startProcess(name, True)
        except xmlrpc.client.Fault as fault:
            raise ApplianceError(f"supervisord could not start {name}: {fault.faultString}") from None

    def update(self) -> tuple[list[str], list[str]]:
        """Take in the programs file as it is now: groups added are started, groups removed stopped.
        Returns (added, removed)."""
        rpc = self._rpc_waiting()
        [[added, changed, removed]] = rpc.reloadConfig()
        for group in removed + changed:
            rpc.stopProcessGroup(group, True)
            rpc.removeProcessGroup(group)
        for group in changed + added:
            rpc.addProcessGroup(group)
        return added + changed, removed

    def _rpc_waiting(self) -> Any:
        # A worker's warm shutdown lasts as long as its longest handler.
        transport = _UnixTransport(str(self.layout.socket), RESTART_TIMEOUT)
        return xmlrpc.client.ServerProxy("http://localhost", transport=transport).supervisor

    def shutdown(self) -> None:
        self._rpc().shutdown()

    def remove_stale_files(self) -> None:
        for path in (self.layout.pidfile, self.layout.socket):
            path.unlink(missing_ok=True)

    def launch(self, supervisord: str) -> None:
        """Start supervisord; it puts itself in the background once its configuration reads well."""
        log = self.layout.log_dir / "supervisord-start.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        with open(log, "wb") as output:
            # Output to a file, not a pipe: the daemon would hold a pipe open for its life.
            code = subprocess.call(
                [supervisord, "-c", str(self.layout.supervisord_conf)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=ROOT,
                timeout=30,
            )
        if code != 0:
            raise ApplianceError(f"supervisord did not start ({code}): {log.read_text(errors='replace').strip()}")


def _rpc_at(socket: str) -> Any:
    transport = _UnixTransport(socket, RPC_TIMEOUT)
    return xmlrpc.client.ServerProxy("http://localhost", transport=transport).supervisor


def processes_at(socket: str) -> list[ProcessInfo]:
    """What the supervisord listening on `socket` runs (the local one's, or a server's)."""
    return [
        ProcessInfo(_full_name(info), info["statename"], info["pid"], info["description"])
        for info in _rpc_at(socket).getAllProcessInfo()
    ]


def _full_name(info: dict[str, Any]) -> str:
    return info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}"
