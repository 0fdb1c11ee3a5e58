"""Shared test helpers: building VirtualServices from small dicts, following target changes, health states recorded meanwhile."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vsop.api.model import VirtualService, parse_virtual_service
from vsop.core.health import Health, HealthTracker

SEED: dict[str, Any] = {
    "apiVersion": "vsop.dev/v1alpha1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "vip": "169.254.11.2",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        "backends": [{"address": "192.168.2.111"}, {"address": "192.168.2.222"}],
    },
}


def make_vs(name: str = "web", namespace: str = "default", created: str | None = None, **spec: Any) -> VirtualService:
    doc = copy.deepcopy(SEED)
    doc["metadata"] = {"name": name, "namespace": namespace}
    if created:
        doc["metadata"]["creationTimestamp"] = created
    doc["spec"].update(spec)
    return parse_virtual_service(doc)


def follow_changes(follower: set[Any], changes: tuple[set[Any], set[Any]] | None, whole: set[Any]) -> set[Any]:
    """A follower of (added, removed) changes (the checker, the status file): `whole` when None."""
    if changes is None:
        follower.clear()
        follower.update(whole)
    else:
        added, removed = changes
        assert not added & removed
        follower.difference_update(removed)
        follower.update(added)
    return follower


class RecordedMeanwhile(dict):
    """A tracker's states whose loop lets the recording thread in after its first entry, as a
    thread switch inside a loop over it does: the first result of a new real server is recorded."""

    def __init__(self, newcomer: Any) -> None:
        super().__init__()
        self.newcomer = newcomer

    def items(self):  # type: ignore[override]
        for number, item in enumerate(super().items()):
            if number == 1:
                self[self.newcomer] = Health()
            yield item


def recording_meanwhile(states: dict[Any, Health], newcomer: Any) -> HealthTracker:
    """A tracker knowing `states` where a reader that loops over them sees `newcomer` recorded
    meanwhile (RecordedMeanwhile); readers that copy first see the states as they were."""
    tracker = HealthTracker(RecordedMeanwhile(newcomer))
    for key, state in states.items():
        tracker.restore(key, state)
    return tracker


@pytest.fixture
def seed_doc() -> dict[str, Any]:
    return copy.deepcopy(SEED)


# -- hypothesis: derandomized in the tiers, random only in `make test-random` ---------------------
# The `ci` profile (the default) draws the same examples on every run: a tier fails or passes on
# the code alone. `make test-random` runs the property tests with `--hypothesis-profile=random`
# and a fresh seed it prints; a failure found there becomes an @example on its test.
# Loaded only where the hypothesis plugin is (the vm tier runs without it: its import costs
# seconds under emulation).


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("hypothesispytest"):
        return
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    settings.register_profile("random", derandomize=False, database=None, print_blob=True)
    if config.getoption("hypothesis_profile", None) is None:
        settings.load_profile("ci")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("hypothesispytest"):
        return
    from hypothesis import settings

    profile = settings.get_current_profile_name()
    if profile == "ci":
        terminalreporter.write_line("hypothesis: profile ci, derandomized (each test's seed derives from the test itself)")
    else:
        seed = config.getoption("hypothesis_seed", None)
        terminalreporter.write_line(f"hypothesis: profile {profile}, seed {seed if seed is not None else 'random (none given)'}")
