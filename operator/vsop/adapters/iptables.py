"""iptables and ip6tables through *-save and *-restore --noflush, on the backend the host uses.

Owns: choosing the backend (nft or legacy) the way kubernetes-sigs/iptables-wrappers
does and sticking to it for every call; reading vsop's chains and the jumps into them
out of iptables-save; turning each run of WriteChain / DeleteChain / AddJump /
DeleteJump ops for one (family, table) into a single iptables-restore, and mapping
restore's failing line back to the op. Never reads or writes a table other than
`tables`, never touches a chain it is not told about.
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.state import ChainKey, Jump
from vsop.api.errors import KernelUnsupported

BACKENDS = ("nft", "legacy")
TABLES = ("filter", "nat")
# Agents often run with a PATH that lacks the sbin directories.
DEFAULT_SEARCH_PATH = os.pathsep.join(filter(None, (os.environ.get("PATH"), "/usr/sbin", "/sbin")))
# kubelet 1.17+ creates one of these in the mangle table of the backend the node uses.
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
_JUMP_FLAGS = ("-j", "--jump", "-g", "--goto")
# "Error occurred at line: 4", "line 3: CHAIN_DEL failed (...)", "iptables-restore: line 3 failed".
_FAILED_LINE = re.compile(r"\bline:?\s+(\d+)")
_MISSING_OBJECT = re.compile(r"Chain '([^']+)' does not exist|Couldn't load target `([^']+)'|Set (\S+) doesn't exist")
_NOISE = re.compile(r"^(Try `|Error occurred at line)")


class IPTablesReadFailed(RuntimeError):
    """iptables-save failed for a reason other than a missing table or a missing IPv6 stack."""


def _tool(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def _find(name: str, search_path: str) -> str | None:
    return shutil.which(name, path=search_path)


def _environment() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


def _run_quietly(argv: list[str], timeout: float) -> str:
    """stdout of a best-effort probe; empty when the binary is missing, fails or hangs."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_environment(), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def _rule_count(save_output: str) -> int:
    return sum(1 for line in save_output.splitlines() if line.startswith("-"))


def _has_kubelet_hint(save_output: str) -> bool:
    return any(line.startswith(f":{chain} ") for line in save_output.splitlines() for chain in KUBELET_HINT_CHAINS)


def detect_backend(search_path: str = DEFAULT_SEARCH_PATH, probe_timeout: float = 5.0) -> str:
    """"nft" or "legacy": the backend whose tables this host (its network namespace) uses.

    As kubernetes-sigs/iptables-wrappers: kubelet's hint chain in mangle decides first;
    then whichever backend holds more rules; nft when neither holds any (or they tie),
    since nft is what current distributions default to.
    """
    nft_saves = [path for family in (4, 6) if (path := _find(f"{_tool(family)}-nft-save", search_path))]
    legacy_saves = [path for family in (4, 6) if (path := _find(f"{_tool(family)}-legacy-save", search_path))]
    if not nft_saves and not legacy_saves:
        # iptables before 1.8 had only the legacy backend, under the plain names.
        return "legacy" if _find("iptables-save", search_path) else "nft"
    if not nft_saves:
        return "legacy"
    if not legacy_saves:
        return "nft"
    if any(_has_kubelet_hint(_run_quietly([save, "-t", "mangle"], probe_timeout)) for save in nft_saves):
        return "nft"
    # Without -t: asking iptables-legacy-save for one table makes the kernel create it.
    legacy_output = "".join(_run_quietly([save], probe_timeout) for save in legacy_saves)
    if _has_kubelet_hint(legacy_output):
        return "legacy"
    # iptables-nft 1.8.3 could loop forever on some rulesets, hence the probe timeout.
    nft_output = "".join(_run_quietly([save], probe_timeout) for save in nft_saves)
    return "legacy" if _rule_count(legacy_output) > _rule_count(nft_output) else "nft"


@dataclass(frozen=True)
class _Batch:
    family: int
    table: str
    operations: tuple[ops.Op, ...]


class IPTablesKernel:
    """The IPTablesAdapter of a real host, in the network namespace of the calling thread.

    `backend` is "nft" or "legacy"; None detects it on first use (see detect_backend).
    """

    handles = (ops.WriteChain, ops.DeleteChain, ops.AddJump, ops.DeleteJump)

    def __init__(
        self,
        backend: str | None = None,
        *,
        search_path: str = DEFAULT_SEARCH_PATH,
        lock_wait_seconds: int = 30,
        timeout_seconds: float = 120.0,
        tables: tuple[str, ...] = TABLES,
    ):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"iptables backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self._backend = backend
        self._search_path = search_path
        self._lock_wait = lock_wait_seconds
        self._timeout = timeout_seconds
        self._tables = tables

    @property
    def backend(self) -> str:
        if self._backend is None:
            self._backend = detect_backend(self._search_path)
        return self._backend

    # -- reading ---------------------------------------------------------------------

    def read(self, chains: frozenset[str]) -> tuple[dict[ChainKey, tuple[str, ...]], frozenset[Jump]]:
        found: dict[ChainKey, tuple[str, ...]] = {}
        jumps: set[Jump] = set()
        for family in (4, 6):
            if family == 6 and not self.ipv6_available():
                continue
            for table in self._tables:
                table_chains, table_jumps = parse_save(self._save(family, table), family, chains)
                found.update(table_chains)
                jumps |= table_jumps
        return found, frozenset(jumps)

    def ipv6_available(self) -> bool:
        # /proc/sys/net/ipv6 is absent when the kernel was booted with ipv6.disable=1.
        return os.path.isdir("/proc/sys/net/ipv6") and self._binary(6, "save") is not None

    def _save(self, family: int, table: str) -> str:
        save = self._binary(family, "save")
        if save is None:
            raise KernelUnsupported(f"{_tool(family)}-save ({self.backend}) is not installed")
        result = subprocess.run(
            [save, "-t", table], capture_output=True, text=True, timeout=self._timeout, env=_environment(), check=False
        )
        if result.returncode == 0:
            return result.stdout
        # legacy: the table's module is not available; nft prints an empty table instead.
        if "Table does not exist" in result.stderr:
            return ""
        if family == 6 and "Address family not supported" in result.stderr:
            return ""
        raise IPTablesReadFailed(f"{os.path.basename(save)} -t {table}: {_reason(result.stderr)}")

    def _binary(self, family: int, verb: str) -> str | None:
        found = _find(f"{_tool(family)}-{self.backend}-{verb}", self._search_path)
        if found is None and self.backend == "legacy":
            found = _find(f"{_tool(family)}-{verb}", self._search_path)
        return found

    # -- writing ---------------------------------------------------------------------

    def apply(self, operations: Sequence[ops.Op]) -> int:
        written = 0
        for batch in _batches(operations):
            self._restore(batch)
            written += len(batch.operations)
        return written

    def _restore(self, batch: _Batch) -> None:
        first = batch.operations[0]
        if batch.family == 6 and not self.ipv6_available():
            raise OperationFailed(first, "IPv6 is not available here (ip6tables is not installed or IPv6 is disabled)")
        restore = self._binary(batch.family, "restore")
        if restore is None:
            raise OperationFailed(first, f"{_tool(batch.family)}-restore ({self.backend}) is not installed")
        copies = self._jump_copies(batch) if any(isinstance(op, ops.DeleteJump) for op in batch.operations) else {}

        lines = [f"*{batch.table}"]
        owners: list[int | None] = [None]
        for index, op in enumerate(batch.operations):
            op_lines = restore_lines(op, copies)
            if any("\n" in line or "\r" in line for line in op_lines):
                self._restore_prefix(batch, index)
                raise OperationFailed(op, "a rule cannot contain a line break")
            lines += op_lines
            owners += [index] * len(op_lines)
        lines.append("COMMIT")
        owners.append(None)

        argv = [restore, "--noflush"]
        if self.backend == "legacy":
            # Legacy restore gives up at once when another process holds the xtables lock.
            argv += ["-w", str(self._lock_wait)]
        try:
            result = subprocess.run(
                argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                timeout=self._timeout, env=_environment(), check=False,
            )
        except subprocess.TimeoutExpired:
            raise OperationFailed(
                first, f"{os.path.basename(restore)} did not finish in {self._timeout:g} s; this batch was most likely not applied"
            ) from None
        if result.returncode == 0:
            return

        reason = _reason(result.stderr)
        if "xtables lock" in result.stderr:
            # Legacy only: another program (iptables -w, a firewall reload) held /run/xtables.lock
            # for longer than -w waits. Nothing of the batch was applied; the caller's next turn retries.
            raise OperationFailed(
                first, f"another program held the xtables lock for over {self._lock_wait} s ({reason}); nothing of this batch was applied"
            )
        failed = _FAILED_LINE.search(result.stderr)
        line_number = int(failed.group(1)) if failed else 0
        index = owners[line_number - 1] if 1 <= line_number <= len(owners) else None
        if index is None:
            index = _op_naming_missing_object(result.stderr, batch.operations, copies)
        if index is None and len(batch.operations) > 1:
            # A failure found only at COMMIT (legacy: the kernel refusing the whole table,
            # e.g. MASQUERADE reached from OUTPUT) names the COMMIT line. Replaying the ops
            # one restore each finds the op, and leaves the ones before it applied.
            for op in batch.operations:
                self._restore(_Batch(batch.family, batch.table, (op,)))
            return  # each applied alone: the batch's failure did not come back
        if index is None and len(batch.operations) == 1:
            raise OperationFailed(first, f"{reason} (refused when the table was committed)")
        if index is None:
            raise OperationFailed(
                first,
                f"{reason} ({os.path.basename(restore)} did not say which rule failed, so the first operation of "
                "its batch is named; nothing of that batch was applied)",
            )
        self._restore_prefix(batch, index)
        raise OperationFailed(batch.operations[index], _naming(batch.operations[index], reason))

    def _restore_prefix(self, batch: _Batch, failing_index: int) -> None:
        # restore commits a table all or nothing, so the ops before the failing one were
        # rolled back with it; applying them again keeps "everything before the failing op
        # is applied". Should one of them fail now, that one is reported instead.
        if failing_index > 0:
            self._restore(_Batch(batch.family, batch.table, batch.operations[:failing_index]))

    def _jump_copies(self, batch: _Batch) -> dict[tuple[str, str], int]:
        """How many identical copies of each rule the table's built-in chains hold now."""
        counts: dict[tuple[str, str], int] = {}
        for line in self._save(batch.family, batch.table).splitlines():
            if line.startswith("-A "):
                chain, rule = _split_append(line)
                counts[(chain, rule)] = counts.get((chain, rule), 0) + 1
        return counts


def _op_naming_missing_object(
    stderr: str, operations: Sequence[ops.Op], copies: dict[tuple[str, str], int]
) -> int | None:
    """The first op whose lines name the chain or set restore says is missing.

    iptables-nft-restore resolves jump targets only at COMMIT, and then reports the
    COMMIT line ("Chain 'X' does not exist ... Error occurred at line: <COMMIT>").
    """
    missing = _MISSING_OBJECT.search(stderr)
    if missing is None:
        return None
    name = next(group for group in missing.groups() if group)
    for index, op in enumerate(operations):
        if any(name in line.split() for line in restore_lines(op, copies)):
            return index
    return None


def _batches(operations: Iterable[ops.Op]) -> Iterator[_Batch]:
    """Runs of consecutive ops for the same (family, table): one restore each, in order."""
    current: list[ops.Op] = []
    where: tuple[int, str] | None = None
    for op in operations:
        here = _family_table(op)
        if current and here != where:
            yield _Batch(where[0], where[1], tuple(current))  # type: ignore[index]
            current = []
        current.append(op)
        where = here
    if current:
        yield _Batch(where[0], where[1], tuple(current))  # type: ignore[index]


def _family_table(op: ops.Op) -> tuple[int, str]:
    match op:
        case ops.WriteChain(key=key) | ops.DeleteChain(key=key):
            return key.family, key.table
        case ops.AddJump(jump=jump) | ops.DeleteJump(jump=jump):
            return jump.family, jump.table
    raise TypeError(f"IPTablesKernel does not handle {type(op).__name__}")


def restore_lines(op: ops.Op, jump_copies: dict[tuple[str, str], int] | None = None) -> list[str]:
    """The iptables-restore --noflush lines for one op (inside its table's *table ... COMMIT)."""
    match op:
        case ops.WriteChain(key=key, rules=rules):
            # In --noflush mode a chain line creates the chain, or empties it if it exists.
            return [f":{key.chain} - [0:0]"] + [f"-A {key.chain} {rule}" for rule in rules]
        case ops.DeleteChain(key=key):
            # -F, not a chain line: that would create a missing chain just to delete it.
            return [f"-F {key.chain}", f"-X {key.chain}"]
        case ops.AddJump(jump=jump):
            return [f"-I {jump.chain} {jump.rule}"]
        case ops.DeleteJump(jump=jump):
            # -D removes one copy; a jump inserted twice (by hand, or by a crashed run) is
            # one Jump to vsop, so every copy goes.
            copies = (jump_copies or {}).get((jump.chain, jump.rule), 1)
            return [f"-D {jump.chain} {jump.rule}"] * max(copies, 1)
    raise TypeError(f"IPTablesKernel does not handle {type(op).__name__}")


def parse_save(text: str, family: int, chains: frozenset[str]) -> tuple[dict[ChainKey, tuple[str, ...]], frozenset[Jump]]:
    """From iptables-save output: the chains among `chains` with their rules, and the jumps into them.

    Rule texts are kept exactly as printed, without "-A CHAIN ". A jump is a rule of a
    built-in chain (one with a policy, not "-") whose target is among `chains`.
    """
    found: dict[ChainKey, list[str]] = {}
    jumps: set[Jump] = set()
    table = ""
    built_in: set[str] = set()
    for line in text.splitlines():
        if line.startswith("*"):
            table, built_in = line[1:].strip(), set()
        elif line.startswith(":"):
            words = line[1:].split()
            if len(words) >= 2:
                if words[1] != "-":
                    built_in.add(words[0])
                if words[0] in chains:
                    found.setdefault(ChainKey(family, table, words[0]), [])  # type: ignore[arg-type]
        elif line.startswith("-A "):
            chain, rule = _split_append(line)
            if chain in chains:
                found.setdefault(ChainKey(family, table, chain), []).append(rule)  # type: ignore[arg-type]
            elif chain in built_in and rule_target(rule) in chains:
                jumps.add(Jump(family, table, chain, rule))  # type: ignore[arg-type]
    return {key: tuple(rules) for key, rules in found.items()}, frozenset(jumps)


def _split_append(line: str) -> tuple[str, str]:
    words = line.split(" ", 2)
    return words[1], (words[2] if len(words) > 2 else "")


def rule_target(rule: str) -> str | None:
    """The chain or target a rule jumps to; a "-j" inside a quoted comment does not count."""
    try:
        words = shlex.split(rule)
    except ValueError:
        words = rule.split()
    target = None
    for index, word in enumerate(words[:-1]):
        if word in _JUMP_FLAGS:
            target = words[index + 1]
    return target


def _naming(op: ops.Op, reason: str) -> str:
    """`reason` with the chain the failing op touched: legacy restore says only "line 4 failed"."""
    if isinstance(op, ops.DeleteChain):
        return f"chain {op.key.chain} in table {op.key.table} could not be deleted (it does not exist, or a rule still jumps to it): {reason}"
    chain = getattr(getattr(op, "key", None), "chain", None)
    if chain is not None and chain not in reason:
        return f"chain {chain} in table {op.key.table}: {reason}"  # type: ignore[attr-defined]
    return reason


def _reason(stderr: str) -> str:
    """restore's complaint without its usage hints, for a person to read."""
    kept = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or _NOISE.match(line):
            continue
        # "iptables-nft-restore v1.8.9 (nf_tables): Set NOPE doesn't exist." -> the part after the banner
        line = re.sub(r"^\S+ v[\d.]+( \([^)]*\))?:\s*", "", line)
        if line:
            kept.append(line)
    return "; ".join(kept) or "failed without saying why"
