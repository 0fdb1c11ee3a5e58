"""The image's own userspace (its Python, vsop, iptables, ipset) programming the VM's kernel.

The VM's root namespace is the node: its own tools (the host's iptables-legacy and
iptables-nft) mark which backend the node uses, as kubelet does with KUBE-IPTABLES-HINT,
and read back what vsop wrote. vsop runs from the exported image (tests/image/container.py)
as deploy/agent.yaml runs the agent: root with NET_ADMIN and NET_RAW only, read-only root,
the agent's volumes. `vsop apply` writes net sysctls under /proc/sys, which a runtime mounts
read-only; the agent's grant for them (the host's /proc/sys/net, writable, mounted at
/host/proc/sys/net for `vsop agent --proc-sys`) is mounted at /proc/sys/net here as well.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.image.container import AGENT, CONTROLLER, NET_ADMIN, NET_RAW, Image, Mount, capabilities
from tests.vm.conftest import run
from tests.vm.lab import BACKENDS, VIP, answers, lab  # noqa: F401

pytestmark = pytest.mark.vm
OTHER = {"legacy": "nft", "nft": "legacy"}
SERVICE = {
    "apiVersion": "vsop.dev/v1alpha1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"vip": VIP, "ports": [{"name": "http", "port": 80, "targetPort": 8080}], "scheduler": "rr",
             "backends": [{"address": address} for address in BACKENDS.values()]},
}


@pytest.fixture(scope="module")
def image() -> Image:
    return Image()


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Mount, ...]:
    """deploy/agent.yaml's volumes, from this node (the VM)."""
    run_vsop = tmp_path / "run-vsop"
    run_vsop.mkdir()
    Path("/run/xtables.lock").touch()  # hostPath type FileOrCreate
    modules = "/lib/modules" if Path("/lib/modules").is_dir() else str(tmp_path)
    return (
        Mount("/run/xtables.lock", "/run/xtables.lock", writable=True),
        Mount(modules, "/lib/modules"),
        Mount("/proc/sys/net", "/host/proc/sys/net", writable=True),
        Mount("/proc/sys/net", "/proc/sys/net", writable=True),
        Mount(str(run_vsop), "/run/vsop", writable=True),
    )


def vsop(image: Image, volumes: tuple[Mount, ...], *args: str, stdin: str | None = None) -> str:
    done = image.run([*args, "--store", "/run/vsop/virtualservices.d"], context=AGENT, mounts=volumes, stdin=stdin)
    assert done.returncode == 0, f"vsop {' '.join(args)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_agent_runs_with_net_admin_and_net_raw_only(image: Image) -> None:
    status = image.run(["/proc/self/status"], entrypoint=["cat"], context=AGENT).stdout
    caps = capabilities(status)
    assert caps["CapEff"] == caps["CapBnd"] == NET_ADMIN | NET_RAW and "NoNewPrivs:\t1" in status, status
    # Without them the same program is refused by the kernel: the capabilities are what it runs on.
    denied = image.run(["-t", "nat", "-S"], entrypoint=["iptables-legacy"], context=CONTROLLER)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_the_images_vsop_applies_on_the_nodes_iptables_backend(lab, image: Image, volumes, backend: str) -> None:  # noqa: F811
    run(f"iptables-{backend}", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")  # kubelet's mark of the node's backend
    try:
        report = json.loads(vsop(image, volumes, "apply", "-f", "-", "-o", "json", stdin=yaml.safe_dump(SERVICE)))
        assert report["changed"] and report["counts"]["realserver.add"] == 2, report
        mine, other = run(f"iptables-{backend}-save").stdout, run(f"iptables-{OTHER[backend]}-save").stdout
        assert "-j VSOP" in mine and "MASQUERADE" in mine, mine
        assert "VSOP" not in other, f"vsop wrote to {OTHER[backend]} on a {backend} node:\n{other}"
        seen = answers(4, netns=lab["client"])
        assert Counter(seen) == {"be1": 2, "be2": 2}, seen
        listed = image.run(["-Ln"], entrypoint=["ipvsadm"], context=AGENT)
        assert f"TCP  {VIP}:80 rr" in listed.stdout, listed
        again = json.loads(vsop(image, volumes, "apply", "-f", "-", "-o", "json", stdin=yaml.safe_dump(SERVICE)))
        assert again["writes"] == 0 and not again["changed"], again
    finally:
        cleanup = image.run(["cleanup"], context=AGENT, mounts=volumes)
        run(f"iptables-{backend}", "-t", "mangle", "-X", "KUBE-IPTABLES-HINT")
    assert cleanup.returncode == 0, cleanup.stderr
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        assert "VSOP" not in run(tool).stdout
    assert "VSOP" not in run("ipset", "list", "-n").stdout
