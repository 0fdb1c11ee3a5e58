"""The verdict on one tier's pytest run, from its output: what tests/run-tiers.sh prints and exits with.

A tier is green only when pytest exited 0, its summary line was found, something passed,
nothing failed or errored, nothing was deselected (a -k/-m from PYTEST_ADDOPTS or an ini
file would hide tests), the property tests' tiers say hypothesis ran derandomized, and every skip is in tests/allowed-skips.txt for this tier, with
the reason it is allowed. The skip reasons come from pytest's `-rs` report
(`SKIPPED [N] path:line: reason`), which run-tiers.sh asks for.

Usage: python3 tests/tier_verdict.py TIER LOG EXIT_CODE
prints one line (`ok|FAIL  <summary>[; why]`) and exits 0 when the tier is green, 1 when not.
Standard library only: run-tiers.sh may call it with any python3.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ALLOWED = Path(__file__).resolve().parent / "allowed-skips.txt"

# pytest -q ends with e.g. "12 passed, 2 skipped, 1 deselected, 3 warnings in 4.56s", in -v with "=" around.
_SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s(?: \([^)]*\))?\s*=*$")
_NO_TESTS = re.compile(r"^=*\s*no tests ran(?: in [\d.]+s)?\s*=*$")
# Progress glued in front of the summary ("....   [100%]119 passed in 3.1s"): seen in the vm tier when
# the guest's last newlines did not reach vm/run; the counts after it are still pytest's summary.
_PROGRESS = re.compile(r"^[.sFExX]*\s*\[\s*\d+%\]\s*")
_COUNT = re.compile(r"(\d+) (\w+)")
_SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] (\S+?):(\d+): (.*)$")
# The tiers holding property tests print which hypothesis profile ran (tests/conftest.py); a tier
# green on random examples would pass or fail by luck, so it must say the derandomized one did.
DERANDOMIZED = "hypothesis: profile ci, derandomized"
PROPERTY_TIERS = ("unit", "crd")


@dataclass
class Verdict:
    summary: str
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        text = self.summary + ("; " + "; ".join(self.problems) if self.problems else "")
        return f"{'ok' if self.ok else 'FAIL'}  {text}"


@dataclass(frozen=True)
class Allowed:
    tier: str
    where: str  # path of the test file, or path:function as pytest prints it
    reason: str  # the skip's reason, exactly
    why: str


def load_allowed(path: Path = ALLOWED) -> list[Allowed]:
    """Lines `tier | test file | skip reason | why it may skip`; `#` starts a comment."""
    allowed = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4 or not all(parts):
            raise ValueError(f"{path}:{number}: expected `tier | test file | skip reason | why`, got {raw!r}")
        allowed.append(Allowed(*parts))
    return allowed


def judge(tier: str, output: str, exit_code: int, allowed: list[Allowed] | None = None) -> Verdict:
    allowed = load_allowed() if allowed is None else allowed
    lines = [_PROGRESS.sub("", line.strip()) for line in output.splitlines()]
    summary = next((line.strip("= ").strip() for line in reversed(lines) if _SUMMARY.match(line) or _NO_TESTS.match(line)), None)
    if summary is None:
        return Verdict(f"no pytest summary (exit {exit_code})", problems=["pytest printed no summary line"])
    verdict = Verdict(summary)
    counts = verdict.counts
    for number, word in _COUNT.findall(summary.split(" in ")[0]):
        counts[word.rstrip("s") if word in ("errors", "warnings") else word] = int(number)
    if exit_code != 0:
        verdict.problems.append(f"pytest exited {exit_code}")
    for bad in ("failed", "error", "xpassed"):
        if counts.get(bad):
            verdict.problems.append(f"{counts[bad]} {bad}")
    if not counts.get("passed"):
        verdict.problems.append("nothing passed")
    if counts.get("deselected"):
        verdict.problems.append(f"{counts['deselected']} deselected (a -k or -m: every test of a tier runs)")
    reported = 0
    for line in lines:
        match = _SKIPPED.match(line.strip())
        if not match:
            continue
        number, path, _, reason = match.groups()
        reported += int(number)
        if not any(a.tier == tier and path == a.where and reason == a.reason for a in allowed):
            verdict.problems.append(f"skipped outside tests/allowed-skips.txt: {path}: {reason}")
    if tier in PROPERTY_TIERS and not any(line.startswith(DERANDOMIZED) for line in lines):
        verdict.problems.append(f"no '{DERANDOMIZED}' line: the property tests ran without the ci profile")
    if counts.get("skipped", 0) != reported:
        verdict.problems.append(f"{counts.get('skipped', 0)} skipped but {reported} skip reasons reported (run pytest with -rs)")
    return verdict


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    tier, log, code = argv
    verdict = judge(tier, Path(log).read_text(errors="replace"), int(code))
    print(verdict.line())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
