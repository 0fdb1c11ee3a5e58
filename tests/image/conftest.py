"""Image tier: the Dockerfile built by `make image` (image/build.sh) and its exported root
filesystem run as the manifests run it (tests/image/container.py).

On this machine (as root) the session builds the image first: a second build reuses the
cached base and buildah's layers, so only what changed is rebuilt. A machine that cannot
build it fails this tier with the builder's message; nothing is skipped. tests/image/vm/
runs inside the VM (test_in_vm.py starts it) on the root filesystem exported here.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.image.container import CONFIG, REPOSITORY, ROOTFS, Image

IN_VM = bool(os.environ.get("VSOP_IN_VM"))
# The VM's tests are collected only inside the VM.
collect_ignore = [] if IN_VM else ["vm"]


@pytest.fixture(scope="session")
def image() -> Image:
    if not IN_VM:
        assert os.geteuid() == 0, "the image tier needs root (mmdebstrap, buildah's chroot isolation, mount namespaces)"
        built = subprocess.run(["image/build.sh"], cwd=REPOSITORY, capture_output=True, text=True, timeout=2400)
        assert built.returncode == 0, f"make image failed:\n{built.stderr[-4000:]}"
        print(built.stderr, built.stdout)
    assert ROOTFS.is_dir() and CONFIG.is_file(), f"no exported image at {ROOTFS}: run make image"
    return Image()
