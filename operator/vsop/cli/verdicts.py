"""What the running host agent decided that `vsop apply`, `vsop delete` and `vsop plan` keep.

Owns reading the agent's state file (/run/vsop/state.json, `--state-file`, written by
vsop.node.remember after each of its turns) for the one-shot commands, and what they make
of it: the real servers the agent's health checks took out enter the desired state exactly
as they do in the agent (`out_of_service` of vsop.core.desired, weighed by
vsop.core.health.apply_health), and the real servers it is draining stay at weight 0 until
their grace runs out (vsop.core.draining.keep_drains). So a command never puts a failed
backend back at weight 1 nor deletes a draining real server with its connections.
The writers read it under the writer lock: the agent writes it inside its turn, so what they
read is its last turn's view. No file (no agent ran since boot, or `--state-file ''`) is an
empty view; an unreadable one is said on stderr and the command goes on without it.
Must not import: vsop.cli.main, kopf, kubernetes.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from vsop.api.model import VirtualService
from vsop.core.draining import grace_by_service, keep_drains
from vsop.core.health import HealthTracker
from vsop.core.state import KernelState, Names, RealServerKey
from vsop.node.remember import DEFAULT_STATE_FILE, RememberFile
from vsop.node.whole import Drain
from vsop.cli.common import say

ENV_STATE_FILE = "VSOP_STATE_FILE"
STATE_HELP = ("the host agent's health verdicts and drains, kept by this command (default $VSOP_STATE_FILE or "
              "/run/vsop/state.json; '' ignores them)")


def add_state_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-file", metavar="FILE", help=STATE_HELP)


@dataclass
class AgentView:
    """The agent's verdicts (`out_of_service`) and drains (`draining_since`, on this process's monotonic clock)."""

    path: Path | None = None
    out_of_service: frozenset[RealServerKey] = frozenset()
    draining_since: dict[RealServerKey, float] = field(default_factory=dict)

    def drain(self, services: Iterable[VirtualService], names: Names) -> Drain | None:
        """The draining step of vsop.node.whole.program: the agent's drains kept (none: nothing to keep)."""
        if not self.draining_since:
            return None
        grace = grace_by_service(services)

        def keep(desired: KernelState, observed: KernelState) -> KernelState:
            return keep_drains(desired, observed, self.draining_since, time.monotonic(), grace, names)

        return keep

    def notes(self, desired: KernelState) -> list[str]:
        """What the command kept of the agent's view, for stderr: the real servers it planned around."""
        out = sorted(f"{key.service} -> {key}" for key in self.out_of_service if key in desired.real_servers and desired.real_servers[key].weight == 0)
        kept = sorted(f"{key.service} -> {key}" for key, rs in desired.real_servers.items() if key in self.draining_since and rs.weight == 0)
        lines = []
        if out:
            lines.append(f"kept {len(out)} real server(s) the agent's health checks took out at weight 0 ({self.path}): {', '.join(out)}")
        if kept:
            lines.append(f"kept {len(kept)} real server(s) the agent is draining at weight 0 ({self.path}): {', '.join(kept)}")
        return lines


def state_file(args: argparse.Namespace) -> Path | None:
    """--state-file, else $VSOP_STATE_FILE, else the agent's default; '' (either way): none."""
    given = getattr(args, "state_file", None)
    if given is None:
        given = os.environ.get(ENV_STATE_FILE, str(DEFAULT_STATE_FILE))
    return Path(given) if given else None


def read_view(path: Path | None) -> AgentView:
    """The agent's last kept view (empty without a file); a file that cannot be read is said on stderr."""
    if path is None:
        return AgentView()
    memory = RememberFile(path)
    remembered = memory.load(time.time(), time.monotonic())
    if remembered.skipped:
        say(f"warning: {remembered.skipped} record(s) of the agent's state {path} could not be read; planned without them")
    out = HealthTracker(dict(remembered.health)).out_of_service()  # the agent's own rule: healthy False is out
    return AgentView(path, out, dict(remembered.draining_since))


def announce(view: AgentView, desired: KernelState) -> None:
    for line in view.notes(desired):
        say(line)
