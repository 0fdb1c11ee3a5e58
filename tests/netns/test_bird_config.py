"""Netns tier: Debian's BIRD 2 accepts the golden bird.conf (`bird -p`), the writer reloads a running
BIRD through its own control socket, and BIRD learns exactly vsop's routes from table 4242.

Each test runs in its own network namespace (tests/netns/conftest.py); the BIRD started
here runs in the foreground as this test's child, with its control socket in tmp_path,
and is stopped by the test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.bgp.test_render import GOLDEN, PASSWORD, rendered
from tests.unit.cli.test_render_bird import speaker  # noqa: F401 (a fixture)
from vsop.cli.main import main
from vsop.adapters.routes import RouteKernel
from vsop.bgp.writer import BirdWriter
from vsop.core import ops

BIRD = shutil.which("bird") or "/usr/sbin/bird"
BIRDC = shutil.which("birdc") or "/usr/sbin/birdc"

if not Path(BIRD).exists():
    raise pytest.UsageError("netns tier: BIRD is not installed (make deps installs Debian's bird2)")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def test_bird_accepts_the_golden_configuration() -> None:
    checked = subprocess.run([BIRD, "-p", "-c", str(GOLDEN / "two-peers.conf")], capture_output=True, text=True)
    assert (checked.returncode, checked.stderr) == (0, "")


def test_bird_accepts_the_configuration_logging_to_stderr_as_in_a_pod(tmp_path: Path) -> None:
    conf = tmp_path / "bird.conf"
    conf.write_text(rendered().replace("\nlog syslog all;\n", "\nlog stderr all;\n"))
    assert "log stderr all;" in conf.read_text()
    checked = subprocess.run([BIRD, "-p", "-c", str(conf)], capture_output=True, text=True)
    assert (checked.returncode, checked.stderr) == (0, "")


@pytest.fixture
def bird(tmp_path: Path) -> Iterator[tuple[BirdWriter, Path]]:
    """A BIRD running on a vsop-written bird.conf, and the writer for that file."""
    ip("link", "set", "lo", "up")
    conf, sock = tmp_path / "bird.conf", tmp_path / "bird.ctl"
    writer = BirdWriter(conf, str(sock), bird=BIRD, birdc=BIRDC)
    assert writer.update(rendered().replace(PASSWORD, "pw")).changed
    process = subprocess.Popen([BIRD, "-f", "-c", str(conf), "-s", str(sock), "-P", str(tmp_path / "bird.pid")], stderr=subprocess.PIPE, text=True)
    try:
        until(lambda: sock.exists(), "BIRD's control socket")
        yield writer, sock
    finally:
        process.terminate()
        process.wait(timeout=10)


def until(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.05)


def birdc(sock: Path, *command: str) -> str:
    return subprocess.run([BIRDC, "-s", str(sock), *command], capture_output=True, text=True, check=True).stdout


def test_a_refused_candidate_changes_nothing_and_a_good_one_reconfigures_the_running_bird(bird: tuple[BirdWriter, Path]) -> None:
    writer, sock = bird
    live = writer.path.read_text()
    refused = writer.update(live.replace("hold time 9;", "hold time 1;"))  # BIRD: hold time must be 0 or 3-65535
    assert not refused.changed and refused.refused and "hold time" in refused.refused.lower()
    assert writer.path.read_text() == live
    changed = writer.update(live.replace("hold time 9;", "hold time 12;"))
    assert changed.changed and changed.reloaded, changed
    assert "hold time 12;" in writer.path.read_text()
    assert "vsop_peer_1" in birdc(sock, "show", "protocols")


def test_bird_learns_vsops_routes_from_table_4242_and_nothing_else(bird: tuple[BirdWriter, Path]) -> None:
    _, sock = bird
    ip("route", "add", "blackhole", "192.0.2.99/32", "table", "4242", "proto", "static")  # not vsop's protocol
    ip("route", "add", "blackhole", "192.0.2.98/32", "table", "100", "proto", "118")  # not vsop's table
    with RouteKernel() as routes:
        routes.apply([ops.AddRoute("192.0.2.10/32", 4242, 118), ops.AddRoute("2001:db8::10/128", 4242, 118)])
        until(lambda: "192.0.2.10/32" in birdc(sock, "show", "route", "table", "vsop_v4"), "BIRD to learn 192.0.2.10/32")
        until(lambda: "2001:db8::10/128" in birdc(sock, "show", "route", "table", "vsop_v6"), "BIRD to learn 2001:db8::10/128")
        learned = birdc(sock, "show", "route", "table", "vsop_v4")
        assert "192.0.2.99" not in learned and "192.0.2.98" not in learned
        # BIRD exports nothing to the kernel: the VIP is in vsop's table and nowhere else.
        everywhere = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
        assert [line for line in everywhere.splitlines() if "192.0.2.10 " in line] == ["blackhole 192.0.2.10 table 4242 proto 118 "]
        routes.apply([ops.DeleteRoute("192.0.2.10/32", 4242, 118)])
        until(lambda: "192.0.2.10/32" not in birdc(sock, "show", "route", "table", "vsop_v4"), "BIRD to forget 192.0.2.10/32")


def test_render_bird_out_writes_the_checked_file_and_says_bird_was_not_running(speaker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    out = tmp_path / "bird.conf"
    argv = ["render", "bird", "--speaker", str(speaker), "--out", str(out), "--control-socket", str(tmp_path / "none.ctl")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "BIRD not reconfigured" in captured.out and "reads" in captured.err
    assert out.read_text().startswith("# Generated by vsop")
    assert main(argv) == 0 and "up to date" in capsys.readouterr().out
