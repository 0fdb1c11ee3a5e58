"""Unit tier: a relist deletes what the new listing lacks (vsop.kube.reflector), on scripted kopf streams.

One stream, two listings: objects the second listing lacks (deleted while no watch was open)
come out as DELETED events right after the listing's end, carrying their identity and labels;
objects deleted by a watch event, or listed again, do not; a listing cut short deletes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from vsop.kube import reflector

LISTED = object()


def body(name: str, uid: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "endpoints": [{"addresses": ["10.0.0.1"]}],
            "metadata": {"namespace": "default", "name": name, "uid": uid, "labels": labels, "resourceVersion": "7", "managedFields": []}}


async def script(*events: Any) -> AsyncIterator[Any]:
    for event in events:
        yield event


def run(known: dict[str, Any], *events: Any, told: list[tuple[str, int]] | None = None) -> list[Any]:
    def listener(kind: str, deleted: int) -> None:
        (told if told is not None else []).append((kind, deleted))

    async def collect() -> list[Any]:
        return [event async for event in reflector.reflect(script(*events), known, LISTED, "endpointslices", "endpointslices", listener)]

    return asyncio.run(collect())


def test_a_relist_deletes_what_the_listing_lacks_and_nothing_else() -> None:
    known: dict[str, Any] = {}
    a, b, c, d = body("a", "u-a", svc="web"), body("b", "u-b", svc="web"), body("c", "u-c"), body("d", "u-d")
    first = run(known, {"type": None, "object": a}, {"type": None, "object": b}, {"type": None, "object": c}, LISTED,
                {"type": "ADDED", "object": d}, {"type": "DELETED", "object": c})
    assert [e if e is LISTED else e["type"] for e in first] == [None, None, None, LISTED, "ADDED", "DELETED"]  # nothing to delete at first
    assert set(known) == {"u-a", "u-b", "u-d"}
    # A 410 after a gap in which b and d were deleted: the relist holds a only.
    told: list[tuple[str, int]] = []
    second = run(known, {"type": None, "object": a}, LISTED, {"type": "MODIFIED", "object": a}, told=told)
    assert told == [("endpointslices", 2)]  # the kind and how many, for the metrics
    assert second[:2] == [{"type": None, "object": a}, LISTED] and second[-1] == {"type": "MODIFIED", "object": a}
    deleted = second[2:-1]
    assert sorted(e["object"]["metadata"]["name"] for e in deleted) == ["b", "d"] and {e["type"] for e in deleted} == {"DELETED"}
    gone_b = next(e["object"] for e in deleted if e["object"]["metadata"]["name"] == "b")
    assert gone_b == {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"namespace": "default", "name": "b", "uid": "u-b", "labels": {"svc": "web"}, "resourceVersion": "7"}}
    assert set(known) == {"u-a"}


def test_a_listing_cut_short_deletes_nothing_and_a_recreated_object_is_another() -> None:
    known: dict[str, Any] = {}
    run(known, {"type": None, "object": body("a", "u-a")}, {"type": None, "object": body("b", "u-b")}, LISTED)
    cut = run(known, {"type": None, "object": body("a", "u-a")})  # the connection dropped mid-listing
    assert [e["type"] for e in cut] == [None] and set(known) == {"u-a", "u-b"}
    # b deleted and created again under the same name during the gap: the old uid goes.
    again = run(known, {"type": None, "object": body("a", "u-a")}, {"type": None, "object": body("b", "u-b2")}, LISTED)
    assert [(e["object"]["metadata"]["uid"]) for e in again[3:]] == ["u-b"] and set(known) == {"u-a", "u-b2"}


def test_installed_on_kopf_once() -> None:
    from kopf._cogs.clients import watching

    assert reflector.install() and reflector.install()
    assert getattr(watching.continuous_watch, "_vsop_relists_delete_what_is_gone", False)
