"""--route-table: plan prints announce: bgp routes into the table given; a table vsop may not own is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vsop.cli.main import main


def bgp_file(tmp_path: Path) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "vsop.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": "web"},
        "spec": {"vip": "192.0.2.10", "ports": [{"port": 80}], "backends": [{"address": "10.0.0.5"}], "announce": "bgp"},
    }))
    return path


def test_plan_adds_the_route_to_the_table_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", str(bgp_file(tmp_path))]) == 0
    assert "\nip route add blackhole 192.0.2.10/32 table 4242 proto 118\n" in capsys.readouterr().out
    assert main(["plan", "--from-empty", "-f", str(bgp_file(tmp_path)), "--route-table", "77"]) == 0
    out = capsys.readouterr().out
    assert "\nip route add blackhole 192.0.2.10/32 table 77 proto 118\n" in out and "4242" not in out


@pytest.mark.parametrize("table", ["0", "254", "main", "4294967296"])
def test_a_table_vsop_may_not_own_is_refused(tmp_path: Path, table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", str(bgp_file(tmp_path)), "--route-table", table]) == 2
    assert "--route-table" in capsys.readouterr().err
