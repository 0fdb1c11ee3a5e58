"""Who may claim an address, at scale: what judging the claims costs (vsop.core.claims), no kernel.

10,000 VirtualServices in 50 namespaces and 50 VipPools (one per namespace): `admit` over
everything with a fresh rule (cold: each pool's entries and each namespace's granting pools
computed once, then one decision per VIP and namespace), again with the same rule (warm), and
`Admission` (what the agents and the controller keep): every object at once, then one change,
then with 100 deleted objects' claims held.
Prints seconds; asserts nothing (figures go to docs/performance.md).
"""

from __future__ import annotations

import argparse
import time

from vsop.api.model import parse_virtual_service
from vsop.api.pools import parse_vip_pool
from vsop.core.claims import Admission, ClaimRule, Tombstone, admit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=50)
    args = parser.parse_args()
    services = [parse_virtual_service({
        "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": f"s{i}", "namespace": f"ns{i % args.namespaces}", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"vip": f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", "ports": [{"port": 80}], "backends": [{"address": "192.168.0.1"}]},
    }) for i in range(args.objects)]
    pools = tuple(parse_vip_pool({"apiVersion": "vsop.dev/v1alpha1", "kind": "VipPool", "metadata": {"name": f"p{n}"},
                                  "spec": {"addresses": ["10.0.0.0/14"], "serviceAllocation": {"namespaces": [f"ns{n}"]}}})
                  for n in range(args.namespaces))

    def rule() -> ClaimRule:
        return ClaimRule(policy="pools", pools=pools, namespace_labels={f"ns{n}": {} for n in range(args.namespaces)})

    def timed(what: str, call) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        call()
        print(f"{what}: {(time.perf_counter() - started) * 1000:.2f} ms")

    warm = rule()
    timed(f"admit, {args.objects} objects, {args.namespaces} pools, cold rule", lambda: admit(services, warm))
    timed("admit, same rule (warm)", lambda: admit(services, warm))
    admission = Admission()
    fresh = rule()
    timed("Admission.update, every object, cold rule", lambda: admission.update(fresh, {vs.ref: vs for vs in services}))
    timed("Admission.update, one object changed", lambda: admission.update(fresh, {services[5].ref: services[5]}))
    # Deleted objects' claims held for their re-creation (100 of them, as the VipPools' status may carry).
    held = {f"gone/g{i}": Tombstone("gone", f"g{i}", services[i].spec.vip, ((81, "TCP"),), "2023-01-01T00:00:00Z", 4e9) for i in range(100)}
    timed("Admission.update, 100 held claims arrive", lambda: admission.update(fresh, {}, held=held))
    timed("Admission.update, one object changed, 100 held claims", lambda: admission.update(fresh, {services[7].ref: services[7]}, held=held))
    timed("admit, every object, 100 held claims", lambda: admit(services, fresh, held=held))


if __name__ == "__main__":
    main()
