"""ipsets through the `ipset` command: `ipset save NAME` per set to read, one `ipset restore` per run of ops.

Owns reading vsop's sets by name (type, family, members with their comments, in the
text `ipset save` prints) and writing CreateSet / DestroySet / AddSetMember /
DeleteSetMember. The command beats pyroute2's IPSet for bulk work: netlink there is one
request and acknowledgement per member (adds: 1000 in ~285 ms, 5000 in ~3.1 s),
`ipset restore` is one process for the whole run (1000 in ~14 ms, 5000 in ~55 ms).
Must not import: kopf, kubernetes, jinja2.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Sequence

from vsop.adapters.base import OperationFailed
from vsop.core import ops
from vsop.core.state import IPSet
from vsop.errors import KernelUnsupported

# The ipset command refuses longer comments (the kernel's IPSET_MAX_COMMENT_SIZE).
MAX_COMMENT_LENGTH = 255
_FAMILY_WORD = {4: "inet", 6: "inet6"}
_FAMILY_NUMBER = {"inet": 4, "inet6": 6}
_MISSING_SET = "The set with the given name does not exist"
_FAILED_LINE = re.compile(r"Error in line (\d+):\s*(.*)")
_COMMENT = re.compile(r'(?:^| )comment "([^"]*)"')


class IPSetReadFailed(RuntimeError):
    """`ipset save` failed for a reason other than the set being absent."""


class IPSetKernel:
    """The IPSetAdapter of a real kernel, in the network namespace of the calling thread."""

    handles = (ops.CreateSet, ops.DestroySet, ops.AddSetMember, ops.DeleteSetMember)

    def __init__(self, binary: str = "ipset", *, timeout_seconds: float = 120.0):
        self._binary = binary
        self._timeout = timeout_seconds
        # Each set's last `ipset save` text and what was parsed from it: the same text next
        # time returns the same object (callers never mutate what a read returns).
        self._last: dict[str, tuple[str, IPSet | None]] = {}

    def read(self, names: frozenset[str]) -> dict[str, IPSet]:
        # `ipset list -n` prints names only, cheap however big the foreign sets are; then
        # one `ipset save NAME` per set of ours that exists (save takes a single name).
        listed = self._run(["list", "-n"])
        if listed.returncode != 0:
            raise IPSetReadFailed(f"ipset list -n: {_first_line(listed.stderr)}")
        found: dict[str, IPSet] = {}
        for name in sorted(names & set(listed.stdout.split())):
            result = self._run(["save", name])
            if result.returncode != 0:
                if _MISSING_SET in result.stderr:
                    continue  # destroyed since it was listed
                raise IPSetReadFailed(f"ipset save {name}: {_first_line(result.stderr)}")
            last = self._last.get(name)
            if last is not None and last[0] == result.stdout:
                parsed = last[1]
            else:
                parsed = parse_save(result.stdout).get(name)
                self._last[name] = (result.stdout, parsed)
            if parsed is not None:
                found[name] = parsed
        return found

    def apply(self, operations: Sequence[ops.Op]) -> int:
        lines: list[str] = []
        for op in operations:
            try:
                lines.append(restore_line(op))
            except ValueError as refused:
                # Refused before the kernel sees it; what precedes it must still be applied.
                self._restore(operations[: len(lines)], lines)
                raise OperationFailed(op, str(refused)) from None
        self._restore(operations, lines)
        return len(operations)

    def _restore(self, operations: Sequence[ops.Op], lines: list[str]) -> None:
        if not lines:
            return
        try:
            result = self._run(["restore"], "\n".join(lines) + "\n")
        except subprocess.TimeoutExpired:
            raise OperationFailed(
                operations[0], f"ipset restore did not finish in {self._timeout:g} s; how much of this batch was applied is unknown"
            ) from None
        if result.returncode == 0:
            return
        # ipset restore is not a transaction: lines before the failing one stay applied,
        # none after it run; so the op on that line is the first one not applied.
        failed = _FAILED_LINE.search(result.stderr)
        if failed is not None and 1 <= int(failed.group(1)) <= len(operations):
            raise OperationFailed(operations[int(failed.group(1)) - 1], failed.group(2).strip())
        raise OperationFailed(
            operations[0], f"ipset restore failed and named no line, so this batch's state is unknown: {_first_line(result.stderr)}"
        )

    def _run(self, arguments: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(self._binary) or shutil.which(self._binary, path="/usr/sbin:/sbin")
        if binary is None:
            raise KernelUnsupported(f"the {self._binary} command is not installed")
        return subprocess.run(
            [binary, *arguments], input=stdin, capture_output=True, text=True, timeout=self._timeout, check=False
        )


def restore_line(op: ops.Op) -> str:
    """One `ipset restore` line per op, so a failing line number names its op."""
    match op:
        case ops.CreateSet(ipset=ipset):
            return f"create {ipset.name} {ipset.kind} family {_FAMILY_WORD[ipset.family]} comment"
        case ops.DestroySet(name=name):
            return f"destroy {name}"
        case ops.AddSetMember(set_name=name, member=member, comment=comment, replace=replace):
            # -exist turns an add of a present member into an update of its comment; with
            # no comment given the kernel clears the old one.
            exist = "-exist " if replace else ""
            return f"add {exist}{name} {member}{_comment_words(comment)}"
        case ops.DeleteSetMember(set_name=name, member=member):
            return f"del {name} {member}"
    raise TypeError(f"IPSetKernel does not handle {type(op).__name__}")


def _comment_words(comment: str) -> str:
    if not comment:
        return ""
    if '"' in comment or "\n" in comment:
        raise ValueError('an ipset comment cannot contain a double quote or a newline')
    if len(comment) > MAX_COMMENT_LENGTH:
        raise ValueError(f"an ipset comment is at most {MAX_COMMENT_LENGTH} characters")
    return f' comment "{comment}"'


def parse_save(text: str) -> dict[str, IPSet]:
    """Sets from `ipset save` output: headers from `create` lines, members from `add` lines."""
    headers: dict[str, tuple[str, int, bool]] = {}
    members: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("add "):
            # No shlex here (it is the whole cost of reading a big set): only a comment is
            # quoted, and ipset refuses a double quote inside one.
            words = line.split(" ", 3)
            if len(words) >= 3:
                comment = _COMMENT.search(words[3]) if len(words) > 3 else None
                members.setdefault(words[1], {})[words[2]] = comment.group(1) if comment else ""
        elif line.startswith("create "):
            words = line.split()
            if len(words) >= 3:
                # bitmap:* and list:set have no family; vsop never makes them, the planner refuses them.
                family = _FAMILY_NUMBER.get(_option(words[3:], "family") or "inet", 4)
                headers[words[1]] = (words[2], family, "comment" in words[3:])
                members.setdefault(words[1], {})
    return {
        name: IPSet(name, kind, family, members[name], comments)  # type: ignore[arg-type]
        for name, (kind, family, comments) in headers.items()
    }


def _option(words: list[str], key: str) -> str | None:
    """The value after `key`; flags like `counters` stand alone, so search rather than pair up."""
    for index, word in enumerate(words[:-1]):
        if word == key:
            return words[index + 1]
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no error output"
