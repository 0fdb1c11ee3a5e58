"""The probes and metrics server (vsop.node.metrics.HttpEndpoints): where each listens.

kube-proxy's split: the probes on the address the kubelet reaches (the pod IP: 0.0.0.0), /metrics
on loopback unless opened; one port serving all three listens where the metrics were asked to.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest

from vsop.node.metrics import HttpEndpoints, NodeMetrics, Probes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(endpoints: HttpEndpoints) -> set[tuple[str, int]]:
    return {(address[0], address[1]) for runner in endpoints.runners for address in runner.addresses}


def status(port: int, path: str) -> int:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.asyncio
async def test_probes_listen_where_the_kubelet_reaches_them_and_metrics_on_loopback() -> None:
    health, metrics = free_port(), free_port()
    endpoints = HttpEndpoints(Probes(120.0), NodeMetrics().registry, health, metrics, "0.0.0.0", metrics_host="127.0.0.1")
    await endpoints.start()
    try:
        assert listening(endpoints) == {("0.0.0.0", health), ("127.0.0.1", metrics)}
        codes = await asyncio.to_thread(lambda: (status(health, "/healthz"), status(health, "/metrics"), status(metrics, "/metrics")))
        assert codes == (200, 404, 200)  # the probes' port serves no metrics
    finally:
        await endpoints.stop()


@pytest.mark.asyncio
async def test_one_port_for_all_three_listens_where_the_metrics_were_asked_to() -> None:
    port = free_port()
    endpoints = HttpEndpoints(Probes(120.0), NodeMetrics().registry, port, port, "0.0.0.0", metrics_host="127.0.0.1")
    await endpoints.start()
    try:
        assert listening(endpoints) == {("127.0.0.1", port)}
    finally:
        await endpoints.stop()
