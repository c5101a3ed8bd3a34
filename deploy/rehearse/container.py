"""A fresh Debian 12 "VPS": a tree debootstrapped (or copied), booted with real
systemd by systemd-nspawn in a network namespace of its own (deploy/rehearse/network.py),
reached over ssh as a sudoer with a key, as cloud images have, and powered off from inside.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from deploy.rehearse.commands import RehearsalError, log, run

ADMIN = "admin"
RELEASE = "bookworm"
MIRROR = os.environ.get("WXRELAY_REHEARSE_MIRROR", "http://deb.debian.org/debian")
# What a fresh cloud VPS has: systemd, ssh, sudo. Not Python: the playbook's
# first play installs it.
PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,sudo,ca-certificates,iproute2"
BOOT_WITHIN = 120.0
REQUIRED = ("systemd-nspawn", "debootstrap", "nft", "ip", "ssh", "ssh-keygen", "nsenter", "make", "chroot")


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


def base_tree(rootfs: Path, cache: Path | None) -> None:
    """Debootstrap a minimal Debian 12 into rootfs, or copy the one kept in cache (WXRELAY_REHEARSE_BASE_CACHE)."""
    if cache is not None and (cache / "etc/os-release").is_file():
        log(f"copying the base tree from {cache} (WXRELAY_REHEARSE_BASE_CACHE)")
        copy_tree(cache, rootfs)
        return
    run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", RELEASE, str(rootfs), MIRROR], timeout=900)
    if cache is not None:
        copy_tree(rootfs, cache)


def copy_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", f"{source}/.", str(target)], timeout=300)


def own_cgroups(name: str) -> list[Path]:
    """A cgroup named `name` under this process's, in each hierarchy systemd keeps its units in.

    Why: systemd-nspawn --keep-unit boots the container in the cgroup it is started in, and the
    container's systemd takes that cgroup for its own tree (system.slice/…). Two containers started
    from one process would share it: the units of one would land in the cgroups of the other
    (their control processes then fail with status 219/CGROUP)."""
    paths = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "name=systemd":
            mount = Path("/sys/fs/cgroup/systemd")
        elif controllers == "":
            unified = Path("/sys/fs/cgroup/unified")
            mount = unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
        else:
            continue
        cgroup = mount / path.lstrip("/") / name
        cgroup.mkdir(exist_ok=True)
        paths.append(cgroup)
    return paths


def remove_cgroups(paths: list[Path]) -> None:
    """What the container's systemd left under its cgroups, deepest first (an empty cgroup is removed by rmdir)."""
    for cgroup in paths:
        for folder, _, _ in sorted(os.walk(cgroup), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def make_key(path: Path) -> None:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wxrelay-rehearsal", "-f", str(path)])


class Container:
    def __init__(self, machine: str, rootfs: Path, netns: str, address: str, key: Path, console: Path) -> None:
        self.machine, self.rootfs, self.netns, self.address = machine, rootfs, netns, address
        self.key, self.console = key, console
        self.nspawn: subprocess.Popen | None = None
        self.cgroups: list[Path] = []

    def prepare(self) -> None:
        """The tree as a provider hands a new VPS over: its name, apt sources, resolver, an admin with a key."""
        etc = self.rootfs / "etc"
        (etc / "hostname").write_text(f"{self.machine}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.machine}\n::1 localhost ip6-localhost\n")
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
        run(["chroot", str(self.rootfs), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", ADMIN])
        (etc / "sudoers.d" / ADMIN).write_text(f"{ADMIN} ALL=(ALL) NOPASSWD:ALL\n")
        (etc / "sudoers.d" / ADMIN).chmod(0o440)
        ssh = self.rootfs / "home" / ADMIN / ".ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        run(["chroot", str(self.rootfs), "chown", "-R", f"{ADMIN}:{ADMIN}", f"/home/{ADMIN}/.ssh"])

    @property
    def running(self) -> bool:
        return self.nspawn is not None and self.nspawn.poll() is None

    def boot(self) -> None:
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={self.rootfs}",
            f"--machine={self.machine}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            # A VPS's root may set its firewall: the namespace is the container's own.
            "--capability=CAP_NET_ADMIN",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=pipe",
        ]
        self.cgroups = own_cgroups(f"wxrelay-{self.machine}")
        # A shell moves itself into the cgroups, then becomes systemd-nspawn (no preexec_fn: threads run here).
        enter = "".join(f'echo $$ > "{cgroup}/cgroup.procs" && ' for cgroup in self.cgroups)
        with open(self.console, "ab") as out:
            self.nspawn = subprocess.Popen(
                ["sh", "-c", f'{enter}exec "$@"', "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + BOOT_WITHIN
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RehearsalError(
                    f"systemd-nspawn {self.machine} exited ({self.nspawn.returncode}):\n{self.console.read_text()}"
                )
            if self.ssh("true", check=False, timeout=10).returncode == 0:
                return
            time.sleep(1)
        raise RehearsalError(f"{self.machine}'s ssh did not answer within {BOOT_WITHIN:.0f} s")

    def init_pid(self) -> int | None:
        if not self.running:
            return None
        assert self.nspawn is not None
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def power_off(self) -> None:
        """As the container's own root: systemd stops every service in order (workers finish what they hold)."""
        if self.running:
            self.stop()
        if not self.running:
            remove_cgroups(self.cgroups)

    def crash(self) -> None:
        """Every process of the container SIGKILLed at once, its systemd and systemd-nspawn included: a
        provider's hard reset or a power cut, as near as a container comes (its disk and its host's page
        cache survive; a real power cut loses what was not yet synced).

        Why cgroup.kill: the kernel kills the whole tree in one step and nothing forks out of it meanwhile,
        so no process sees another die and acts on it: no shutdown in order, no unit restarted, no last
        write. A SIGKILL to systemd-nspawn alone takes the container down in a cascade (its init on the
        parent's death, then the rest with their namespace's init); a SIGKILL per pid leaves the last
        ones a moment to see the first go; `machinectl terminate` (for a registered machine) sends SIGTERM
        first, a chance to shut down that a power cut does not give."""
        killers = [cgroup / "cgroup.kill" for cgroup in self.cgroups if (cgroup / "cgroup.kill").exists()]
        if not self.running or not killers:
            raise RehearsalError(f"cannot crash {self.machine}: not running, or no cgroup.kill (Linux 5.14+)")
        killers[0].write_text("1\n")
        assert self.nspawn is not None
        self.nspawn.wait(30)
        # The kill is delivered as each process is next scheduled: dead once the cgroup is empty.
        events = killers[0].with_name("cgroup.events")
        deadline = time.monotonic() + 30
        while "populated 1" in events.read_text():
            if time.monotonic() > deadline:
                raise RehearsalError(f"{self.machine}: processes left in {events.parent} 30 s after cgroup.kill")
            time.sleep(0.05)
        remove_cgroups(self.cgroups)

    def stop(self) -> None:
        assert self.nspawn is not None
        init = self.init_pid()
        if init is not None:
            run(
                ["nsenter", f"--target={init}", "--mount", "--uts", "--ipc", "--net", "--pid", "systemctl", "poweroff"],
                check=False,
                timeout=30,
            )
        for sig, wait in ((None, 120), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if sig is not None and self.nspawn.poll() is None:
                log(f"{self.machine} is still up: sending {sig.name} to systemd-nspawn")
                os.killpg(self.nspawn.pid, sig)
            try:
                self.nspawn.wait(wait)
                break
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
            f"{ADMIN}@{self.address}",
            command,
        ]
        return run(argv, check=check, timeout=timeout, input=input)
