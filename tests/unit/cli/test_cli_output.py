"""The command line's common surface: --version, descriptions, -o on every command, errors as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vsop.cli.main import build_parser, main

ROOT = Path(__file__).parent.parent.parent.parent
SEED = str(ROOT / "examples" / "seed.yaml")
KEEPALIVED = str(ROOT / "examples" / "keepalived" / "web-nat-http.yaml")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("vsop ")
    assert main(["version", "-o", "json"]) == 0
    assert "version" in json.loads(capsys.readouterr().out)


def test_every_subcommand_has_a_description_and_output_formats() -> None:
    for name, parser in subcommands().items():
        assert parser.description, f"vsop {name} --help has no description"
        if name in ("controller", "render"):
            continue  # delegated: their own parsers carry -o
        options = {opt: action for action in parser._actions for opt in action.option_strings}
        assert "-o" in options, f"vsop {name} has no -o"
        assert {"text", "json"} <= set(options["-o"].choices), name


def test_plan_accepts_text_as_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--from-empty", "-f", SEED, "-o", "text"]) == 0
    text = capsys.readouterr().out
    assert main(["plan", "--from-empty", "-f", SEED, "-o", "commands"]) == 0
    assert capsys.readouterr().out == text and "ipvsadm -A" in text


def test_invalid_input_as_json_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(SEED).read_text().replace("scheduler: rr", "scheduler: roundrobin"))
    assert main(["plan", "--from-empty", "-f", str(bad), "-o", "json"]) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["exitCode"] == 2 and err == ""
    (problem,) = doc["problems"]
    assert problem["file"] == str(bad) and problem["line"] == 15
    assert problem["object"] == "default/web" and problem["field"] == "spec.scheduler"


def test_render_keepalived_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["render", "keepalived", "-f", KEEPALIVED, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "keepalived.conf" in doc["files"] and doc["rendered"] == ["default/web-nat"]
    assert main(["render", "keepalived", "-f", KEEPALIVED, "--out", str(tmp_path), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert str(tmp_path / "keepalived.conf") in doc["written"]
    assert main(["render", "keepalived", "-f", str(tmp_path / "missing.yaml"), "-o", "json"]) == 2
    assert json.loads(capsys.readouterr().out)["exitCode"] == 2


def test_a_bug_is_one_line_and_exit_one(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import vsop.cli.main

    def broken(args: argparse.Namespace) -> int:
        raise KeyError("boom")

    monkeypatch.setitem(vsop.cli.main.COMMANDS, "version", broken)
    assert main(["version"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bug in vsop" in err and "Traceback" not in err
    assert main(["version", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_exit_two_and_honour_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-o", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["exitCode"] == 2 and "-f/--filename" in doc["message"]
    assert main(["plan"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: vsop plan" in err and "-f/--filename" in err
    assert main(["render", "keepalived", "--output=json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "usage"


def test_cleanup_dry_run_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import vsop.adapters.real
    from tests.conftest import make_vs
    from vsop.core.desired import Node
    from vsop.adapters.kernel import fake_kernel
    from vsop.node.whole import sync

    kernel, fake = fake_kernel()
    sync(kernel, [make_vs()], Node("n1"))
    before = repr(fake.state)
    monkeypatch.setattr(vsop.adapters.real, "real_kernel", lambda: kernel)
    assert main(["cleanup", "--dry-run", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dryRun"] is True and doc["operations"]
    assert any(cmd.startswith("ipvsadm -D") for op in doc["operations"] for cmd in op["commands"])
    assert repr(fake.state) == before  # nothing was removed
