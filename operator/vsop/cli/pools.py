"""`vsop pools`: the VipPool manifests that grant today's VirtualServices their VIPs (the upgrade path).

Owns the command's arguments; the pools are vsop.core.claims.covering_pools's. Reads
VirtualServices from files (a `kubectl get virtualservices -A -o yaml` listing is a List,
which is read too) and prints one VipPool per namespace, each VIP a single address.
Must not import: vsop.cli.main, kopf, kubernetes.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from vsop.api.manifests import load_paths
from vsop.api.pools import parse_vip_pool
from vsop.cli.common import add_common, subcommand
from vsop.cli.output import Result


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "pools",
        "print VipPools granting today's VirtualServices their VIPs",
        "Print the VipPool manifests that grant each namespace exactly the VIPs its VirtualServices use:\n"
        "one pool per namespace, each VIP a single address, autoAssign: false. Before upgrading:\n"
        "  kubectl get virtualservices -A -o yaml > vs.yaml && vsop pools -f vs.yaml | kubectl apply -f -",
    )
    p.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
                   help="a YAML file (several documents or a List allowed) or a folder of them; repeatable; '-' reads stdin")
    p.add_argument("--prefix", default="upgrade", help="the pools are named PREFIX-NAMESPACE (default: upgrade)")
    add_common(p)


def run(args: argparse.Namespace) -> Result:
    from vsop.core.claims import covering_pools

    loaded = load_paths(args.paths)
    pools = covering_pools(loaded.services, args.prefix)
    for pool in pools:
        parse_vip_pool(pool)  # what is printed is valid: InvalidInput (exit 2) otherwise, naming the pool
    text = "".join("---\n" + yaml.safe_dump(p, sort_keys=False) for p in pools) or "# no VirtualServices: no pools needed\n"
    return Result(text=text, document=pools)
