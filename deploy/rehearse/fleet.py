"""`make rehearse-fleet`: the multi-host layout deployed for real, grown, hurt and upgraded.

Three fresh Debian 12 "VPSes" (systemd-nspawn containers, deploy/rehearse/container.py) on a private
network (a bridge on this machine, 10.213.78.0/24, deploy/rehearse/network.py): relays1 (nginx and the
relays), workers1, broker1 (Redis), then workers2; an outsider (a bare network namespace on the bridge,
in no inventory group). The inventory is tests/deploy/fleet. A fake WeChat API (simulator/api.py) runs on
this machine's bridge address, so late replies are counted. The phases, each timed:

a. one `make deploy` for all hosts, then a second: changed=0 on every host;
b. end-to-end checks through relays1's nginx in all three modes (deploy/rehearse/e2e.py);
c. the broker's firewall: Redis (TLS) answers relays1 and workers1, not the outsider nor this machine;
d. workers2 added to the inventory: only it and the broker's firewall change, both workers hosts run
   handlers; removed again: only the broker's firewall changes, workers2 powered off (a warm shutdown),
   workers1 answers, workers2 can no longer reach Redis;
e. a trickle of messages while workers1's services are down for 20 s: each answered exactly once;
f. a trickle while an upgrade is deployed: relays one at a time, workers warm: each answered exactly once;
g. Redis between hosts is TLS: rediss:// in the clients' settings, the plain port refused to the other
   hosts, a plaintext client on the TLS port unanswered (and b–f ran over it).

Everything is torn down at the end, on failure and SIGTERM too. Needs root and what `make rehearse`
needs. Knobs: --keep, WXRELAY_REHEARSE_KEEP_ON_FAILURE, WXRELAY_REHEARSE_BASE_CACHE, WXRELAY_REHEARSE_MIRROR
as for `make rehearse` (deploy/rehearse/rehearse.py).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from chaos.wechat import WeChat  # noqa: E402
from deploy.rehearse import e2e, session  # noqa: E402
from deploy.rehearse.commands import RehearsalError, log, run  # noqa: E402
from deploy.rehearse.container import Container, base_tree, copy_tree, make_key  # noqa: E402
from deploy.rehearse.deploys import VAULT_PASSWORD, Operator, snapshot_project  # noqa: E402
from deploy.rehearse.network import Guest, Network  # noqa: E402
from deploy.rehearse.recap import changed_by_host, recap_counts  # noqa: E402
from deploy.rehearse.timings import Timings  # noqa: E402
from deploy.rehearse.trickle import WINDOW, Counts, Trickle, fake_api  # noqa: E402
from simulator.api import FakeWeChatAPI  # noqa: E402

# Names of everything it creates on this machine, none shared with `make rehearse`; its own lock.
BRIDGE, HOST_ADDRESS, PREFIX = "wxr-fleet", "10.213.78.1", 24
NFT_TABLE = "wxrelay_fleet"
LOCK = Path("/run/lock/wxrelay-rehearse-fleet.lock")
# As in tests/deploy/fleet/hosts.yml and workers2.yml.
ADDRESSES = {
    "relays1": "10.213.78.11",
    "workers1": "10.213.78.12",
    "broker1": "10.213.78.13",
    "workers2": "10.213.78.14",
}
OUTSIDER = Guest("wxr-fleet-outsider", "10.213.78.99", "wxf-outsider")
# Where group_vars/fleet.yml points wxrelay_wechat_api_base.
API_PORT = 9180
INVENTORY = ROOT / "tests/deploy/fleet/hosts.yml"
WORKERS2 = ROOT / "tests/deploy/fleet/workers2.yml"
VAULT = ROOT / "tests/deploy/inventory/group_vars/all/vault.yml"
RELAYS, WORKERS = 2, 2  # per host, as group_vars/fleet.yml
WORKER_METRICS_PORT = 8101
# Redis's plain port (loopback only, on the broker) and its TLS port, which the other hosts use
# (roles/wxrelay/defaults/main.yml: wxrelay_redis_port, wxrelay_redis_tls_port), and the CA certificate
# those hosts check Redis's against (wxrelay_redis_ca_file).
REDIS_PORT, REDIS_TLS_PORT = 6379, 6380
REDIS_CA = "/etc/wxrelay/redis-ca.crt"
ENV_FILE = "/etc/wxrelay/wxrelay.env"
GROW_MESSAGES = 40
TRICKLE_RATE = 5.0
# Phase e: workers1's services stop this far into the trickle, and stay down this long.
OUTAGE_AT, OUTAGE_FOR, TRICKLE_AFTER = 8.0, 20.0, 10.0
# What adding or removing a workers host may change on the broker: its firewall, reloaded.
BROKER_FIREWALL = ["TASK [base : Write the nftables ruleset]", "RUNNING HANDLER [base : Reload the firewall]"]
# Connects to Redis (over TLS when given a CA certificate) and says PING. `redis -NOAUTH…`: Redis answered
# (its default user is off); `closed …`: something else came back, or nothing; `refused …`: no connection.
PROBE = (
    "import socket, ssl, sys\n"
    "host, port = sys.argv[1], int(sys.argv[2])\n"
    "try:\n"
    "    s = socket.create_connection((host, port), timeout=3)\n"
    "    if len(sys.argv) > 3:\n"
    "        s = ssl.create_default_context(cafile=sys.argv[3]).wrap_socket(s, server_hostname=host)\n"
    "    s.sendall(b'PING\\r\\n')\n"
    "    reply = s.recv(200).decode(errors='replace').strip()\n"
    "    print('redis' if reply[:1] in ('-', '+') else 'closed', reply[:60] or 'no reply')\n"
    "except OSError as exc:\n"
    "    print('refused', type(exc).__name__)\n"
)
# What the end-to-end checks may ask of one relays host (e2e.py's others need Redis and the workers there).
E2E_CHECKS = (
    e2e.check_url_verification,
    e2e.check_allowed_sources,
    e2e.check_modes,
    e2e.check_bad_signature,
    e2e.check_accounts,
    e2e.check_accounts_keep_to_their_keys,
    e2e.check_wecom_message,
    e2e.check_wecom_url_verification,
    e2e.check_spread,
    e2e.check_relay_down,
    e2e.check_server_header,
    e2e.check_https,
)


class Fleet:
    def __init__(self, work: Path, keep: bool, base_cache: Path | None) -> None:
        self.work, self.keep, self.base_cache = work, keep, base_cache
        self.key = work / "id_ed25519"
        self.snapshot = work / "project"
        guests = {name: Guest(f"wxr-fleet-{name}", address, f"wxf-{name}") for name, address in ADDRESSES.items()}
        self.network = Network(BRIDGE, HOST_ADDRESS, PREFIX, NFT_TABLE, [*guests.values(), OUTSIDER])
        self.hosts = {
            name: Container(
                f"wxr-{name}", work / name / "rootfs", guest.netns, guest.address, self.key, work / f"{name}.console"
            )
            for name, guest in guests.items()
        }
        self.operator = Operator(work, INVENTORY, self.key, self.snapshot, "wxrelay-fleet")
        self.timings = Timings()
        self.recaps: list[tuple[str, dict[str, dict[str, int]]]] = []
        self.trickles: list[tuple[str, Trickle]] = []
        self.api: FakeWeChatAPI | None = None
        self.secrets: dict[str, str] = {}

    # --- set up -----------------------------------------------------------------------------

    def build(self) -> None:
        base = self.work / "base"
        base_tree(base, self.base_cache)
        make_key(self.key)
        for host in self.hosts.values():
            copy_tree(base, host.rootfs)
            host.prepare()
        shutil.rmtree(base)
        snapshot_project(self.snapshot)

    def converge(self, name: str, extra: str = "") -> str:
        output = self.operator.deploy(name, extra)
        recap = recap_counts(output)
        if not recap or any(counts["failed"] or counts["unreachable"] for counts in recap.values()):
            raise RehearsalError(f"{name}: {recap or 'no recap'}")
        self.recaps.append((name, recap))
        log(f"{name} recap: " + ", ".join(f"{host}: changed={c['changed']}" for host, c in recap.items()))
        return output

    # --- the phases ---------------------------------------------------------------------------

    def rehearse(self) -> None:
        self.secrets = e2e.read_vault(VAULT, VAULT_PASSWORD)
        with self.timings.step("debootstrap, and a copy per host"):
            self.build()
        with self.timings.step("network and boot (3 hosts)"):
            self.network.up()
            self.api = fake_api(self.secrets, (HOST_ADDRESS, API_PORT))
            for name in ("relays1", "workers1", "broker1"):
                self.hosts[name].boot()
        with self.timings.step("a. converge-1 (make deploy, 3 hosts)"):
            self.converge("converge-1")
        with self.timings.step("a. converge-2 (changed=0 on every host)"):
            self.converge("converge-2")
            changed = {host: c["changed"] for host, c in self.recaps[-1][1].items() if c["changed"]}
            if changed:
                raise RehearsalError(f"converge-2 was not idempotent: {changed}")
        with self.timings.step("b. end-to-end through relays1's nginx"):
            target = self.target()
            for check in E2E_CHECKS:
                check(target)
        with self.timings.step("c. the broker's firewall"):
            self.check_broker_firewall()
        with self.timings.step("d. grow: workers2 added"):
            self.grow()
        with self.timings.step("d. shrink: workers2 removed"):
            self.shrink()
        with self.timings.step("e. workers1 lost and back (trickle)"):
            self.host_lost()
        with self.timings.step("f. rolling upgrade (trickle)"):
            self.rolling_upgrade()
        with self.timings.step("g. Redis over TLS between hosts"):
            self.check_tls()
        # Late duplicates would show by now: every trickle counted again.
        for label, trickle in self.trickles:
            counts = trickle.counts()
            if not counts.ok:
                raise RehearsalError(f"{label}, counted again at the end: {counts.describe()}")

    def target(self) -> e2e.Target:
        relays = self.hosts["relays1"]
        return e2e.Target(
            url=f"http://{relays.address}",
            https=f"https://{relays.address}",
            secrets=self.secrets,
            certificate=ROOT / "tests/deploy/tls/wxrelay.test.crt",
            shell=relays.ssh,
            address=relays.address,
            source=HOST_ADDRESS,
            relays=RELAYS,
            workers=WORKERS,
        )

    def probe(self, name: str, port: int, tls: bool = False) -> str:
        """What a connection from host `name` to Redis on the broker gets (see PROBE)."""
        # As root: the CA certificate is in the service's folder (/etc/wxrelay, mode 0750).
        argv = f"sudo python3 -c {e2e.shell_quote(PROBE)} {ADDRESSES['broker1']} {port}" + (
            f" {REDIS_CA}" if tls else ""
        )
        return self.hosts[name].ssh(argv).stdout.strip()

    def check_broker_firewall(self) -> None:
        for name in ("relays1", "workers1"):
            answer = self.probe(name, REDIS_TLS_PORT, tls=True)
            e2e.check(answer.startswith("redis"), f"Redis over TLS from {name}: {answer}")
        e2e.passed(f"Redis on broker1 answers relays1 and workers1 over TLS (port {REDIS_TLS_PORT})")
        for port in (REDIS_PORT, REDIS_TLS_PORT):
            self.check_refused(OUTSIDER.netns, "the outsider (10.213.78.99, in no group)", port)
            self.check_refused(None, f"this machine ({HOST_ADDRESS})", port)

    def check_refused(self, netns: str | None, who: str, port: int) -> None:
        """From a namespace on the bridge (or this machine's bridge address): no connection to Redis."""
        if netns is None:
            try:
                with socket.create_connection((ADDRESSES["broker1"], port), 3, (HOST_ADDRESS, 0)):
                    answer = "connected"
            except OSError as exc:
                answer = f"refused {type(exc).__name__}"
        else:
            argv = ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, ADDRESSES["broker1"], str(port)]
            answer = run(argv, timeout=30).stdout.strip()
        e2e.check(answer.startswith("refused"), f"Redis on broker1, port {port}, let {who} in: {answer}")
        e2e.passed(f"Redis on broker1, port {port}, refuses {who}: {answer}")

    def check_tls(self) -> None:
        """Redis traffic between hosts is TLS: rediss:// in the clients' settings, the plain port closed to
        them, a plaintext client on the TLS port gets no answer (b–f ran over TLS)."""
        for name in ("relays1", "workers1"):
            found = self.hosts[name].ssh(f"sudo grep -Ec '^WXRELAY_REDIS_URL=.?rediss://' {ENV_FILE}", check=False)
            e2e.check(found.stdout.strip() == "1", f"{name}'s {ENV_FILE}: WXRELAY_REDIS_URL is not rediss://")
        e2e.passed(f"relays1 and workers1 reach Redis by rediss:// ({ENV_FILE})")
        plain = self.probe("workers1", REDIS_PORT)
        e2e.check(plain.startswith("refused"), f"a plaintext connection from workers1 to port {REDIS_PORT}: {plain}")
        e2e.passed(f"a plaintext connection from workers1 to Redis's plain port {REDIS_PORT}: {plain}")
        confused = self.probe("workers1", REDIS_TLS_PORT)
        e2e.check(not confused.startswith("redis"), f"a plaintext client on the TLS port was answered: {confused}")
        e2e.passed(f"a plaintext client on the TLS port {REDIS_TLS_PORT} gets no Redis answer: {confused}")

    def handler_runs(self, name: str) -> float:
        """Handler runs the workers of one host counted (their Prometheus metrics), since they started."""
        script = (
            "import urllib.request\n"
            "total = 0.0\n"
            f"for port in range({WORKER_METRICS_PORT}, {WORKER_METRICS_PORT + WORKERS}):\n"
            "    text = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5).read().decode()\n"
            "    total += sum(float(l.rsplit(' ', 1)[1]) for l in text.splitlines()\n"
            "                 if l.startswith('wxrelay_handler_outcomes_total{'))\n"
            "print(total)\n"
        )
        return float(self.hosts[name].ssh(f"python3 -c {e2e.shell_quote(script)}").stdout)

    def say(self, count: int, label: str) -> None:
        target = self.target()
        for n in range(count):
            e2e.say_and_check(target, "plain", f"{label} {n}", user=f"o_{label}_{n}")

    def expect_changes(self, name: str, output: str, only: dict[str, list[str]]) -> None:
        """The converge changed exactly these tasks (in this order) on these hosts, nothing anywhere else."""
        changed = changed_by_host(output)
        wrong = {
            host: tasks
            for host, tasks in changed.items()
            if host in only and only[host] and tasks != only[host] or host not in only and tasks
        }
        missing = [host for host in only if not changed.get(host)]
        if wrong or missing:
            raise RehearsalError(f"{name} changed {json.dumps(changed, indent=1)}; expected only {only}")
        for host, tasks in changed.items():
            log(f"{name}: {host} changed {len(tasks)} tasks" + (f": {tasks}" if len(tasks) < 4 else ""))

    def grow(self) -> None:
        self.hosts["workers2"].boot()
        output = self.converge("converge-grow", f"-i {WORKERS2}")
        # workers2: whatever a new host needs (an empty list: anything but nothing).
        self.expect_changes("converge-grow", output, {"workers2": [], "broker1": BROKER_FIREWALL})
        before = {name: self.handler_runs(name) for name in ("workers1", "workers2")}
        self.say(GROW_MESSAGES, "grown")
        runs = {name: self.handler_runs(name) - before[name] for name in before}
        e2e.check(
            all(n > 0 for n in runs.values()) and sum(runs.values()) == GROW_MESSAGES,
            f"{GROW_MESSAGES} messages: handler runs per workers host {runs}",
        )
        e2e.passed(f"{GROW_MESSAGES} messages, handler runs per workers host: {runs} (each ran once)")

    def shrink(self) -> None:
        output = self.converge("converge-shrink")
        self.expect_changes("converge-shrink", output, {"broker1": BROKER_FIREWALL})
        # systemd stops supervisor, which stops the workers warm: they finish what they hold.
        self.hosts["workers2"].power_off()
        e2e.check(not self.hosts["workers2"].running, "workers2 did not power off")
        before = self.handler_runs("workers1")
        self.say(10, "shrunk")
        runs = self.handler_runs("workers1") - before
        e2e.check(runs == 10, f"with workers2 gone, 10 messages made {runs} handler runs on workers1")
        e2e.passed("workers2 powered off: 10 messages answered, each run once by workers1")
        self.check_refused("wxr-fleet-workers2", "workers2, out of the inventory", REDIS_TLS_PORT)

    def trickle(self, label: str) -> Trickle:
        s = self.secrets
        wechat = WeChat(
            f"http://{ADDRESSES['relays1']}/wechat",
            s["vault_wxrelay_wechat_token"],
            s["vault_wxrelay_wechat_appid"],
            s["vault_wxrelay_wechat_aes_key"],
            WINDOW,
        )
        assert self.api is not None
        trickle = Trickle(wechat, self.api, TRICKLE_RATE, label)
        self.trickles.append((label, trickle))
        return trickle

    def tally(self, label: str, trickle: Trickle) -> Counts:
        trickle.settle()
        counts = trickle.counts()
        log(f"{label}: {counts.describe()}")
        if not counts.ok:
            raise RehearsalError(f"{label}: {counts.describe()}")
        return counts

    def host_lost(self) -> None:
        workers = self.hosts["workers1"]
        trickle = self.trickle("lost")
        trickle.start()
        try:
            wait(OUTAGE_AT)
            workers.ssh("sudo supervisorctl stop all", timeout=180)
            log("workers1's services stopped (supervisorctl stop all)")
            wait(OUTAGE_FOR)
            workers.ssh("sudo supervisorctl start all", timeout=120)
            log("workers1's services started again")
            wait(TRICKLE_AFTER)
        finally:
            trickle.stop()
        self.tally("e. workers1 lost and back", trickle)

    def rolling_upgrade(self) -> None:
        # A harmless edit of the code deployed: a new wheel, so every relay and worker restarts.
        marker = self.snapshot / "common/__init__.py"
        marker.write_text(marker.read_text() + "# upgraded by the fleet rehearsal\n")
        before = {name: program_pids(self.hosts[name]) for name in ("relays1", "workers1")}
        trickle = self.trickle("upgrade")
        trickle.start()
        try:
            wait(3.0)
            output = self.converge("converge-upgrade")
            wait(3.0)
        finally:
            trickle.stop()
        after = {name: program_pids(self.hosts[name]) for name in before}
        kept = {name: sorted(p for p in before[name] if after[name].get(p) == before[name][p]) for name in before}
        e2e.check(
            all(before.values()) and not any(kept.values()),
            f"the upgrade left processes running the old code: {kept}",
        )
        restarts = [
            line for line in output.splitlines() if re.match(r"^changed: \[relays1\] => \(item=wxrelay-relay", line)
        ]
        e2e.check(len(restarts) == RELAYS, f"relays restarted one by one by the handler: {restarts}")
        e2e.passed(f"upgrade: {len(restarts)} relays restarted one at a time, every worker restarted (warm)")
        self.tally("f. rolling upgrade", trickle)

    # --- tear down ----------------------------------------------------------------------------

    def teardown(self) -> None:
        with self.timings.step("teardown"):
            try:
                for host in self.hosts.values():
                    host.power_off()
            finally:
                if self.api is not None:
                    self.api.stop()
                self.network.down()
                if self.keep:
                    log(f"kept {self.work} (--keep)")
                elif not any(host.running for host in self.hosts.values()):
                    shutil.rmtree(self.work, ignore_errors=True)
                else:
                    log(f"a container did not stop: left {self.work} in place")

    def summary(self) -> str:
        lines = ["changed per host, per converge:"]
        for name, recap in self.recaps:
            lines.append(f"  {name:<18} " + ", ".join(f"{host} changed={c['changed']}" for host, c in recap.items()))
        lines.append("trickles (5 msg/s):")
        for label, trickle in self.trickles:
            lines.append(f"  {label:<18} {trickle.counts().describe()}")
        return "\n".join(lines)


def wait(seconds: float) -> None:
    """A point in a trickle's timeline (not a synchronisation: the traffic runs on meanwhile)."""
    time.sleep(seconds)


def program_pids(host: Container) -> dict[str, str]:
    """Each wxrelay process supervisor runs on the host, and its pid."""
    status = host.ssh("sudo supervisorctl status", check=False).stdout
    return dict(re.findall(r"^(wxrelay-\S+)\s+RUNNING\s+pid (\d+),", status, re.MULTILINE))


def main(argv: list[str] | None = None) -> int:
    return session.main(
        argv,
        prog="rehearse-fleet",
        description=__doc__.splitlines()[0],
        title="fleet rehearsal",
        lock=LOCK,
        prefix="wxrelay-fleet-",
        rehearsal=Fleet,
    )


if __name__ == "__main__":
    sys.exit(main())
