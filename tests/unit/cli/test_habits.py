"""kubectl's habits on the command line: round trips, namespaces, NotFound, dry runs, output
formats, the writer lock, help texts, escaped output and bracketed IPv6 endpoints.

The commands run in-process on the in-memory fake kernel (vsop.adapters.real.real_kernel is
swapped for it), with the store and the lock in tmp_path.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vsop.adapters import real as host
from vsop.adapters.kernel import fake_kernel
from vsop.cli import bird, render
from vsop.cli.main import build_parser, main
from vsop.node.lock import writer_lock

ROOT = Path(__file__).parent.parent.parent.parent
PACKAGE = ROOT / "operator" / "vsop"


def doc(name: str = "web", namespace: str = "default", vip: str = "169.254.11.2", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vsop.dev/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vip": vip, "ports": [{"port": 80, "targetPort": 8080}], "backends": [{"address": "192.168.2.111"}], **spec},
    }


def write(path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(path)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    kernel, fake = fake_kernel()
    monkeypatch.setattr(host, "real_kernel", lambda *a, **k: kernel)
    monkeypatch.setenv("VSOP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("VSOP_LOCK", str(tmp_path / "lock"))
    return fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--node-name", "n"] if argv[0] in ("apply", "delete", "get", "plan") else list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def two_namespaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write(tmp_path / "in.yaml", doc("web"), doc("web", "prod", vip="169.254.11.3"), doc("api", "prod", vip="169.254.11.4"))
    assert run(capsys, "apply", "-f", files)[0] == 0


# -- get -o yaml|json is input for apply and plan --------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_get_output_is_valid_input_for_plan_and_apply(node, tmp_path: Path, capsys, fmt: str) -> None:
    two_namespaces(tmp_path, capsys)
    store_before = snapshot(tmp_path / "store")
    code, out, _ = run(capsys, "get", "-A", "-o", fmt)
    assert code == 0 and "status" in out and "store" in out  # status.store is there, and must be ignored
    exported = tmp_path / f"export.{fmt}"
    exported.write_text(out)
    code, out, err = run(capsys, "plan", "-f", str(exported))
    assert code == 0 and "Nothing to do" in out, err
    code, out, err = run(capsys, "apply", "-f", str(exported))
    assert code == 0 and "nothing changed" in out and "(0 writes)" in out, err
    assert snapshot(tmp_path / "store") == store_before  # not a byte of status reached the store
    code, out, _ = run(capsys, "get", "web", "-o", fmt)  # one object named: the object itself, as kubectl prints it
    one = yaml.safe_load(out)
    assert code == 0 and one["kind"] == "VirtualService" and one["metadata"] == {"name": "web", "namespace": "default"}


def test_server_set_fields_are_ignored_as_kubectl_apply_ignores_them(node, tmp_path: Path, capsys) -> None:
    """What `kubectl get -o yaml` adds (status, uid, resourceVersion, managedFields, generation) is not stored."""
    exported = doc()
    exported["metadata"].update(
        uid="0b2c-11", resourceVersion="4711", generation=3, selfLink="/apis/x", managedFields=[{"manager": "kubectl", "operation": "Update"}],
        creationTimestamp="2024-01-01T00:00:00Z", labels={"app": "web"},
    )
    exported["status"] = {"conditions": [{"type": "Ready", "status": "True"}], "anything": {"a server": "wrote"}}
    code, _, err = run(capsys, "apply", "-f", write(tmp_path / "k.yaml", exported))
    assert code == 0, err
    stored = yaml.safe_load((tmp_path / "store" / "default_web.yaml").read_text())
    assert "status" not in stored
    assert stored["metadata"] == {"name": "web", "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"app": "web"}}
    broken = doc()
    broken["status"] = "not even a mapping"  # ignored whole, as the API server ignores status in an apply
    assert run(capsys, "plan", "--from-empty", "-f", write(tmp_path / "b.yaml", broken))[0] == 0


# -- names and namespaces ----------------------------------------------------------------------


def test_a_bare_name_means_the_namespace_of_n_on_every_command(node, tmp_path: Path, capsys) -> None:
    two_namespaces(tmp_path, capsys)
    code, out, _ = run(capsys, "get", "web", "-o", "name")
    assert code == 0 and out == "default/web\n"  # not prod/web too
    code, out, _ = run(capsys, "get", "web", "-n", "prod", "-o", "name")
    assert code == 0 and out == "prod/web\n"
    code, out, _ = run(capsys, "get", "-o", "name")  # kubectl: the default namespace only
    assert out == "default/web\n"
    code, out, _ = run(capsys, "get", "-n", "prod", "-o", "name")
    assert out == "prod/api\nprod/web\n" or out == "prod/web\nprod/api\n"
    code, out, _ = run(capsys, "get", "-A", "-o", "name")
    assert sorted(out.split()) == ["default/web", "prod/api", "prod/web"]
    code, out, _ = run(capsys, "get", "-n", "empty")
    assert code == 0 and "No VirtualServices in namespace empty" in out and "3 in other namespaces: -A lists them" in out
    code, _, err = run(capsys, "get", "-A", "web")
    assert code == 2 and "cannot be looked up across all namespaces" in err
    code, _, err = run(capsys, "get", "-n", "Not_A_Label")
    assert code == 2 and "--namespace" in err
    code, out, _ = run(capsys, "delete", "web", "-n", "prod", "--now")
    assert code == 0 and "deleted VirtualService prod/web" in out
    code, out, _ = run(capsys, "get", "-A", "-o", "name")
    assert sorted(out.split()) == ["default/web", "prod/api"]
    code, out, _ = run(capsys, "delete", "web", "--now")  # the same bare name, the same namespace as get's
    assert code == 0 and "deleted VirtualService default/web" in out


def test_get_and_delete_of_a_missing_object_exit_1_not_found(node, tmp_path: Path, capsys) -> None:
    two_namespaces(tmp_path, capsys)
    store_before = snapshot(tmp_path / "store")
    code, out, err = run(capsys, "get", "nope")
    assert code == 1 and out == "" and 'NotFound: virtualservice "default/nope" not found' in err
    code, out, _ = run(capsys, "get", "nope", "-o", "json")
    failure = json.loads(out)
    assert code == 1 and failure["exitCode"] == 1 and failure["reason"] == "NotFound" and failure["notFound"] == ["default/nope"]
    code, out, err = run(capsys, "get", "web", "nope")  # kubectl: what is found is printed, the rest said, exit 1
    assert code == 1 and "default/web" in out and 'virtualservice "default/nope" not found' in err
    assert run(capsys, "get", "nope", "--ignore-not-found")[0] == 0
    code, _, err = run(capsys, "delete", "web", "nope", "--now")
    assert code == 1 and 'NotFound: virtualservice "default/nope" not found' in err and "nothing was deleted" in err
    assert snapshot(tmp_path / "store") == store_before  # all or nothing: web stays too
    code, out, _ = run(capsys, "delete", "web", "nope", "--now", "--ignore-not-found")
    assert code == 0 and "deleted VirtualService default/web" in out


# -- dry runs -------------------------------------------------------------------------------


def test_apply_dry_run_prints_what_plan_prints_and_writes_nothing(node, tmp_path: Path, capsys) -> None:
    two_namespaces(tmp_path, capsys)
    new = write(tmp_path / "new.yaml", doc("db", vip="169.254.11.9"), doc("web", vip="169.254.11.2", scheduler="wrr"))
    store_before, kernel_before, writes = snapshot(tmp_path / "store"), node.state, node.writes
    with writer_lock(tmp_path / "lock", 1):  # another writer holds the lock: a dry run does not wait for it
        for fmt in ("text", "json", "yaml"):
            planned = run(capsys, "plan", "-f", new, "-o", fmt)
            for flag in ("--dry-run", "--dry-run=client"):
                assert run(capsys, "apply", "-f", new, flag, "-o", fmt, "--wait", "0") == planned, (fmt, flag)
    assert planned[0] == 0 and "169.254.11.9" in planned[1] and "wrr" in planned[1]
    text = run(capsys, "apply", "--dry-run", "-f", new)[1]
    assert "ipvsadm -A -t 169.254.11.9:80 -s rr" in text and "ipvsadm -E -t 169.254.11.2:80 -s wrr" in text
    assert snapshot(tmp_path / "store") == store_before and node.state == kernel_before and node.writes == writes
    code, out, _ = run(capsys, "apply", "-f", new, "--dry-run=none")  # kubectl's none: a real apply
    assert code == 0 and node.writes > writes


def test_delete_dry_run_prints_the_plan_and_writes_nothing(node, tmp_path: Path, capsys) -> None:
    two_namespaces(tmp_path, capsys)
    store_before, kernel_before, writes = snapshot(tmp_path / "store"), node.state, node.writes
    code, out, err = run(capsys, "delete", "--dry-run", "web", "-n", "prod")  # the flag takes no value: web is the NAME
    assert code == 0, err
    assert out.startswith("# vsop delete --dry-run: prod/web would be deleted; nothing was written.")
    assert "ipvsadm -D -t 169.254.11.3:80" in out and "169.254.11.2" not in out
    code, out, _ = run(capsys, "delete", "web", "-n", "prod", "--dry-run", "-o", "json")
    plan = json.loads(out)
    assert plan["dryRun"] is True and plan["deleted"] == ["prod/web"] and plan["counts"]["service.delete"] == 1
    code, _, err = run(capsys, "delete", "nope", "--dry-run")
    assert code == 1 and "NotFound" in err and "nothing would be deleted" in err
    assert snapshot(tmp_path / "store") == store_before and node.state == kernel_before and node.writes == writes


# -- output formats ---------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# The daemons' parsers are the agents' (vsop.cli.main's agent block, vsop.kube): they print no object.
DAEMONS = ("agent", "controller")


def test_json_and_yaml_wherever_an_object_is_printed() -> None:
    for name, parser in subcommands().items():
        if name in DAEMONS or name == "render":
            continue
        options = {opt: action for action in parser._actions for opt in action.option_strings}
        assert {"text", "json", "yaml"} <= set(options["-o"].choices), name
    for tool in (render, bird):
        options = {opt: action for action in tool.build_parser()._actions for opt in action.option_strings}
        assert {"text", "json", "yaml"} <= set(options["-o"].choices), tool
    assert {"wide", "name"} <= set({opt: a for a in subcommands()["get"]._actions for opt in a.option_strings}["-o"].choices)


def test_plan_and_show_print_yaml(node, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "plan", "--from-empty", "-f", write(tmp_path / "a.yaml", doc()), "-o", "yaml")
    plan = yaml.safe_load(out)
    assert code == 0 and plan["counts"]["service.add"] == 1 and plan["fromEmpty"] is True
    code, out, _ = run(capsys, "show", "-o", "yaml", "--status-file", str(tmp_path / "none.json"))
    assert code == 0 and isinstance(yaml.safe_load(out), dict)


def test_get_wide_adds_columns(node, tmp_path: Path, capsys) -> None:
    two_namespaces(tmp_path, capsys)
    code, out, _ = run(capsys, "get", "-o", "wide")
    header, row = out.splitlines()
    assert header.split()[:6] == ["NAMESPACE/NAME", "VIP", "PORTS", "MODE", "SCHEDULER", "REAL"]
    assert row.split()[:8] == ["default/web", "169.254.11.2", "80/TCP", "ipvs", "rr", "1", "static", str(tmp_path / "store" / "default_web.yaml")]
    assert row.endswith("yes")


# -- help, flags, metavars, the writer lock ----------------------------------------------------


def test_every_command_says_its_exit_codes_in_its_help() -> None:
    from vsop.cli.agents import CLUSTER, CONTROLLER, build_parser as daemon_parser

    parsers = {**subcommands(), "agent (cluster)": daemon_parser(CLUSTER), "controller (own)": daemon_parser(CONTROLLER)}
    for name, parser in parsers.items():
        text = parser.format_help()
        assert "exit codes:" in text and all(f"\n  {code}  " in text for code in (0, 1, 2)), name
    assert all("exit codes:" in tool.build_parser().format_help() for tool in (render, bird))


def test_one_metavar_style() -> None:
    """`--node-name NODE`, not NODE_NAME: every option that takes a value names it in one word."""
    from vsop.cli.agents import CLUSTER, CONTROLLER, build_parser as daemon_parser

    parsers = dict(subcommands())
    parsers["render keepalived"], parsers["render bird"] = render.build_parser(), bird.build_parser()
    parsers["agent (cluster)"], parsers["controller (own)"] = daemon_parser(CLUSTER), daemon_parser(CONTROLLER)
    for name, parser in parsers.items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.choices is not None:
                continue
            shown = action.metavar or action.dest.upper()  # what --help prints
            assert isinstance(shown, str) and "_" not in shown, f"vsop {name} {action.option_strings[-1]} {shown}"


def test_every_writer_takes_lock_and_wait() -> None:
    for name in ("apply", "delete", "cleanup"):
        options = {opt for action in subcommands()[name]._actions for opt in action.option_strings}
        assert {"--lock", "--wait", "--dry-run"} <= options, name


def test_cleanup_waits_for_the_lock_it_is_given(node, tmp_path: Path, capsys) -> None:
    import os

    with writer_lock(tmp_path / "other.lock", 1):
        code, _, err = run(capsys, "cleanup", "--lock", str(tmp_path / "other.lock"), "--wait", "0.2")
    assert code == 1 and f"pid {os.getpid()}" in err


def test_an_unknown_flag_is_named_before_a_missing_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "keepalived", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus" in err and "required" not in err
    assert main(["plan", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus" in err and "required" not in err
    assert main(["plan"]) == 2 and "-f/--filename" in capsys.readouterr().err  # still said when it is the only problem


# -- render --out -----------------------------------------------------------------------------


def test_render_out_writes_nothing_when_nothing_differs_and_says_so(tmp_path: Path, capsys) -> None:
    source = str(ROOT / "examples" / "keepalived")
    out = tmp_path / "out"
    assert main(["render", "keepalived", "-f", source, "--out", str(out)]) == 0
    capsys.readouterr()
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*")}
    assert main(["render", "keepalived", "-f", source, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("vsop: nothing changed:") and "(0 writes)" in said
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*")} == stamps
    assert main(["render", "keepalived", "-f", source, "--out", str(out), "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] is False and report["written"] == []


# -- explain ----------------------------------------------------------------------------------


def test_explain_refuses_a_zone_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "[fe80::1%eth0]:80"]) == 2
    err = capsys.readouterr().err
    assert "a zone (%eth0) is not part of a VIP" in err and "[fe80::1]:PORT" in err and "usage" not in err.lower()


def test_explain_exits_1_on_a_kernel_without_ipvs_and_still_prints_the_path(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from vsop.diagnose import gather
    from vsop.diagnose.facts import Facts

    monkeypatch.setattr(gather, "gather", lambda *a, **k: Facts(ipvs_available=False, ipvs_error="this kernel has no IPVS"))
    assert main(["explain", "169.254.11.2:80"]) == 1
    assert "IPVS is not available" in capsys.readouterr().out
    monkeypatch.setattr(gather, "gather", lambda *a, **k: Facts())
    assert main(["explain", "169.254.11.2:80"]) == 0


# -- one voice, escaped ------------------------------------------------------------------------


def test_get_says_a_bad_store_file_once(node, tmp_path: Path, capsys) -> None:
    two_namespaces(tmp_path, capsys)
    bad = tmp_path / "store" / "default_bad.yaml"
    bad.write_text("apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {vip: 169.254.11.8}\n")
    code, out, err = run(capsys, "get")
    assert code == 0 and "default/web" in out and str(bad) not in out
    assert err.count(str(bad)) == 1 and err.startswith(f"vsop: warning: store file {bad}:4: VirtualService default/bad: spec.ports")
    code, out, err = run(capsys, "get", "-o", "json")
    assert json.loads(out)["metadata"]["errors"][str(bad)].startswith(f"{bad}:4:") and err.count(str(bad)) == 1


def test_get_run_as_a_program_says_a_bad_store_file_once(tmp_path: Path) -> None:
    """Run as a process, with no logging set up: the folder reader's log record is not a second voice."""
    import subprocess
    import sys

    store = tmp_path / "store"
    store.mkdir()
    write(store / "default_web.yaml", doc())
    (store / "default_bad.yaml").write_text("apiVersion: vsop.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {}\n")
    vsop = str(Path(sys.executable).parent / "vsop")
    done = subprocess.run([vsop, "get", "--store", str(store)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "default/web" in done.stdout
    assert len([line for line in done.stderr.splitlines() if "default_bad.yaml" in line]) == 1, done.stderr


def test_every_printed_line_is_escaped(node, tmp_path: Path, capsys) -> None:
    """File names in a folder, another tool's object names, names given on the command line: escaped on the way out."""
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "web.yaml", doc())
    (folder / "\x1b]0;owned\x07.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"cm\\e[2J\"}\n")
    outputs = [
        run(capsys, "plan", "-f", str(folder)),
        run(capsys, "apply", "-f", str(folder)),
        run(capsys, "get", "we\x1b[31mb"),
        run(capsys, "delete", "x\x9bc", "--now"),
        run(capsys, "explain", "\x1b[2J:80"),
        run(capsys, "get", "--bogus\x1b[2J"),
    ]
    for code, out, err in outputs:
        assert all(ch.isprintable() or ch == "\n" for ch in out + err), repr(out + err)
    said = "".join(out + err for _, out, err in outputs)
    assert "\\x1b]0;owned\\x07.yaml" in said and "cm\\x1b[2J" in said and "we\\x1b[31mb" in said and "\\x9b" in said


# -- IPv6 endpoints ----------------------------------------------------------------------------


def test_ipv6_endpoints_are_bracketed_in_messages(tmp_path: Path, capsys) -> None:
    a = write(tmp_path / "a.yaml", doc("a", vip="fd00::1", backends=[{"address": "fd00::10"}]))
    b = write(tmp_path / "b.yaml", doc("b", vip="fd00::1", backends=[{"address": "fd00::10"}]))
    code, _, err = run(capsys, "plan", "--from-empty", "-f", a, "-f", b)
    assert code == 2 and "[fd00::1]:80/TCP is already claimed by VirtualService default/a" in err


# Where an address and a port meet in an f-string: only in hostport itself (and the HTTP Host
# header, already bracketed); the ipset member notation `VIP,proto:PORT` is the kernel's, not a message.
ENDPOINT = re.compile(r"\{[^{}]*(vip|addr|host|src|dst|\bip)[^{}]*\}:\{[^{}]*port[^{}]*\}", re.IGNORECASE)
ALLOWED = (",{key.protocol}:{key.port}", ",{proto}:", "[{address}]:{port}", "{address}:{port}", "{host}:{port}\\r\\n")


def test_every_endpoint_in_a_message_goes_through_hostport() -> None:
    offenders = []
    for folder in ("core", "cli", "diagnose", "node", "host", "api", "keepalived", "kube", "bgp", "adapters"):
        for path in (PACKAGE / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for match in ENDPOINT.finditer(line):
                    around = line[max(0, match.start() - 12): match.end() + 6]
                    if not any(allowed in around for allowed in ALLOWED):
                        offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {match.group()}")
    assert offenders == []
