"""The image tier's VM part: tests/image/vm/ run inside the VM (Debian's kernel under qemu) on
the root filesystem the session exported, under the shared VM lock (/tmp/vsop-vm.lock; set
VSOP_VM_LOCK_HELD=1 when running this tier inside `flock /tmp/vsop-vm.lock ...` already)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.image.container import REPOSITORY, Image

pytestmark = pytest.mark.image
VM_TESTS = ["tests/image/vm", "-q", "-p", "no:kmock", "-p", "no:hypothesispytest"]


def test_the_image_programs_the_vms_kernel(image: Image) -> None:
    command = ["vm/run", "--timeout", "1500", "--", ".venv/bin/python", "-m", "pytest", *VM_TESTS]
    if not os.environ.get("VSOP_VM_LOCK_HELD"):
        command = ["flock", "/tmp/vsop-vm.lock", *command]
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=1800)
    print(done.stdout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    summary = done.stdout.strip().splitlines()[-1]
    # The count line may follow the progress dots on the same line as the guest's console hands it back.
    assert re.search(r"(^|[\]=\s])\d+ passed in ", summary) and not re.search(r"failed|error|skipped", summary), summary
