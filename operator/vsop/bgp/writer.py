"""The agent's BIRD writer: check a candidate with `bird -p -c`, rename it into place, `birdc configure`.

Owns what happens to a rendered bird.conf (vsop.bgp.render): when it differs from the live
file, it is written beside it (mode 0600: it may hold passwords), checked by BIRD's own
parser, renamed over the live file (atomic) and BIRD is told to read it (`birdc -s SOCKET
configure`, a graceful reconfiguration: sessions whose options did not change stay up).
A refused candidate changes nothing (BIRD goes on with the live file) and is reported with
BIRD's own message; the same candidate is not checked again. A live file vsop did not write
is never overwritten. Routes never go through here: they are the reconciler's (table 4242).
Must not import: kopf, kubernetes, pyroute2, socket, asyncio, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from vsop.bgp.render import MARKER
from vsop.bgp.sessions import Reading, read_sessions

if TYPE_CHECKING:
    from vsop.api.model import VirtualService
    from vsop.api.speaker import BGPSpeaker
    from vsop.bgp.render import SecretPasswords
    from vsop.core.state import Names

log = logging.getLogger("vsop.bgp")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
SESSIONS_SECONDS = 5.0  # BIRD's sessions are asked again after this long (status file, metrics)


def _run(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


@dataclass(frozen=True)
class WriteResult:
    changed: bool  # the live file was replaced
    refused: str | None = None  # BIRD's message for a candidate it refused (nothing changed)
    reloaded: bool = False  # birdc configure was accepted
    reload_error: str | None = None  # why BIRD was not told (not running, socket missing...)


class BirdWriter:
    """bird.conf at `path`, reloaded through the control socket `control_socket`."""

    def __init__(self, path: str | Path, control_socket: str, *, bird: str = "bird", birdc: str = "birdc", run: Runner = _run):
        self.path = Path(path)
        self.control_socket = control_socket
        self.bird = bird
        self.birdc = birdc
        self.run = run
        self._refused: tuple[str, str] | None = None  # (digest of the refused candidate, BIRD's message)

    def update(self, text: str) -> WriteResult:
        try:
            live = self.path.read_text()
        except FileNotFoundError:
            live = None
        if live == text:
            return WriteResult(changed=False)
        if live is not None and not live.startswith(MARKER):
            return WriteResult(changed=False, refused=f"{self.path} was not written by vsop; not overwriting it (move it away to let vsop manage BIRD)")
        digest = hashlib.sha256(text.encode()).hexdigest()
        if self._refused is not None and self._refused[0] == digest:
            return WriteResult(changed=False, refused=self._refused[1])
        candidate = self.path.with_name(f".{self.path.name}.vsop-candidate")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            checked = self.run([self.bird, "-p", "-c", str(candidate)])
        except (OSError, subprocess.SubprocessError) as exc:
            candidate.unlink(missing_ok=True)
            return WriteResult(changed=False, refused=f"cannot run {self.bird} -p: {exc}")
        if checked.returncode != 0:
            candidate.unlink(missing_ok=True)
            message = (checked.stderr or checked.stdout).strip().replace(str(candidate), str(self.path) + " (candidate)")
            self._refused = (digest, message)
            log.error("BIRD refused the new configuration; the live one stays path=%s reason=%r", self.path, message)
            return WriteResult(changed=False, refused=message)
        os.replace(candidate, self.path)
        self._refused = None
        return WriteResult(changed=True, **self._configure())

    def _configure(self) -> dict[str, object]:
        try:
            answer = self.run([self.birdc, "-s", self.control_socket, "configure"])
        except (OSError, subprocess.SubprocessError) as exc:
            return {"reload_error": f"cannot run {self.birdc}: {exc}"}
        output = (answer.stdout + answer.stderr).strip()
        # birdc exits 0 even when BIRD answers with an error; its reply codes say what happened.
        if answer.returncode == 0 and ("Reconfigured" in output or "Reconfiguration in progress" in output):
            return {"reloaded": True}
        log.warning("BIRD was not reconfigured; it reads the file when it starts socket=%s answer=%r", self.control_socket, output)
        return {"reload_error": output or f"birdc exited {answer.returncode}"}


class BirdAnnouncer:
    """The host agent's BIRD: bird.conf from the BGPSpeaker in `speaker_file` and the objects'
    announcement options, written through a BirdWriter after a sync that may have changed them,
    and BIRD's BGP sessions for the status file and the metrics.

    Called after every successful sync with the objects and what changed; renders only when a
    resync ran (the speaker file is read again then) or a changed object has (or had)
    announcement options, so a change of any other object costs nothing here.
    """

    def __init__(self, speaker_file: str | Path, writer: BirdWriter, names: "Names | None" = None,
                 clock: Callable[[], float] = time.monotonic, sessions_seconds: float = SESSIONS_SECONDS, log: str = "syslog"):
        from vsop.core.state import Names

        self.log = log  # where BIRD logs (vsop.bgp.render.LOG_TARGETS): stderr in a pod
        self.speaker_file = Path(speaker_file)
        self.writer = writer
        self.names = names or Names()
        self._with_options: set[str] = set()  # refs whose bgp options are in the file
        self.last: dict[str, object] | None = None
        self.last_error: str | None = None
        self.renders = 0
        self.clock = clock
        self.sessions_seconds = sessions_seconds
        self._reading: tuple[float, Reading] | None = None  # (when, BIRD's answer), reused for sessions_seconds
        # In a cluster the speaker comes from the BGPSpeaker watch, not the file: (speaker, the node's
        # default router ID, why there is none), set by the agent before each turn; `stale`: it changed.
        self.given: tuple[BGPSpeaker | None, str | None, str | None] | None = None
        self.passwords: SecretPasswords | None = None  # its peers' passwordSecretRef values, read by the agent
        self.stale = False

    def give(self, speaker: "BGPSpeaker | None", router_id: str | None, why: str | None,
             passwords: "SecretPasswords | None" = None) -> None:
        """The cluster's speaker for this node (vsop.kube.speakers) and the passwords its Secrets hold;
        a change of either (a Secret's new value) renders at the next sync."""
        given = (speaker, router_id, why)
        if given != self.given or passwords != self.passwords:
            self.given, self.passwords, self.stale = given, passwords, True

    def due(self, full: bool, changed: "Iterable[str]", objects: "Mapping[str, VirtualService]") -> bool:
        if full or self.stale:
            return True
        return any(ref in self._with_options or _has_options(objects.get(ref)) for ref in changed)

    def update(self, objects: "Iterable[VirtualService]") -> WriteResult | None:
        import yaml

        from vsop.api.errors import InvalidInput
        from vsop.api.speaker import parse_bgp_speaker
        from vsop.bgp.render import read_password_file, render_bird

        services = list(objects)
        self.renders += 1
        self.stale = False
        try:
            if self.given is None:
                speaker, router_id = parse_bgp_speaker(yaml.safe_load(self.speaker_file.read_text())), None
            elif self.given[0] is None:
                raise LookupError(self.given[2] or "no BGPSpeaker selects this node")
            else:
                speaker, router_id = self.given[0], self.given[1]
            text = render_bird(speaker, services, names=self.names, router_id=router_id, log=self.log,
                               password_of=self.passwords if self.passwords is not None else read_password_file)
        except (OSError, yaml.YAMLError, InvalidInput, LookupError) as exc:
            self.last_error = str(exc) if self.given is not None else f"{self.speaker_file}: {exc}"
            log.error("bird.conf not rendered; BIRD keeps its configuration error=%r", self.last_error)
            return None
        self._with_options = {vs.ref for vs in services if _has_options(vs)}
        result = self.writer.update(text)
        self.last_error = result.refused or result.reload_error
        if result.changed or result.refused:
            self.last = {"changed": result.changed, "reloaded": result.reloaded, "refused": result.refused, "reloadError": result.reload_error}
        return result

    def sessions(self) -> Reading:
        """BIRD's BGP sessions (vsop.bgp.sessions), asked at most every sessions_seconds: the status
        file and a scrape of vsop_bgp_session_up share one `birdc show protocols all`."""
        now = self.clock()
        if self._reading is None or now - self._reading[0] >= self.sessions_seconds:
            self._reading = (now, read_sessions(self.writer.control_socket, birdc=self.writer.birdc, run=self.writer.run))
        return self._reading[1]

    def known(self) -> Reading | None:
        """BIRD's sessions as last asked (None: not asked yet); never asks."""
        return self._reading[1] if self._reading is not None else None

    def status(self) -> dict[str, object]:
        return {"speakerFile": str(self.speaker_file), "config": str(self.writer.path), "socket": self.writer.control_socket,
                "last": self.last, "lastError": self.last_error, **self.sessions().as_dict()}


def _has_options(vs: "VirtualService | None") -> bool:
    return vs is not None and vs.spec.announce == "bgp" and vs.spec.bgp is not None
