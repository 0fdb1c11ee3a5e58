"""The exported image run the way the manifests in deploy/ run it, with no container engine.

`make image` (image/build.sh) exports the image's root filesystem to .cache/image/rootfs and
its config (Env, Entrypoint) to rootfs.config.json. `in_image` plays the container
runtime's part: in a private mount namespace it binds that tree onto itself read-only
(readOnlyRootFilesystem), mounts /proc with /proc/sys read-only as runc does, /dev, a
read-only /sys, a tmpfs on /tmp and the volumes asked for, chroots into it and drops to the
manifest's user and capabilities with the image's own setpriv (util-linux): bounding and
inheritable sets cut to the granted capabilities, no_new_privs (allowPrivilegeEscalation:
false), the image's environment only. The network namespace is the caller's (hostNetwork).
Not reproduced: the seccomp profile (RuntimeDefault) and cgroup limits.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
ROOTFS = REPOSITORY / ".cache" / "image" / "rootfs"
CONFIG = REPOSITORY / ".cache" / "image" / "rootfs.config.json"
# Mount points a runtime creates in the container's root for the manifests' volumes.
MOUNT_POINTS = ("host/proc/sys/net", "run/vsop", "usr/lib/modules", "mnt/examples", "etc/bird", "run/bird")
MOUNT_FILES = ("run/xtables.lock",)


@dataclass(frozen=True)
class SecurityContext:
    """A container's securityContext: user and group, and the capabilities added to an emptied set."""

    uid: int = 0
    gid: int = 0
    capabilities: tuple[str, ...] = ()

    def setpriv(self) -> list[str]:
        caps = ",".join(["-all", *(f"+{c.lower()}" for c in self.capabilities)])
        return ["/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                f"--inh-caps={caps}", f"--bounding-set={caps}", "--no-new-privs", "--"]


# deploy/agent.yaml: root, drop ALL, add NET_ADMIN and NET_RAW. deploy/controller.yaml: 65532, none.
# deploy/bgp/daemonset.yaml's bird container: root, drop ALL, add NET_ADMIN and NET_BIND_SERVICE.
AGENT = SecurityContext(0, 0, ("NET_ADMIN", "NET_RAW"))
CONTROLLER = SecurityContext(65532, 65532, ())
BIRD = SecurityContext(0, 0, ("NET_ADMIN", "NET_BIND_SERVICE"))


@dataclass(frozen=True)
class Mount:
    source: str
    target: str  # inside the image
    writable: bool = False


@dataclass
class Image:
    rootfs: Path = ROOTFS
    config: dict = field(default_factory=lambda: json.loads(CONFIG.read_text()))

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(item.split("=", 1) for item in self.config.get("Env", []))
        return {**env, **(extra or {})}

    def prepare(self) -> None:
        for relative in MOUNT_POINTS:
            (self.rootfs / relative).mkdir(parents=True, exist_ok=True)
        for relative in MOUNT_FILES:
            (self.rootfs / relative).touch(exist_ok=True)

    def run(
        self,
        args: list[str],
        *,
        context: SecurityContext,
        mounts: tuple[Mount, ...] = (),
        entrypoint: list[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """`args` after the image's entrypoint (or `entrypoint`), as the container's process."""
        argv, environment = self.command(args, context=context, mounts=mounts, entrypoint=entrypoint, env=env)
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=environment)

    def start(self, args: list[str], *, context: SecurityContext, mounts: tuple[Mount, ...] = (),
              entrypoint: list[str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
        """The same, left running (a container's long-lived process); its output into `log`."""
        argv, environment = self.command(args, context=context, mounts=mounts, entrypoint=entrypoint)
        output = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (the child holds it)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=environment, start_new_session=True)

    def command(self, args: list[str], *, context: SecurityContext, mounts: tuple[Mount, ...] = (),
                entrypoint: list[str] | None = None, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """The argv (and environment) that plays the runtime's part and runs `args` in the image."""
        self.prepare()
        root = shlex.quote(str(self.rootfs))
        lines = [
            "set -e",
            f"R={root}",
            'mount --bind "$R" "$R"',
            'mount -t proc proc "$R/proc"',
            # runc's masked /proc/sys, the agent's writable net sysctls beside it
            'mount --bind "$R/proc/sys" "$R/proc/sys"',
            'mount -o remount,bind,ro "$R/proc/sys"',
            'mount --rbind /dev "$R/dev"',
            'mount -t sysfs -o ro sysfs "$R/sys"',
            'mount -t tmpfs -o size=16m,mode=1777 tmpfs "$R/tmp"',
        ]
        for mount in mounts:
            target = f'"$R"/{shlex.quote(mount.target.lstrip("/"))}'
            lines.append(f"mount --bind {shlex.quote(mount.source)} {target}")
            if not mount.writable:
                lines.append(f"mount -o remount,bind,ro {target}")
        lines.append('mount -o remount,bind,ro "$R"')
        command = [*((self.config.get("Entrypoint") or []) if entrypoint is None else entrypoint), *args]
        lines.append(f'exec chroot "$R" {shlex.join(context.setpriv() + command)}')
        environment = self.environment({"HOME": "/root" if context.uid == 0 else "/", **(env or {})})
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)], environment


def capabilities(status: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a /proc/PID/status text, as integers."""
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))}


NET_ADMIN, NET_RAW = 1 << 12, 1 << 13
