"""VM tier: the real route adapter (RouteKernel) on Debian's kernel, the one the lab's BIRD runs on.

The route contract, in a fresh namespace per test (the netns tier runs it on this
machine's kernel too).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from tests.contracts.routes_contract import RouteContract  # noqa: E402
from vsop.adapters.routes import RouteKernel  # noqa: E402

pytestmark = pytest.mark.vm


@pytest.fixture
def route_adapter():
    name = f"vsoproute-{secrets.token_hex(4)}"
    pyroute2_netns.create(name)
    adapter = RouteKernel(netns=name)
    try:
        yield adapter
    finally:
        adapter.close()
        pyroute2_netns.remove(name)


class TestRouteKernel(RouteContract):
    pass
