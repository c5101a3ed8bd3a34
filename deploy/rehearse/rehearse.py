"""`make rehearse`: deploy to a fresh Debian 12 "VPS" for real, then tear it down.

The VPS is a systemd-nspawn container booted with real systemd in a network
namespace of its own (a veth pair, and an nftables masquerade so that its apt
reaches the Debian mirror). Then, as a user would:

1. `make deploy` with the test inventory and test-only vault (tests/deploy);
2. `make deploy` again, which must report changed=0 on every host; both with
   --diff, and neither output may show a secret of the vault;
3. `make deploy` with one more account: only the accounts file changes, the
   relays reload it in place (SIGHUP), the workers restart, the account answers;
4. end-to-end checks from this machine through the container's nginx, and of
   the host's hardening from inside it (deploy/rehearse/e2e.py);
5. `make doctor`;
6. the whole host restarted mid-traffic: every process of the container
   SIGKILLed at once with messages in flight, the same root booted again, the
   services up by themselves, each message answered exactly once
   (deploy/rehearse/restart.py).

Everything it sets up is torn down at the end, on failure too: the container
(powered off from inside), the namespace, the nftables table, the forwarding
switch as it was, the work folder. It needs root, systemd-nspawn
(systemd-container), debootstrap, nft (nftables), ip (iproute2) and ssh.

Knobs: --keep (or WXRELAY_REHEARSE_KEEP_ON_FAILURE=1) keeps the work folder
under /var/tmp with the deploy logs; WXRELAY_REHEARSE_BASE_CACHE=DIR keeps the
debootstrapped tree there and copies it on later runs (a still fresh
container, a minute sooner, for working on the playbook);
WXRELAY_REHEARSE_MIRROR picks the Debian mirror.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from deploy.rehearse import e2e, session  # noqa: E402
from deploy.rehearse.commands import RehearsalError, log  # noqa: E402
from deploy.rehearse.container import Container, base_tree, make_key  # noqa: E402
from deploy.rehearse.deploys import VAULT_PASSWORD, Operator, snapshot_project  # noqa: E402
from deploy.rehearse.network import Guest, Network  # noqa: E402
from deploy.rehearse.recap import changed_tasks, recap_counts  # noqa: E402
from deploy.rehearse.restart import Figures, HostRestart  # noqa: E402
from deploy.rehearse.timings import Timings  # noqa: E402

# Names of everything the rehearsal creates on this machine; the lock makes
# sure only one rehearsal uses them at a time (`make rehearse-fleet` has names of its own).
NETNS = "wxrelay-rehearse"
BRIDGE, HOST_LINK = "wxr-host", "wxr-host-0"
# As in tests/deploy/inventory: hosts.yml (the guest), group_vars (the host, the one allowed source).
HOST_ADDRESS, GUEST_ADDRESS, PREFIX = "10.213.77.1", "10.213.77.2", 30
NFT_TABLE = "wxrelay_rehearse"
LOCK = Path("/run/lock/wxrelay-rehearse.lock")
MACHINE = "wxrelay-rehearsal"

INVENTORY = ROOT / "tests/deploy/inventory"
VAULT = INVENTORY / "group_vars/all/vault.yml"
# The AppIDs and the CorpID are public (every message names them); every other
# vault value is a secret that Ansible's output, diffs included, must never show.
PUBLIC = {
    "vault_wxrelay_wechat_appid",
    "vault_wxrelay_shop_appid",
    "vault_wxrelay_news_appid",
    "vault_wxrelay_staff_corpid",
    "vault_wxrelay_late_appid",
}
# The account the third converge adds (its secrets in the vault too): the
# accounts file changes, nothing else.
ADDED_ACCOUNT = {
    "name": "late",
    "appid": "{{ vault_wxrelay_late_appid }}",
    "token": "{{ vault_wxrelay_late_token }}",
    "modes": ["plain"],
}


class Rehearsal:
    def __init__(self, work: Path, keep: bool, base_cache: Path | None) -> None:
        self.work = work
        self.key = work / "id_ed25519"
        self.snapshot = work / "project"
        self.keep = keep
        self.base_cache = base_cache
        self.network = Network(BRIDGE, HOST_ADDRESS, PREFIX, NFT_TABLE, [Guest(NETNS, GUEST_ADDRESS, HOST_LINK)])
        self.container = Container(MACHINE, work / "rootfs", NETNS, GUEST_ADDRESS, self.key, work / "nspawn.log")
        self.operator = Operator(work, INVENTORY, self.key, self.snapshot, "wxrelay-rehearse")
        self.timings = Timings()
        self.recaps: list[tuple[str, dict[str, dict[str, int]]]] = []
        self.restart: Figures | None = None

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return self.container.ssh(command, check=check, timeout=timeout, input=input)

    def deploy(self, name: str, extra: str = "") -> str:
        output = self.operator.deploy(name, extra)
        self.recaps.append((name, recap_counts(output)))
        return output

    def summary(self) -> str:
        lines = ["changed per converge:"]
        for name, recap in self.recaps:
            lines.append(f"  {name:<18} " + ", ".join(f"{host} changed={c['changed']}" for host, c in recap.items()))
        if self.restart is not None:
            lines.append(f"host restarted mid-traffic: {self.restart.describe()}")
        return "\n".join(lines)

    def doctor(self) -> None:
        """`make doctor INVENTORY=...`: on the host, every link it can check from there holds; what it cannot
        (WeChat's API, a closed port here; NTP, which no container runs) it names, and the run fails."""
        returncode, output = self.operator.make("doctor", "doctor")
        # Ansible's debug output may escape the marks.
        found = {mark: set() for mark in "✓✗"}
        for mark, part in re.findall(r"(✓|✗|\\u2713|\\u2717) (\S+(?: (?:default|shop|news|staff|late))?)", output):
            found["✓" if mark in ("✓", "\\u2713") else "✗"].add(part)
        healthy = {"services", "nginx", "relay", "redis", "workers", "memory", "bot"}
        healthy |= {f"verify {name}" for name in ("default", "shop", "news", "staff", ADDED_ACCOUNT["name"])}
        unreachable = {"clock", "ntp", "token default", "token shop", "token staff"}
        if returncode == 0 or not healthy <= found["✓"] or found["✗"] != unreachable:
            raise RehearsalError(
                f"make doctor: exit {returncode}, passed {sorted(found['✓'])}, failed {sorted(found['✗'])} "
                f"(expected to pass {sorted(healthy)}, to fail only {sorted(unreachable)}):\n{output[-6000:]}"
            )
        log(f"make doctor: {len(found['✓'])} checks pass; fails only where a container cannot: {sorted(unreachable)}")

    def rehearse(self) -> None:
        secrets = e2e.read_vault(VAULT, VAULT_PASSWORD)
        with self.timings.step("debootstrap (fresh Debian 12 tree)"):
            base_tree(self.container.rootfs, self.base_cache)
        make_key(self.key)
        self.container.prepare()
        snapshot_project(self.snapshot)
        with self.timings.step("network and boot"):
            self.network.up()
            self.container.boot()
        with self.timings.step("first converge (make deploy)"):
            first = self.deploy("converge-1")
        with self.timings.step("second converge (make deploy)"):
            second = self.deploy("converge-2")
        # The TLS key is a secret too (its copy is no_log): one line of it stands for all.
        key_lines = (ROOT / "tests/deploy/tls/wxrelay.test.key").read_text().splitlines()
        tls_key = key_lines[len(key_lines) // 2]
        shown = leaked(first + second, {**secrets, "the TLS key (tests/deploy/tls)": tls_key})
        if shown:
            raise RehearsalError(f"Ansible's output (converge-*.log) shows {', '.join(shown)}")
        log("no secret of the vault in Ansible's output (--diff)")
        recap = recap_counts(second)
        log("second converge recap: " + ", ".join(f"{host}: changed={c['changed']}" for host, c in recap.items()))
        changed = {host: counts for host, counts in recap.items() if counts["changed"] or counts["failed"]}
        if not recap or changed:
            tasks = "\n".join(changed_tasks(second))
            raise RehearsalError(f"the second converge was not idempotent: {changed or 'no recap'}\n{tasks}")
        with self.timings.step("third converge (an account added)"):
            third = self.reload_accounts()
        shown = leaked(third, secrets)
        if shown:
            raise RehearsalError(f"Ansible's output (converge-3.log) shows {', '.join(shown)}")
        target = e2e.Target(
            url=f"http://{GUEST_ADDRESS}",
            https=f"https://{GUEST_ADDRESS}",
            secrets=secrets,
            certificate=ROOT / "tests/deploy/tls/wxrelay.test.crt",
            shell=self.ssh,
            address=GUEST_ADDRESS,
            source=HOST_ADDRESS,
        )
        with self.timings.step("end-to-end checks"):
            e2e.run_checks(target)
        with self.timings.step("make doctor"):
            self.doctor()
        with self.timings.step("host restarted mid-traffic"):
            self.restart = HostRestart(self.container, HOST_LINK, target, HOST_ADDRESS).rehearse()
        self.timings.add("  power cut → healthy", self.restart.healthy)
        self.timings.add("  power cut → last message answered", self.restart.answered)
        log(f"host restarted mid-traffic: {self.restart.describe()}")
        if not self.restart.ok:
            raise RehearsalError(f"host restarted mid-traffic: {self.restart.describe()}")

    def reload_accounts(self) -> str:
        """An account added to wxrelay_accounts: the deploy changes the accounts file and
        reloads (the relays on SIGHUP, the same processes; the workers restarted), no restart
        of everything; the new account answers."""
        listed = yaml.safe_load((INVENTORY / "group_vars/all/vars.yml").read_text())["wxrelay_accounts"]
        extra = self.work / "more-accounts.json"
        extra.write_text(json.dumps({"wxrelay_accounts": [*listed, ADDED_ACCOUNT]}))
        before = self.program_pids()
        output = self.deploy("converge-3", f"-e @{extra}")
        after = self.program_pids()
        tasks = changed_tasks(output)
        expected = ("TASK [app : Write the accounts file]", "RUNNING HANDLER [supervisor : Reload wxrelay accounts]")
        unexpected = [line for line in tasks if not line.strip().startswith(expected)]
        if unexpected or not tasks:
            raise RehearsalError("adding an account changed more than the accounts file:\n" + "\n".join(tasks))
        relays = {name for name in before if name.startswith("wxrelay-relay:")}
        restarted = sorted(name for name in relays if after.get(name) != before[name])
        if restarted or not relays:
            raise RehearsalError(f"adding an account restarted relays {restarted} (SIGHUP should do): {before} {after}")
        workers = sorted(set(before) - relays)
        kept = [name for name in workers if after.get(name) == before[name]]
        if kept or not workers:
            raise RehearsalError(f"adding an account left workers {kept} with the old accounts: {before} {after}")
        log(f"an account added: {len(relays)} relays reloaded (same processes), {len(workers)} workers restarted")
        token = e2e.read_vault(VAULT, VAULT_PASSWORD)["vault_wxrelay_late_token"]
        result = e2e.WeChatSimulator(f"http://{GUEST_ADDRESS}/wechat/late", token, deadline=5.0).say("hello late")
        match = e2e.ECHO.match(result.text or "")
        if not (result.answered and match and match["text"] == "hello late"):
            raise RehearsalError(f"/wechat/late, the account added: {result.attempts} {result.text!r}")
        log("the account added answers on /wechat/late")
        return output

    def program_pids(self) -> dict[str, str]:
        """Each wxrelay process supervisor runs, and its pid."""
        status = self.ssh("sudo supervisorctl status", check=False).stdout
        pids = {}
        for line in status.splitlines():
            match = re.match(r"^(wxrelay-\S+)\s+RUNNING\s+pid (\d+),", line)
            if match:
                pids[match.group(1)] = match.group(2)
        return pids

    def teardown(self) -> None:
        with self.timings.step("teardown"):
            try:
                self.container.power_off()
            finally:
                self.network.down()
                if self.keep:
                    log(f"kept {self.work} (--keep)")
                elif not self.container.running:
                    shutil.rmtree(self.work, ignore_errors=True)
                else:
                    log(f"the container did not stop: left {self.work} in place")


def leaked(output: str, secrets: dict[str, str]) -> list[str]:
    """The names of the secrets that output shows, and of the Redis passwords' hashes
    (what redis.conf holds): names only, never the values."""
    found = []
    for name, value in sorted(secrets.items()):
        if name in PUBLIC or not value:
            continue
        if value in output:
            found.append(name)
        if name.startswith("vault_wxrelay_redis_") and hashlib.sha256(value.encode()).hexdigest() in output:
            found.append(f"the SHA-256 of {name}")
    return found


def main(argv: list[str] | None = None) -> int:
    return session.main(
        argv,
        prog="rehearse",
        description=__doc__.splitlines()[0],
        title="rehearsal",
        lock=LOCK,
        prefix="wxrelay-rehearse-",
        rehearsal=Rehearsal,
    )


if __name__ == "__main__":
    sys.exit(main())
