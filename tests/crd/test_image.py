"""The image's install path, rehearsed without a container engine.

No registry reachable here ships a container engine, so the Dockerfile is followed by
hand: its build stage's COPY lines give the build context, the wheel is built the way
its RUN line builds it (`python -m build --wheel`), installed into a fresh virtual
environment with no test extras (the runtime stage's `pip install /tmp/*.whl`), and the
entry points the manifests use are run from there. The Debian packages the runtime
stage installs are looked up for the Dockerfile's base release with apt-cache, so a
typo or a package renamed in that release is caught here. What this does not prove: the
base image's own contents, and that the engine builds it; the image tier (tests/image/,
`make image`) builds the Dockerfile on a Debian-built base and runs the result.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), grouped by stage; the ARGs
    before the first FROM are their own group first."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        found[-1].append(line)
    return found[1:]


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults (what a build without --build-arg uses)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    preamble = text.split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", preamble, flags=re.M))


def base_release() -> str:
    """The Debian codename of the runtime stage's base image (python:3.11-slim-bookworm -> bookworm)."""
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], stages()[-1][0].split()[1])
    match = re.search(r"-(bookworm|bullseye|trixie|buster)$", base)
    assert match, f"the runtime stage's base {base!r} names no Debian release"
    return match.group(1)


def apt_packages() -> list[str]:
    packages: list[str] = []
    for line in stages()[-1]:
        for command in re.split(r"&&|;", line.removeprefix("RUN ")):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                packages += [w for w in words[2:] if not w.startswith("-")]
    return packages


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the build stage's context, installed alone into a fresh venv; its bin/ directory."""
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    context.mkdir()
    build_stage = stages()[0]
    copies = [[w for w in line.split()[1:] if not w.startswith("--")] for line in build_stage if line.upper().startswith("COPY ")]
    assert copies, "the build stage copies its sources"
    for *sources, destination in copies:
        for source in sources:
            path = ROOT / source
            # Docker: a directory's contents go to the destination; several sources, or a trailing '/', go into it.
            target = context / destination / path.name if destination.endswith("/") or len(sources) > 1 else context / destination
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    assert any("python -m build --wheel" in line for line in build_stage), "the build stage builds the wheel with `python -m build`"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", context, timeout=900)
    [wheel] = list((work / "dist").glob("*.whl"))
    fresh = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(fresh)
    run(fresh / "bin" / "pip", "install", "--no-cache-dir", "--quiet", wheel, timeout=900)
    return fresh / "bin"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "KUBE"))}


def test_the_wheel_installs_alone_without_the_test_extras(installed: Path) -> None:
    for module in ("pytest", "kmock", "hypothesis", "cel_expr_python", "jsonschema"):
        probe = subprocess.run([installed / "python", "-c", f"import {module}"], capture_output=True, env=clean_env())
        assert probe.returncode != 0, f"{module} is a test dependency, not the image's"
    where = run(installed / "python", "-c", "import vsop; print(vsop.__file__)", env=clean_env())
    assert where.startswith(str(installed.parent)), f"vsop imported from {where}, not from the fresh environment"


def test_the_entry_points_the_manifests_use_run(installed: Path) -> None:
    env = clean_env()
    assert "--from DIR" in run(installed / "vsop", "agent", "--help", env=env)  # the host agent's help
    agent = run(installed / "vsop", "agent", "--help-cluster", env=env)
    assert "--node-name" in agent and "--proc-sys" in agent and "--keepalived-dir" in agent
    controller = run(installed / "vsop", "controller", "--help", env=env)
    assert "usage: vsop controller" in controller
    assert run(installed / "vsop", "crd", env=env) == (ROOT / "crds" / "virtualservices.vsop.dev.yaml").read_text()
    from vsop import __version__

    assert run(installed / "vsop", "version", env=env).strip() == f"vsop {__version__}"


def test_every_debian_package_exists_in_the_base_release() -> None:
    release = base_release()
    here = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    assert here.get("VERSION_CODENAME") == release, (
        f"apt-cache here answers for {here.get('VERSION_CODENAME')}, the Dockerfile's base is {release}: check on a {release} machine")
    packages = apt_packages()
    assert {"iptables", "ipset", "ipvsadm", "keepalived"} <= set(packages), packages
    policy = run("apt-cache", "policy", *packages)
    sections = dict(re.findall(r"^(\S+):\n((?:[ \t].*\n?)*)", policy, flags=re.M))
    assert list(sections) == packages, f"apt-cache knows none of {sorted(set(packages) - set(sections))}; run apt-get update?"
    for package, section in sections.items():
        candidate = re.search(r"Candidate: (\S+)", section)
        assert candidate and candidate.group(1) != "(none)", f"{package}: no candidate in {release} ({section.strip()})"
        assert re.search(rf"\s{release}(-updates|-security)?/main ", section), f"{package} does not come from {release}/main:\n{section}"
    shown = run("apt-cache", "show", "--no-all-versions", *packages)
    assert [p for p in re.findall(r"^Package: (\S+)$", shown, flags=re.M)] == packages


@pytest.mark.parametrize(("manifest", "kind"), [("agent.yaml", "DaemonSet"), ("controller.yaml", "Deployment")])
def test_the_manifests_arguments_start_the_in_cluster_components(installed: Path, manifest: str, kind: str, tmp_path: Path) -> None:
    """The container's args as deploy/ gives them, up to the first API call: every import (kopf, kubernetes) resolves
    in the installed environment and the flags parse; with no credentials the component says so and exits 1."""
    import yaml

    [doc] = [d for d in yaml.safe_load_all((ROOT / "deploy" / manifest).read_text()) if d and d["kind"] == kind]
    [container] = doc["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    if args[0] == "agent":
        (tmp_path / "net").mkdir()  # --proc-sys must name a folder with net/ in it; the real one is the host's
        args = [a if not a.startswith("--proc-sys=") else f"--proc-sys={tmp_path}" for a in args]
    env = {**clean_env(), "NODE_NAME": "node-a", "HOME": str(tmp_path)}
    done = subprocess.run([installed / "vsop", *args, f"--kubeconfig={tmp_path / 'missing'}"], capture_output=True, text=True, timeout=120, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Cannot load credentials" in output and "Traceback" not in output, output
