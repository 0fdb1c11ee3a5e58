"""The host agent with --bgp-speaker: bird.conf follows the objects' bgp options, and nothing else rewrites it."""

from __future__ import annotations

from pathlib import Path

from tests.unit.bgp.test_render import ROOT
from tests.unit.bgp.test_writer import Tools
from tests.unit.host.test_agent import agent_for, settle, write
from vsop.bgp.writer import BirdAnnouncer, BirdWriter


def test_bird_conf_follows_the_bgp_options_and_a_speaker_error_keeps_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "vs"
    folder.mkdir()
    speaker = tmp_path / "speaker.yaml"
    speaker.write_text((ROOT / "examples" / "bgp" / "speaker.yaml").read_text().replace("      passwordFile: /etc/vsop/bgp-password\n", ""))
    tools = Tools()
    conf = tmp_path / "bird.conf"
    agent, fake = agent_for(folder)
    agent.bird = BirdAnnouncer(speaker, BirdWriter(conf, "/run/x.ctl", run=tools))
    write(folder, "web", announce="bgp", bgp={"communities": ["65000:100"]})
    settle(agent)
    assert agent.sync_once().ok
    assert fake.state.routes == {"169.254.11.2/32"}
    assert "bgp_community.add((65000, 100));" in conf.read_text() and agent.bird.last_error is None
    configured = sum(1 for call in tools.calls if call[0] == "birdc")
    write(folder, "plain", vip="169.254.11.3", announce="bgp")  # no options: the file stays, BIRD is not told
    settle(agent)
    renders = agent.bird.renders
    assert agent.sync_once(full=False).ok and fake.state.routes == {"169.254.11.2/32", "169.254.11.3/32"}
    assert agent.bird.renders == renders  # a change without bgp options renders nothing
    assert sum(1 for call in tools.calls if call[0] == "birdc") == configured
    write(folder, "web", announce="bgp", bgp={"communities": ["65000:200"]})
    settle(agent)
    assert agent.sync_once(full=False).ok and "(65000, 200)" in conf.read_text()
    before = conf.read_text()
    speaker.write_text("kind: BGPSpeaker\n")
    assert agent.sync_once(full=True).ok
    assert conf.read_text() == before and "speaker.yaml" in (agent.bird.last_error or "")
