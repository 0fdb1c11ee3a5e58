"""The cluster's BGPSpeakers: which one this node's BIRD uses (`vsop agent --bgp-speakers`).

Owns the kopf index of BGPSpeaker objects (cluster-scoped; parsed, an invalid one is logged once
per version and selects nothing), the handler that wakes the agent when one changes (its spec or
labels; status and heartbeats do not), and `choose`: the speaker whose `nodeSelector` selects this
node (the oldest, then by name, when several do: logged), with this node's first IPv4 InternalIP as
the router ID when the speaker gives none. The peers' passwordSecretRef are read here too
(`SpeakerPasswords`): the named Secrets of the agent's own namespace, one GET each when the speaker
first names them and again once a resync period old (a changed value renders bird.conf again); a
missing Secret or key keeps BIRD's last configuration (the peer is never rendered without its
password) and, as any bird.conf the agent could not apply, is told as a Warning Event on the
BGPSpeaker (`kubectl describe bgpspeaker`). Values never reach a log, an Event or a status. The
agent hands the choice and the passwords to its BIRD announcer (vsop.bgp.writer.BirdAnnouncer.give),
which renders bird.conf again at the next sync.
Must not import: vsop.node, vsop.adapters.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import kopf

from vsop.api.errors import InvalidInput
from vsop.api.model import API_GROUP, API_VERSION
from vsop.api.speaker import SPEAKER_KIND, SPEAKER_PLURAL, BGPSpeaker, parse_bgp_speaker
from vsop.bgp.render import SecretPasswords
from vsop.bgp.writer import BirdAnnouncer
from vsop.kube.client import SERVICE_ACCOUNT_DIR, ApiError, ObjectRef, SecretReader, Writer
from vsop.kube.runtime import ListingGate, Trigger, kv

log = logging.getLogger("vsop.kube.speakers")

SPEAKER_INDEX = "vsop_bgp_speakers"
DEFAULT_NAMESPACE = "vsop-system"
NOT_APPLIED = "BirdConfigNotApplied"  # the Event's reason


def own_namespace(environ: Mapping[str, str] = os.environ, account: Path = Path(SERVICE_ACCOUNT_DIR) / "namespace") -> str:
    """The agent's namespace, where the BGP password Secrets are: $POD_NAMESPACE (deploy/bgp sets it from the
    downward API), else the service account's, else vsop-system."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return account.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


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
    if len(chosen) > 1:
        return chosen[0], router_id, f"BGPSpeakers {', '.join(s.name for s in chosen)} all select node {node}; {chosen[0].name} (the oldest) is used"
    return chosen[0], router_id, None


class SpeakerPasswords:
    """The Secrets a speaker's peers name (passwordSecretRef), in `namespace`: each read when first named
    and again once its last read is `refresh_seconds` old (the agent's resync period: a turn runs at least
    that often); those no longer named are forgotten."""

    def __init__(self, reader: SecretReader | None, namespace: str, refresh_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.reader = reader
        self.namespace = namespace
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        # name -> (when read, ((key, value)...), why it could not be)
        self._read: dict[str, tuple[float, tuple[tuple[str, str], ...], str | None]] = {}

    async def take(self, speaker: BGPSpeaker | None) -> SecretPasswords | None:
        """The passwords for `speaker`'s peers (None: it names no Secret)."""
        names = sorted({p.password_secret_ref.name for p in speaker.spec.peers if p.password_secret_ref is not None}) if speaker else []
        for gone in set(self._read) - set(names):
            del self._read[gone]
        if not names:
            return None
        for name in names:
            if name not in self._read or self.clock() - self._read[name][0] >= self.refresh_seconds:
                self._read[name] = (self.clock(), *await self._fetch(name))
        return SecretPasswords(values=tuple(((name, key), value) for name in names for key, value in self._read[name][1]),
                               problems=tuple((name, why) for name in names if (why := self._read[name][2]) is not None))

    async def _fetch(self, name: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
        where = f"Secret {self.namespace}/{name}"
        if self.reader is None:
            return (), f"{where}: this agent reads no Secrets"
        code, found = await self.reader.read_secret(self.namespace, name)
        if code == 404:
            return (), f"{where} not found (create it: kubectl -n {self.namespace} create secret generic {name} --from-literal=KEY=PASSWORD)"
        if code == 403:
            return (), (f"{where} cannot be read: forbidden (the agent reads the Secrets its Role names: "
                        f"add {name} to resourceNames of vsop-agent-bgp-passwords, deploy/bgp)")
        if not 200 <= code < 300 or not isinstance(found, Mapping):
            return (), f"{where} cannot be read: HTTP {code}: {found}"
        values = []
        for key, encoded in sorted(found.items()):
            try:
                values.append((key, base64.b64decode(encoded, validate=True).decode().rstrip("\r\n")))
            except (binascii.Error, UnicodeDecodeError, ValueError):
                values.append((key, "\x00"))  # refused by the password rule, which names the field and never the value
        return tuple(values), None


class SpeakerWatch:
    """The BGPSpeakers of the cluster, for one node."""

    def __init__(self, trigger: Trigger, gate: ListingGate, passwords: SpeakerPasswords | None = None):
        self.trigger = trigger
        self.gate = gate
        self.passwords = passwords or SpeakerPasswords(None, DEFAULT_NAMESPACE)
        self._index: Any = {}
        self._seen: dict[str, Any] = {}
        self._said: str | None = None
        self._speaker: BGPSpeaker | None = None  # the one given to BIRD last
        self._told: str | None = None  # the last error told as an Event

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

    async def give(self, bird: BirdAnnouncer, node: str, labels: Mapping[str, str], addresses: Iterable[str]) -> None:
        """This node's speaker and its peers' passwords to BIRD's announcer."""
        speaker, router_id, why = self.choose(node, labels, addresses)
        self._speaker = speaker
        bird.give(speaker, router_id, why, await self.passwords.take(speaker))

    async def tell(self, bird: BirdAnnouncer, writer: Writer, node: str) -> None:
        """A new reason this node's bird.conf was not applied (a Secret or key missing, a password BIRD
        cannot carry, BIRD refusing the file): a Warning Event on the speaker. Once per reason."""
        error = bird.last_error if self._speaker is not None else None
        if error == self._told:
            return
        self._told = error
        if error is None or self._speaker is None:
            return
        speaker = self._speaker
        uid = (speaker.metadata.model_extra or {}).get("uid")
        ref = ObjectRef(self.passwords.namespace, speaker.name, uid, kind=SPEAKER_KIND, cluster_scoped=True)
        try:
            await writer.post_event(ref, "Warning", NOT_APPLIED, f"node {node}: {error}; BIRD keeps its last configuration")
        except ApiError as exc:
            log.warning(kv("Event not posted", speaker=speaker.name, reason=NOT_APPLIED, error=str(exc)))
