"""On a kernel without IPVS (this machine's), apply refuses with the reason and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VSOP = str(Path(sys.executable).parent / "vsop")


def snapshot() -> tuple[str, str, str]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    rules = "\n".join(line for line in run("iptables-save").splitlines() if not line.startswith("#"))
    return rules, run("ipset", "list", "-n"), run("ip", "-o", "addr")


def test_apply_without_ipvs_exits_1_naming_the_reason_and_writes_nothing(tmp_path: Path) -> None:
    before = snapshot()
    env = {**os.environ, "VSOP_STORE": str(tmp_path / "store"), "VSOP_LOCK": str(tmp_path / "lock")}
    done = subprocess.run([VSOP, "apply", "-f", str(ROOT / "examples" / "seed.yaml")], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "this kernel has no IPVS: load ip_vs or use mode: keepalived" in done.stderr
    assert snapshot() == before
    assert not (tmp_path / "store").exists()  # refused before the store changed


def test_invalid_input_exits_2_before_the_kernel_is_even_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples" / "seed.yaml").read_text().replace("port: 80", "port: 0"))
    done = subprocess.run([VSOP, "apply", "-f", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "spec.ports[0].port" in done.stderr


def test_doctor_without_ipvs_names_the_module_to_load_and_explain_still_walks_the_path() -> None:
    # A diagnosis must work best on a broken node: every reader that fails is a finding, not a crash.
    import json

    done = subprocess.run([VSOP, "doctor", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    failed = [f for f in report["findings"] if f["status"] == "fail"]
    assert [f["check"] for f in failed] == ["kernel.ipvs"] and "modprobe ip_vs" in failed[0]["fix"]
    explained = subprocess.run([VSOP, "explain", "169.254.11.2:80"], capture_output=True, text=True, timeout=120)
    # The path is walked all the same, and the exit code says what README says: no IPVS is a runtime failure.
    assert explained.returncode == 1, explained.stderr
    assert "IPVS is not available" in explained.stdout and "MISSING" in explained.stdout
    as_json = subprocess.run([VSOP, "explain", "169.254.11.2:80", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["target"]["vip"] == "169.254.11.2"
    bad = subprocess.run([VSOP, "explain", "169.254.11.2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected VIP:PORT[/PROTOCOL]" in bad.stderr
    zone = subprocess.run([VSOP, "explain", "[fe80::1%lo]:80"], capture_output=True, text=True, timeout=60)
    assert zone.returncode == 2 and "a zone (%lo) is not part of a VIP" in zone.stderr and "usage" not in zone.stderr.lower()
