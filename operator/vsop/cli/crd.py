"""`vsop crd` and `vsop version`: what this vsop is, for kubectl and for people.

Owns the two commands' arguments; the CustomResourceDefinition itself is vsop.api.crd's.
Must not import: vsop.cli.main, kopf, kubernetes.
"""

from __future__ import annotations

import argparse
from typing import Any

from vsop import __version__
from vsop.cli.common import add_common, subcommand
from vsop.cli.output import Result, exits


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "crd",
        "print the CustomResourceDefinition generated from the model",
        "Print the CustomResourceDefinition (virtualservices.vsop.dev) generated from the model,\n"
        "with its validation rules as OpenAPI schema and CEL: `vsop crd | kubectl apply -f -`.\n"
        "-o text (and -o yaml) prints YAML, -o json the same object as JSON.",
        exits(ok="printed", failure="runtime failure (stdout cannot be written)", invalid="invalid usage"),
    )
    add_common(p)
    p = subcommand(sub, "version", "print the version", "Print vsop's version (the same as `vsop --version`).",
                   exits(ok="printed", failure="runtime failure (stdout cannot be written)", invalid="invalid usage"))
    add_common(p)


def run(args: argparse.Namespace) -> Result:
    if args.command == "version":
        return Result(text=f"vsop {__version__}\n", document={"version": __version__}, indent=None)
    from vsop.api.crd import crd, crd_yaml

    return Result(text=crd_yaml, document=crd)
