"""A command's Result, printed once: the format asked for, and what stderr says in which order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsop.cli.main import main
from vsop.cli.output import Result, emit, failed

UDP_WEB = """apiVersion: vsop.dev/v1alpha1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  vip: 169.254.11.2
  ports: [{port: 53, protocol: UDP}]
  backends: [{address: 192.168.2.111}]
"""


def test_emit_prints_the_format_asked_for_and_notes_after_it(capsys: pytest.CaptureFixture[str]) -> None:
    made: list[str] = []

    def text() -> str:
        made.append("text")
        return "two\nlines\n"

    result = Result(3, text=text, document={"a": [1]}, notes=("vsop: warning: a note",))
    assert emit(result, "json") == 3 and made == []  # the text is never made for -o json
    out, err = capsys.readouterr()
    assert json.loads(out) == {"a": [1]} and out.endswith("]\n}\n") and err == "vsop: warning: a note\n"
    assert emit(result, "yaml") == 3 and capsys.readouterr().out == "a:\n- 1\n"
    assert emit(result, "text") == 3 and capsys.readouterr().out == "two\nlines\n" and made == ["text"]
    assert emit(Result(text="only text\n"), "json") == 0 and capsys.readouterr().out == "only text\n"  # no document: the text
    assert emit(failed("it broke", notes=["vsop: after"], applied=2), "json") == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": "runtime failure", "exitCode": 1, "message": "it broke", "applied": 2} and err == "vsop: after\n"


def test_a_refused_apply_says_the_failure_before_the_conntrack_entries_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vsop.adapters.real
    from vsop.adapters.kernel import fake_kernel

    kernel, fake = fake_kernel()
    monkeypatch.setattr(vsop.adapters.real, "real_kernel", lambda *a, **k: kernel)
    monkeypatch.setenv("VSOP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("VSOP_LOCK", str(tmp_path / "lock"))
    web, api = tmp_path / "web.yaml", tmp_path / "api.yaml"
    web.write_text(UDP_WEB)
    api.write_text(UDP_WEB.replace("name: web", "name: api").replace("169.254.11.2", "169.254.11.3"))
    assert main(["apply", "-f", str(web), "--node-name", "n"]) == 0
    capsys.readouterr()
    kernel.conntrack.refuse = lambda entry: "no conntrack tool"  # type: ignore[union-attr]
    fake.refuse = lambda op: "Operation not permitted" if op.kind == "address.delete" else None
    assert main(["apply", "--prune", "-f", str(api), "--node-name", "n"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vsop: ")]
    assert "programming the kernel failed" in lines[0] and "address.delete" in lines[0]
    assert lines[1:] == ["vsop: warning: UDP conntrack entries not forgotten for UDP 169.254.11.2:53 -> 192.168.2.111:53: no conntrack tool;"
                         " its clients move when their entries expire"]
