"""The faults, one function each: strike while messages are queued, running and held
on their deliveries, in plaintext and safe mode, then count how each was answered.

Timing is in units of WeChat's window W (WXRELAY_WECHAT_TIMEOUT) and the last
delivery's budget B (WXRELAY_REPLY_BUDGET): a reply ready at 0.5 W is taken by
the first delivery, at 1.5 W by the second, at 2 W + 0.5 B by the third, and
one of 3 W + 1 s misses them all and goes by the customer-service API.
Recovery timings (WXRELAY_LEASE, the sweep) are the shipped ones.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import httpx

from chaos.appliance import APPID, QUEUE, REDIS, WORKERS, wait_until
from chaos.rehearsal import RECOVERY_LIMIT, STARTED_TIMEOUT, Rehearsal, Result, finish, strike
from chaos.wechat import MODES, Message, wait_finished
from common import ledger
from common.settings import SETTINGS

OUTAGE_EVERY = 2.0
CONCURRENCY = int(SETTINGS["worker_concurrency"].default)
LEASE = int(SETTINGS["lease"].default)


def _errors(messages: list[Message], since: float = 0.0, until: float = float("inf")) -> list[str]:
    """Deliveries WeChat saw fail (an HTTP error, no connection) that began in [since, until)."""
    return [
        f"{m.key} delivery {n}: {d.outcome}"
        for m in messages
        for n, d in enumerate(m.deliveries, start=1)
        if d.error and since <= d.started < until
    ]


# -- workers ------------------------------------------------------------------------------------------------------


def fill_workers(r: Rehearsal, seconds: float, queued: int = 6) -> tuple[list[Message], dict[str, int], int]:
    """Every worker slot taken by a handler of `seconds`, and some messages queued behind them, all held
    on their first delivery. Returns the messages, the PID running each that has started, and how many
    tasks are queued."""
    slots = WORKERS * CONCURRENCY
    messages = r.wechat.send_mix([r.slow(seconds)] * ((slots + queued) // 2))

    def full() -> dict[str, int]:
        runs = r.runs()
        started = {m.key: runs[m.key][0] for m in messages if runs.get(m.key)}
        return started if len(started) >= slots and r.appliance.redis().llen(QUEUE) > 0 else {}

    started = wait_until(full, STARTED_TIMEOUT, "every worker slot taken and messages queued", interval=0.1)
    return messages, started, r.appliance.redis().llen(QUEUE)


def worker_killed_mid_handler(r: Rehearsal) -> Result:
    """SIGKILL one worker while its handlers run, others queued: they run again within a lease, and
    every message is answered once."""
    running, started, queued = fill_workers(r, 1.5 * r.window)
    pids = {r.appliance.pid(name): name for name in r.appliance.workers()}
    busiest = max(pids, key=lambda pid: sum(p == pid for p in started.values()))
    victim = pids[busiest]
    killed = r.appliance.kill(victim)
    killed_at = time.monotonic()
    arriving = r.wechat.send_mix(["while a worker is down"] * 2)
    r.appliance.wait_restarted(victim, killed)
    hit = [m for m in running if started.get(m.key) == killed]
    return finish(
        r,
        "worker-killed-mid-handler",
        running + arriving,
        max_runs={m.key: 2 for m in strike(hit, killed_at)},
        recovery_limit=RECOVERY_LIMIT,
        notes=[f"killed {victim} (pid {killed}) running {len(hit)} handlers; {queued} tasks were queued"],
    )


def worker_killed_before_late_send(r: Rehearsal) -> Result:
    """Every worker SIGKILLed while a late send waits for its access_token: the send is made once, later."""
    notes: list[str] = []
    r.api.hold_tokens()
    try:
        r.appliance.redis().delete(f"wxrelay:access_token:{APPID}")
        late = r.wechat.send_mix([r.slow(3 * r.window + 1)])
        r.wait_started(late)
        wait_until(
            lambda: r.api.token_requests_waiting >= 1, 3 * r.window + 1 + STARTED_TIMEOUT, "a late send's token fetch"
        )
        # In flight besides: handlers running (they die too) and held on their first delivery.
        running = r.wechat.send_mix([r.slow(3)])
        started = r.wait_started(running)
        killed = {name: r.appliance.kill(name) for name in r.appliance.workers()}
        killed_at = time.monotonic()
    finally:
        r.api.release_tokens()
    queued = r.wechat.send_mix(["while no worker runs"])
    for name, pid in killed.items():
        r.appliance.wait_restarted(name, pid)
    notes.append(f"killed {', '.join(f'{n} (pid {p})' for n, p in killed.items())} during the token fetch")
    dead = set(killed.values())
    strike(late, killed_at)
    return finish(
        r,
        "worker-killed-before-late-send",
        late + running + queued,
        max_runs={m.key: 2 for m in strike([m for m in running if started[m.key] in dead], killed_at)},
        recovery_limit=RECOVERY_LIMIT,
        notes=notes,
    )


# -- relays -------------------------------------------------------------------------------------------------------


def _relay_killed(r: Rehearsal, delivery: int) -> Result:
    """The relay holding a message's first, middle or last delivery SIGKILLed, and messages arriving while
    supervisor restarts it: nginx passes each to a relay still up (the standby when no serving relay is
    left), so WeChat sees no error — played by a WeChat that takes any error as final."""
    name = f"relay-killed-{['first', 'middle', 'last'][delivery - 1]}-delivery"
    seconds = {1: 0.8 * r.window, 2: r.window + 0.5 * r.budget, 3: 2 * r.window + 0.5 * r.budget}[delivery]
    targets = r.wechat.send_mix([r.slow(seconds)], retry_errors=False)

    def holding() -> dict[int, int]:
        if not all(t.on_delivery(delivery) and r.deliveries(t) >= delivery for t in targets):
            return {}
        held = r.appliance.held()
        return held if sum(held.values()) >= len(targets) else {}

    held = wait_until(holding, STARTED_TIMEOUT + delivery * r.window, f"delivery {delivery} to be held")
    port = max(held, key=lambda p: held[p])
    relay = r.appliance.relay(port)
    pid = r.appliance.kill(relay)
    strike(targets, time.monotonic())
    bystanders = r.wechat.send_mix(["while a relay restarts"], retry_errors=False)
    r.appliance.wait_restarted(relay, pid)
    wait_finished(targets + bystanders, 4 * r.window + STARTED_TIMEOUT)
    errors = _errors(targets + bystanders)
    notes = [f"killed relay :{port} (pid {pid}) holding {held[port]}; {len(errors)} deliveries got an error"]
    problems = [f"WeChat saw an error: {', '.join(errors)}"] if errors else []
    return finish(r, name, targets + bystanders, problems=problems, notes=notes)


def relay_restart_window(r: Rehearsal, rate: float = 10.0, seconds: float = 8.0, kills: int = 2) -> Result:
    """A trickle while the serving relay is SIGKILLed twice: the messages that arrive while supervisor
    restarts it go to the standby, each answered on its first delivery by a WeChat that takes an error
    as final (with one relay and no standby, nginx refused them: 502, and the message was gone)."""
    port = r.appliance.serving_ports[0]
    relay = r.appliance.relay(port)
    messages: list[Message] = []
    began = time.monotonic()
    kill_at = [began + seconds * (n + 1) / (kills + 1) for n in range(kills)]
    down: list[tuple[float, float]] = []  # (killed, running again)
    pid, down_since = 0, 0.0
    for n in range(int(rate * seconds)):
        messages.append(r.wechat.send(f"trickle {n}", MODES[n % 2], retry_errors=False))
        now = time.monotonic()
        if pid and (info := r.appliance.processes()[relay]).running and info.pid != pid:
            down.append((down_since, now))
            pid = 0
        if kill_at and now >= kill_at[0] and not pid:
            kill_at.pop(0)
            pid = r.appliance.kill(relay)
            down_since = now
        time.sleep(max(0.0, began + (n + 1) / rate - time.monotonic()))  # pacing, not waiting
    if pid:
        r.appliance.wait_restarted(relay, pid)
        down.append((down_since, time.monotonic()))
    in_window = [m for m in messages if any(start <= m.sent_at < end for start, end in down)]
    errors = _errors(messages)
    notes = [
        f"relay :{port} killed {len(down)} times, down {', '.join(f'{end - start:.1f} s' for start, end in down)}; "
        f"{len(in_window)} messages arrived meanwhile; {len(errors)} deliveries got an error"
    ]
    problems = [f"WeChat saw an error: {', '.join(errors)}"] if errors else []
    if len(down) < kills or not in_window:
        problems.append("no message arrived while the relay was down (the fault was not rehearsed)")
    return finish(r, "relay-restart-window", messages, problems=problems, notes=notes)


def relay_killed_first_delivery(r: Rehearsal) -> Result:
    return _relay_killed(r, 1)


def relay_killed_middle_delivery(r: Rehearsal) -> Result:
    return _relay_killed(r, 2)


def relay_killed_last_delivery(r: Rehearsal) -> Result:
    return _relay_killed(r, 3)


# -- Redis --------------------------------------------------------------------------------------------------------


def redis_killed(r: Rehearsal) -> Result:
    """SIGKILL Redis with messages queued (every worker slot taken), running and held; supervisor restarts it."""
    messages, _, queued = fill_workers(r, 1.5 * r.window)
    pid = r.appliance.kill(REDIS)
    killed_at = time.monotonic()
    r.appliance.wait_restarted(REDIS, pid)
    back = time.monotonic() - killed_at
    notes = [f"killed redis-server (pid {pid}) with {queued} tasks queued; back in {back:.1f} s"]
    return finish(r, "redis-killed", strike(messages, killed_at), notes=notes)


def redis_down(r: Rehearsal) -> Result:
    """Redis stopped through supervisor for a minute while messages keep coming: each relay spools and
    answers `success` in time; the replies go late once Redis is back."""
    in_flight = r.wechat.send_mix([r.slow(1.5 * r.window)])
    # A handler that outlasts the outage: its worker cannot renew its lease while Redis is away.
    in_flight += [r.wechat.send(r.slow(r.outage + 3), "safe")]
    r.wait_started(in_flight)
    arriving: list[Message] = []
    said: set[str] = set()
    r.appliance.stop_program(REDIS)
    stopped_at = time.monotonic()
    try:
        for n in itertools.count():
            if time.monotonic() - stopped_at >= r.outage:
                break
            arriving.append(r.wechat.send("while Redis is down", MODES[n % 2]))
            if not said:
                said.update(_problems(r, "Redis unreachable"))
            time.sleep(max(0.0, stopped_at + (n + 1) * OUTAGE_EVERY - time.monotonic()))  # pacing, not waiting
    finally:
        r.appliance.start_program(REDIS)
    started_at = time.monotonic()
    wait_finished(in_flight + arriving, 4 * r.window)
    # Every delivery made while Redis was away was answered 200 within WeChat's window; none failed after.
    during = [
        (m, n, d)
        for m in in_flight + arriving
        for n, d in enumerate(m.deliveries, start=1)
        if stopped_at <= d.started and d.started + d.seconds < started_at
    ]
    problems = [
        f"{m.key} delivery {n}: {d.outcome} after {d.seconds:.2f} s while Redis was down"
        for m, n, d in during
        if not (d.ok and d.seconds < r.window)
    ]
    problems += _errors(in_flight + arriving, since=stopped_at)
    if not said:
        problems.append("no relay's /healthz said Redis was unreachable")
    slowest = max((d.seconds for _, _, d in during), default=0.0)
    notes = [
        f"Redis down {started_at - stopped_at:.0f} s; {len(arriving)} messages arrived meanwhile; "
        f"{len(during)} deliveries during the outage, answered in at most {slowest:.2f} s",
        *sorted(said)[:1],
    ]
    messages = strike(in_flight + arriving, started_at)
    return finish(r, "redis-down-60s", messages, problems=problems, notes=notes)


def redis_full(r: Rehearsal) -> Result:
    """maxmemory set below what Redis uses, for longer than a lease: relays spool, /healthz says why, metrics
    count it; never a 503, and a handler running meanwhile is given to no second worker."""
    ports = r.appliance.relay_ports

    def full_errors() -> float:
        return sum(r.appliance.metric(p, "wxrelay_ledger_errors_total", reason="full") for p in ports)

    counted = full_errors()
    in_flight = r.wechat.send_mix([r.slow(1.5 * r.window)])
    # Outlasting Redis full for a lease and kombu's look at it: its worker cannot write, but must keep it.
    full_for = LEASE + ledger.RESTORE_MARGIN
    in_flight.append(r.wechat.send(r.slow(full_for + 2), "safe"))
    r.wait_started(in_flight)
    problems: list[str] = []
    notes: list[str] = []
    limit = r.appliance.fill_redis()
    filled_at = time.monotonic()
    try:
        arriving: list[Message] = []
        for n in range(3):
            arriving += r.wechat.send_mix([f"while Redis is full {n}"])
        try:
            wait_until(lambda: full_errors() > counted, 4 * r.window, "a relay to count a full Redis")
        except TimeoutError as exc:
            problems.append(f'wxrelay_ledger_errors_total{{reason="full"}}: {exc}')
        for port in ports:
            try:
                report = wait_until(
                    lambda port=port: (h := r.appliance.health(port)) and _says_full(h) and h,
                    4 * r.window,
                    f"relay :{port}'s /healthz to say Redis is full",
                )
                notes.append(f":{port} /healthz {report['http_status']}: {report['problems'][0]}")
            except TimeoutError as exc:
                problems.append(str(exc))
        wait_finished(arriving, 4 * r.window)
        spooled = sum(r.appliance.metric(p, "wxrelay_spool_depth") for p in ports)
        notes.append(f"{full_errors() - counted:.0f} full errors counted, {spooled:.0f} messages spooled")
        time.sleep(max(0.0, filled_at + full_for - time.monotonic()))  # the fault's length, not a wait
    finally:
        r.appliance.set_maxmemory(limit)
    notes.append(f"Redis full for {time.monotonic() - filled_at:.0f} s (the lease: {LEASE} s)")
    restored_at = time.monotonic()
    problems += _errors(in_flight + arriving, since=filled_at, until=restored_at)
    messages = strike(in_flight + arriving, restored_at)
    return finish(r, "redis-full", messages, problems=problems, notes=notes)


def _problems(r: Rehearsal, starting: str) -> list[str]:
    """What the relays' /healthz say that begins so."""
    found = []
    for port in r.appliance.relay_ports:
        try:
            found += [p for p in r.appliance.health(port)["problems"] if p.startswith(starting)]
        except (httpx.HTTPError, ValueError):
            continue
    return found


def _says_full(report: dict[str, object]) -> bool:
    problems = report.get("problems") or []
    return any("Redis memory full" in str(p) for p in problems)  # type: ignore[union-attr]


# -- the whole host -----------------------------------------------------------------------------------------------


def host_restarted(r: Rehearsal) -> Result:
    """Every process of the appliance SIGKILLed at once, supervisord included, then `python -m appliance run`
    again on the same state folder. At the kill, messages are held on their first, middle and last deliveries,
    running and queued behind every worker slot, and gone late with their send waiting for a token; more keep
    arriving while the host is down. WeChat is played at its pace: a refused delivery is retried a window later.
    Before that, a first round: messages only the relays' spools hold, already answered `success`."""
    window = r.window
    spooled, spool_note, spool_problems = _spooled_when_killed(r)
    r.appliance.wait_ready()
    r.api.hold_tokens()
    try:
        r.appliance.redis().delete(f"wxrelay:access_token:{APPID}")
        late = r.wechat.send_mix([r.slow(3 * window + 1)], paced=True)
        r.wait_started(late)
        wait_until(
            lambda: r.api.token_requests_waiting >= 1, 3 * window + 1 + STARTED_TIMEOUT, "a late send's token fetch"
        )
        last = r.wechat.send_mix([r.slow(4 * window)], paced=True)
        wait_until(lambda: all(m.on_delivery(2) for m in last), STARTED_TIMEOUT + window, "a second delivery")
        middle = r.wechat.send_mix([r.slow(4 * window)], paced=True)
        crowd = r.wechat.send_mix([r.slow(3 * window)] * ((WORKERS * CONCURRENCY + 6) // 2), paced=True)
        wait_until(
            lambda: all(m.on_delivery(3) for m in last) and all(m.on_delivery(2) for m in middle),
            STARTED_TIMEOUT + 2 * window,
            "the last and middle deliveries",
        )
        wait_until(lambda: r.appliance.redis().llen(QUEUE) > 0, STARTED_TIMEOUT, "every worker slot taken")
        first = r.wechat.send_mix(["just before the kill"], paced=True)
        wait_until(lambda: all(r.deliveries(m) for m in first), STARTED_TIMEOUT, "the ledger to record them")
        held = _held(late + last + middle + crowd + first)
        queued, waiting = r.appliance.redis().llen(QUEUE), r.api.token_requests_waiting
        killed = r.appliance.kill_all()
        killed_at = time.monotonic()
        started = set(r.runs())  # nothing runs until the restart
    finally:
        r.api.release_tokens()
    arriving: list[Message] = []
    down = threading.Event()
    trickle = threading.Thread(target=_trickle, args=(r, arriving, down), name="chaos-trickle", daemon=True)
    trickle.start()
    try:
        said = r.appliance.restart()
        healthy = time.monotonic() - killed_at
    finally:
        down.set()
        trickle.join()
    wait_finished(arriving, 4 * window)
    before = late + last + middle + crowd + first
    undelivered = {m.key for m in arriving if _never_delivered(m)}
    # A handler the kill cut short may run once more; one that had finished (the late ones) may not.
    finished = {m.key for m in late}
    hit = [m for m in before if m.key in started and m.key not in finished]
    # While the host comes up WeChat may find no one listening, but never an error it could take as final.
    problems = spool_problems + [
        e for e in _errors(before + arriving, since=killed_at) if not e.endswith("unreachable")
    ]
    if not (all(held) and queued and waiting):
        problems.append(f"the kill found {held} held on deliveries 1-3, {queued} queued, {waiting} late sends waiting")
    cleared = "; run cleared a dead supervisord's pid file and socket" if "supervisord that is gone" in said else ""
    return finish(
        r,
        "host-restarted",
        spooled + strike(before, killed_at) + [m for m in arriving if m.key not in undelivered],
        max_runs={m.key: 2 for m in hit},
        # The worker-killed contract counted from the stack healthy again, and a handler cut short runs in full.
        recovery_limit=healthy + RECOVERY_LIMIT + 3 * window,
        problems=problems,
        notes=[
            spool_note,
            f"killed {len(killed)} processes (supervisord pid {killed[0]}) holding {held[0]} messages on a first "
            f"delivery, {held[1]} on a middle one and {held[2]} on the last; {queued} tasks queued, "
            f"{len(hit)} handlers running, {waiting} late sends waiting for a token",
            f"healthy again {healthy:.1f} s after the kill{cleared}",
            f"{len(arriving)} messages arrived while the host was down: {len(undelivered)} found it down on "
            "every delivery (never delivered: WeChat gave up on them, not counted above)",
        ],
    )


def _spooled_when_killed(r: Rehearsal) -> tuple[list[Message], str, list[str]]:
    """Redis stopped, messages answered `success` from the relays' spools, then every process killed: only
    the spools on disk remember them. Returns the messages, a note and the problems."""
    r.appliance.stop_program(REDIS)
    spooled = r.wechat.send_mix(["spooled when the host died"], paced=True)
    wait_finished(spooled, STARTED_TIMEOUT + r.window)
    problems = [f"{m.key}: {m.deliveries} while Redis was stopped" for m in spooled if m.answered_on != 1]
    killed = r.appliance.kill_all()
    killed_at = time.monotonic()
    r.appliance.restart()
    healthy = time.monotonic() - killed_at
    note = (
        f"{len(spooled)} messages answered `success` from the spools with Redis stopped, then {len(killed)} "
        f"processes killed: healthy again {healthy:.1f} s after"
    )
    return strike(spooled, killed_at), note, problems


def _held(messages: list[Message]) -> list[int]:
    """How many of the messages are held open on their first, middle and last delivery."""
    return [sum(1 for m in messages if not m.finished.is_set() and len(m.deliveries) == n) for n in range(3)]


def _trickle(r: Rehearsal, arriving: list[Message], done: threading.Event) -> None:
    """A message every third of a window until `done`: WeChat does not know the host is down."""
    for n in itertools.count():
        arriving.append(r.wechat.send("while the host is down", MODES[n % 2], paced=True))
        if done.wait(r.window / 3):
            return


def _never_delivered(message: Message) -> bool:
    """Every delivery found no one listening: the message never reached the host (WeChat has lost it)."""
    return message.finished.is_set() and all(d.outcome == "unreachable" for d in message.deliveries)


# -- nginx --------------------------------------------------------------------------------------------------------


def nginx_reload(r: Rehearsal, rate: float = 5.0, seconds: float = 10.0, reloads: int = 3) -> Result:
    """A steady trickle while nginx is reloaded (SIGHUP to its master) three times: nothing lost."""
    messages: list[Message] = []
    began = time.monotonic()
    reload_at = [began + seconds * (n + 1) / (reloads + 1) for n in range(reloads)]
    reloaded = 0
    for n in range(int(rate * seconds)):
        text = r.slow(0.5 * r.window) if n % 5 == 0 else f"trickle {n}"
        messages.append(r.wechat.send(text, MODES[n % 2]))
        if reload_at and time.monotonic() >= reload_at[0]:
            reload_at.pop(0)
            r.appliance.reload_nginx()
            reloaded += 1
        time.sleep(max(0.0, began + (n + 1) / rate - time.monotonic()))  # pacing, not waiting
    for _ in reload_at:
        r.appliance.reload_nginx()
        reloaded += 1
    errors = _errors(messages)
    notes = [f"nginx reloaded {reloaded} times; {len(errors)} deliveries failed (WeChat retried them)"]
    return finish(r, "nginx-reload", messages, notes=notes)


Scenario = Callable[[Rehearsal], Result]

SCENARIOS: dict[str, Scenario] = {
    "worker-killed-mid-handler": worker_killed_mid_handler,
    "worker-killed-before-late-send": worker_killed_before_late_send,
    "relay-killed-first-delivery": relay_killed_first_delivery,
    "relay-killed-middle-delivery": relay_killed_middle_delivery,
    "relay-killed-last-delivery": relay_killed_last_delivery,
    "relay-restart-window": relay_restart_window,
    "redis-killed": redis_killed,
    "redis-down-60s": redis_down,
    "redis-full": redis_full,
    "nginx-reload": nginx_reload,
    "host-restarted": host_restarted,
}


def run(r: Rehearsal, name: str) -> Result:
    """One scenario, from a ready appliance."""
    r.appliance.wait_ready()
    return SCENARIOS[name](r)
