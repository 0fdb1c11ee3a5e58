"""`vsop apply`, `vsop delete`, `vsop get` and store-aware `vsop plan`: the command line over the host store.

Owns the per-object semantics a kubectl user expects on a plain host: `apply -f b`
never removes what `apply -f a` added (the store keeps every applied object and the
kernel is programmed from the whole store), `--prune` makes the store exactly the
given set, `delete` removes objects (draining TCP real servers first unless --now),
`get` lists what the store holds and whether each object is programmed. Objects are
named as kubectl names them: a bare NAME is in -n NAMESPACE (default: default) on get and
delete alike, NAMESPACE/NAME names its own, and one missing from the store is NotFound
(exit 1). Every
command that writes holds the writer lock (vsop.node.lock) for its whole read-plan-write;
`delete` lets go of it while it waits for connections to drain (its objects stay in the store
at weight 0 meanwhile) and takes it again to delete them; `get` and `plan` never take it.
`apply` and `delete` plan with the running agent's health verdicts and drains
(vsop.cli.verdicts), so they never put back a real server its checks took out nor delete one
it is draining. Invalid input (exit 2) leaves the store and the kernel untouched; a store
file that stopped validating keeps what the kernel has for its objects (core.held), exactly
as the host agent does.
Must not import: vsop.cli.main, kopf, kubernetes (the kernel adapters arrive through vsop.adapters.real).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from vsop.core import ops
from vsop.core.claims import HOST_RULE, ClaimRule
from vsop.core.desired import Desired
from vsop.core.held import Held
from vsop.core.plan import Plan
from vsop.core.state import KernelState, Names, ServiceKey
from vsop.core.sysctls import KEEP_ACCEPT_RA_HELP
from vsop.api.errors import FieldError, InvalidInput, printable
from vsop.node.lock import LockTimeout, lock_path, writer_lock
from vsop.api.model import VirtualService, is_dns_label
from vsop.host.store import Store, StoreContents, store_path
from vsop.node import whole
from vsop.cli.common import (
    add_claim_flags, add_common, add_dry_run, add_files, claim_rule, add_lock_options, add_route_table, add_node, conntrack_notes, load, node, op_json, refuse_problems, report_conntrack, say,
    subcommand,
)
from vsop.cli.common import names as common_names
from vsop.cli.output import EXITS, Result, exits, failed
from vsop.cli.verdicts import AgentView, add_state_option, announce, read_view, state_file


class StoreUnreadable(Exception):
    """The store folder (or part of it) cannot be read: a runtime failure, exit 1."""


def add_store_options(parser: argparse.ArgumentParser, writer: bool) -> None:
    parser.add_argument(
        "--store", metavar="DIR",
        help="the host store: one file per object (default $VSOP_STORE or /etc/vsop/virtualservices.d)",
    )
    if writer:
        add_lock_options(parser)
        add_state_option(parser)


def add_namespace(parser: argparse.ArgumentParser, every: bool) -> None:
    """-n (and, to list, -A): the namespace of a bare NAME, as kubectl's."""
    parser.add_argument(
        "-n", "--namespace", default="default", metavar="NAMESPACE",
        help="the namespace of a bare NAME (default: default); NAMESPACE/NAME names its own" + ("; without NAMEs, list only it" if every else ""),
    )
    if every:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace (NAMEs must then be NAMESPACE/NAME)")
    parser.add_argument("--ignore-not-found", action="store_true", help="a named object missing from the store is not an error (exit 0)")


NOT_FOUND_EXIT = "a named object is not in the store (NotFound; --ignore-not-found: 0)"


def register(sub: Any) -> None:
    p = subcommand(
        sub,
        "apply",
        "store the objects in the host store and program this host from the whole store",
        "Validate every VirtualService first (nothing is written if one is invalid), store each in\n"
        "the host store (one file per object, written atomically), then program this host from the\n"
        "whole store: objects applied earlier stay, as with kubectl apply. --prune makes the store\n"
        "exactly the given set. Only the difference is applied, in a safe order; a second run\n"
        "changes nothing and says so. Holds the writer lock (a running agent waits). Real servers\n"
        "the agent's health checks took out stay at weight 0 and those it drains stay (--state-file).\n"
        "A kernel refusal stops at that operation (exit 1); the next apply (or the agent) converges.\n"
        "The output of `vsop get -o yaml` (and `kubectl get -o yaml`) is valid input: status and the\n"
        "metadata a server sets (uid, resourceVersion, managedFields, generation) are ignored.\n"
        "--dry-run prints what `vsop plan` of the same files prints, and writes nothing.",
        exits(ok="done (also when nothing changed); with --dry-run, the plan printed"),
    )
    add_route_table(p)
    add_files(p)
    p.add_argument("--keep-accept-ra", action="store_true", help=KEEP_ACCEPT_RA_HELP)
    add_claim_flags(p)
    add_common(p)
    add_store_options(p, writer=True)
    p.add_argument("--prune", action="store_true", help="remove from the store (and the kernel) every object not in the files")
    p.add_argument("--allow-empty", action="store_true", help="with --prune: allow input with no VirtualService (empties the node)")
    add_dry_run(p, "print what `vsop plan` of the same files would")

    p = subcommand(
        sub,
        "delete",
        "remove objects from the host store and their state from the kernel",
        "Remove VirtualServices (NAME in -n NAMESPACE, NAMESPACE/NAME, or those in -f files) from the\n"
        "host store and their services, real servers and VIPs from the kernel. TCP/SCTP real servers\n"
        "with open connections are drained first (weight 0, up to spec.drain.timeoutSeconds) unless\n"
        "--now. While it drains, the objects stay in the store at weight 0 (annotation vsop.dev/deleting)\n"
        "and the writer lock is free, so a running agent keeps syncing; each write holds the lock.\n"
        "Every named object must be in the store, or nothing is deleted.\n"
        "--dry-run prints the plan (as `vsop plan` does) and writes nothing.",
        exits(ok="deleted; with --dry-run, the plan printed", failure=f"{NOT_FOUND_EXIT}, nothing deleted; or {EXITS[1]}"),
    )
    add_route_table(p)
    p.add_argument("objects", nargs="*", metavar="NAME", help="objects to delete: NAME (in -n NAMESPACE) or NAMESPACE/NAME")
    p.add_argument("-f", "--filename", dest="paths", action="append", default=[], metavar="PATH", help="delete the objects these files declare")
    add_namespace(p, every=False)
    p.add_argument("--now", action="store_true", help="do not drain: delete at once")
    add_node(p)
    add_common(p)
    add_store_options(p, writer=True)
    add_dry_run(p, "print the plan of the deletion")

    p = subcommand(
        sub,
        "get",
        "the objects in the host store and whether each is programmed on this host",
        "List the VirtualServices in the host store (namespace -n, default: default; -A: every\n"
        "namespace) and, for each, whether it is programmed on this host (or why not).\n"
        "-o wide adds mode, scheduler, real servers and the file; -o name prints NAMESPACE/NAME, the\n"
        "form every vsop command takes; -o yaml|json: the object (one NAME) or a v1/List, each with\n"
        "status.store, valid input for `vsop apply` (status is ignored there, as kubectl's is).\n"
        "A store file that does not validate is said once, on stderr. Reads only; never takes the\n"
        "writer lock.",
        exits(ok="listed (also an empty store)", failure=NOT_FOUND_EXIT, invalid="invalid usage (a bare NAME with -A, a bad -n)"),
    )
    add_route_table(p)
    p.add_argument("objects", nargs="*", metavar="NAME", help="only these: NAME (in -n NAMESPACE) or NAMESPACE/NAME")
    add_namespace(p, every=True)
    add_node(p)
    add_common(p, ("text", "wide", "name", "yaml", "json"))
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


def read_store(store: Store, strict: bool, quiet: bool = False) -> StoreContents:
    """The store's contents; each file (or folder) that cannot be used said once, on stderr
    (`quiet`: the caller says them, see store_problems), or, `strict`, an unreadable folder is a failure."""
    contents = store.read()
    if contents.source.folder_errors and strict:
        problems = "; ".join(f"{folder}: {reason}" for folder, reason in contents.source.folder_errors.items())
        raise StoreUnreadable(f"cannot read the store {store.directory}: {problems}")
    if not quiet:
        for line in store_problems(contents):
            say(line)
    return contents


def store_problems(contents: StoreContents) -> list[str]:
    """One line per store file or folder that is not used, in one voice: `warning: FILE:LINE: why`."""
    lines = []
    folders = {str(folder) for folder in contents.source.folder_errors}
    for path, error in contents.errors.items():
        where = error if error.startswith(path) else f"{path}: {error}"
        what = "store folder" if path in folders else "store file"
        lines.append(f"warning: {what} {where} (what the kernel has for its objects is kept)")
    return lines


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
    loaded=None, keep_accept_ra: bool = False, view: AgentView | None = None, rule: ClaimRule = HOST_RULE,  # type: ignore[no-untyped-def]
    liberal: bool = False,
) -> tuple[Desired, Plan]:
    """The store as it will be, through the whole-node pipeline: the objects being applied (`new`)
    must be programmable (invalid input otherwise); older ones only warn. `view`: the running
    agent's health verdicts and drains (vsop.cli.verdicts), kept as the agent keeps them."""
    def check(desired: Desired) -> None:
        refuse_problems(Desired(desired.state, desired.programmed, tuple(p for p in desired.problems if p.obj in new)), loaded)
        for problem in desired.problems + desired.warnings:
            if problem.obj not in new:
                say(f"warning: VirtualService {problem.obj}: {problem.reason}: {problem.message}")

    view = view or AgentView()
    desired = whole.derive(merged.services, node, observed, names=names, kernel_version=kernel_version, out_of_service=view.out_of_service,
                           rule=rule, liberal=liberal)
    desired, result = whole.program(
        desired, observed, names, held=merged.held, keep_accept_ra=keep_accept_ra, check=check, drain=view.drain(merged.services, names),
    )
    refuse_problems(result, loaded)
    announce(view, desired.state)
    return desired, result


def apply(args: argparse.Namespace) -> Result:
    from vsop.adapters.kernel import conntrack_tcp_liberal, read_observed, running_kernel_version
    from vsop.node.execute import ExecutionFailed, probe
    from vsop.adapters.real import real_kernel

    names = common_names(args)
    loaded = load(args)  # invalid input stops here: nothing read, nothing written
    this_node = node(args)
    rule = claim_rule(args)  # a malformed --allow-vip stops here too
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
        view = read_view(state_file(args))  # under the lock: the agent's last turn
        desired, result = program(merged, this_node, names, observed, running_kernel_version(), new, loaded, args.keep_accept_ra, view, rule,
                                  conntrack_tcp_liberal(kernel.sysctls))
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


def named(args: argparse.Namespace) -> list[str]:
    """The objects named on the command line as NAMESPACE/NAME: a bare NAME is in -n NAMESPACE
    (default: default), on every command; with -A a bare NAME is refused (it would be ambiguous)."""
    namespace = args.namespace
    if not is_dns_label(namespace):
        raise InvalidInput([FieldError(path="--namespace", reason=f"'{namespace}' is not a namespace name (a DNS label: a-z, 0-9, '-', at most 63)")])
    refs: list[str] = []
    problems: list[FieldError] = []
    for item in args.objects:
        space, sep, name = item.rpartition("/")
        if not name or (sep and not space):
            problems.append(FieldError(path="NAME", reason=f"'{item}': expected NAME or NAMESPACE/NAME"))
        elif not sep and getattr(args, "all_namespaces", False):
            problems.append(FieldError(path="NAME", reason=f"'{item}': a bare NAME cannot be looked up across all namespaces (-A): write NAMESPACE/NAME or -n NAMESPACE"))
        else:
            refs.append(f"{space}/{name}" if sep else f"{namespace}/{name}")
    if problems:
        raise InvalidInput(problems)
    return list(dict.fromkeys(refs))


def not_found(refs: list[str], store: Store) -> str:
    """kubectl's NotFound, for objects missing from the store."""
    return "; ".join(f'NotFound: virtualservice "{ref}" not found in the store {store.directory}' for ref in refs)


def refs_to_delete(args: argparse.Namespace) -> list[str]:
    refs = named(args)
    if args.paths:
        refs += [vs.ref for vs in load(args).services]
    if not refs:
        raise InvalidInput([FieldError(reason="name the objects to delete: NAME (in -n NAMESPACE), NAMESPACE/NAME... or -f PATH...")])
    return list(dict.fromkeys(refs))


@dataclass
class Deletion:
    """What a delete removes: the objects (those in the store), their files, and the store after it."""

    refs: list[str]
    missing: list[str]
    files: dict[str, Path]
    merged: Merged


def deletion(refs: list[str], store: Store, strict: bool) -> Deletion:
    """The objects named or declared by -f (`refs_to_delete`), checked against the store: an object
    missing is NotFound (the caller says it), one declared in a file vsop did not write is invalid input."""
    contents = read_store(store, strict=strict)
    declared = dict(contents.files)
    missing = [ref for ref in refs if ref not in declared]
    refs = [ref for ref in refs if ref in declared]
    foreign = [ref for ref in refs if not store.canonical(ref, declared[ref])]
    if foreign:
        raise InvalidInput(
            [FieldError(obj=ref, reason=f"is declared in {declared[ref]}, which holds more than vsop wrote; edit that file") for ref in foreign]
        )
    gone = set(refs)
    remaining = [vs for vs in contents.services if vs.ref not in gone]
    held = contents.source.held()
    merged = Merged(remaining, Held(held.owners - gone, held.unknown, held.known | gone), contents)
    return Deletion(refs, missing, {ref: declared[ref] for ref in refs}, merged)


DELETING = "vsop.dev/deleting"  # on a stored object while `vsop delete` drains it: when the drain started


@dataclass
class Deleting:
    """One `vsop delete`: its writes, each under the writer lock (see `delete`)."""

    args: argparse.Namespace
    refs: list[str]
    store: Store
    names: Names
    node: Any
    writes: int = 0
    applied: list[ops.Op] = field(default_factory=list)
    failure: Result | None = None

    def program(self, kernel, merged: Merged, observed: KernelState, write_store: Callable[[], object], what: str) -> bool:  # type: ignore[no-untyped-def]
        """Program the store as `merged` holds it, with the agent's verdicts and drains; `write_store`
        changes the store once the plan stands. False: the kernel refused (`failure` says it)."""
        from vsop.adapters.kernel import conntrack_tcp_liberal, running_kernel_version

        view = read_view(state_file(self.args))  # under the lock: the agent's last turn
        _, result = program(merged, self.node, self.names, observed, running_kernel_version(), set(), view=view,
                            liberal=conntrack_tcp_liberal(kernel.sysctls))
        write_store()

        def refused(exc: Any) -> Result:
            return failed(f"{what}; the kernel refused: {exc}; apply again to converge", applied=exc.applied)

        executed = execute_saying(kernel, result, self.names, observed, [], refused)
        if isinstance(executed, Result):
            self.failure = executed
            return False
        self.writes += executed[0]
        self.applied += executed[1]
        return True

    def finish(self, kernel, observed: KernelState | None = None) -> bool:  # type: ignore[no-untyped-def]
        """The objects out of the store and their state out of the kernel (those still in the store)."""
        from vsop.adapters.kernel import read_observed

        target = deletion(self.refs, self.store, strict=True)
        observed = observed if observed is not None else read_observed(kernel, self.names)
        return self.program(kernel, target.merged, observed, lambda: self.store.remove(target.files[ref] for ref in target.refs),
                            f"removed {len(target.refs)} object(s) from the store")

    def start_drain(self, kernel, target: Deletion, observed: KernelState) -> bool:  # type: ignore[no-untyped-def]
        """The objects stay in the store with every backend at weight 0 (and `vsop.dev/deleting`), so
        the kernel and a running agent alike keep their real servers at weight 0 while they drain."""
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        zero = [at_weight_zero(vs, started) for vs in target.merged.contents.services if vs.ref in set(target.refs)]
        merged = Merged(target.merged.services + zero, target.merged.held, target.merged.contents)
        return self.program(kernel, merged, observed, lambda: self.store.write(zero),
                            f"stored {len(zero)} object(s) at weight 0 to drain them (annotation {DELETING})")


def at_weight_zero(vs: VirtualService, since: str) -> VirtualService:
    """The object with every static backend at weight 0 (drained: no new connections) and marked deleting."""
    backends = type(vs.spec.backends)(backend.model_copy(update={"weight": 0}) for backend in vs.spec.backends)
    annotations = {**(getattr(vs.metadata, "annotations", None) or {}), DELETING: since}
    return vs.model_copy(update={"spec": vs.spec.model_copy(update={"backends": backends}),
                                 "metadata": vs.metadata.model_copy(update={"annotations": annotations})})


def delete(args: argparse.Namespace) -> Result:
    """Without connections to wait for, one write under the writer lock. Otherwise three steps, so a
    running agent keeps syncing (health flips, other objects) through a drain of up to an hour: under
    the lock, the objects go to weight 0 (in the store and the kernel); without it, wait for their
    established connections; under the lock again, delete them."""
    from vsop.adapters.kernel import read_observed
    from vsop.adapters.real import real_kernel

    run = Deleting(args, refs_to_delete(args), Store(store_path(args.store)), common_names(args), node(args))  # invalid input: before the lock
    drained = 0.0
    with locked(args):
        target = deletion(run.refs, run.store, strict=True)
        run.refs = target.refs
        if target.missing and not args.ignore_not_found:
            return failed(not_found(target.missing, run.store) + "; nothing was deleted", reason="NotFound", notFound=target.missing)
        kernel = real_kernel()
        observed = read_observed(kernel, run.names)
        busy = None if args.now or not run.refs else _busy(observed, target.merged.contents.services, set(run.refs))
        if busy is None:
            run.finish(kernel, observed)
        else:
            run.start_drain(kernel, target, observed)
    if busy is not None and run.failure is None:
        drained = _wait_drained(kernel, *busy)
        with locked(args):
            run.finish(kernel)
    if run.failure is not None:
        return run.failure
    text = "".join(f"vsop: deleted VirtualService {ref}" + (f" (drained {drained:.1f}s)" if drained >= 0.05 else "") + "\n" for ref in run.refs)
    return Result(
        text=text + f"vsop: {len(run.applied)} kernel operation(s)\n" + _operations_text(run.applied),
        document={"deleted": run.refs, "writes": run.writes, "drainedSeconds": round(drained, 3), "operations": [op_json(op) for op in run.applied]},
    )


def _busy(observed: KernelState, services: list[VirtualService], gone: set[str]) -> tuple[set[ServiceKey], float, int] | None:
    """The deleted objects' TCP/SCTP services, their longest grace and how many of their real servers hold
    established connections; None when none does (nothing to wait for)."""
    keys: set[ServiceKey] = set()
    grace = 0.0
    for vs in services:
        if vs.ref in gone:
            grace = max(grace, float(vs.spec.drain.timeout_seconds))
            keys |= {ServiceKey(p.protocol.lower(), vs.spec.vip, p.port) for p in vs.spec.ports if p.protocol != "UDP"}  # type: ignore[arg-type]
    busy = sum(1 for rs in observed.real_servers.values() if rs.key.service in keys and rs.active_connections > 0)
    return (keys, grace, busy) if busy and grace > 0 else None


def _wait_drained(kernel, keys: set[ServiceKey], grace: float, busy: int) -> float:  # type: ignore[no-untyped-def]
    """Until the services' established connections are gone or `grace` ran out; the writer lock is free meanwhile.
    Each look reads the real servers of these services alone (one netlink dump each), not the whole
    node: at 10k services a whole read is seconds of work, and a drain may last an hour."""
    say(f"draining {busy} real server(s) with open connections (up to {grace:g}s; --now skips this); "
        "the writer lock is free meanwhile: a running agent keeps syncing")
    started = time.monotonic()
    while time.monotonic() - started < grace:
        if not any(rs.active_connections for rs in kernel.ipvs.read_real_servers(sorted(keys)).values()):
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
    wanted = named(args)
    contents = read_store(store, strict=False, quiet=True)
    notes = store_problems(contents)
    stored = {vs.ref: vs for vs in contents.services}
    missing = [ref for ref in wanted if ref not in stored]
    if wanted:
        services = [stored[ref] for ref in wanted if ref in stored]
    else:
        services = [vs for vs in contents.services if args.all_namespaces or vs.metadata.namespace == args.namespace]
    if missing and not args.ignore_not_found:
        message = not_found(missing, store)
        if not services:  # nothing to list: the failure alone, in every format
            return failed(message, notes=[f"vsop: {note}" for note in notes], reason="NotFound", notFound=missing)
        notes.append(message)
    observed: KernelState | None = None
    reason = ""
    rows = []
    if services and args.output != "name":
        try:
            from vsop.adapters.kernel import conntrack_tcp_liberal, read_observed, running_kernel_version
            from vsop.adapters.real import real_kernel

            observed = read_observed(real_kernel(), names)
        except Exception as exc:  # noqa: BLE001 - `get` still lists the store when the kernel cannot be read
            reason = f"unknown: cannot read the kernel ({exc})"
        if observed is not None:
            desired = whole.derive(contents.services, node(args), observed, names=names, kernel_version=running_kernel_version(),
                                   liberal=conntrack_tcp_liberal())
    for vs in services:
        state = "" if args.output == "name" else programmed_state(vs, desired, observed, names) if observed is not None else reason
        rows.append((vs, state, contents.files.get(vs.ref)))
    elsewhere = 0 if wanted or args.all_namespaces else len(contents.services) - len(services)
    single = len(wanted) == 1 and len(rows) == 1  # kubectl: one object named, the object itself
    return Result(
        code=1 if missing and not args.ignore_not_found else 0,
        text=lambda: _get_text(rows, args, store, elsewhere),
        document=lambda: _get_document(rows, contents.errors, store, single),
        notes=tuple(f"vsop: {note}" for note in notes),
    )


Row = tuple[VirtualService, str, Path | None]  # the object, programmed or why not, its file


def _get_document(rows: list[Row], errors: dict[str, str], store: Store, single: bool) -> dict[str, object]:
    """The object (one NAME) or a v1/List of them, each with status.store (-o json, -o yaml);
    `vsop apply` reads it back (the loader ignores status, as the API server does)."""
    from vsop.host.store import document

    items = [
        {
            **document(vs),
            "status": {"store": {"file": printable(str(path), None), "programmed": state == "yes", "message": "" if state == "yes" else state}},
        }
        for vs, state, path in rows
    ]
    if single:
        return items[0]
    shown = {printable(path, None): printable(error, None) for path, error in errors.items()}
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"store": printable(str(store.directory), None), "errors": shown}}


def _get_text(rows: list[Row], args: argparse.Namespace, store: Store, elsewhere: int) -> str:
    if args.output == "name":
        return "".join(f"{vs.ref}\n" for vs, _, _ in rows)  # what `vsop get` and `vsop delete` take back
    if not rows:
        where = "" if args.all_namespaces else f" in namespace {args.namespace}"
        more = f" ({elsewhere} in other namespaces: -A lists them)" if elsewhere else ""
        return f"No VirtualServices{where} in the store {store.directory}{more}.\n"
    wide = args.output == "wide"
    header = ["NAMESPACE/NAME", "VIP", "PORTS"] + (["MODE", "SCHEDULER", "REAL SERVERS", "FILE"] if wide else []) + ["PROGRAMMED"]
    table = [header]
    for vs, state, path in rows:
        row = [vs.ref, vs.spec.vip, ",".join(f"{p.port}/{p.protocol}" for p in vs.spec.ports)]
        if wide:
            real = [f"{len(vs.spec.backends)} static"] if vs.spec.backends else []
            if vs.spec.service_ref is not None:
                real.append(f"service {vs.spec.service_ref.name}")
            row += [vs.spec.mode, vs.spec.scheduler, "+".join(real) or "-", str(path) if path else "-"]
        table.append(row + [state])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] + "\n" for row in table)


def plan_services(args: argparse.Namespace, given: list[VirtualService]) -> tuple[list[VirtualService], Held]:
    """For `vsop plan` against this host: the store with the given files applied on top."""
    store = Store(store_path(getattr(args, "store", None)))
    contents = read_store(store, strict=False)
    merged = merge(contents, given, store, getattr(args, "prune", False))
    return merged.services, merged.held


__all__ = [
    "Deletion", "LockTimeout", "StoreUnreadable", "add_store_options", "apply", "delete", "deletion", "get", "not_found",
    "refs_to_delete",
    "plan_services", "register", "run",
]
