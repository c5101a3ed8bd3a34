"""Which accelerator a VM gets here: KVM if /dev/kvm really boots a guest, else TCG (QEMU's emulation).

/dev/kvm being there proves little: a nested or paravirtual KVM may open and still fail to run a
guest's CPU (kvm_pvm: "failed to set MSR 0x10a" with -cpu host). So the probe boots one: a 512-byte
boot sector that writes to QEMU's isa-debug-exit port, which ends QEMU with a known status.
WXRELAY_VM_ACCEL=kvm|tcg overrides it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

QEMU = "qemu-system-x86_64"
DEBUG_EXIT_PORT = 0xF4
# QEMU exits with (value << 1) | 1 for a value written to isa-debug-exit.
VALUE = 0x10
BOOTED = (VALUE << 1) | 1
# mov al, VALUE; out DEBUG_EXIT_PORT, al; hlt; jmp $-1 (16-bit real mode, where the BIOS starts a boot sector).
CODE = bytes([0xB0, VALUE, 0xE6, DEBUG_EXIT_PORT, 0xF4, 0xEB, 0xFD])
BOOT_SECTOR = CODE.ljust(510, b"\0") + b"\x55\xaa"
WITHIN = 30.0


def boots(accel: str, cpu: str) -> str | None:
    """None if QEMU with this accelerator and CPU runs the boot sector to its end, else why not."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        return f"{QEMU} is missing (apt-get install qemu-system-x86)"
    with tempfile.TemporaryDirectory(prefix="wxrelay-accel-") as work:
        disk = Path(work) / "boot.img"
        disk.write_bytes(BOOT_SECTOR)
        argv = [
            qemu,
            *("-accel", accel, "-cpu", cpu, "-m", "16", "-nodefaults", "-display", "none", "-no-reboot"),
            *("-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1"),
            *("-drive", f"file={disk},format=raw,if=ide"),
        ]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=WITHIN)
        except subprocess.TimeoutExpired:
            return f"{QEMU} -accel {accel} -cpu {cpu} did not run a boot sector to its end within {WITHIN:.0f} s"
    if result.returncode == BOOTED:
        return None
    said = (result.stderr.strip().splitlines() or ["nothing"])[-1]
    return f"{QEMU} -accel {accel} -cpu {cpu} failed to boot a boot sector (exit {result.returncode}): {said}"


def probe() -> tuple[str, str]:
    """("kvm" or "tcg", why)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    failure = boots("kvm", "host")
    if failure:
        return "tcg", failure
    return "kvm", "/dev/kvm boots a guest (-cpu host)"


def choose() -> tuple[str, str]:
    """The accelerator to use, WXRELAY_VM_ACCEL first, and why."""
    forced = os.environ.get("WXRELAY_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "WXRELAY_VM_ACCEL"
    if forced:
        raise ValueError(f"WXRELAY_VM_ACCEL={forced}: kvm or tcg only")
    return probe()


if __name__ == "__main__":
    print(*probe())
