"""The built image on this machine: its own userspace, run as deploy/ runs it (tests/image/container.py).

What the rehearsal (tests/crd/test_image.py) could not see: the base's Python and layout,
that the Debian packages install and their binaries find their libraries, that the wheel
and its dependencies install on that Python, and that vsop starts from a read-only root,
as non-root where the manifests say so, with only the capabilities they grant.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.image.container import AGENT, BIRD, CONTROLLER, NET_ADMIN, NET_RAW, REPOSITORY, Image, Mount, capabilities
from vsop import __version__

pytestmark = pytest.mark.image
EXAMPLES = Mount(str(REPOSITORY / "examples"), "/mnt/examples")


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    return done.stdout


def container(manifest: str, kind: str) -> dict:
    [doc] = [d for d in yaml.safe_load_all((REPOSITORY / "deploy" / manifest).read_text()) if d and d["kind"] == kind]
    [spec] = doc["spec"]["template"]["spec"]["containers"]
    return spec


def test_version(image: Image) -> None:
    assert ok(image.run(["--version"], context=CONTROLLER)).strip() == f"vsop {__version__}"


def test_plan_of_the_seed_equals_the_golden_file(image: Image) -> None:
    out = ok(image.run(["plan", "--from-empty", "-f", "/mnt/examples/seed.yaml", "--node-name", "golden"],
                       context=CONTROLLER, mounts=(EXAMPLES,)))
    assert out == (REPOSITORY / "tests" / "golden" / "seed.plan.txt").read_text()


def test_crd_equals_the_one_in_crds(image: Image) -> None:
    assert ok(image.run(["crd"], context=CONTROLLER)) == (REPOSITORY / "crds" / "virtualservices.vsop.dev.yaml").read_text()


def test_the_python_image_layout(image: Image) -> None:
    probe = "import sys, vsop; print(sys.executable, sys.prefix, sys.version_info[:2] == (3, 11), vsop.__file__)"
    out = ok(image.run(["python", "-c", probe], entrypoint=[], context=CONTROLLER)).split()
    assert out == ["/usr/local/bin/python", "/usr/local", "True", "/usr/local/lib/python3.11/site-packages/vsop/__init__.py"]
    assert (image.rootfs / "usr/local/bin/vsop").is_file() and image.config["Entrypoint"] == ["vsop"]


@pytest.mark.parametrize(("tool", "says"), [
    (["iptables-legacy", "-V"], "(legacy)"), (["iptables-nft", "-V"], "(nf_tables)"),
    (["ip6tables-legacy-save", "-V"], "(legacy)"), (["ip6tables-nft-restore", "-V"], "(nf_tables)"),
    (["ipset", "--version"], "ipset v7"), (["conntrack", "--version"], "conntrack v1.4"),
    (["keepalived", "--version"], "Keepalived v2.2"), (["ip", "-V"], "iproute2-6"),
    (["bird", "--version"], "BIRD version 2.0"),
])
def test_the_debian_tools_run(image: Image, tool: list[str], says: str) -> None:
    done = image.run(tool[1:], entrypoint=tool[:1], context=AGENT)
    assert says in ok(done) + done.stderr


def test_the_agent_has_only_its_capabilities_on_a_read_only_root(image: Image) -> None:
    status = ok(image.run(["/proc/self/status"], entrypoint=["cat"], context=AGENT))
    caps = capabilities(status)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == NET_ADMIN | NET_RAW, status
    assert "NoNewPrivs:\t1" in status and "Uid:\t0\t0\t0\t0" in status
    assert container("agent.yaml", "DaemonSet")["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    write = image.run(["-c", "touch /usr/local/x; echo tmp > /tmp/x && cat /tmp/x"], entrypoint=["sh"], context=AGENT)
    assert "Read-only file system" in write.stderr and write.stdout == "tmp\n", write


def test_the_controller_is_not_root_and_has_no_capabilities(image: Image) -> None:
    status = ok(image.run(["/proc/self/status"], entrypoint=["cat"], context=CONTROLLER))
    caps = capabilities(status)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == 0, status
    assert "Uid:\t65532\t65532\t65532\t65532" in status and "Gid:\t65532\t65532\t65532\t65532" in status
    manifest = yaml.safe_load_all((REPOSITORY / "deploy" / "controller.yaml").read_text())
    [pod] = [d["spec"]["template"]["spec"] for d in manifest if d and d["kind"] == "Deployment"]
    assert pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsNonRoot"]


@pytest.mark.parametrize(("manifest", "kind", "context"), [("agent.yaml", "DaemonSet", AGENT), ("controller.yaml", "Deployment", CONTROLLER)])
def test_the_manifests_arguments_start_up_to_the_api_server(image: Image, manifest: str, kind: str, context, tmp_path: Path) -> None:
    """The container's args as deploy/ gives them, with its volumes: every import resolves and the
    flags parse from the read-only root; with no credentials the component says so and exits 1."""
    args = container(manifest, kind)["args"]
    mounts = ()
    if kind == "DaemonSet":
        run_vsop = tmp_path / "run-vsop"
        run_vsop.mkdir()
        modules = "/lib/modules" if Path("/lib/modules").is_dir() else str(run_vsop)  # a hostPath without a type: none here
        mounts = (Mount("/proc/sys/net", "/host/proc/sys/net", writable=True), Mount(str(run_vsop), "/run/vsop", writable=True),
                  Mount(modules, "/lib/modules"))
    done = image.run([*args, "--kubeconfig=/tmp/missing"], context=context, mounts=mounts, env={"NODE_NAME": "node-a", "POD_NAME": "p"})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Cannot load credentials" in output and "Traceback" not in output, output


def test_the_manifests_reference_the_image_as_the_build_tags_it(image: Image) -> None:
    kustomization = yaml.safe_load((REPOSITORY / "deploy" / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "vsop", "newName": "vsop", "newTag": __version__}]
    assert container("agent.yaml", "DaemonSet")["image"] == container("controller.yaml", "Deployment")["image"] == "vsop"
    compose = yaml.safe_load((REPOSITORY / "deploy" / "host" / "docker-compose.keepalived.yaml").read_text())
    assert {s["image"] for s in compose["services"].values()} == {f"vsop:{__version__}"}
    tags = subprocess.run(["image/buildah", "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"],
                          cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout.split()
    assert f"localhost/vsop:{__version__}" in tags


@pytest.mark.parametrize("service", ["vsop-agent", "keepalived"])
def test_the_compose_services_commands_go_through_the_images_entrypoint(image: Image, service: str) -> None:
    """compose's `command` replaces the image's CMD, not its ENTRYPOINT (vsop); `entrypoint: []` clears it."""
    compose = yaml.safe_load((REPOSITORY / "deploy" / "host" / "docker-compose.keepalived.yaml").read_text())["services"][service]
    entrypoint = compose["entrypoint"] if "entrypoint" in compose else None
    done = image.run([*compose["command"], "--help"], entrypoint=entrypoint, context=AGENT)
    assert done.returncode == 0 and "usage" in (done.stdout + done.stderr).lower(), done


def bgp_container() -> dict:
    """The bird container deploy/bgp adds to the agent's pod."""
    [doc] = yaml.safe_load_all((REPOSITORY / "deploy" / "bgp" / "daemonset.yaml").read_text())
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "bird")


def test_the_agent_writes_a_bird_conf_the_images_bird_accepts_as_deploy_bgp_runs_it(image: Image, tmp_path: Path) -> None:
    """`vsop render bird --out` in the agent's context (its `bird -p` passes, birdc finds no BIRD yet), then the
    bird container's own parse of that file, on the read-only volume and with the capabilities deploy/bgp grants."""
    assert bgp_container()["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": list(BIRD.capabilities)}
    config, socket = tmp_path / "etc-bird", tmp_path / "run-bird"
    config.mkdir()
    socket.mkdir()
    (config / "password").write_text("s3cret-Pass\n")
    speaker = yaml.safe_load((REPOSITORY / "examples" / "bgp" / "speaker.yaml").read_text())
    speaker["spec"]["peers"][1]["passwordFile"] = "/etc/bird/password"
    (config / "speaker.yaml").write_text(yaml.safe_dump(speaker))
    agent_mounts = (Mount(str(config), "/etc/bird", writable=True), Mount(str(socket), "/run/bird", writable=True))
    done = image.run(["render", "bird", "--speaker", "/etc/bird/speaker.yaml", "--out", "/etc/bird/bird.conf",
                      "--control-socket", "/run/bird/bird.ctl"], context=AGENT, mounts=agent_mounts)
    assert "wrote /etc/bird/bird.conf (BIRD not reconfigured)" in ok(done), done
    assert 'password "s3cret-Pass";' in (config / "bird.conf").read_text() and (config / "bird.conf").stat().st_mode & 0o777 == 0o600
    bird_mounts = (Mount(str(config), "/etc/bird"), Mount(str(socket), "/run/bird", writable=True))
    parsed = image.run(["-p", "-c", "/etc/bird/bird.conf"], entrypoint=["bird"], context=BIRD, mounts=bird_mounts)
    assert parsed.returncode == 0 and not parsed.stdout + parsed.stderr, parsed
    broken = config / "broken.conf"
    broken.write_text((config / "bird.conf").read_text().replace("router id", "router identifier"))
    refused = image.run(["-p", "-c", "/etc/bird/broken.conf"], entrypoint=["bird"], context=BIRD, mounts=bird_mounts)
    assert refused.returncode != 0 and "syntax error" in refused.stderr, refused  # the parse can fail
