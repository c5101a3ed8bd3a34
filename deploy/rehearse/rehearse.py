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
   the host's hardening from inside it (deploy/rehearse/e2e.py).

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

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from deploy.rehearse import e2e  # noqa: E402

# Names of everything the rehearsal creates on this machine; the lock makes
# sure only one rehearsal uses them at a time.
NETNS = "wxrelay-rehearse"
HOST_IF, GUEST_IF = "wxr-host", "wxr-guest"
# As in tests/deploy/inventory: hosts.yml (the guest), group_vars (the host, the one allowed source).
HOST_ADDRESS, GUEST_ADDRESS, PREFIX = "10.213.77.1", "10.213.77.2", 30
NFT_TABLE = "wxrelay_rehearse"
LOCK = Path("/run/lock/wxrelay-rehearse.lock")
MACHINE = "wxrelay-rehearsal"
ADMIN = "admin"

INVENTORY = ROOT / "tests/deploy/inventory"
VAULT_PASSWORD = ROOT / "tests/deploy/vault-password"
VAULT = INVENTORY / "group_vars/all/vault.yml"
RELEASE = "bookworm"
MIRROR = os.environ.get("WXRELAY_REHEARSE_MIRROR", "http://deb.debian.org/debian")
# What a fresh cloud VPS has: systemd, ssh, sudo. Not Python: the playbook's
# first play installs it.
PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,sudo,ca-certificates,iproute2"
REQUIRED = ("systemd-nspawn", "debootstrap", "nft", "ip", "ssh", "ssh-keygen", "nsenter", "make", "chroot")
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


class RehearsalError(Exception):
    pass


def log(message: str) -> None:
    print(f"[rehearse {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv: list[str], *, check: bool = True, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RehearsalError(
            f"{' '.join(map(str, argv))} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def missing_requirements() -> str | None:
    """Why this machine cannot rehearse, or None."""
    if os.geteuid() != 0:
        return "the rehearsal needs root (systemd-nspawn, network namespaces)"
    missing = [tool for tool in REQUIRED if not shutil.which(tool)]
    if missing:
        return (
            f"missing {', '.join(missing)}: apt-get install systemd-container debootstrap nftables "
            "iproute2 openssh-client util-linux make"
        )
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system for systemd-nspawn"
    return None


class Timings:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def report(self) -> str:
        return "\n".join(f"  {name:<34} {seconds:7.1f} s" for name, seconds in self.steps)


class _Step:
    def __init__(self, timings: Timings, name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        log(f"{self.name} …")
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self.started
        self.timings.steps.append((self.name, seconds))
        log(f"{self.name}: {seconds:.1f} s{' (failed)' if exc[0] else ''}")


class Rehearsal:
    def __init__(self, work: Path, keep: bool, base_cache: Path | None) -> None:
        self.work = work
        self.rootfs = work / "rootfs"
        self.key = work / "id_ed25519"
        self.snapshot = work / "project"
        self.keep = keep
        self.base_cache = base_cache
        self.nspawn: subprocess.Popen | None = None
        self.nspawn_log = work / "nspawn.log"
        self.forwarding: str | None = None
        self.timings = Timings()

    # --- the fresh VPS -------------------------------------------------------

    def build_tree(self) -> None:
        if self.base_cache is not None and (self.base_cache / "etc/os-release").is_file():
            log(f"copying the base tree from {self.base_cache} (WXRELAY_REHEARSE_BASE_CACHE)")
            run(["cp", "-a", f"{self.base_cache}/.", str(self.rootfs)], timeout=300)
            return
        run(
            ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", RELEASE, str(self.rootfs), MIRROR],
            timeout=900,
        )
        if self.base_cache is not None:
            self.base_cache.mkdir(parents=True, exist_ok=True)
            run(["cp", "-a", f"{self.rootfs}/.", str(self.base_cache)], timeout=300)

    def prepare_tree(self) -> None:
        etc = self.rootfs / "etc"
        (etc / "hostname").write_text(f"{MACHINE}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {MACHINE}\n::1 localhost ip6-localhost\n")
        security = MIRROR.rstrip("/").removesuffix("/debian") + "/debian-security"
        (etc / "apt/sources.list").write_text(
            f"deb {MIRROR} {RELEASE} main\ndeb {MIRROR} {RELEASE}-updates main\n"
            f"deb {security} {RELEASE}-security main\n"
        )
        # The host's resolver, reached through the masquerade.
        resolv = etc / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)
        # The machine id is made at first boot, as on a new VPS.
        (etc / "machine-id").write_text("")
        # A sudoer that logs in with a key, as cloud images have.
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wxrelay-rehearsal", "-f", str(self.key)])
        run(["chroot", str(self.rootfs), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", ADMIN])
        (etc / "sudoers.d" / ADMIN).write_text(f"{ADMIN} ALL=(ALL) NOPASSWD:ALL\n")
        (etc / "sudoers.d" / ADMIN).chmod(0o440)
        ssh = self.rootfs / "home" / ADMIN / ".ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        run(["chroot", str(self.rootfs), "chown", "-R", f"{ADMIN}:{ADMIN}", f"/home/{ADMIN}/.ssh"])

    def snapshot_project(self) -> None:
        """The code deployed, copied once: edits made meanwhile do not change it."""
        ignore = shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            ".state",
            "__pycache__",
            "*.pyc",
            ".pytest_cache",
            ".hypothesis",
            ".ruff_cache",
            ".vagrant",
            "*.egg-info",
        )
        shutil.copytree(ROOT, self.snapshot, ignore=ignore, symlinks=True)

    # --- its network -----------------------------------------------------------

    def clean_stale_network(self) -> None:
        """What an interrupted rehearsal left (we hold the lock: no other one runs)."""
        if run(["ip", "netns", "list"]).stdout.split().count(NETNS):
            log(f"removing the network namespace {NETNS} an interrupted rehearsal left")
            run(["ip", "netns", "delete", NETNS], check=False)
        if run(["ip", "link", "show", HOST_IF], check=False).returncode == 0:
            run(["ip", "link", "delete", HOST_IF], check=False)
        if run(["nft", "list", "table", "ip", NFT_TABLE], check=False).returncode == 0:
            run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)

    def network_up(self) -> None:
        self.clean_stale_network()
        run(["ip", "netns", "add", NETNS])
        run(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", GUEST_IF])
        run(["ip", "link", "set", GUEST_IF, "netns", NETNS])
        run(["ip", "address", "add", f"{HOST_ADDRESS}/{PREFIX}", "dev", HOST_IF])
        run(["ip", "link", "set", HOST_IF, "up"])
        inside = ["ip", "-n", NETNS]
        run([*inside, "address", "add", f"{GUEST_ADDRESS}/{PREFIX}", "dev", GUEST_IF])
        run([*inside, "link", "set", GUEST_IF, "up"])
        run([*inside, "link", "set", "lo", "up"])
        run([*inside, "route", "add", "default", "via", HOST_ADDRESS])
        subnet = f"{HOST_ADDRESS.rsplit('.', 1)[0]}.0/{PREFIX}"
        ruleset = (
            f"table ip {NFT_TABLE} {{\n"
            f"  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {subnet} oifname != "{HOST_IF}" masquerade\n  }}\n}}\n'
        )
        run(["nft", "-f", "-"], input=ruleset)
        forwarding = Path("/proc/sys/net/ipv4/ip_forward")
        self.forwarding = forwarding.read_text().strip()
        forwarding.write_text("1\n")

    def network_down(self) -> None:
        run(["ip", "netns", "delete", NETNS], check=False)  # takes the veth pair with it
        if run(["ip", "link", "show", HOST_IF], check=False).returncode == 0:
            run(["ip", "link", "delete", HOST_IF], check=False)
        run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
        if self.forwarding is not None:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(f"{self.forwarding}\n")

    # --- the container ------------------------------------------------------------

    def boot(self) -> None:
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={self.rootfs}",
            f"--machine={MACHINE}",
            f"--network-namespace-path=/run/netns/{NETNS}",
            # A VPS's root may set its firewall: the namespace is the container's own.
            "--capability=CAP_NET_ADMIN",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=pipe",
        ]
        with open(self.nspawn_log, "wb") as out:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RehearsalError(
                    f"systemd-nspawn exited ({self.nspawn.returncode}):\n{self.nspawn_log.read_text()}"
                )
            if self.ssh("true", check=False, timeout=10).returncode == 0:
                return
            time.sleep(1)
        raise RehearsalError("the container's ssh did not answer within 90 s")

    def container_init(self) -> int | None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return None
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def power_off(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        init = self.container_init()
        if init is not None:
            # As the container's own root: systemd stops every service in order.
            run(
                ["nsenter", f"--target={init}", "--mount", "--uts", "--ipc", "--net", "--pid", "systemctl", "poweroff"],
                check=False,
                timeout=30,
            )
        for sig, wait in ((None, 60), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if sig is not None and self.nspawn.poll() is None:
                log(f"the container is still up: sending {sig.name} to systemd-nspawn")
                os.killpg(self.nspawn.pid, sig)
            try:
                self.nspawn.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """`command` as the admin user; secrets go in on `input`, never in the command line."""
        argv = [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            f"{ADMIN}@{GUEST_ADDRESS}",
            command,
        ]
        return run(argv, check=check, timeout=timeout, input=input)

    # --- the deploys -----------------------------------------------------------------

    def deploy(self, name: str, extra: str = "") -> str:
        returncode, output = self.make("deploy", name, extra)
        if returncode != 0:
            raise RehearsalError(f"{name} failed ({returncode}); its output:\n{output[-6000:]}")
        return output

    def make(self, target: str, name: str, extra: str = "") -> tuple[int, str]:
        """`make TARGET INVENTORY=...` against the container, as an operator runs it; its log is NAME.log."""
        argv = [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            target,
            f"VENV={sys.prefix}",
            f"INVENTORY={INVENTORY}",
            f"VAULT_PASSWORD_FILE={VAULT_PASSWORD}",
            # --diff as an operator upgrading would run it: the secrets must not show.
            f"ANSIBLE_ARGS=--diff -e app_project_dir={self.snapshot} {extra}".rstrip(),
        ]
        env = {**os.environ, "WXRELAY_REHEARSE_SSH_KEY": str(self.key), "ANSIBLE_FORCE_COLOR": "0"}
        output_path = self.work / f"{name}.log"
        with open(output_path, "w") as out:
            # A session of its own: on a failure or a signal, make and
            # ansible-playbook stop together, before the teardown.
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                returncode = process.wait(timeout=900)
            except BaseException:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise
        output = output_path.read_text()
        shutil.copyfile(output_path, Path(tempfile.gettempdir()) / f"wxrelay-rehearse-{name}.log")
        return returncode, output

    def doctor(self) -> None:
        """`make doctor INVENTORY=...`: on the host, every link it can check from there holds; what it cannot
        (WeChat's API, a closed port here; NTP, which no container runs) it names, and the run fails."""
        returncode, output = self.make("doctor", "doctor")
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
            self.build_tree()
        self.prepare_tree()
        self.snapshot_project()
        with self.timings.step("network and boot"):
            self.network_up()
            self.boot()
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
        with self.timings.step("end-to-end checks"):
            e2e.run_checks(
                e2e.Target(
                    url=f"http://{GUEST_ADDRESS}",
                    https=f"https://{GUEST_ADDRESS}",
                    secrets=secrets,
                    certificate=ROOT / "tests/deploy/tls/wxrelay.test.crt",
                    shell=self.ssh,
                    address=GUEST_ADDRESS,
                    source=HOST_ADDRESS,
                )
            )
        with self.timings.step("make doctor"):
            self.doctor()

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
                self.power_off()
            finally:
                self.network_down()
                if self.keep:
                    log(f"kept {self.work} (--keep)")
                elif self.nspawn is None or self.nspawn.poll() is not None:
                    shutil.rmtree(self.work, ignore_errors=True)
                else:
                    log(f"the container did not stop: left {self.work} in place")


def recap_counts(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host -> {ok, changed, unreachable, failed, ...}."""
    recap: dict[str, dict[str, int]] = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output.split("PLAY RECAP")[-1], re.MULTILINE):
        recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return recap


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


def changed_tasks(output: str) -> list[str]:
    task, found = "", []
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip("* ")
        elif line.startswith("changed:"):
            found.append(f"  {task}: {line}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rehearse", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, tree) afterwards")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"rehearse: cannot run here: {reason}", file=sys.stderr)
        return 2
    cache = os.environ.get("WXRELAY_REHEARSE_BASE_CACHE")
    # SIGTERM (a CI timeout, a test runner) tears down like a failure does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another rehearsal is running: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="wxrelay-rehearse-", dir="/var/tmp"))
        rehearsal = Rehearsal(work, args.keep, Path(cache) if cache else None)
        ok = False
        try:
            rehearsal.rehearse()
            ok = True
        except (RehearsalError, e2e.CheckFailed, subprocess.TimeoutExpired) as exc:
            print(f"\nrehearse: FAILED: {exc}", file=sys.stderr)
            rehearsal.keep = rehearsal.keep or bool(os.environ.get("WXRELAY_REHEARSE_KEEP_ON_FAILURE"))
        finally:
            rehearsal.teardown()
        total = time.monotonic() - started
        print(f"\nrehearsal {'passed' if ok else 'FAILED'} in {total:.0f} s:\n{rehearsal.timings.report()}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
