"""`make rehearse-vm`: the repository's Vagrantfile for real, with libvirt, then nothing left of it.

1. libvirtd and virtlogd started if they are not running (and stopped after, by PID, if so);
2. the local box built if missing (`make box`, deploy/vagrant/build-box);
3. `vagrant up --provider=libvirt`: a Debian 12 VM booted and provisioned with the playbook;
4. end-to-end checks through the VM's nginx from this machine (deploy/rehearse/e2e.py): URL
   verification, the three modes, the accounts, allowed sources, closed ports, HTTPS;
5. `vagrant provision` again: its recap must say changed=0;
6. `vagrant destroy -f`, then nothing of the VM left: no libvirt domain, no volume of it in any
   pool, the vagrant-libvirt network gone if this run made it, no machine state in .vagrant.

Vagrant runs on a copy of the project in a work folder (its .vagrant too): a user's own `vagrant up`
in the checkout is not touched, and edits made meanwhile do not change what is deployed.
The accelerator is KVM if /dev/kvm really boots a guest, else TCG (deploy/vagrant/accel.py);
WXRELAY_VM_ACCEL=kvm|tcg forces one. Everything is torn down on failure and on SIGTERM too.
--keep keeps the work folder (the logs, the VM's console) afterwards.
"""

from __future__ import annotations

import argparse
import fcntl
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

from deploy.rehearse import e2e  # noqa: E402
from deploy.rehearse.commands import RehearsalError  # noqa: E402
from deploy.rehearse.recap import changed_tasks, recap_counts  # noqa: E402
from deploy.rehearse.rehearse import leaked  # noqa: E402
from deploy.rehearse.timings import Timings  # noqa: E402
from deploy.vagrant import accel  # noqa: E402

# The copy's folder name: vagrant-libvirt names the domain <folder>_<machine>.
PROJECT = "wxrelay-vm-rehearsal"
DOMAIN = f"{PROJECT}_default"
NETWORK = "vagrant-libvirt"
GATEWAY = "192.168.121.1"  # LIBVIRT_NETWORK in the Vagrantfile
LIBVIRT = "qemu:///system"
LOCK = Path("/run/lock/wxrelay-rehearse-vm.lock")
INVENTORY = ROOT / "tests/deploy/inventory"
VAULT = INVENTORY / "group_vars/all/vault.yml"
VAULT_PASSWORD = ROOT / "tests/deploy/vault-password"
REQUIRED = ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "ssh", "make")
# What a VM checked from outside can show (the rest of e2e.CHECKS is the container rehearsal's).
CHECKS = (
    e2e.check_url_verification,
    e2e.check_allowed_sources,
    e2e.check_modes,
    e2e.check_bad_signature,
    e2e.check_accounts,
    e2e.check_accounts_keep_to_their_keys,
    e2e.check_wecom_message,
    e2e.check_closed_from_outside,
    e2e.check_https,
)
# A TCG guest runs some ten times slower than a KVM one.
PHASE_TIMEOUT = {"kvm": 20 * 60, "tcg": 90 * 60}


def log(message: str) -> None:
    print(f"[rehearse-vm {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv: list[str], *, check: bool = True, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RehearsalError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def virsh(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return run(["virsh", "-c", LIBVIRT, *args], check=check)


def missing_requirements() -> str | None:
    """Why this machine cannot rehearse with a VM, or None."""
    if os.geteuid() != 0:
        return "the VM rehearsal needs root (libvirtd, the box's loop devices)"
    missing = [tool for tool in REQUIRED if not shutil.which(tool)]
    if missing:
        return (
            f"missing {', '.join(missing)}: apt-get install --no-install-recommends vagrant vagrant-libvirt "
            "libvirt-daemon-system qemu-system-x86 qemu-utils dnsmasq-base"
        )
    if "vagrant-libvirt" not in run(["vagrant", "plugin", "list"], check=False).stdout:
        return "Vagrant lacks its libvirt provider: apt-get install vagrant-libvirt"
    if not (Path(sys.prefix) / "bin/ansible-playbook").exists():
        return f"ansible-playbook is not in {sys.prefix}/bin: make deploy-tools"
    return None


class Daemon:
    """libvirtd or virtlogd, where no systemd starts it: started here if it does not run, stopped after by its PID."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pidfile = Path(f"/run/{name}.pid")
        self.started: int | None = None

    def running(self) -> bool:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return Path(f"/proc/{pid}/comm").read_text().strip() == self.name

    def ensure(self) -> None:
        # Under systemd their sockets start them on demand.
        if Path("/run/systemd/system").is_dir() or self.running():
            return
        run([self.name, "--daemon"])
        deadline = time.monotonic() + 30
        while not self.running():
            if time.monotonic() > deadline:
                raise RehearsalError(f"{self.name} did not start: no live process in {self.pidfile}")
            time.sleep(0.2)
        self.started = int(self.pidfile.read_text())
        log(f"started {self.name} (pid {self.started}); it is stopped at the end")

    def stop(self) -> None:
        if self.started is None:
            return
        os.kill(self.started, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{self.started}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        log(f"stopped {self.name} (pid {self.started})")
        self.started = None


class VMRehearsal:
    def __init__(self, work: Path, accelerator: str, keep: bool) -> None:
        self.work = work
        self.project = work / PROJECT
        self.accel = accelerator
        self.keep = keep
        self.timings = Timings()
        self.daemons = [Daemon("virtlogd"), Daemon("libvirtd")]
        self.network_existed = True
        self.upped = False
        self.env = {
            **os.environ,
            "WXRELAY_VM_ACCEL": accelerator,
            "WXRELAY_VM_SERIAL_LOG": str(work / "console.log"),
            "ANSIBLE_PLAYBOOK": str(Path(sys.prefix) / "bin/ansible-playbook"),
            # Vagrant asks `ansible --version` too.
            "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '')}",
            "ANSIBLE_FORCE_COLOR": "0",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        }
        self.ssh_argv: list[str] = []
        self.address = ""

    # --- the machine -------------------------------------------------------------------------

    def prepare(self) -> None:
        ignore = shutil.ignore_patterns(
            ".git", ".venv", "build", ".state", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", ".vagrant"
        )
        shutil.copytree(ROOT, self.project, ignore=ignore, symlinks=True)
        for daemon in self.daemons:
            daemon.ensure()
        self.network_existed = virsh("net-info", NETWORK).returncode == 0
        stale = virsh("dominfo", DOMAIN).returncode == 0
        if stale:
            log(f"removing the domain {DOMAIN} an interrupted rehearsal left")
            self.remove_domain()

    def vagrant(self, name: str, *args: str) -> tuple[str, dict[str, float]]:
        """`vagrant ARGS` in the copy, its output in NAME.log; the output, and when its provisioner started."""
        log_path = self.work / f"{name}.log"
        started = time.monotonic()
        marks: dict[str, float] = {}
        with open(log_path, "w", buffering=1) as out:  # line by line: the log is the way to follow it
            process = subprocess.Popen(
                ["vagrant", *args],
                cwd=self.project,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    out.write(line)
                    if "Running provisioner: ansible" in line:
                        marks["provisioner"] = time.monotonic() - started
                returncode = process.wait(timeout=PHASE_TIMEOUT[self.accel])
            except BaseException:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
                raise
        output = log_path.read_text()
        if returncode != 0:
            raise RehearsalError(f"vagrant {' '.join(args)} failed ({returncode}); {log_path}:\n{output[-6000:]}")
        return output, marks

    def connect(self) -> None:
        """The VM's address and an ssh command line to it, from `vagrant ssh-config`."""
        config = dict(
            line.strip().split(" ", 1)
            for line in run(["vagrant", "ssh-config"], cwd=self.project, env=self.env).stdout.splitlines()
            if line.strip() and " " in line.strip()
        )
        self.address = config["HostName"]
        self.ssh_argv = [
            "ssh",
            *("-i", config["IdentityFile"].strip('"'), "-p", config["Port"]),
            *("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"),
            f"{config['User']}@{self.address}",
        ]

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """`command` as the vagrant user; secrets go in on `input`, never in the command line."""
        return run([*self.ssh_argv, command], check=check, timeout=timeout, input=input)

    def remove_domain(self) -> None:
        virsh("destroy", DOMAIN)
        virsh("undefine", DOMAIN, "--remove-all-storage")

    # --- the rehearsal -----------------------------------------------------------------------

    def rehearse(self) -> dict[str, dict[str, int]]:
        with self.timings.step("libvirt ready, project copied"):
            self.prepare()
        with self.timings.step("make box (skipped if installed)"):
            # For root's Vagrant, which runs the VM here, even under sudo.
            env = {name: value for name, value in os.environ.items() if name != "SUDO_USER"}
            box = subprocess.run(
                [str(ROOT / "deploy/vagrant/build-box")], text=True, capture_output=True, timeout=1800, env=env
            )
            print(box.stdout, end="", flush=True)
            if box.returncode != 0:
                raise RehearsalError(f"deploy/vagrant/build-box failed ({box.returncode}):\n{box.stdout}{box.stderr}")
        started = time.monotonic()
        self.upped = True
        first, marks = self.vagrant("up", "up", "--provider=libvirt")
        boot = marks.get("provisioner", time.monotonic() - started)
        self.timings.steps.append(("vagrant up: boot", boot))
        self.timings.steps.append(("vagrant up: first provision", time.monotonic() - started - boot))
        counts = {"first provision": recap_counts(first)["default"]}
        self.connect()
        log(f"the VM is up at {self.address} ({self.accel}); first provision: changed={counts['first provision']}")
        secrets = e2e.read_vault(VAULT, VAULT_PASSWORD)
        target = e2e.Target(
            url=f"http://{self.address}",
            https=f"https://{self.address}",
            secrets=secrets,
            certificate=ROOT / "tests/deploy/tls/wxrelay.test.crt",
            shell=self.ssh,
            address=self.address,
            source=GATEWAY,
        )
        with self.timings.step("end-to-end checks through nginx"):
            for check in CHECKS:
                check(target)
        with self.timings.step("vagrant provision (again)"):
            second, _ = self.vagrant("provision", "provision")
        recap = recap_counts(second)
        counts["second provision"] = recap.get("default", {})
        log(f"second provision: {counts['second provision']}")
        if not recap.get("default") or recap["default"]["changed"] or recap["default"]["failed"]:
            tasks = "\n".join(changed_tasks(second))
            raise RehearsalError(f"the second provision was not idempotent: {recap or 'no recap'}\n{tasks}")
        shown = leaked(first + second, secrets)
        if shown:
            raise RehearsalError(f"Vagrant's output (up.log, provision.log) shows {', '.join(shown)}")
        with self.timings.step("vagrant destroy"):
            self.vagrant("destroy", "destroy", "-f")
            self.upped = False
            self.remove_network()
        left = self.leftovers()
        if left:
            raise RehearsalError("vagrant destroy left: " + "; ".join(left))
        log("nothing left: no domain, no volume of it, no network this run made, no machine state")
        return counts

    def remove_network(self) -> None:
        """The management network vagrant-libvirt made, if this run made it (another VM may use one already there)."""
        if not self.network_existed and virsh("net-info", NETWORK).returncode == 0:
            virsh("net-destroy", NETWORK)
            virsh("net-undefine", NETWORK)

    def leftovers(self) -> list[str]:
        left = []
        if virsh("dominfo", DOMAIN).returncode == 0:
            left.append(f"the domain {DOMAIN}")
        for pool in virsh("pool-list", "--all", "--name").stdout.split():
            volumes = virsh("vol-list", pool).stdout
            left += [f"the volume {name} in pool {pool}" for name in re.findall(rf"^\s*({DOMAIN}\S*)", volumes, re.M)]
        if not self.network_existed and virsh("net-info", NETWORK).returncode == 0:
            left.append(f"the network {NETWORK}")
        if not self.network_existed and dnsmasq_running(Path(f"/run/libvirt/network/{NETWORK}.pid")):
            left.append(f"the dnsmasq of {NETWORK}")
        state = sorted(p.name for p in (self.project / ".vagrant/machines").rglob("*") if p.is_file())
        if state:
            left.append(f"machine state in .vagrant/machines: {state}")
        return left

    def teardown(self) -> None:
        with self.timings.step("teardown"):
            try:
                if self.upped:
                    destroyed = subprocess.run(
                        ["vagrant", "destroy", "-f"], cwd=self.project, env=self.env, capture_output=True, timeout=300
                    )
                    if destroyed.returncode != 0 or virsh("dominfo", DOMAIN).returncode == 0:
                        self.remove_domain()
                    self.remove_network()
            finally:
                for daemon in reversed(self.daemons):
                    daemon.stop()
                if self.keep:
                    log(f"kept {self.work} (--keep)")
                else:
                    shutil.rmtree(self.work, ignore_errors=True)


def dnsmasq_running(pidfile: Path) -> bool:
    """Whether the dnsmasq a pid file names still runs: libvirt leaves the file behind (dnsmasq, no
    longer root, cannot remove it), so the file alone says nothing."""
    try:
        pid = int(pidfile.read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rehearse-vm", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, console) afterwards")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"rehearse-vm: cannot run here: {reason}", file=sys.stderr)
        return 2
    accelerator, why = accel.choose()
    # SIGTERM (a CI timeout, a test runner) tears down like a failure does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log(f"accelerator: {accelerator} ({why})")
        started = time.monotonic()
        rehearsal = VMRehearsal(Path(tempfile.mkdtemp(prefix="wxrelay-vm-", dir="/var/tmp")), accelerator, args.keep)
        counts: dict[str, dict[str, int]] = {}
        try:
            counts = rehearsal.rehearse()
        except (RehearsalError, e2e.CheckFailed, subprocess.TimeoutExpired, KeyError) as exc:
            print(f"\nrehearse-vm: FAILED: {exc}", file=sys.stderr)
            rehearsal.keep = True
        finally:
            rehearsal.teardown()
        total = time.monotonic() - started
        print(f"\nVM rehearsal ({accelerator}) {'passed' if counts else 'FAILED'} in {total:.0f} s:")
        print(rehearsal.timings.report())
        for name, recap in counts.items():
            print(f"  {name:<34} " + " ".join(f"{key}={value}" for key, value in recap.items()))
        return 0 if counts else 1


if __name__ == "__main__":
    sys.exit(main())
