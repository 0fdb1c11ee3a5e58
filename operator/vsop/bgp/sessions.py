"""BGP session state per peer, as BIRD reports it (`birdc -s SOCKET show protocols all`).

Owns reading and parsing BIRD's answer into one `Session` per `protocol bgp` vsop rendered
(vsop_peer_N, its description the peer's address): BIRD's protocol state, the BGP state
(Established is up), since when, and BIRD's last error (Hold timer expired, BFD session
down, Connection refused...). Other protocols in the same BIRD are left out. What reads it:
`vsop show`, `vsop doctor`, the agent's status file and the metric vsop_bgp_session_up{peer}.
Must not import: kopf, kubernetes, pyroute2, socket, asyncio, vsop.adapters, vsop.cli.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Sequence

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
PREFIX = "vsop_peer_"


def _run(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)


@dataclass(frozen=True)
class Session:
    protocol: str  # vsop_peer_N
    peer: str  # the neighbor address
    asn: int | None  # the neighbor's AS
    state: str  # BIRD's protocol state: up, start, down...
    bgp_state: str  # Established, Active, Connect, Idle, OpenSent...
    since: str  # when BIRD's protocol state last changed (BIRD's own clock)
    last_error: str  # BIRD's last error for the session, "" when none

    @property
    def up(self) -> bool:
        return self.bgp_state == "Established"

    def as_dict(self) -> dict[str, object]:
        return {"protocol": self.protocol, "peer": self.peer, "asn": self.asn, "up": self.up, "state": self.state,
                "bgpState": self.bgp_state, "since": self.since, "lastError": self.last_error}

    def describe(self) -> str:
        error = f", last error: {self.last_error}" if self.last_error else ""
        return f"peer {self.peer}{f' AS{self.asn}' if self.asn is not None else ''} ({self.protocol}): {self.bgp_state or self.state} since {self.since}{error}"


def parse_protocols(text: str) -> list[Session]:
    """The vsop_peer_N sessions in `birdc show protocols all` output, in BIRD's order."""
    sessions: list[Session] = []
    head: list[str] | None = None
    fields: dict[str, str] = {}

    def close() -> None:
        if head is not None and head[0].startswith(PREFIX) and len(head) >= 2 and head[1] == "BGP":
            asn = fields.get("Neighbor AS", "")
            sessions.append(Session(
                protocol=head[0],
                peer=fields.get("Neighbor address") or fields.get("Description", ""),
                asn=int(asn) if asn.isdigit() else None,
                state=head[3] if len(head) > 3 else "",
                bgp_state=fields.get("BGP state", ""),
                since=head[4] if len(head) > 4 else "",
                last_error=fields.get("Last error", ""),
            ))

    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")):
            continue
        if not line[0].isspace():
            close()
            head, fields = line.split(), {}
            continue
        key, colon, value = line.strip().partition(":")
        if colon and key not in fields:  # the first one: a channel's "State:" comes after the protocol's
            fields[key] = value.strip()
    close()
    return sessions


@dataclass(frozen=True)
class Reading:
    sessions: tuple[Session, ...] = ()
    error: str | None = None  # BIRD could not be asked (not running, socket missing, no birdc)

    def as_dict(self) -> dict[str, object]:
        return {"sessions": [s.as_dict() for s in self.sessions], "error": self.error}


def read_sessions(control_socket: str, *, birdc: str = "birdc", run: Runner = _run) -> Reading:
    """Ask BIRD at `control_socket`; never raises."""
    try:
        answer = run([birdc, "-s", control_socket, "show", "protocols", "all"])
    except (OSError, subprocess.SubprocessError) as exc:
        return Reading(error=f"cannot run {birdc}: {exc}")
    output = (answer.stdout or "") + (answer.stderr or "")
    if answer.returncode != 0 or "ready." not in output.split("\n", 1)[0]:
        return Reading(error=f"BIRD at {control_socket} did not answer: {output.strip() or f'birdc exited {answer.returncode}'}")
    return Reading(tuple(parse_protocols(answer.stdout)))


def sessions_report(control_socket: str, announcing: bool, *, birdc: str = "birdc", run: Runner = _run) -> dict[str, object] | None:
    """What `vsop show` and `doctor` print: the sessions (or why BIRD did not answer) with the
    socket asked; None when there is no socket and this node announces nothing (no BGP here)."""
    if not announcing and not os.path.exists(control_socket):
        return None
    return {"socket": control_socket, **read_sessions(control_socket, birdc=birdc, run=run).as_dict()}
