"""The cluster's BGPSpeakers: which one this node's BIRD uses (`vsop agent --bgp-speakers`).

Owns the kopf index of BGPSpeaker objects (cluster-scoped; parsed, an invalid one is logged once
per version and selects nothing), the handler that wakes the agent when one changes (its spec or
labels; status and heartbeats do not), and `choose`: the speaker whose `nodeSelector` selects this
node (the oldest, then by name, when several do: logged), with this node's first IPv4 InternalIP as
the router ID when the speaker gives none. A speaker asking for a passwordSecretRef is not used (the
agent does not read Secrets yet: passwordFile into a mounted Secret is the way). The agent hands the choice to its BIRD announcer
(vsop.bgp.writer.BirdAnnouncer.give), which renders bird.conf again at the next sync.
Must not import: vsop.node, vsop.adapters.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Iterable, Mapping

import kopf

from vsop.api.errors import InvalidInput
from vsop.api.model import API_GROUP, API_VERSION
from vsop.api.speaker import SPEAKER_PLURAL, BGPSpeaker, parse_bgp_speaker
from vsop.kube.runtime import ListingGate, Trigger, kv

log = logging.getLogger("vsop.kube.speakers")

SPEAKER_INDEX = "vsop_bgp_speakers"


def _speaker(body: Mapping[str, Any], name: str) -> BGPSpeaker | None:
    try:
        return parse_bgp_speaker(json.loads(json.dumps(dict(body), default=dict)))
    except InvalidInput as exc:
        log.warning(kv("BGPSpeaker invalid: it selects no node until fixed", speaker=name, error=str(exc)))
        return None


def choose(speakers: Iterable[BGPSpeaker], node: str, labels: Mapping[str, str],
           addresses: Iterable[str]) -> tuple[BGPSpeaker | None, str | None, str | None]:
    """(the speaker for this node, the default router ID, why there is none / which were passed over)."""
    chosen = sorted((s for s in speakers if s.spec.node_selector.matches(labels)),
                    key=lambda s: (s.metadata.creation_timestamp or "", s.name))
    router_id = next((a for a in addresses if ipaddress.ip_address(a).version == 4), None)
    if not chosen:
        return None, router_id, f"no BGPSpeaker selects node {node}"
    secret = next((i for i, peer in enumerate(chosen[0].spec.peers) if peer.password_secret_ref is not None), None) if chosen else None
    if secret is not None:  # never rendered without the password it asks for
        return None, router_id, (f"BGPSpeaker {chosen[0].name}: spec.peers[{secret}].passwordSecretRef is not read by the agent yet; "
                                 "give passwordFile pointing into a Secret mounted in the agent's pod")
    if len(chosen) > 1:
        return chosen[0], router_id, f"BGPSpeakers {', '.join(s.name for s in chosen)} all select node {node}; {chosen[0].name} (the oldest) is used"
    return chosen[0], router_id, None


class SpeakerWatch:
    """The BGPSpeakers of the cluster, for one node."""

    def __init__(self, trigger: Trigger, gate: ListingGate):
        self.trigger = trigger
        self.gate = gate
        self._index: Any = {}
        self._seen: dict[str, Any] = {}
        self._said: str | None = None

    def register(self, registry: kopf.OperatorRegistry) -> None:
        @kopf.index(API_GROUP, API_VERSION, SPEAKER_PLURAL, id=SPEAKER_INDEX, registry=registry)
        async def index_bgp_speakers(body: kopf.Body, name: str, **_: Any) -> dict[Any, Any]:
            speaker = _speaker(body, name)
            return {name: speaker} if speaker is not None else {}

        @kopf.on.startup(registry=registry)
        async def capture_speaker_index(**kwargs: Any) -> None:
            self._index = kwargs[SPEAKER_INDEX]

        @kopf.on.event(API_GROUP, API_VERSION, SPEAKER_PLURAL, registry=registry)
        async def bgp_speaker_event(event: Mapping[str, Any], body: kopf.Body, name: str, **_: Any) -> None:
            self.gate.done()
            meta = body.get("metadata") or {}
            current = None if event.get("type") == "DELETED" else json.dumps([body.get("spec"), meta.get("labels")], sort_keys=True, default=str)
            if self._seen.get(name, "unseen") != current:
                self._seen[name] = current
                self.trigger.wake(f"bgpspeaker {name} {str(event.get('type') or 'listed').lower()}")

    def choose(self, node: str, labels: Mapping[str, str], addresses: Iterable[str]) -> tuple[BGPSpeaker | None, str | None, str | None]:
        """This node's speaker by what the watch holds now (see `choose`); a new reason is logged once."""
        speakers = [speaker for store in self._index.values() for speaker in store]
        found = choose(speakers, node, labels, addresses)
        if found[2] != self._said:
            self._said = found[2]
            if found[2] is not None:
                log.warning(kv("BGPSpeaker for this node", node=node, message=found[2]))
            elif found[0] is not None:
                log.info(kv("BGPSpeaker for this node", node=node, speaker=found[0].name))
        return found
