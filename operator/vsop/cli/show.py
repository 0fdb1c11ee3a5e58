"""`vsop show`: what vsop owns on this host, read from the kernel, with the host agent's status and BIRD's BGP sessions beside it.

Owns the command's arguments and reading the agent's status file; the tables and the JSON
are vsop.diagnose.show's. Nothing is written. Must not import: vsop.cli.main, kopf, kubernetes.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from vsop.cli.common import STATUS_FILE, add_bird_socket, add_common, add_route_table, say, subcommand
from vsop.cli.common import names as common_names
from vsop.cli.output import Result, exits


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "show",
        "what vsop owns on this host: VIPs, services, real servers, connections",
        "What vsop owns on this host, read from the kernel: VIPs, IPVS services, real servers with\n"
        "weights and connections, and, when the host agent runs, health and draining. Like\n"
        "`ipvsadm -Ln`, limited to vsop's objects. Nothing is written.",
        exits(ok="shown", failure="runtime failure: the kernel cannot be read (no IPVS, not root)", invalid="invalid usage"),
    )
    add_route_table(p)
    add_common(p)
    p.add_argument(
        "--status-file", default=STATUS_FILE, metavar="FILE",
        help="the host agent's status (health, file errors, draining), shown when the agent runs",
    )
    add_bird_socket(p)


def run(args: argparse.Namespace) -> Result:
    from vsop.adapters.real import real_kernel
    from vsop.diagnose.show import show_json, show_text
    from vsop.adapters.kernel import read_observed
    from vsop.node.execute import changed_sysctls

    names = common_names(args)
    kernel = real_kernel()
    observed = read_observed(kernel, names)
    agent = agent_status(args.status_file)
    try:
        changed = changed_sysctls(kernel)
    except OSError as exc:
        say(f"warning: {exc}")
        changed = {}
    from vsop.bgp.sessions import sessions_report

    bgp = sessions_report(args.bird_socket, bool(observed.routes))
    return Result(text=lambda: show_text(observed, names, agent, changed, bgp), document=lambda: show_json(observed, names, agent, changed, bgp))


def agent_status(path: str) -> dict[str, object] | None:
    """The host agent's status file, marked stale when the agent that wrote it is gone; None when there is none."""
    try:
        with open(path, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(status.get("pid", 0)), 0)
    except (OSError, ValueError):
        status["stale"] = True  # the agent that wrote it is gone
    return status
