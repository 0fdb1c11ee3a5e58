"""The tier runner fails a tier that ran nothing, skipped what it may not, or deselected tests.

These run tests/run-tiers.sh's own judgment (`--verdict`, tests/tier_verdict.py) on crafted
pytest output and on the output of a real pytest run, so `make test` cannot go green on a
tier where nothing was tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tier_verdict import DERANDOMIZED, Allowed, judge, load_allowed

ROOT = Path(__file__).resolve().parents[3]
RUN_TIERS = ROOT / "tests" / "run-tiers.sh"
ALLOW = [Allowed("netns", "tests/netns/test_kernel_probes.py", "this kernel has IPVS", "the VM tier covers it")]


def verdict(tmp_path: Path, tier: str, output: str, code: int) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "tier.log"
    log.write_text(output)
    return subprocess.run(["bash", str(RUN_TIERS), "--verdict", tier, str(log), str(code)], capture_output=True, text=True, timeout=60)


def test_a_tier_that_passed_tests_is_green(tmp_path: Path) -> None:
    done = verdict(tmp_path, "unit", f"....\n{DERANDOMIZED} (each test's seed derives from the test itself)\n12 passed, 3 warnings in 4.56s\n", 0)
    assert (done.returncode, done.stdout) == (0, "ok  12 passed, 3 warnings in 4.56s\n")


def test_a_property_tier_without_the_derandomized_profile_fails(tmp_path: Path) -> None:
    """unit and crd hold the hypothesis tests: a run on random examples (another profile, or the
    plugin disabled) passes or fails by luck, so the tier says which profile ran or is red."""
    random = verdict(tmp_path, "unit", "....\nhypothesis: profile random, seed 7\n12 passed in 4.56s\n", 0)
    assert random.returncode == 1 and "ran without the ci profile" in random.stdout
    assert verdict(tmp_path, "crd", "..\n2 passed in 0.1s\n", 0).returncode == 1
    assert verdict(tmp_path, "netns", "..\n2 passed in 0.1s\n", 0).returncode == 0  # no property tests there


def test_a_summary_glued_to_the_progress_line_is_still_read(tmp_path: Path) -> None:
    """The vm tier's log once ended "....   [100%]119 passed in 2225.77s (0:37:05)": the guest's last
    newlines did not reach vm/run. The counts are pytest's all the same, and are judged."""
    done = verdict(tmp_path, "vm", ".....                        [100%]119 passed in 2225.77s (0:37:05)", 0)
    assert (done.returncode, done.stdout) == (0, "ok  119 passed in 2225.77s (0:37:05)\n")
    failed = verdict(tmp_path, "vm", "..F                          [100%]1 failed, 2 passed in 9.1s", 1)
    assert failed.returncode == 1 and "1 failed" in failed.stdout


@pytest.mark.parametrize(
    ("output", "code", "why"),
    [
        ("sss\n3 skipped in 0.10s\n", 0, "nothing passed"),
        ("\nno tests ran in 0.01s\n", 5, "nothing passed"),
        ("====== 3 deselected in 0.54s ======\n", 5, "nothing passed"),
        ("..\n2 passed, 1 deselected in 0.6s\n", 0, "1 deselected"),
        ("..s\nSKIPPED [1] tests/unit/test_x.py:3: no reason to skip\n2 passed, 1 skipped in 0.6s\n", 0,
         "skipped outside tests/allowed-skips.txt: tests/unit/test_x.py: no reason to skip"),
        ("..s\n2 passed, 1 skipped in 0.6s\n", 0, "1 skipped but 0 skip reasons reported"),
        (".F\n1 failed, 1 passed in 0.6s\n", 1, "1 failed"),
        (".E\n1 passed, 1 error in 0.6s\n", 1, "1 error"),
        ("Traceback: the VM did not boot\n", 3, "pytest printed no summary line"),
        ("..\n2 passed in 0.3s\n", 143, "pytest exited 143"),
    ],
    ids=["all-skipped", "no-tests", "all-deselected", "some-deselected", "unlisted-skip", "unreported-skip", "failed", "error", "no-summary", "killed"],
)
def test_a_tier_fails_when_it_did_not_test_everything(tmp_path: Path, output: str, code: int, why: str) -> None:
    done = verdict(tmp_path, "unit", output, code)
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL  ") and why in done.stdout


def test_an_allowed_skip_is_allowed_for_its_tier_file_and_reason_only() -> None:
    skipped = "SKIPPED [1] tests/netns/test_kernel_probes.py:30: this kernel has IPVS\n9 passed, 1 skipped in 1.0s\n"
    assert judge("netns", skipped, 0, ALLOW).ok
    assert not judge("unit", skipped, 0, ALLOW).ok
    assert not judge("netns", skipped.replace("has IPVS", "has IPVS, probably"), 0, ALLOW).ok
    assert not judge("netns", skipped.replace("test_kernel_probes", "test_ipset"), 0, ALLOW).ok


def test_every_allowed_skip_names_a_test_file_that_exists_and_says_why() -> None:
    allowed = load_allowed()
    assert allowed, "the list is read"
    for entry in allowed:
        assert (ROOT / entry.where).is_file(), entry
        assert entry.tier in {"unit", "netns", "vm", "kube", "crd"} and len(entry.why) > 20, entry


def test_a_real_pytest_run_that_only_skips_fails_the_tier(tmp_path: Path) -> None:
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_a():\n    pytest.skip('the kernel lacks it')\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_skips.py"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTEST_ADDOPTS": ""},
    )
    assert run.returncode == 0, "pytest itself calls a run that only skipped a success"
    done = verdict(tmp_path, "unit", run.stdout, run.returncode)
    assert done.returncode == 1
    assert "nothing passed" in done.stdout and "skipped outside tests/allowed-skips.txt: test_skips.py: the kernel lacks it" in done.stdout


def test_pytest_addopts_is_refused_before_any_tier_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(RUN_TIERS), "unit"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTEST_ADDOPTS": "-k not_slow"},
    )
    assert done.returncode == 2
    assert "PYTEST_ADDOPTS is set (-k not_slow)" in done.stderr and "=== tier" not in done.stdout


def test_golden_updates_are_refused_under_ci() -> None:
    done = subprocess.run(
        ["bash", str(RUN_TIERS), "unit"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTEST_ADDOPTS": "", "CI": "true", "VSOP_UPDATE_GOLDEN": "1"},
    )
    assert done.returncode == 2
    assert "VSOP_UPDATE_GOLDEN is set under CI" in done.stderr and "=== tier" not in done.stdout


def test_the_vm_shards_name_test_files_that_exist_and_leave_some_to_the_second() -> None:
    """The vm tier's VMs split tests/vm: the first runs the files VM_SHARD_ONE lists, the third
    (alone, after) those VM_SHARD_ALONE lists, the second every other (`--ignore` each listed
    one). A renamed file would leave a shard's pytest erroring on a path that is gone; a file in
    both lists would run twice; lists of every file would leave the second with nothing."""
    import re
    import shlex

    def listed(name: str) -> list[str]:
        line = next(line for line in RUN_TIERS.read_text().splitlines() if line.startswith(f"{name}=("))
        return shlex.split(re.fullmatch(rf"{name}=\((.*)\)", line).group(1))

    one, alone = listed("VM_SHARD_ONE"), listed("VM_SHARD_ALONE")
    every = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "vm").glob("test_*.py"))
    assert one and alone and all(path in every for path in one + alone), (one, alone)
    assert len(set(one + alone)) == len(one + alone), "no file in two shards"
    assert set(every) - set(one) - set(alone), "the second shard runs what is left"
