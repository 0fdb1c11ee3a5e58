"""A node's report: one merge patch of what changed, removals as null, nothing when nothing changed."""

from __future__ import annotations

from vsop.api.crd import REPORT_PROBES_LISTED
from vsop.kube.report import (MAX_ENTRY_MESSAGE, apply_patch, entries_of, local_probes, merge_into, new_report,
                              node_fields_of, report_patch, with_node_fields)

OK = {"programmed": True, "backends": {"total": 2, "healthy": 2}, "message": "", "observedGeneration": 1}
DOWN = {**OK, "backends": {"total": 2, "healthy": 1}}


def test_only_changed_entries_are_written_and_gone_ones_are_nulled() -> None:
    before = {"default/a": OK, "default/b": OK, "default/gone": OK, "default/moved": OK}
    after = {"default/a": OK, "default/b": DOWN, "default/new": OK, "default/moved": None}
    patch = report_patch(before, after)
    assert patch == {"status": {"virtualServices": {"default/b": DOWN, "default/new": OK, "default/gone": None, "default/moved": None}}}
    assert apply_patch(before, patch) == {"default/a": OK, "default/b": DOWN, "default/new": OK}


def test_a_partial_after_changes_only_the_entries_it_names() -> None:
    before = {"default/a": OK, "default/b": OK, "default/gone": OK}
    patch = report_patch(before, {"default/b": DOWN, "default/gone": None, "default/new": OK}, complete=False)
    assert patch == {"status": {"virtualServices": {"default/b": DOWN, "default/gone": None, "default/new": OK}}}
    assert report_patch(before, {"default/a": dict(OK)}, complete=False) is None  # b and gone are not named: kept
    entries = {ref: dict(entry) for ref, entry in before.items()}
    merge_into(entries, patch)
    assert entries == apply_patch(before, patch) == {"default/a": OK, "default/b": DOWN, "default/new": OK}


def test_keys_an_entry_no_longer_has_are_nulled_as_a_merge_patch_needs() -> None:
    before = {"default/a": {**OK, "checks": {"192.0.2.1:8080": True, "192.0.2.2:8080": True}}}
    after = {"default/a": {**OK, "checks": {"192.0.2.1:8080": True}}}
    patch = report_patch(before, after)
    assert patch == {"status": {"virtualServices": {"default/a": {**OK, "checks": {"192.0.2.1:8080": True, "192.0.2.2:8080": None}}}}}
    assert apply_patch(before, patch) == after
    assert report_patch(after, {"default/a": OK}) == {"status": {"virtualServices": {"default/a": {**OK, "checks": None}}}}
    assert report_patch(apply_patch(after, report_patch(after, {"default/a": OK}) or {}), {"default/a": OK}) is None


def test_nothing_changed_is_no_write() -> None:
    assert report_patch({"default/a": OK}, {"default/a": dict(OK), "default/other": None}) is None
    assert report_patch({}, {}) is None


def test_long_messages_are_bounded_and_then_compare_equal() -> None:
    failed = {**OK, "programmed": False, "message": "KernelError: " + "x" * 2000}
    patch = report_patch({}, {"default/a": failed})
    assert patch is not None
    written = patch["status"]["virtualServices"]["default/a"]
    assert len(written["message"]) == MAX_ENTRY_MESSAGE and written["message"].endswith("...")
    assert report_patch(apply_patch({}, patch), {"default/a": failed}) is None


def test_the_first_report_is_created_without_nulls_and_read_back() -> None:
    patch = {"status": {"virtualServices": {"default/a": OK, "default/gone": None}}}
    body = new_report("node-a", patch)
    assert body["metadata"]["name"] == "node-a" and body["kind"] == "NodeReport"
    assert entries_of(body) == {"default/a": OK}
    assert entries_of(None) == {} and entries_of({"status": {"virtualServices": "junk"}}) == {}


def test_local_probes_are_a_count_and_the_first_few_backends() -> None:
    assert local_probes(0, []) is None  # none: the field is left out
    assert local_probes(2, [("default/web", "192.0.2.1:8080"), ("default/api", "192.0.2.9:80")]) == {
        "count": 2, "backends": [{"virtualService": "default/api", "backend": "192.0.2.9:80"},
                                 {"virtualService": "default/web", "backend": "192.0.2.1:8080"}]}
    many = [(f"default/s{i:03d}", "192.0.2.1:8080") for i in range(100)]
    found = local_probes(100, many)
    assert found is not None and found["count"] == 100 and len(found["backends"]) == REPORT_PROBES_LISTED
    assert found["backends"][0] == {"virtualService": "default/s000", "backend": "192.0.2.1:8080"}


def test_local_probes_are_written_when_they_change_gone_as_null_and_read_back() -> None:
    probes = local_probes(1, [("default/web", "192.0.2.1:8080")])
    patch = with_node_fields(None, {}, {"bgpSessions": None, "localProbes": probes})
    assert patch == {"status": {"virtualServices": {}, "localProbes": probes}}
    body = new_report("node-a", patch)
    assert node_fields_of(body) == {"localProbes": probes} and "bgpSessions" not in body["status"]
    assert with_node_fields(None, node_fields_of(body), {"localProbes": dict(probes or {})}) is None  # unchanged: no write
    gone = with_node_fields(report_patch({}, {"default/web": OK}), {"localProbes": probes}, {"localProbes": None})
    assert gone == {"status": {"virtualServices": {"default/web": OK}, "localProbes": None}}
    assert node_fields_of(None) == {} and node_fields_of({"status": {"localProbes": "junk"}}) == {}

