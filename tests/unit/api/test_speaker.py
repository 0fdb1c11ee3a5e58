"""BGPSpeaker and the VirtualService's bgp block: what is accepted, and errors that name object, field and reason."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import make_vs
from vsop.api.errors import InvalidInput
from vsop.api.model import semantic_warnings
from vsop.api.speaker import parse_bgp_speaker

GOOD: dict[str, Any] = {
    "apiVersion": "vsop.dev/v1alpha1",
    "kind": "BGPSpeaker",
    "metadata": {"name": "edge"},
    "spec": {"localASN": 65001, "routerID": "10.0.0.2", "peers": [{"address": "10.0.0.1", "asn": 65000}]},
}


def speaker(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    doc["spec"].update(spec)
    return doc


def peer(**fields: Any) -> dict[str, Any]:
    return speaker(peers=[{"address": "10.0.0.1", "asn": 65000, **fields}])


def test_defaults() -> None:
    (p,) = parse_bgp_speaker(GOOD).spec.peers
    assert (p.port, p.hold_time_seconds, p.keepalive, p.bfd, p.ebgp_multihop) == (179, 90, 30, None, None)
    bfd = parse_bgp_speaker(peer(bfd={})).spec.peers[0].bfd
    assert bfd is not None and (bfd.min_rx_ms, bfd.min_tx_ms, bfd.multiplier) == (300, 300, 3)


BAD = {
    "asn 0": (speaker(localASN=0), "spec.localASN", "at least 1"),
    "asn 2^32-1": (peer(asn=4294967295), "spec.peers[0].asn", "4294967294"),
    "router id v6": (speaker(routerID="2001:db8::1"), "spec.routerID", "IPv4"),
    "router id zero": (speaker(routerID="0.0.0.0"), "spec.routerID", "unicast"),
    "no peers": (speaker(peers=[]), "spec.peers", "at least 1"),
    "loopback peer": (peer(address="127.0.0.1"), "spec.peers[0].address", "unicast"),
    "link-local peer": (peer(address="fe80::1"), "spec.peers[0].address", "link-local"),
    "hold time": (peer(holdTimeSeconds=2), "spec.peers[0].holdTimeSeconds", "at least 3"),
    "keepalive": (peer(holdTimeSeconds=9, keepaliveSeconds=9), "spec.peers[0].keepaliveSeconds", "less than holdTimeSeconds"),
    "bfd": (peer(bfd={"minRxMs": 5}), "spec.peers[0].bfd.minRxMs", "at least 10"),
    "relative password file": (peer(passwordFile="pw"), "spec.peers[0].passwordFile", "absolute path"),
    "parent password file": (peer(passwordFile="/etc/../root/pw"), "spec.peers[0].passwordFile", "parent"),
    "two passwords": (peer(passwordFile="/etc/pw", passwordSecretRef={"name": "s", "key": "k"}), "spec.peers[0].passwordFile", "not both"),
    "ibgp multihop": (peer(asn=65001, ebgpMultihop=2), "spec.peers[0].ebgpMultihop", "eBGP"),
    "source family": (peer(sourceAddress="2001:db8::2"), "spec.peers[0].sourceAddress", "IPv6 source for an IPv4 peer"),
    "duplicate": (speaker(peers=[{"address": "10.0.0.1", "asn": 1}, {"address": "10.0.0.1", "asn": 2}]), "spec.peers[1].address", "duplicate"),
    "unknown field": (peer(bfdd={}), "spec.peers[0].bfdd", ""),
}


@pytest.mark.parametrize("doc,path,words", BAD.values(), ids=BAD.keys())
def test_bad_speakers_are_refused_naming_speaker_field_and_reason(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidInput) as failure:
        parse_bgp_speaker(doc)
    found = [(e.obj, e.path) for e in failure.value.errors]
    assert ("edge", path) in found, found
    assert any(words in e.reason for e in failure.value.errors if e.path == path)


def test_the_bgp_block_of_a_virtual_service() -> None:
    vs = make_vs(announce="bgp", bgp={"communities": ["65000:100", "0:0"], "localPreference": 200})
    assert vs.spec.bgp is not None and vs.spec.bgp.communities == ("65000:100", "0:0")
    for bad, words in (({"communities": ["65536:1"]}, "0-65535"), ({"communities": ["no-export"]}, "AS:value"), ({"localPreference": -1}, "at least 0")):
        with pytest.raises(InvalidInput) as failure:
            make_vs(announce="bgp", bgp=bad)
        assert any(words in e.reason and e.path.startswith("spec.bgp") for e in failure.value.errors), failure.value.errors
    assert [path for path, _ in semantic_warnings(make_vs(bgp={"localPreference": 1}).spec)] == ["spec.bgp"]
