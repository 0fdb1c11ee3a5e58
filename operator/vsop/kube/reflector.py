"""Relists that lose nothing: the deletions a watch gap hid, synthesized after kopf's relist.

Owns one fix to kopf (1.45; `continuous_watch` is unchanged upstream as of 2026-06): after a
watch ends (a `410 Gone` for a resourceVersion the API server compacted, a dropped
connection), kopf lists the kind again and hands each listed object to its workers as an
event of type None, then watches on. Its indexes drop an entry only on a `DELETED` event, so
an object deleted while no watch was open (a VirtualService, an EndpointSlice with its pod
IPs, a Node, a NodeReport) stayed in the indexes for good: the agent kept programming stale
real servers until it restarted, and the periodic resync read the same index. client-go's
reflector answers a relist with `Replace`, which deletes what the new listing lacks
(DeletedFinalStateUnknown); kubernetes#141529 calls a lost delete "a phantom object forever".

`install` wraps kopf's `continuous_watch` (one listing, then one watch, per call): it
remembers, per watch stream (the watcher task that consumes it), the last known metadata of
every object the stream delivered, and once a listing is complete (kopf's `Bookmark.LISTED`)
it yields a `DELETED` event for each remembered object the listing did not contain. kopf
processes that event as any other deletion: the indexes drop the object and the raw event
handlers hear `DELETED`, so the agents and the controller wake and forget it. A listing cut
short (no `LISTED`) deletes nothing. The first listing has nothing remembered. Each relist
that deleted objects is logged, and told to the operator's listener (`on_relisted`: the agent
and the controller count it in their metrics, by kind).

It touches kopf's private module, so it checks the shape it expects and leaves kopf as it
is (with a warning) when that shape changed.
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from typing import Any, AsyncIterator, Callable, Mapping

from vsop.node.logs import kv

log = logging.getLogger("vsop.kube")

_MARK = "_vsop_relists_delete_what_is_gone"
_LISTENER = "_vsop_on_relisted"  # on an operator's kopf settings: who hears of its relists' deletions
Listener = Callable[[str, int], None]
Known = dict[str, dict[str, Any]]  # uid -> the object's last known identity (apiVersion, kind, metadata)

# Per watch stream: kopf runs one watcher task per (resource, namespace) for the life of the
# operator, and it alone iterates that stream across reconnects and relists.
_streams: weakref.WeakKeyDictionary[asyncio.Task[Any], Known] = weakref.WeakKeyDictionary()


def last_known(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a synthesized deletion carries: the identity kopf keys its indexes and workers by, and
    the labels its handlers' filters look at (`labels=`, `when=`); no spec, no status."""
    meta = body.get("metadata") or {}
    kept = {key: meta[key] for key in ("namespace", "name", "uid", "labels", "resourceVersion") if key in meta}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept}


def on_relisted(settings: Any, listener: Listener) -> None:
    """`listener(kind, deleted)` after each relist of this operator's watches (its kopf `settings`) that deleted objects."""
    setattr(settings, _LISTENER, listener)


async def reflect(events: AsyncIterator[Any], known: Known, listed_mark: Any, where: str = "", kind: str = "",
                  listener: Listener | None = None) -> AsyncIterator[Any]:
    """`events` (one kopf listing then one watch) as they are, and after the listing's end
    (`listed_mark`) a DELETED event for each object in `known` the listing lacked. `known` is kept
    up to date with every event, for the next listing of the same stream."""
    listing: set[str] | None = set()  # uids listed so far; None once the listing is over
    async for event in events:
        if event is listed_mark:
            yield event
            gone = [uid for uid in known if listing is not None and uid not in listing]
            listing = None
            if gone:
                log.info(kv("Relisted; deleting the objects the listing no longer holds (their deletion fell in a watch gap)",
                            stream=where, deleted=len(gone)))
                if listener is not None:
                    listener(kind, len(gone))
            for uid in gone:
                yield {"type": "DELETED", "object": known.pop(uid)}
            continue
        if isinstance(event, Mapping):
            verb, body = event.get("type"), event.get("object") or {}
            uid = (body.get("metadata") or {}).get("uid") if isinstance(body, Mapping) else None
            if uid and verb in (None, "ADDED", "MODIFIED"):
                known[uid] = last_known(body)
                if listing is not None:
                    listing.add(uid)
            elif uid and verb == "DELETED":
                known.pop(uid, None)
                if listing is not None:
                    listing.discard(uid)
        yield event


def install() -> bool:
    """Make kopf's relists delete what the new listing lacks. Idempotent; False: left as it was."""
    try:
        from kopf._cogs.clients import watching
    except ImportError:  # pragma: no cover - another kopf layout
        log.warning('"kopf internals changed; a deletion during a watch gap is kept until the agent restarts"')
        return False
    original = getattr(watching, "continuous_watch", None)
    if getattr(original, _MARK, False):
        return True
    bookmark = getattr(getattr(watching, "Bookmark", None), "LISTED", None)
    infinite = getattr(watching, "infinite_watch", None)
    expected = {"settings", "resource", "namespace", "operator_pause_waiter"}
    if (original is None or bookmark is None or infinite is None or not inspect.isasyncgenfunction(original)
            or set(inspect.signature(original).parameters) != expected or "continuous_watch" not in infinite.__code__.co_names):
        log.warning('"kopf internals changed; a deletion during a watch gap is kept until the agent restarts"')
        return False
    watch: Callable[..., AsyncIterator[Any]] = original

    async def continuous_watch(*, settings: Any, resource: Any, namespace: Any, operator_pause_waiter: Any) -> AsyncIterator[Any]:
        task = asyncio.current_task()
        known: Known = _streams.setdefault(task, {}) if task is not None else {}
        where = f"{resource} in {namespace}" if namespace is not None else f"{resource}"
        stream = watch(settings=settings, resource=resource, namespace=namespace, operator_pause_waiter=operator_pause_waiter)
        kind, listener = str(getattr(resource, "plural", resource)), getattr(settings, _LISTENER, None)
        async for event in reflect(stream, known, bookmark, where, kind, listener):
            yield event

    setattr(continuous_watch, _MARK, True)
    watching.continuous_watch = continuous_watch  # type: ignore[assignment]
    return True
