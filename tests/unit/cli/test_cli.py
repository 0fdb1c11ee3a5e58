"""The command line as a user runs it: exit codes and what is printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vsop.cli.main import main

ROOT = Path(__file__).parent.parent.parent.parent
SEED = str(ROOT / "examples" / "seed.yaml")


def test_plan_from_empty_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", SEED]) == 0
    assert "ipvsadm -A -t 169.254.11.2:80 -s rr" in capsys.readouterr().out


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", SEED, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["realserver.add"] == 2 and doc["counts"]["service.add"] == 1
    assert doc["operations"][0]["commands"] == ["sysctl -w net.ipv4.ip_forward=1"]


def test_invalid_input_exits_two_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(SEED).read_text().replace("scheduler: rr", "scheduler: roundrobin"))
    assert main(["plan", "--from-empty", "-f", SEED, "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:15: VirtualService default/web: spec.scheduler: must be one of" in err
    assert "nothing was changed" in err


def test_plan_refuses_the_metadata_address_unless_allow_vip_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metadata = tmp_path / "md.yaml"
    metadata.write_text(Path(SEED).read_text().replace("169.254.11.2", "169.254.169.254"))
    assert main(["plan", "--from-empty", "-f", str(metadata)]) == 2
    err = capsys.readouterr().err
    assert (f"{metadata}:3: VirtualService default/web: spec.vip: VIPNotAllowed: 169.254.169.254 is a cloud metadata address "
            "(the host's instance credentials): refused unless --allow-vip=169.254.169.254 is given") in err
    assert "nothing was changed" in err
    assert main(["plan", "--from-empty", "-f", str(metadata), "--allow-vip", "169.254.0.0/16"]) == 2, "only an entry of its own"
    capsys.readouterr()
    assert main(["plan", "--from-empty", "-f", str(metadata), "--allow-vip", "169.254.169.254"]) == 0
    assert "ipvsadm -A -t 169.254.169.254:80 -s rr" in capsys.readouterr().out


def test_plan_with_vip_policy_pools_takes_only_vips_inside_allow_vip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", SEED, "--vip-policy", "pools", "--allow-vip", "169.254.11.0/24"]) == 0
    capsys.readouterr()
    assert main(["plan", "--from-empty", "-f", SEED, "--vip-policy", "pools", "--allow-vip", "10.0.0.1-10.0.0.9"]) == 2
    assert "spec.vip: VIPNotAllowed: 169.254.11.2 lies in no --allow-vip entry (--vip-policy=pools; entries: 10.0.0.1-10.0.0.9)" in capsys.readouterr().err
    assert main(["plan", "--from-empty", "-f", SEED, "--allow-vip", "10.0.0.9-10.0.0.1"]) == 2
    assert "--allow-vip: '10.0.0.9-10.0.0.1' runs backwards: write the lower address first" in capsys.readouterr().err


def test_missing_file_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", "/nonexistent/x.yaml"]) == 2
    assert "/nonexistent/x.yaml: no such file or folder" in capsys.readouterr().err


def test_folder_and_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.yaml").write_text(Path(SEED).read_text())
    (tmp_path / "notes.txt").write_text("ignored: not YAML by name")
    assert main(["plan", "--from-empty", "-f", str(tmp_path)]) == 0
    assert "ipvsadm -A" in capsys.readouterr().out
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(Path(SEED).read_text()))
    assert main(["plan", "--from-empty", "-f", "-"]) == 0
    assert "ipvsadm -A" in capsys.readouterr().out


def test_node_labels_select(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = tmp_path / "sel.yaml"
    doc.write_text(Path(SEED).read_text() + "  nodeSelector: {matchLabels: {lb: 'yes'}}\n")
    assert main(["plan", "--from-empty", "-f", str(doc), "--node-name", "n1"]) == 0
    assert "Nothing to do" in capsys.readouterr().out
    assert main(["plan", "--from-empty", "-f", str(doc), "--node-name", "n1", "--node-label", "lb=yes"]) == 0
    assert "ipvsadm -A" in capsys.readouterr().out
    assert main(["plan", "--from-empty", "-f", str(doc), "--node-label", "novalue"]) == 2


def test_console_script_runs_crd_and_version() -> None:
    vsop = Path(sys.executable).parent / "vsop"
    out = subprocess.run([str(vsop), "crd"], capture_output=True, text=True, check=True).stdout
    assert out == (ROOT / "crds" / "virtualservices.vsop.dev.yaml").read_text()
    assert subprocess.run([str(vsop), "version"], capture_output=True, text=True, check=True).stdout.startswith("vsop ")
    helptext = subprocess.run([str(vsop), "plan", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--from-empty" in helptext and "ipvsadm" in helptext


def test_render_keepalived_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "keepalived", "-f", str(ROOT / "examples" / "keepalived" / "web-nat-http.yaml"), "--layout", "single"]) == 0
    out = capsys.readouterr().out
    assert "virtual_server 169.254.12.2 80 {" in out and "lb_kind NAT" in out
