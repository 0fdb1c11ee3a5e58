"""`vsop apply`, `vsop delete`, `vsop get` and store-aware `vsop plan`: the command line over the host store.

Owns the per-object semantics a kubectl user expects on a plain host: `apply -f b`
never removes what `apply -f a` added (the store keeps every applied object and the
kernel is programmed from the whole store), `--prune` makes the store exactly the
given set, `delete` removes objects (draining TCP real servers first unless --now),
`get` lists what the store holds and whether each object is programmed. Every
command that writes holds the writer lock (vsop.node.lock) for its whole read-plan-write;
`get` and `plan` never take it. Invalid input (exit 2) leaves the store and the
kernel untouched; a store file that stopped validating keeps what the kernel has for
its objects (core.held), exactly as the host agent does.
Must not import: vsop.cli.main, kopf, kubernetes (the kernel adapters arrive through vsop.adapters.real).
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from vsop.core import ops
from vsop.core.desired import Desired
from vsop.core.held import Held
from vsop.core.plan import Plan
from vsop.core.state import KernelState, Names, ServiceKey
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.api.errors import FieldError, InvalidInput
from vsop.node.lock import DEFAULT_WAIT_SECONDS, LockTimeout, lock_path, writer_lock
from vsop.api.model import VirtualService
from vsop.host.store import Store, StoreContents, store_path
from vsop.node import whole
from vsop.cli.common import add_common, add_files, conntrack_notes, load, node, op_json, refuse_problems, report_conntrack, say, subcommand, add_route_table
from vsop.cli.common import names as common_names
from vsop.cli.output import Result, failed


class StoreUnreadable(Exception):
    """The store folder (or part of it) cannot be read: a runtime failure, exit 1."""


def add_store_options(parser: argparse.ArgumentParser, writer: bool) -> None:
    parser.add_argument(
        "--store", metavar="DIR",
        help="the host store: one file per object (default $VSOP_STORE or /etc/vsop/virtualservices.d)",
    )
    if writer:
        parser.add_argument("--lock", metavar="FILE", help="the writer lock (default $VSOP_LOCK or /run/vsop/lock)")
        parser.add_argument(
            "--wait", type=float, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
            help=f"how long to wait for another writer (the agent, another apply) to finish (default {DEFAULT_WAIT_SECONDS:g})",
        )


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "apply",
        "store the objects in the host store and program this host from the whole store",
        "Validate every VirtualService first (nothing is written if one is invalid), store each in\n"
        "the host store (one file per object, written atomically), then program this host from the\n"
        "whole store: objects applied earlier stay, as with kubectl apply. --prune makes the store\n"
        "exactly the given set. Only the difference is applied, in a safe order; a second run\n"
        "changes nothing and says so. Holds the writer lock (a running agent waits). A kernel\n"
        "refusal stops at that operation (exit 1); the next apply (or the agent) converges.",
    )
    add_route_table(p)
    add_files(p)
    p.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    add_common(p)
    add_store_options(p, writer=True)
    p.add_argument("--prune", action="store_true", help="remove from the store (and the kernel) every object not in the files")
    p.add_argument("--allow-empty", action="store_true", help="with --prune: allow input with no VirtualService (empties the node)")

    p = subcommand(
        sub,
        "delete",
        "remove objects from the host store and their state from the kernel",
        "Remove VirtualServices (NAMESPACE/NAME, or those in -f files) from the host store and\n"
        "their services, real servers and VIPs from the kernel. TCP/SCTP real servers with open\n"
        "connections are drained first (weight 0, up to spec.drain.timeoutSeconds) unless --now.\n"
        "Holds the writer lock.",
    )
    add_route_table(p)
    p.add_argument("objects", nargs="*", metavar="NAMESPACE/NAME", help="objects to delete (NAME alone: namespace default)")
    p.add_argument("-f", "--filename", dest="paths", action="append", default=[], metavar="PATH", help="delete the objects these files declare")
    p.add_argument("--now", action="store_true", help="do not drain: delete at once")
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name, for nodeSelector")
    p.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE", help="a label of this node; repeatable")
    add_common(p)
    add_store_options(p, writer=True)

    p = subcommand(
        sub,
        "get",
        "the objects in the host store and whether each is programmed on this host",
        "List the VirtualServices in the host store and, for each, whether it is programmed on\n"
        "this host (or why not). -o yaml|json: a v1/List of the objects with status.store.\n"
        "Reads only; never takes the writer lock.",
    )
    add_route_table(p)
    p.add_argument("objects", nargs="*", metavar="NAMESPACE/NAME", help="only these objects")
    p.add_argument("--node-name", default=socket.gethostname(), help="this node's name, for nodeSelector")
    p.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE", help="a label of this node; repeatable")
    add_common(p, ("text", "yaml", "json"))
    add_store_options(p, writer=False)


def run(args: argparse.Namespace) -> Result:
    return {"apply": apply, "delete": delete, "get": get}[args.command](args)


def locked(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return writer_lock(lock_path(args.lock), args.wait, on_wait=lambda who: say(f"waiting for the writer lock held by {who}"))


@dataclass
class Merged:
    """The store as it would be after the command: what to program and what to keep held."""

    services: list[VirtualService]
    held: Held
    contents: StoreContents


def read_store(store: Store, strict: bool) -> StoreContents:
    contents = store.read()
    if contents.source.folder_errors:
        problems = "; ".join(f"{folder}: {reason}" for folder, reason in contents.source.folder_errors.items())
        if strict:
            raise StoreUnreadable(f"cannot read the store {store.directory}: {problems}")
        say(f"warning: {problems}")
    for path, error in sorted(contents.errors.items()):
        say(f"warning: store file {path}: {error} (what the kernel has for it is kept)")
    return contents


def merge(contents: StoreContents, given: list[VirtualService], store: Store, prune: bool) -> Merged:
    """Store contents with the given objects applied on top (or, pruning, instead)."""
    new = {vs.ref for vs in given}
    misplaced = [
        FieldError(obj=ref, reason=f"is declared in {path}, a store file vsop apply did not write; edit or remove that file")
        for ref, path in contents.files.items()
        if ref in new and not store.canonical(ref, path)
    ]
    if misplaced:
        raise InvalidInput(misplaced)
    if prune:
        return Merged(list(given), Held(), contents)
    kept = [vs for vs in contents.services if vs.ref not in new]
    held = contents.source.held()
    held = Held(held.owners - new, held.unknown, held.known | new)
    return Merged(kept + list(given), held, contents)


def program(
    merged: Merged, node, names: Names, observed: KernelState, kernel_version, new: set[str],  # type: ignore[no-untyped-def]
    loaded=None, keep_accept_ra: bool = False,  # type: ignore[no-untyped-def]
) -> tuple[Desired, Plan]:
    """The store as it will be, through the whole-node pipeline: the objects being applied (`new`)
    must be programmable (invalid input otherwise); older ones only warn."""
    def check(desired: Desired) -> None:
        refuse_problems(Desired(desired.state, desired.programmed, tuple(p for p in desired.problems if p.obj in new)), loaded)
        for problem in desired.problems + desired.warnings:
            if problem.obj not in new:
                say(f"warning: VirtualService {problem.obj}: {problem.reason}: {problem.message}")

    desired = whole.derive(merged.services, node, observed, names=names, kernel_version=kernel_version)
    desired, result = whole.program(desired, observed, names, held=merged.held, keep_accept_ra=keep_accept_ra, check=check)
    refuse_problems(result, loaded)
    return desired, result


def apply(args: argparse.Namespace) -> Result:
    from vsop.adapters.kernel import read_observed, running_kernel_version
    from vsop.node.execute import ExecutionFailed, probe
    from vsop.adapters.real import real_kernel

    names = common_names(args)
    loaded = load(args)  # invalid input stops here: nothing read, nothing written
    this_node = node(args)
    store = Store(store_path(args.store))
    new = {vs.ref for vs in loaded.services}
    if args.prune and not loaded.services and not args.allow_empty:
        raise InvalidInput([FieldError(reason="--prune with no VirtualService would empty this node; add --allow-empty to mean it")])

    def refused(exc: ExecutionFailed) -> Result:
        return failed(
            f"stored {len(loaded.services)} object(s) in {store.directory}; programming the kernel failed at operation"
            f" {exc.applied + 1} of {len(result.ops)}: {exc}; the {exc.applied} operation(s) before it were applied;"
            " fix the cause and apply again (a running agent retries by itself)",
            failed=op_json(exc.op), reason=exc.reason, applied=exc.applied,
        )

    with locked(args):
        contents = read_store(store, strict=True)
        merged = merge(contents, loaded.services, store, args.prune)
        kernel = real_kernel()
        observed = read_observed(kernel, names)
        desired, result = program(merged, this_node, names, observed, running_kernel_version(), new, loaded, args.keep_accept_ra)
        probe(kernel, result, names)  # a kernel that cannot do it refuses before the store changes
        stored = store.write(loaded.services)
        pruned: list[Path] = []
        if args.prune:
            keep = {store.path_for(ref) for ref in new}
            pruned = store.remove(path for path in sorted(contents.source.files) if path not in keep)
        stale: list[str] = []
        executed = execute_saying(kernel, result, names, observed, stale, refused)
    if isinstance(executed, Result):
        return executed
    writes, applied = executed
    document = {
        "changed": bool(applied) or bool(stored) or bool(pruned),
        "writes": writes,
        "stored": stored,
        "pruned": [str(p) for p in pruned],
        "counts": result.counts(),
        "operations": [op_json(op) for op in applied],
        **({"conntrackFailures": stale} if stale else {}),
    }
    total = len(desired.programmed)
    if not applied and not stored and not pruned:
        return Result(text=f"vsop: nothing changed: {total} VirtualService(s) already programmed on {args.node_name} (0 writes)\n", document=document)
    counts = ", ".join(f"{kind} {count}" for kind, count in result.counts().items())
    store_note = f"store {store.directory}: {len(stored)} object(s) written" + (f", {len(pruned)} file(s) pruned" if pruned else "")
    text = (
        f"vsop: {store_note}\n"
        f"vsop: applied {len(applied)} operation(s) for {total} VirtualService(s) on {args.node_name}" + (f": {counts}" if counts else "") + "\n"
        + _operations_text(applied)
    )
    return Result(text=text, document=document)


def execute_saying(
    kernel, the_plan: Plan, names: Names, observed: KernelState, stale: list[str], refused: Callable[[Any], Result],  # type: ignore[no-untyped-def]
) -> tuple[int, list[ops.Op]] | Result:
    """Execute the plan, saying on stderr which UDP conntrack entries could not be forgotten (collected
    in `stale`): at once, or, when the kernel refused an operation, after `refused` said so."""
    from vsop.node.execute import ExecutionFailed, execute

    try:
        return execute(kernel, the_plan, names, observed=observed, conntrack_failures=stale)
    except ExecutionFailed as exc:
        notes = conntrack_notes(stale)
        stale.clear()  # said after the failure, not before it
        return replace(refused(exc), notes=notes)
    finally:
        report_conntrack(stale)


def _operations_text(applied: list[ops.Op]) -> str:
    return "".join(f"  {op.kind:<18} {op.describe()}\n" for op in applied)


def _refs_to_delete(args: argparse.Namespace) -> list[str]:
    refs: list[str] = []
    problems: list[FieldError] = []
    for item in args.objects:
        namespace, sep, name = item.rpartition("/")
        if not name:
            problems.append(FieldError(path="NAMESPACE/NAME", reason=f"got {item!r}"))
            continue
        refs.append(f"{namespace or 'default'}/{name}")
    if args.paths:
        refs += [vs.ref for vs in load(args).services]
    if problems:
        raise InvalidInput(problems)
    if not refs:
        raise InvalidInput([FieldError(reason="name the objects to delete: NAMESPACE/NAME... or -f PATH...")])
    return list(dict.fromkeys(refs))


def delete(args: argparse.Namespace) -> Result:
    from vsop.adapters.kernel import read_observed, running_kernel_version
    from vsop.adapters.real import real_kernel

    names = common_names(args)
    refs = _refs_to_delete(args)
    this_node = node(args)
    store = Store(store_path(args.store))

    def refused(exc: Any) -> Result:
        return failed(f"removed {len(refs)} object(s) from the store; the kernel refused: {exc}; apply again to converge", applied=exc.applied)

    with locked(args):
        contents = read_store(store, strict=True)
        declared = {**{ref: path for ref, path in contents.files.items()}}
        missing = [ref for ref in refs if ref not in declared]
        if missing:
            raise InvalidInput([FieldError(obj=ref, reason=f"not in the store {store.directory}") for ref in missing])
        foreign = [ref for ref in refs if not store.canonical(ref, declared[ref])]
        if foreign:
            raise InvalidInput(
                [FieldError(obj=ref, reason=f"is declared in {declared[ref]}, which holds more than vsop wrote; edit that file") for ref in foreign]
            )
        gone = set(refs)
        remaining = [vs for vs in contents.services if vs.ref not in gone]
        held = contents.source.held()
        merged = Merged(remaining, Held(held.owners - gone, held.unknown, held.known | gone), contents)
        kernel = real_kernel()
        observed = read_observed(kernel, names)
        drained = 0.0
        if not args.now:
            drained = _drain(kernel, observed, contents.services, gone, names, args)
            observed = read_observed(kernel, names)
        desired, result = program(merged, this_node, names, observed, running_kernel_version(), set())
        store.remove(declared[ref] for ref in refs)
        executed = execute_saying(kernel, result, names, observed, [], refused)
    if isinstance(executed, Result):
        return executed
    writes, applied = executed
    text = "".join(f"vsop: deleted VirtualService {ref}" + (f" (drained {drained:.1f}s)" if drained >= 0.05 else "") + "\n" for ref in refs)
    return Result(
        text=text + f"vsop: {len(applied)} kernel operation(s)\n" + _operations_text(applied),
        document={"deleted": refs, "writes": writes, "drainedSeconds": round(drained, 3), "operations": [op_json(op) for op in applied]},
    )


def _drain(kernel, observed: KernelState, services: list[VirtualService], gone: set[str], names: Names, args: argparse.Namespace) -> float:  # type: ignore[no-untyped-def]
    """Weight 0 for the deleted objects' TCP/SCTP real servers, then wait for their established connections."""
    from vsop.adapters.kernel import read_observed
    from vsop.node.execute import execute

    keys: set[ServiceKey] = set()
    grace = 0.0
    for vs in services:
        if vs.ref in gone:
            grace = max(grace, float(vs.spec.drain.timeout_seconds))
            keys |= {ServiceKey(p.protocol.lower(), vs.spec.vip, p.port) for p in vs.spec.ports if p.protocol != "UDP"}  # type: ignore[arg-type]
    busy = [rs for rs in observed.real_servers.values() if rs.key.service in keys and rs.active_connections > 0]
    if not busy:
        return 0.0
    edits = [ops.EditRealServer(replace(rs, weight=0)) for rs in observed.real_servers.values() if rs.key.service in keys and rs.weight > 0]
    execute(kernel, Plan(tuple(edits)), names, observed=observed)
    say(f"draining {len(busy)} real server(s) with open connections (up to {grace:g}s; --now skips this)")
    started = time.monotonic()
    while time.monotonic() - started < grace:
        current = read_observed(kernel, names)
        if not any(rs.active_connections for rs in current.real_servers.values() if rs.key.service in keys):
            break
        time.sleep(0.5)
    return time.monotonic() - started


def programmed_state(vs: VirtualService, desired: Desired, observed: KernelState, names: Names) -> str:
    """'yes', or why not, for one stored object against the kernel."""
    from vsop.core.plan import owned

    problem = next((p for p in desired.problems if p.obj == vs.ref), None)
    if problem is not None:
        return f"no: {problem.reason}: {problem.message}"
    if vs.ref not in desired.programmed:
        return "no: not for this node (nodeSelector)"
    mine = owned(observed, names)
    for key, service in desired.state.services.items():
        if service.owner != vs.ref:
            continue
        if key not in mine.services:
            return f"no: IPVS service {key} missing"
        wanted = {k for k in desired.state.real_servers if k.service == key}
        have = {k for k in mine.real_servers if k.service == key}
        if wanted - have:
            return f"no: real server {sorted(wanted - have)[0]} missing from {key}"
    for set_name, ipset in desired.state.ipsets.items():
        for member, owner in ipset.members.items():
            present = mine.ipsets.get(set_name)
            if owner == vs.ref and (present is None or member not in present.members):
                return f"no: {member} missing from ipset {set_name}"
    return "yes"


def get(args: argparse.Namespace) -> Result:
    names = common_names(args)
    store = Store(store_path(args.store))
    contents = read_store(store, strict=False)
    wanted = set(args.objects)
    services = [vs for vs in contents.services if not wanted or vs.ref in wanted or vs.metadata.name in wanted]
    observed: KernelState | None = None
    reason = ""
    try:
        from vsop.adapters.kernel import read_observed, running_kernel_version
        from vsop.adapters.real import real_kernel

        observed = read_observed(real_kernel(), names)
    except Exception as exc:  # noqa: BLE001 - `get` still lists the store when the kernel cannot be read
        reason = f"unknown: cannot read the kernel ({exc})"
    rows = []
    if observed is not None:
        desired = whole.derive(contents.services, node(args), observed, names=names, kernel_version=running_kernel_version())
    for vs in services:
        state = programmed_state(vs, desired, observed, names) if observed is not None else reason
        rows.append((vs, state, contents.files.get(vs.ref)))
    return Result(text=lambda: _get_text(rows, contents.errors, store), document=lambda: _get_document(rows, contents.errors, store))


Row = tuple[VirtualService, str, Path | None]  # the object, programmed or why not, its file


def _get_document(rows: list[Row], errors: dict[str, str], store: Store) -> dict[str, object]:
    """A v1/List of the stored objects, each with status.store (-o json, -o yaml)."""
    from vsop.host.store import document

    items = [
        {**document(vs), "status": {"store": {"file": str(path), "programmed": state == "yes", "message": "" if state == "yes" else state}}}
        for vs, state, path in rows
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"store": str(store.directory), "errors": errors}}


def _get_text(rows: list[Row], errors: dict[str, str], store: Store) -> str:
    if not rows and not errors:
        return f"No VirtualServices in the store {store.directory}.\n"
    width = max([len(vs.ref) for vs, _, _ in rows] + [len("NAMESPACE/NAME")])
    lines = [f"{'NAMESPACE/NAME':<{width}}  {'VIP':<16} {'PORTS':<20} PROGRAMMED"]
    for vs, state, _ in rows:
        ports = ",".join(f"{p.port}/{p.protocol}" for p in vs.spec.ports)
        lines.append(f"{vs.ref:<{width}}  {vs.spec.vip:<16} {ports:<20} {state}")
    lines += [f"error: {path}: {error}" for path, error in sorted(errors.items())]
    return "".join(line + "\n" for line in lines)


def plan_services(args: argparse.Namespace, given: list[VirtualService]) -> tuple[list[VirtualService], Held]:
    """For `vsop plan` against this host: the store with the given files applied on top."""
    store = Store(store_path(getattr(args, "store", None)))
    contents = read_store(store, strict=False)
    merged = merge(contents, given, store, getattr(args, "prune", False))
    return merged.services, merged.held


__all__ = ["LockTimeout", "StoreUnreadable", "add_store_options", "apply", "delete", "get", "plan_services", "register", "run"]
