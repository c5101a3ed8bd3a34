"""The Vagrant rehearsal (Vagrantfile, deploy/vagrant): the Vagrantfile is valid, the KVM probe
boots its boot sector, and the VM rehearsal itself: `vagrant up` with libvirt, end-to-end checks,
`vagrant provision` with changed=0, `vagrant destroy` leaving nothing.

The VM rehearsal runs where /dev/kvm really boots a guest (deploy/vagrant/accel.py); elsewhere it
skips with the probe's reason, unless WXRELAY_VM_ACCEL=tcg forces the slow emulated run. Under CI
(the CI variable set, as .ci/run runs) a missing tool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.vagrant import accel

ROOT = Path(__file__).resolve().parent.parent
MANDATORY = bool(os.environ.get("CI"))
# The whole VM rehearsal with KVM; TCG emulates every instruction: over an hour on 2 shared cores.
REHEARSAL_TIMEOUT = {"kvm": 30 * 60, "tcg": 150 * 60}


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where .ci/run installs everything."""
    if MANDATORY:
        pytest.fail(f"{reason} (CI is set: .ci/run must provide it)")
    pytest.skip(reason)


def vagrant(*args: str, **env: str) -> subprocess.CompletedProcess:
    path = shutil.which("vagrant")
    if path is None:
        unavailable("vagrant is not installed (apt-get install --no-install-recommends vagrant)")
    return subprocess.run(
        [path, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", **env},
    )


def test_vagrantfile_is_valid() -> None:
    result = vagrant("validate", "--ignore-provider")
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"


def test_vagrantfile_refuses_an_unknown_accelerator_in_one_line() -> None:
    result = vagrant("validate", "--ignore-provider", WXRELAY_VM_ACCEL="hvf")
    assert result.returncode != 0
    assert result.stderr.strip() == "WXRELAY_VM_ACCEL=hvf: kvm (hardware virtualisation) or tcg (QEMU's emulation) only"


def test_the_probes_boot_sector_boots() -> None:
    """Emulated, the boot sector runs to its end: a failure under KVM is KVM's, not the sector's."""
    if shutil.which(accel.QEMU) is None:
        unavailable(f"{accel.QEMU} is missing (apt-get install qemu-system-x86)")
    assert accel.boots("tcg", "qemu64") is None


def test_vagrant_up_serves_wechat_provisions_idempotently_and_destroy_leaves_nothing() -> None:
    accelerator, why = accel.choose()
    if accelerator != "kvm" and os.environ.get("WXRELAY_VM_ACCEL") != "tcg":
        pytest.skip(f"no working KVM here ({why}); WXRELAY_VM_ACCEL=tcg runs it emulated (slow)")
    sys.path.insert(0, str(ROOT))
    from deploy.vagrant.rehearse_vm import missing_requirements

    reason = missing_requirements()
    if reason:
        unavailable(f"cannot rehearse with a VM here: {reason}")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/vagrant/rehearse_vm.py")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=REHEARSAL_TIMEOUT[accelerator])
    except subprocess.TimeoutExpired:
        # SIGTERM: the rehearsal destroys its VM first.
        process.terminate()
        out, _ = process.communicate(timeout=300)
        pytest.fail(f"the VM rehearsal took more than {REHEARSAL_TIMEOUT[accelerator]} s:\n{out[-8000:]}")
    print(out)
    assert process.returncode == 0, out[-12000:]
    assert "nothing left" in out and "passed" in out
