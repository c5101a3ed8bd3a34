"""`run` and `stop`: bring the stack up idempotently, and take all of it down."""

from __future__ import annotations

import os
import signal
import time
import xmlrpc.client
from pathlib import Path

from appliance import config, envfile, render, status, system
from appliance.config import Layout, Local
from appliance.render import Tools
from appliance.supervisor import ProcessInfo, Supervisor
from appliance.system import ApplianceError
from common.accounts import MODES, WECOM, Account

START_TIMEOUT = 60.0
POLL = 0.2
# How long a stopped process may take to let go of its port.
PORTS_TIMEOUT = 5.0
_STOP_MARGIN = 20.0
NGINX = "nginx"


def say(message: str) -> None:
    print(f"wxrelay: {message}", flush=True)


def run(timeout: float = START_TIMEOUT) -> int:
    env_file = config.env_file_path(os.environ)
    written = envfile.ensure(env_file)
    if written:
        say(f"wrote {_shown(env_file)} ({', '.join(written)}); variables in the environment override it")
    local = config.load()
    layout = local.layout
    tools = Tools.find()
    rendered = render.render(local, tools)
    supervisor = Supervisor(layout)
    pid = supervisor.pid()
    if pid is not None:
        return _resume(local, supervisor, pid, rendered, timeout)
    _clear_leftovers(layout)
    _check_ports(local)
    render.write(local, rendered)
    say(f"configuration rendered from deploy/ into {_shown(layout.state_dir)}/")
    settings = local.settings
    say(
        f"starting supervisord: Redis :{local.redis_port}, {_count(settings.relays, 'relay')} "
        f":{_ports(local.relay_ports)} ({settings.standby_relays} standing by), {settings.workers} workers, "
        f"nginx :{settings.http_port}"
    )
    started = time.monotonic()
    supervisor.launch(tools.supervisord)
    _start_nginx(local, supervisor, timeout)
    _wait_healthy(local, supervisor, timeout)
    say(f"nginx → relays → Redis → workers healthy in {time.monotonic() - started:.1f} s")
    _owner_info(local, env_file)
    return 0


def reload(timeout: float = START_TIMEOUT) -> int:
    """The accounts file (and settings) as they are now, with no delivery dropped:
    relays re-read the accounts on SIGHUP, workers restart one at a time."""
    local = config.load()
    supervisor = Supervisor(local.layout)
    if supervisor.pid() is None or not supervisor.answers():
        raise ApplianceError("the appliance is not running: make run starts it")
    rendered = render.render(local, Tools.find())
    changed = render.changed(rendered)
    render.write(local, rendered)
    if {local.layout.nginx_conf, local.layout.nginx_site} & set(changed):
        supervisor.signal("nginx", "HUP")  # nginx's own graceful reload: old workers finish their requests
        say("nginx re-read its configuration")
    added, removed = supervisor.update()
    if NGINX in added:  # its program changed: supervisor took it down, and does not start it by itself
        _start_nginx(local, supervisor, timeout)
    if added or removed:
        say(f"worker programs started: {', '.join(added) or 'none'}; stopped: {', '.join(removed) or 'none'}")
    processes = supervisor.processes()
    relays = [p.name for p in processes if p.name.startswith("wxrelay-relay:")]
    for name in relays:
        supervisor.signal(name, "HUP")
    say(f"{_count(len(relays), 'relay')} re-read the accounts: {', '.join(local.accounts())}")
    for process in processes:
        if process.name.startswith("wxrelay-worker") and process.name.split(":")[0] not in added:
            say(f"restarting {process.name} (its handlers finish first)")
            supervisor.restart(process.name)
    _wait_healthy(local, supervisor, timeout)
    _owner_info(local, config.env_file_path(os.environ))
    return 0


def _resume(local: Local, supervisor: Supervisor, pid: int, rendered: dict[Path, str], timeout: float) -> int:
    if not supervisor.answers():
        raise ApplianceError(
            f"supervisord (pid {pid}) does not answer on {supervisor.layout.socket}: make stop, then make run"
        )
    running = config.from_state(local.layout) or local
    if render.changed(rendered):
        say("the configuration changed since the stack started; make stop && make run applies it")
    stopped = [process.name for process in supervisor.processes() if process.stopped]
    if stopped:
        say(f"supervisord (pid {pid}) is running; starting what is stopped: {', '.join(stopped)}")
        for name in stopped:
            supervisor.start(name)
    else:
        say(f"already running (supervisord pid {pid})")
    _wait_healthy(running, supervisor, timeout)
    _owner_info(running, config.env_file_path(os.environ))
    return 0


def _clear_leftovers(layout: Layout) -> None:
    """What an earlier run left behind when its supervisord died without cleaning up."""
    if layout.pidfile.exists() or layout.socket.exists():
        say("removing the pid file and socket of a supervisord that is gone")
        Supervisor(layout).remove_stale_files()
    orphans = _orphans(layout)
    if orphans:
        say(f"stopping {len(orphans)} processes an earlier run left without their supervisord")
        _end(orphans, _STOP_MARGIN)


def _orphans(layout: Layout) -> set[int]:
    """What this state folder started, found even when its supervisord is gone."""
    configs = {str(layout.supervisord_conf), str(layout.nginx_conf), str(layout.redis_conf)}
    setting = f"WXRELAY_ENV_FILE={layout.env_file}"
    found = {
        pid
        for pid in system.others()
        # supervisord and nginx by their configuration, relays and workers by
        # their settings, Redis (which renames itself) by its data folder.
        if configs & system.words(pid)
        or setting in system.environ(pid)
        or (system.cwd(pid) == layout.redis_dir and "redis-server" in " ".join(system.argv(pid)))
    }
    return found | system.descendants(found)


def _check_ports(local: Local) -> None:
    # nginx listens on every address, as on a server; the rest on loopback only.
    system.check_port(local.settings.http_port, "nginx", "WXRELAY_HTTP_PORT")
    for number, port in enumerate(local.relay_ports, start=1):
        system.check_port(port, f"relay {number}", "WXRELAY_RELAY_PORT", "127.0.0.1")
    system.check_port(local.redis_port, "Redis", "WXRELAY_REDIS_PORT", "127.0.0.1")
    # A worker would run on without its /metrics, saying so in its log only: better said here, before it starts.
    for port, node in config.worker_metrics_ports(local):
        system.check_port(port, f"{node}'s metrics", "WXRELAY_WORKER_METRICS_PORT (0: none)", "127.0.0.1")


def _wait_healthy(local: Local, supervisor: Supervisor, timeout: float) -> None:
    """Poll supervisor and the chain until both are healthy and WeChat's way in answers 200."""
    deadline = time.monotonic() + timeout
    noted: list[str] = []
    next_note = time.monotonic() + 5
    while True:
        processes = _processes(supervisor)
        failed = [process for process in processes if process.state == "FATAL"]
        if failed:
            raise ApplianceError(_failure(local.layout, failed))
        checks = status.chain(local) if processes and all(p.running for p in processes) else []
        if checks and status.healthy(processes, checks) and status.through_nginx(local):
            return
        pending = (
            [p.name for p in processes if not p.running]
            or [c.part for c in checks if not c.ok]
            or (["nginx → /healthz"] if processes else ["supervisord"])
        )
        now = time.monotonic()
        if now > deadline:
            raise ApplianceError(
                f"not healthy after {timeout:.0f} s, still waiting for {', '.join(pending)}: make status and make logs"
                " show why; make stop stops it"
            )
        if now >= next_note and pending != noted:
            say(f"waiting for {', '.join(pending)}")
            noted, next_note = pending, now + 5
        time.sleep(POLL)


def _start_nginx(local: Local, supervisor: Supervisor, timeout: float) -> None:
    """nginx (not started with the rest) once a relay listens, so WeChat never meets nginx without one:
    after a crash of the whole host its retries arrive while the stack comes up."""
    deadline = time.monotonic() + timeout
    while not any(status.listens(port) for port in local.relay_ports):
        if time.monotonic() > deadline or any(p.state == "FATAL" for p in _processes(supervisor)):
            return  # no relay will come: _wait_healthy says why
        time.sleep(POLL / 4)
    supervisor.start(NGINX)


def _processes(supervisor: Supervisor) -> list[ProcessInfo]:
    try:
        return supervisor.processes()
    except (OSError, xmlrpc.client.Error):  # the socket appears a moment after the daemon starts
        return []


def _failure(layout: Layout, failed: list[ProcessInfo]) -> str:
    lines = [f"{', '.join(p.name for p in failed)} could not start:"]
    for process in failed:
        log = layout.log_dir / f"{process.name.rpartition(':')[2]}.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
        lines += [f"  {log}:", *(f"    {line}" for line in tail)]
    lines.append("make stop stops the rest")
    return "\n".join(lines)


def _owner_info(local: Local, env_file: Path) -> None:
    settings = local.settings
    print(
        f"""
wxrelay is ready: nginx :{settings.http_port} → {_count(settings.relays, "relay")} \
({settings.standby_relays} standing by) → Redis :{local.redis_port} → {_count(settings.workers, "worker")}""",
        flush=True,
    )
    for account in local.accounts().values():
        _account_info(local, account, env_file)
    print(
        f"""
  WeChat reaches only a public address on port 80 or 443: this machine's port {settings.http_port} is for trying it out.

  next: make say TEXT=hello{" [ACCOUNT=name]" if len(local.accounts()) > 1 else ""}""",
        flush=True,
    )


def _account_info(local: Local, account: Account, env_file: Path) -> None:
    wecom = account.kind == WECOM
    console = "应用管理 → 应用 → 接收消息 → 设置API接收" if wecom else "设置与开发 → 基本配置 → 服务器配置"
    placeholder = account.appid == envfile.PLACEHOLDER_APPID
    modes = ", ".join(mode for mode in MODES if mode in account.modes)
    ids = (
        f"CorpID          {account.appid}\n    AgentId         {account.agentid}"
        if wecom
        else f"AppID           {account.appid}"
    )
    print(
        f"""
  {account.name} ({"WeCom app" if wecom else "official account"}) — in the admin console ({console}):
    URL             {local.callback_url.removesuffix("/wechat")}{account.path}
    Token           {account.token}
    EncodingAESKey  {account.aes_key or "(none)"}
    {ids}{f" (a placeholder: put yours in {_shown(env_file)})" if placeholder else ""}
    Message modes   {modes}""",
        flush=True,
    )


def stop() -> int:
    layout = config.layout()
    supervisor = Supervisor(layout)
    pid = supervisor.pid()
    targets: set[int] = set()
    if pid is not None:
        answers = supervisor.answers()
        children = {p.pid for p in supervisor.processes() if p.pid} if answers else set()
        targets = {pid} | children | system.descendants({pid} | children)
        say(f"stopping supervisord (pid {pid}) and {len(targets) - 1} processes; workers finish their handlers first")
        if answers:
            supervisor.shutdown()
        else:
            system.terminate([pid])
    orphans = _orphans(layout) - targets
    if orphans:
        say(f"stopping {len(orphans)} processes an earlier run left without their supervisord")
        system.terminate(orphans)
        targets |= orphans
    if not targets:
        Supervisor(layout).remove_stale_files()
        say("not running")
        return 0
    local = config.from_state(layout)
    _end(targets, (local.settings.task_time_limit if local else 90) + _STOP_MARGIN, already_signalled=True)
    supervisor.remove_stale_files()
    busy = _busy_ports(local) if local else []
    say(f"stopped {len(targets)} processes" + ("" if busy else "; every port is free"))
    for port, holder in busy:
        say(f"port {port} is still taken, by {holder}, which wxrelay did not start")
    return 0


def _end(pids: set[int], timeout: float, already_signalled: bool = False) -> None:
    """Stop these processes: TERM, then KILL what is still there at the deadline."""
    if not already_signalled:
        system.terminate(pids)
    if _wait_gone(pids, timeout):
        return
    left = {pid for pid in pids if system.alive(pid)}
    say(f"killing what did not stop in {timeout:.0f} s: pids {', '.join(map(str, sorted(left)))}")
    system.terminate(left, signal.SIGKILL)
    if not _wait_gone(left, 10):
        raise ApplianceError(f"pids {sorted(pid for pid in left if system.alive(pid))} did not go away")


def _wait_gone(pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(system.alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL / 2)
    return True


def _busy_ports(local: Local) -> list[tuple[int, str]]:
    wanted = [(local.settings.http_port, "0.0.0.0"), *((port, "127.0.0.1") for port in local.relay_ports)]
    wanted.append((local.redis_port, "127.0.0.1"))
    deadline = time.monotonic() + PORTS_TIMEOUT
    while True:
        busy = [port for port, host in wanted if not system.port_free(port, host)]
        if not busy or time.monotonic() > deadline:
            return [(port, system.port_holder(port)) for port in busy]
        time.sleep(POLL / 2)


def _ports(ports: list[int]) -> str:
    return str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"


def _shown(path: Path) -> str:
    """A path as the user would type it: relative when it is under the current directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")
