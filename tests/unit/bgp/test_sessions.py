"""BIRD's BGP sessions (vsop.bgp.sessions), `vsop show`'s lines and `vsop doctor`'s check.

The answers are BIRD 2.0.12's own `birdc show protocols all` text (captured from Debian's
bird2: a session still connecting, one Established, one whose hold timer expired), plus the
answer of a birdc whose BIRD is not there.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from typing import Sequence

from tests.conftest import make_vs
from vsop.adapters.kernel import fake_kernel
from vsop.bgp.sessions import Session, parse_protocols, read_sessions, sessions_report
from vsop.core.desired import Node
from vsop.core.state import KernelState, Names
from vsop.diagnose.doctor import FAIL, PASS, WARN, check_bgp, check_ecmp, doctor
from vsop.diagnose.facts import Facts
from vsop.diagnose.show import show_json, show_text
from vsop.node.whole import sync

ANSWER = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
vsop_device Device     ---        up     07:06:16.789  

vsop_kernel_v4 Kernel     vsop_v4    up     07:06:16.789  
  Channel ipv4
    State:          UP
    Table:          vsop_v4

vsop_peer_1 BGP        ---        start  07:06:16.789  Active        
  Description:    10.99.0.2
  BGP state:          Active
    Neighbor address: 10.99.0.2
    Neighbor AS:      65000
    Local AS:         65001
    Connect delay:    3.016/5
    Last error:       Hold timer expired
  Channel ipv4
    State:          DOWN
    Table:          master4

vsop_peer_2 BGP        ---        up     07:06:21.802  Established   
  Description:    10.99.0.3
  BGP state:          Established
    Neighbor address: 10.99.0.3
    Neighbor AS:      65002
    Local AS:         65001
    Neighbor ID:      10.99.0.3
    Hold timer:       7.123/9
  Channel ipv4
    State:          UP
    Table:          vsop_v4

router_peer BGP        ---        up     07:06:21.802  Established   
  BGP state:          Established
"""


def answered(text: str, code: int = 0, stderr: str = ""):
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
        calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), code, text, stderr)

    return run, calls


def test_parse_keeps_vsops_peers_with_their_state_and_last_error() -> None:
    first, second = parse_protocols(ANSWER)  # the device, kernel and a foreign BGP protocol are left out
    assert first == Session("vsop_peer_1", "10.99.0.2", 65000, "start", "Active", "07:06:16.789", "Hold timer expired")
    assert not first.up and second.up and second.asn == 65002 and second.last_error == ""
    assert second.as_dict() == {"protocol": "vsop_peer_2", "peer": "10.99.0.3", "asn": 65002, "up": True, "state": "up",
                                "bgpState": "Established", "since": "07:06:21.802", "lastError": ""}
    assert parse_protocols("BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n") == []


def test_read_asks_birdc_on_the_socket_and_says_when_bird_does_not_answer() -> None:
    run, calls = answered(ANSWER)
    reading = read_sessions("/run/vsop/bird.ctl", run=run)
    assert calls == [["birdc", "-s", "/run/vsop/bird.ctl", "show", "protocols", "all"]] and len(reading.sessions) == 2 and reading.error is None
    missing, _ = answered("Unable to connect to server control socket (/x.ctl): No such file or directory\n", 1)
    reading = read_sessions("/x.ctl", run=missing)
    assert reading.sessions == () and "No such file or directory" in (reading.error or "")

    def absent(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
        raise FileNotFoundError(2, "No such file or directory", "birdc")

    assert "cannot run birdc" in (read_sessions("/x.ctl", run=absent).error or "")
    # No socket and nothing announced: no BGP on this host, nothing asked.
    assert sessions_report("/nonexistent/bird.ctl", False, run=absent) is None
    assert sessions_report("/nonexistent/bird.ctl", True, run=missing)["error"]  # type: ignore[index]


def report(text: str = ANSWER, code: int = 0) -> dict:
    run, _ = answered(text, code)
    result = sessions_report("/run/vsop/bird.ctl", True, run=run)
    assert result is not None
    return result


def test_show_prints_each_session_in_text_and_json() -> None:
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs("web", announce="bgp")], Node("n"))
    data = show_json(fake.state, Names(), bgp=report())
    assert [(s["peer"], s["up"]) for s in data["bgp"]["sessions"]] == [("10.99.0.2", False), ("10.99.0.3", True)]
    text = show_text(fake.state, Names(), bgp=report())
    assert "BGP sessions (BIRD at /run/vsop/bird.ctl): 1 of 2 up\n" in text
    assert "  peer 10.99.0.2 AS65000 (vsop_peer_1): DOWN, Active since 07:06:16.789, last error: Hold timer expired\n" in text
    assert "  peer 10.99.0.3 AS65002 (vsop_peer_2): up, Established since 07:06:21.802\n" in text
    down = show_text(fake.state, Names(), bgp=report("Unable to connect to server control socket", 1))
    assert "BGP: BIRD not reachable at /run/vsop/bird.ctl: BIRD at /run/vsop/bird.ctl did not answer" in down
    assert "BGP session" not in show_text(fake.state, Names()) and "BIRD not reachable" not in show_text(fake.state, Names())


def facts_with(bgp: dict | None, announced: bool = True) -> Facts:
    return Facts(observed=KernelState(routes=frozenset({"169.254.11.2/32"}) if announced else frozenset()), bgp=bgp)


def test_doctor_passes_an_established_session_and_names_the_fix_for_a_down_one() -> None:
    findings = list(check_bgp(facts_with(report()), []))
    assert [(f.check, f.status) for f in findings] == [("bgp.session", FAIL), ("bgp.session", PASS)]
    down = findings[0]
    assert "BGP session to 10.99.0.2 (vsop_peer_1) is Active since 07:06:16.789, last error: Hold timer expired" in down.message
    assert "the peer stopped answering" in down.message and "1 VIP(s) in table 4242 not announced to it" in down.message
    assert down.fix[0] == "ping 10.99.0.2" and down.fix[-1] == "birdc -s /run/vsop/bird.ctl show protocols all vsop_peer_1"
    refused = report(ANSWER.replace("Hold timer expired", "Socket: Connection refused"))
    assert "refuses the TCP connection" in next(iter(check_bgp(facts_with(refused), []))).message
    bad_as = report(ANSWER.replace("Hold timer expired", "Received: Bad peer AS"))
    assert next(iter(check_bgp(facts_with(bad_as), []))).fix[0] == "set spec.peers[].asn to 10.99.0.2's AS in the BGPSpeaker"


def test_doctor_fails_when_bird_does_not_answer_while_vips_are_announced() -> None:
    gone = report("Unable to connect to server control socket (/run/vsop/bird.ctl): Connection refused", 1)
    (finding,) = check_bgp(facts_with(gone), [])
    assert finding.check == "bgp.bird" and finding.status == FAIL and finding.fix[0] == "systemctl restart bird"
    assert [f.status for f in check_bgp(facts_with(gone, announced=False), [])] == [WARN]
    empty = report("BIRD 2.0.12 ready.\n")
    assert [(f.check, f.status) for f in check_bgp(facts_with(empty), [])] == [("bgp.sessions", FAIL)]
    assert list(check_bgp(facts_with(None), [])) == []  # no BGP on this host: no finding


def test_the_announcer_asks_bird_at_most_every_few_seconds_and_the_metrics_say_what_it_answered(tmp_path) -> None:
    from prometheus_client import generate_latest

    from vsop.bgp.writer import BirdAnnouncer, BirdWriter
    from vsop.node.metrics import NodeMetrics

    run, calls = answered(ANSWER)
    now = [0.0]
    announcer = BirdAnnouncer(tmp_path / "speaker.yaml", BirdWriter(tmp_path / "bird.conf", "/run/vsop/bird.ctl", run=run), clock=lambda: now[0])
    status = announcer.status()
    assert [(s["peer"], s["up"]) for s in status["sessions"]] == [("10.99.0.2", False), ("10.99.0.3", True)]  # type: ignore[index]
    assert status["socket"] == "/run/vsop/bird.ctl" and status["error"] is None
    metrics = NodeMetrics()
    metrics.watch_bgp(announcer.sessions)
    text = generate_latest(metrics.registry).decode()
    assert 'vsop_bgp_session_up{peer="10.99.0.2",protocol="vsop_peer_1"} 0.0' in text
    assert 'vsop_bgp_session_up{peer="10.99.0.3",protocol="vsop_peer_2"} 1.0' in text
    assert "vsop_bgp_bird_up 1.0" in text and len(calls) == 1  # the status and the scrape shared one answer
    now[0] = 5.0
    announcer.writer.run, _ = answered("Unable to connect to server control socket", 1)
    text = generate_latest(metrics.registry).decode()
    assert "vsop_bgp_bird_up 0.0" in text and "vsop_bgp_session_up{" not in text


def test_doctor_says_what_a_connection_needs_to_survive_an_ecmp_change() -> None:
    """sloppy_tcp (an established connection moved to this node is taken, not reset) and mh (the same
    real server as on the other node), for the services on VIPs this node announces over BGP."""
    kernel, fake = fake_kernel()
    sync(kernel, [make_vs("web", announce="bgp"), make_vs("db", vip="169.254.11.9")], Node("n"))
    state = fake.state
    assert state.routes == frozenset({"169.254.11.2/32"})

    def findings(sloppy: str | None, scheduler: str = "rr") -> list[tuple[str, str]]:
        services = {key: replace(vs, scheduler=scheduler) for key, vs in state.services.items()}
        sysctls = {} if sloppy is None else {"net.ipv4.vs.sloppy_tcp": sloppy}
        facts = Facts(observed=replace(state, services=services), sysctls=sysctls)
        return [(f.check, f.status) for f in check_ecmp(facts, [])]

    assert findings("0") == [("bgp.ecmp.sloppy_tcp", WARN), ("bgp.ecmp.scheduler", WARN)]
    assert findings("1", "mh") == [("bgp.ecmp", PASS)]
    assert findings("0", "mh") == [("bgp.ecmp.sloppy_tcp", WARN)]
    assert findings(None, "mh") == []  # not read (another kernel): nothing claimed
    facts = Facts(observed=state, sysctls={"net.ipv4.vs.sloppy_tcp": "0"})
    warned = [f for f in doctor(facts)["findings"] if f["check"].startswith("bgp.ecmp")]
    assert warned[0]["fix"] == ["sysctl -w net.ipv4.vs.sloppy_tcp=1"]
    assert "TCP 169.254.11.2:80 (rr) on a VIP announced over BGP" in warned[1]["message"]
    assert "169.254.11.9" not in warned[1]["message"]  # not announced: no ECMP change can move its connections
    unannounced = Facts(observed=replace(state, routes=frozenset()), sysctls={"net.ipv4.vs.sloppy_tcp": "0"})
    assert list(check_ecmp(unannounced, [])) == []
