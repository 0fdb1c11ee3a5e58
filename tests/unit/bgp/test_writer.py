"""The BIRD writer on a stand-in for `bird -p` and `birdc`: what ends in the folder, and what is reported.

The netns tier runs the same writer against Debian's BIRD itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

from vsop.bgp.render import MARKER
from vsop.bgp.writer import BirdWriter

GOOD = f"{MARKER} from BGPSpeaker edge\nrouter id 10.0.0.2;\n"
BAD = f"{MARKER} from BGPSpeaker edge\nrouter id nonsense;\n"


class Tools:
    """`bird -p` refuses a file naming "nonsense"; `birdc configure` answers like BIRD 2.0.12."""

    def __init__(self, running: bool = True):
        self.calls: list[list[str]] = []
        self.running = running

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        if argv[1] == "-p":
            text = Path(argv[3]).read_text()
            if "nonsense" in text:
                return subprocess.CompletedProcess(argv, 1, "", f"bird: {argv[3]}:2:11 syntax error, unexpected CF_SYM_UNDEFINED\n")
            return subprocess.CompletedProcess(argv, 0, "", "")
        if not self.running:
            return subprocess.CompletedProcess(argv, 1, "", "Unable to connect to server control socket (/run/x.ctl): No such file or directory\n")
        return subprocess.CompletedProcess(argv, 0, "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfigured\n", "")


def test_a_new_file_is_checked_renamed_into_place_and_bird_reconfigured(tmp_path: Path) -> None:
    tools = Tools()
    writer = BirdWriter(tmp_path / "bird.conf", "/run/x.ctl", run=tools)
    result = writer.update(GOOD)
    assert result.changed and result.reloaded and result.refused is None
    assert (tmp_path / "bird.conf").read_text() == GOOD and (tmp_path / "bird.conf").stat().st_mode & 0o777 == 0o600
    assert [c[:2] for c in tools.calls] == [["bird", "-p"], ["birdc", "-s"]] and tools.calls[1][2:] == ["/run/x.ctl", "configure"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]  # no candidate left behind
    again = writer.update(GOOD)
    assert not again.changed and len(tools.calls) == 2  # the same text: nothing checked, nothing reloaded


def test_a_refused_candidate_changes_nothing_and_is_not_checked_again(tmp_path: Path) -> None:
    tools = Tools()
    writer = BirdWriter(tmp_path / "bird.conf", "/run/x.ctl", run=tools)
    writer.update(GOOD)
    refused = writer.update(BAD)
    assert not refused.changed and "syntax error" in (refused.refused or "") and "(candidate)" in (refused.refused or "")
    assert (tmp_path / "bird.conf").read_text() == GOOD and sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]
    calls = len(tools.calls)
    assert writer.update(BAD).refused == refused.refused and len(tools.calls) == calls


def test_bird_not_running_is_reported_and_the_file_stays_for_its_start(tmp_path: Path) -> None:
    result = BirdWriter(tmp_path / "bird.conf", "/run/x.ctl", run=Tools(running=False)).update(GOOD)
    assert result.changed and not result.reloaded and "Unable to connect" in (result.reload_error or "")
    assert (tmp_path / "bird.conf").read_text() == GOOD


def test_a_bird_conf_vsop_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "bird.conf").write_text("router id 1.2.3.4;\n")
    tools = Tools()
    result = BirdWriter(tmp_path / "bird.conf", "/run/x.ctl", run=tools).update(GOOD)
    assert not result.changed and "not written by vsop" in (result.refused or "") and tools.calls == []
    assert (tmp_path / "bird.conf").read_text() == "router id 1.2.3.4;\n"
