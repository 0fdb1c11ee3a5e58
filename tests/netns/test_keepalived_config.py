"""Netns tier: Debian's keepalived accepts every golden configuration (`keepalived -t`).

keepalived 2.2.7's config test exits 0 when the configuration is clean and non-zero
(5) on any configuration error, warnings included, printing them on stderr; but it also
exits 0 when the file does not exist ("Config files missing"), so clean means exit 0
and nothing on stderr. It checks that VRRP interfaces exist, so each test gets an
`eth0` (a veth) in its throwaway network namespace. Each golden tree is copied into a
temporary folder: a confd layout resolves `include conf.d/*.conf` next to the main file,
and keepalived complains of a missing conf.d folder (not of an empty one).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_vs
from vsop.cli.render import main
from vsop.keepalived.render import render_keepalived, write_files

GOLDEN = Path(__file__).parent.parent / "golden" / "keepalived"
EXAMPLES = Path(__file__).parent.parent.parent / "examples" / "keepalived"
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and not p.name.endswith(".new"))

if not Path(KEEPALIVED).exists():
    raise pytest.UsageError("netns tier: keepalived is not installed (make deps installs Debian's)")


@pytest.fixture(autouse=True)
def eth0(netns: str) -> None:
    """The interface the VRRP goldens name, inside this test's namespace."""
    subprocess.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"], check=True, capture_output=True)
    subprocess.run(["ip", "link", "set", "eth0", "up"], check=True, capture_output=True)


def config_test(main_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEEPALIVED, "--config-test", "-f", str(main_file)], capture_output=True, text=True, timeout=30)


def assert_clean(main_file: Path) -> None:
    result = config_test(main_file)
    assert (result.returncode, result.stderr) == (0, ""), f"keepalived -t {main_file}: exit {result.returncode}\n{result.stderr}"


@pytest.mark.parametrize("case", CASES)
def test_keepalived_accepts_golden(case: str, tmp_path: Path) -> None:
    tree = tmp_path / case
    shutil.copytree(GOLDEN / case, tree)
    if "include conf.d/*.conf" in (tree / "keepalived.conf").read_text():
        (tree / "conf.d").mkdir(exist_ok=True)  # always written (Rendered.directories); git keeps no empty folder
    assert_clean(tree / "keepalived.conf")


@pytest.mark.parametrize("layout", ["single", "confd"])
def test_keepalived_accepts_what_the_command_writes(layout: str, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("s3cr3t\n")
    out = tmp_path / "etc"
    assert main(["-f", str(EXAMPLES), "--layout", layout, "--out", str(out), "--auth-file", str(secret)]) == 0
    assert_clean(out / "keepalived.conf")


def test_the_check_is_not_vacuous(tmp_path: Path) -> None:
    """A broken include, a missing interface and a missing file are all caught."""
    tree = tmp_path / "broken"
    shutil.copytree(GOLDEN / "examples-confd", tree)
    nat = tree / "conf.d" / "default_web-nat.conf"
    nat.write_text(nat.read_text().replace("lb_algo rr", "lb_algo bogus"))
    result = config_test(tree / "keepalived.conf")
    assert result.returncode != 0 and "bogus" in result.stderr

    tree = tmp_path / "no-eth1"
    shutil.copytree(GOLDEN / "vrrp-noauth", tree)
    vrrp = tree / "conf.d" / "default_web-vrrp.conf"
    vrrp.write_text(vrrp.read_text().replace("eth0", "eth1"))
    result = config_test(tree / "keepalived.conf")
    assert result.returncode != 0 and "eth1" in result.stderr

    missing = config_test(tmp_path / "nothing-here.conf")
    assert "missing" in (missing.stdout + missing.stderr).lower()  # exit 0 here, hence the stderr check


def test_all_drained_virtual_server_is_what_the_warning_says(tmp_path: Path) -> None:
    """keepalived runs it, but its config test calls the zero total weight an error: the renderer warns."""
    vs = make_vs(mode="keepalived", backends=[{"address": "192.168.2.111", "weight": 0}])
    result = render_keepalived([vs], layout="single")
    assert any("keepalived -t" in w for w in result.warnings)
    write_files(tmp_path, result.files, result.directories)
    checked = config_test(tmp_path / "keepalived.conf")
    assert checked.returncode != 0 and "exceeds total weight of real servers 0" in checked.stderr


def test_an_empty_confd_render_is_clean(tmp_path: Path) -> None:
    result = render_keepalived([make_vs()])  # mode ipvs only: nothing for keepalived
    write_files(tmp_path, result.files, result.directories)
    assert (tmp_path / "conf.d").is_dir()
    assert_clean(tmp_path / "keepalived.conf")
