"""What the agent and the controller share: kopf settings, the listing gate, running, logging.

Owns the kopf settings both use (standalone, no CRD or namespace scanning, no
kopf-posted events, server-side selectors), the gate that holds the loop until the first
complete listing (the `Trigger` handlers pull is vsop.node.wake's, re-exported here), running
kopf and that loop together so that either ending stops the other, and structured log lines
in the style of Kubernetes components (`"Programmed kernel" node="n1" writes=3`).
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any, Awaitable, Callable, Collection, Iterator

import kopf

from vsop.kube import reflector, toggles
from vsop.node.wake import Trigger, wait_event
from vsop.node.logs import kv, setup_logging

__all__ = ["ListingGate", "Trigger", "configure_logging", "kopf_settings", "kv", "now_rfc3339", "run_with_kopf", "wait_event"]

log = logging.getLogger("vsop.kube")


def configure_logging(verbose: bool = False) -> None:
    """The project's klog-style format; kopf's own chatter only when asked for."""
    setup_logging(verbose)
    logging.getLogger("kopf").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.DEBUG if verbose else logging.INFO)  # signals, stopping
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def kopf_settings() -> kopf.OperatorSettings:
    """Settings for a reader of the cluster that never writes kopf's own bookkeeping."""
    toggles.install()  # index readiness in O(objects), not O(objects^2) (vsop.kube.toggles)
    reflector.install()  # a relist deletes what the new listing lacks (vsop.kube.reflector)
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True  # every agent runs; the controller runs as one replica
    # No runtime watching of CRDs and namespaces: no permission needed for them.
    settings.scanning.disabled = True
    # vsop posts its own Events; kopf must not turn its log lines into more.
    settings.posting.enabled = False
    # Only change-detecting handlers (on.create/update/delete/resume) write progress,
    # diff-base annotations or finalizers; vsop registers none of them, only indexes and
    # raw event handlers, which kopf runs without storing anything on the objects.
    return settings


class ListingGate:
    """Whether the first complete listing of every watched kind has arrived.

    kopf guarantees that indexes are fully populated from the initial listing of every
    indexed kind before any other resource handler runs: the first raw event handler
    call proves it (`done`). Nothing may be deleted before then.
    """

    def __init__(self, trigger: Trigger, what: str):
        self.trigger = trigger
        self.what = what
        self.listed = False
        self._event: asyncio.Event | None = None

    def done(self) -> None:
        if not self.listed:
            self.listed = True
            log.info(kv("Initial listing complete", component=self.what))
            self.trigger.wake("initial listing")
        if self._event is not None:
            self._event.set()

    async def wait(self, warn_every: float, on_turn: Callable[[], None]) -> None:
        """Until `done`; warns every `warn_every` seconds meanwhile (`on_turn` keeps liveness)."""
        self._event = asyncio.Event()
        while not self.listed:
            on_turn()
            if not await wait_event(self._event, warn_every):
                log.warning(kv("Still waiting for the initial listing; nothing is changed until it is complete", component=self.what))


async def run_with_kopf(
    *,
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    namespaces: Collection[str],
    loop: Callable[[], Awaitable[None]],
    stop: asyncio.Event | None = None,
    name: str = "vsop",
) -> None:
    """Run kopf and the reconcile loop until a signal or `stop`; either one ending stops the other.

    Re-raises the loop's error (kopf's own errors end the operator with their log lines).
    """
    stop_flag = stop if stop is not None else asyncio.Event()
    operator_tasks = await kopf.spawn_tasks(
        registry=registry,
        settings=settings,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        stop_flag=stop_flag,
    )
    operator = asyncio.create_task(kopf.run_tasks(operator_tasks, ignored=_AllTasks()), name=f"{name} kopf operator")
    worker = asyncio.create_task(loop(), name=f"{name} reconcile loop")
    try:
        done, _ = await asyncio.wait({operator, worker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_flag.set()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        # kopf stops on the flag; give it a moment to close its watch streams, then insist.
        try:
            await asyncio.wait_for(asyncio.shield(operator), timeout=10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            operator.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await operator
    if worker in done and not worker.cancelled() and worker.exception() is not None:
        raise worker.exception()  # type: ignore[misc]
    if operator in done and not operator.cancelled() and operator.exception() is not None:
        raise operator.exception()  # type: ignore[misc]


class _AllTasks(Collection["asyncio.Task[Any]"]):
    """Tells kopf's shutdown that no task is left for it to wait for.

    After its root tasks stop, kopf waits 5 s for, then cancels, every task created
    since it started, assuming they are its own: here they would be the probe server's
    connections, the reconcile loop, or (in tests) other operators sharing the loop.
    vsop registers no daemons and no long handlers, so kopf has nothing of its own left
    by then; kopf only ever asks `task in ignored`.
    """

    def __contains__(self, task: object) -> bool:
        return True

    def __iter__(self) -> Iterator["asyncio.Task[Any]"]:
        return iter(())

    def __len__(self) -> int:
        return 0


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
