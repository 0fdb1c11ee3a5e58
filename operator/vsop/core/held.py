"""Keeping what the kernel has for objects that are declared but cannot be used right now.

Owns the rule "an object that is still declared but invalid (or caught half-written,
or unreadable) keeps what the kernel has for it". Ownership already lives in the
kernel: every ipset member's comment names the VirtualService it serves. So a source
that knows which owners are declared-but-unusable (and, when some declaration could
not be read at all, which owners it knows to be really gone) lets any agent tell
"owner declared but invalid" (keep its VIP, IPVS services, real servers and members,
report it) from "owner gone" (remove), also right after a restart, with no in-memory
last good state. The host agent, `vsop apply` and the in-cluster agent all use it.

When a valid object claims a VIP:port that a held owner still serves, the held owner
keeps it (it is what is being served, and the older claim) and the newcomer is
refused whole with a Conflict problem, as `resolve_conflicts` refuses the newer object.
Pure: must not import kopf, pyroute2, jinja2, subprocess, socket or vsop.adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import AbstractSet, Callable, Iterable

from vsop.core.desired import MAX_IPSET_COMMENT, Desired, Problem, ipset_comment
from vsop.core.plan import jump_target
from vsop.core.state import (
    ChainKey,
    IPSet,
    Jump,
    KernelState,
    LinkState,
    Names,
    RealServer,
    RealServerKey,
    ServiceKey,
    VirtualServer,
    host_prefix,
    hostport,
    member_service,
)


@dataclass(frozen=True)
class Held:
    """What a source could not use, for `keep_held`.

    `owners`: refs ("namespace/name") still declared whose definition is unusable now.
    `unknown`: some declaration could not be read at all (a missing folder, an
    unreadable file, a file not yet stable), so any owner in the kernel might be
    declared there: every kernel owner not in `known` is held too.
    `known`: refs the source accounts for (declared and loaded, or seen removed).
    """

    owners: frozenset[str] = frozenset()
    unknown: bool = False
    known: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.owners) or self.unknown


parse_member = member_service
_FITS = MAX_IPSET_COMMENT // 4  # characters: a ref this long or shorter is its own comment (UTF-8: 4 bytes at most each)


def kernel_owners(observed: KernelState, names: Names) -> dict[str, frozenset[str]]:
    """Owner comment -> the members (in vsop's sets) whose comment it is. The comment is the owner's
    ref, or for a ref over 255 bytes its `ipset_comment` (compare with that, not the ref)."""
    found: dict[str, set[str]] = {}
    for set_name, ipset in observed.ipsets.items():
        if set_name not in names.owned_set_names():
            continue
        for member, comment in ipset.members.items():
            if comment:
                found.setdefault(comment, set()).add(f"{set_name} {member}")
    return {owner: frozenset(members) for owner, members in found.items()}


def held_owners(observed: KernelState, held: Held, names: Names, programmed: Iterable[str] = (),
                present: AbstractSet[str] | None = None) -> frozenset[str]:
    """The kernel owners (as their members' comments name them) whose state must be kept: held by
    name, or unaccounted for while something is unreadable. `present`: the owners `observed`'s
    comments name, when the caller keeps them counted (vsop.node.cache; counting them here costs
    every member)."""
    present = set(kernel_owners(observed, names)) if present is None else present
    keep = _comments(held.owners) & present
    if held.unknown:
        keep |= _not_named(present, held.known)
    return frozenset(_not_named(keep, programmed))


def _comments(refs: Iterable[str]) -> set[str]:
    """`ipset_comment` of each ref, with no call for a ref that surely fits: at most 63 characters
    are at most 252 bytes in UTF-8."""
    return {ref if len(ref) <= _FITS else ipset_comment(ref) for ref in refs}


def _not_named(comments: AbstractSet[str], refs: Iterable[str]) -> set[str]:
    """The comments that no ref among `refs` names. A ref is its own comment unless shortened, so a
    set difference takes most, and only what remains is compared with the shortened refs: the
    comments of every known and programmed ref (20,000 at 10k services) were 4 ms of each of a
    rewritten file's two turns natively, for the one or two owners held."""
    rest = set(comments).difference(refs)
    if rest:
        rest.difference_update(_shortened(refs))
    return rest


def _shortened(refs: Iterable[str]) -> dict[str, str]:
    """The comment of each ref that may not fit whole -> that ref (a ref that fits is its own comment)."""
    return {ipset_comment(ref): ref for ref in refs if len(ref) > _FITS}


def _refs_of(refs: Iterable[str]) -> Callable[[str], str]:
    """A comment back to the ref it names among `refs`; a comment no ref shortens to is its own ref.
    Only a shortened comment (vsop.core.desired.ipset_comment: with `~`, which a Kubernetes name never
    has) needs the refs, mapped at the first one: mapped for every known and programmed ref up front,
    they were 17 ms of a rewritten file's turn at 10k services natively."""
    shortened: dict[str, str] | None = None

    def ref_of(comment: str) -> str:
        nonlocal shortened
        if "~" not in comment:
            return comment
        if shortened is None:
            shortened = _shortened(refs)
        return shortened.get(comment, comment)

    return ref_of


def keep_held(desired: Desired, observed: KernelState, held: Held, names: Names = Names()) -> Desired:
    """`desired` plus what `observed` holds for every held owner, untouched.

    Held owners keep their bound VIPs, IPVS services (scheduler, persistence), real
    servers (weights as they are) and ipset members. A family no valid object uses
    any more keeps vsop's observed chains and jumps, so the held VIPs still pass.
    """
    owners = held_owners(observed, held, names, desired.programmed)
    if not owners:
        return desired
    # A comment back to its ref, for the refs this source knows (a ref over 255 bytes is shortened).
    ref_of = _refs_of((*held.owners, *held.known, *desired.programmed))
    bound = observed.bound_vips() if observed.link is not None and observed.link.name == names.link else frozenset()
    kept_members, kept_services, kept_vips = _kept_members(observed, owners, names)

    losers = _conflict_losers(desired.state, kept_services, ref_of, names)
    state = desired.state
    for loser in losers:
        state = without_owner(state, loser, names)

    services, real_servers = _keep_services(state, observed, kept_services, bound, ref_of)
    addresses, routes = _keep_vips(state, observed, kept_vips, bound)
    ipsets, chains, jumps = _keep_sets_and_rules(state, observed, kept_members, names)

    link = state.link
    if addresses and link is None:
        link = LinkState(names.link, up=observed.link.up if observed.link is not None else True)
    new_state = replace(
        state,
        link=link,
        addresses=frozenset(addresses),
        services=services,
        real_servers=real_servers,
        ipsets=ipsets,
        chains=chains,
        jumps=frozenset(jumps),
        routes=frozenset(routes),
    )
    kept = tuple(
        Problem(ref_of(owner), "KeptInvalid", "declared but its definition cannot be used; keeping what the kernel has for it")
        for owner in sorted(owners)
    )
    programmed = tuple(ref for ref in desired.programmed if ref not in losers)
    return replace(
        desired,
        state=new_state,
        programmed=programmed,
        problems=desired.problems + tuple(losers.values()),
        warnings=desired.warnings + kept,
        configured={k: v for k, v in desired.configured.items() if v not in losers},
    )


def _kept_members(
    observed: KernelState, owners: frozenset[str], names: Names
) -> tuple[dict[str, dict[str, str]], dict[ServiceKey, str], dict[str, str]]:
    """The held owners' members in vsop's observed sets (set name -> member -> owner), and from
    them the IPVS services (VIP:port members) and VIPs they serve, each with its owner."""
    kept_members: dict[str, dict[str, str]] = {}
    kept_services: dict[ServiceKey, str] = {}
    kept_vips: dict[str, str] = {}
    for set_name, ipset in observed.ipsets.items():
        if set_name not in names.owned_set_names():
            continue
        base = set_name[:-3] if set_name.endswith("-V6") else set_name
        for member, owner in ipset.members.items():
            if owner not in owners:
                continue
            kept_members.setdefault(set_name, {})[member] = owner
            if base == names.vips_set:
                kept_vips[member] = owner
            elif base == names.vip_ports_set:
                key = parse_member(member)
                if key is not None:
                    kept_services[key] = owner
    return kept_members, kept_services, kept_vips


def _conflict_losers(
    state: KernelState, kept_services: dict[ServiceKey, str], ref_of: Callable[[str], str], names: Names
) -> dict[str, Problem]:
    """A valid newcomer claiming what a held owner serves is refused whole: its ref -> the Conflict."""
    losers: dict[str, Problem] = {}
    for key, owner in kept_services.items():
        current = state.services.get(key)
        claimant = current.owner if current is not None else _member_owner(state, key, names)
        claimant = ref_of(claimant)
        if claimant and ipset_comment(claimant) != owner and claimant not in losers:
            losers[claimant] = Problem(
                claimant, "Conflict",
                f"{hostport(key.vip, key.port)}/{key.protocol.upper()} is still served for VirtualService {ref_of(owner)}, which is declared but invalid; fix or remove it first",
            )
    return losers


def _keep_services(
    state: KernelState,
    observed: KernelState,
    kept_services: dict[ServiceKey, str],
    bound: frozenset[str],
    ref_of: Callable[[str], str],
) -> tuple[dict[ServiceKey, VirtualServer], dict[RealServerKey, RealServer]]:
    """`state`'s IPVS services and real servers plus the held ones on bound VIPs, as the kernel has them."""
    services = dict(state.services)
    real_servers = dict(state.real_servers)
    kept: set[ServiceKey] = set()
    for key, owner in kept_services.items():
        if key.vip not in bound:
            continue
        found = observed.services.get(key)
        if found is None:
            continue  # a delegated (keepalived) service or one already gone: nothing of ours to keep
        services[key] = VirtualServer(key, found.scheduler, found.persistence_timeout, ref_of(owner))
        kept.add(key)
    if kept:  # one walk of the real servers, not one per kept service (20,000 each at 10k services)
        for rs_key, rs in observed.real_servers.items():
            if rs_key.service in kept:
                real_servers[rs_key] = rs
    return services, real_servers


def _keep_vips(
    state: KernelState, observed: KernelState, kept_vips: dict[str, str], bound: frozenset[str]
) -> tuple[set[str], set[str]]:
    """`state`'s addresses and routes plus the held VIPs still bound (and routes still announced)."""
    addresses = set(state.addresses)
    routes = set(state.routes)
    for vip in kept_vips:
        if vip in bound:
            addresses.add(host_prefix(vip))
            if host_prefix(vip) in observed.routes:  # still announced as the kernel has it
                routes.add(host_prefix(vip))
    return addresses, routes


def _keep_sets_and_rules(
    state: KernelState, observed: KernelState, kept_members: dict[str, dict[str, str]], names: Names
) -> tuple[dict[str, IPSet], dict[ChainKey, tuple[str, ...]], set[Jump]]:
    """`state`'s sets with the held members added, and for a family only held owners use,
    its sets, chains and jumps as the kernel has them."""
    ipsets = dict(state.ipsets)
    chains = dict(state.chains)
    jumps = set(state.jumps)
    families_present = {s.family for s in state.ipsets.values()}
    for set_name, members in kept_members.items():
        current = ipsets.get(set_name)
        if current is None:
            source = observed.ipsets[set_name]
            current = IPSet(set_name, source.kind, source.family, {}, source.comments)
        ipsets[set_name] = replace(current, members={**current.members, **members})
    for family in {observed.ipsets[name].family for name in kept_members} - families_present:
        # No valid object of this family is left: keep every set of the family and vsop's
        # chains and jumps as the kernel has them, or the held VIPs would stop passing.
        for set_name, source in observed.ipsets.items():
            if set_name in names.owned_set_names() and source.family == family and set_name not in ipsets:
                ipsets[set_name] = IPSet(set_name, source.kind, source.family, {}, source.comments)
        owned_chains = names.owned_chains()
        chains.update({k: v for k, v in observed.chains.items() if k.family == family and k.chain in owned_chains})
        jumps |= {j for j in observed.jumps if j.family == family and jump_target(j.rule) in owned_chains}
    return ipsets, chains, jumps


def _member_owner(state: KernelState, key: ServiceKey, names: Names) -> str:
    """Who claims key in a desired state's VIP:port set (covers objects whose IPVS service is delegated)."""
    ipset = state.ipsets.get(names.set_name(names.vip_ports_set, key.family))
    if ipset is None:
        return ""
    return ipset.members.get(f"{key.vip},{key.protocol}:{key.port}", "")


def without_owner(state: KernelState, owner: str, names: Names = Names()) -> KernelState:
    """A desired state with one object's share taken out: services, real servers, members, unused VIPs."""
    services = {k: v for k, v in state.services.items() if v.owner != owner}
    owner = ipset_comment(owner)  # from here on, members: named by their comment
    gone = {k for k in state.services if k not in services}
    # Its keepalived (delegated) services are known by their VIP:port members only. Left
    # delegated, the key would hide a held owner's IPVS service from the plan, which would
    # then add it again ("File exists").
    delegated = frozenset(k for k in state.delegated if _member_owner(state, k, names) != owner)
    real_servers = {k: v for k, v in state.real_servers.items() if k.service not in gone}
    ipsets: dict[str, IPSet] = {}
    for set_name, ipset in state.ipsets.items():
        ipsets[set_name] = replace(ipset, members={m: o for m, o in ipset.members.items() if o != owner})
    still_used: dict[str, str] = {}
    for set_name, ipset in ipsets.items():
        base = set_name[:-3] if set_name.endswith("-V6") else set_name
        if base in (names.vip_ports_set, names.nomasq_set):
            for member, other in ipset.members.items():
                key = parse_member(member)
                if key is not None:
                    still_used.setdefault(key.vip, other)
    for set_name, ipset in list(ipsets.items()):
        base = set_name[:-3] if set_name.endswith("-V6") else set_name
        if base != names.vips_set:
            continue
        members = dict(ipset.members)
        original = state.ipsets[set_name].members
        for vip, other in original.items():
            if other == owner and vip in still_used:
                members[vip] = still_used[vip]  # a VIP shared with another object stays, now in its name
        ipsets[set_name] = replace(ipset, members=members)
    vips_left = {m for name, s in ipsets.items() if (name[:-3] if name.endswith("-V6") else name) == names.vips_set for m in s.members}
    addresses = frozenset(a for a in state.addresses if a.split("/")[0] in vips_left)
    return replace(
        state,
        services=services,
        real_servers=real_servers,
        ipsets=ipsets,
        addresses=addresses,
        delegated=delegated,
        routes=frozenset(r for r in state.routes if r in addresses),
    )

