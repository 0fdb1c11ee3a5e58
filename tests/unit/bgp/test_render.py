"""bird.conf from a BGPSpeaker (golden file; the netns tier has BIRD check it with `bird -p`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import make_vs
from tests.golden import check_golden
from vsop.api.errors import InvalidInput
from vsop.api.speaker import BGPSpeaker, parse_bgp_speaker
from vsop.bgp.render import Token, _PASSWORD, render_bird
from vsop.core.state import Names

ROOT = Path(__file__).parent.parent.parent.parent
GOLDEN = ROOT / "tests" / "golden" / "bgp"
PASSWORD = "s3cret!"


def two_peers() -> BGPSpeaker:
    return parse_bgp_speaker(yaml.safe_load((ROOT / "examples" / "bgp" / "speaker.yaml").read_text()))


def services() -> list:
    return [
        make_vs("web", announce="bgp", bgp={"communities": ["65000:100", "65001:7"], "localPreference": 200}),
        make_vs("v6", vip="2001:db8::10", backends=[{"address": "2001:db8:1::5"}], announce="bgp", bgp={"communities": ["65000:6"]}),
        make_vs("plain", vip="169.254.11.3", announce="bgp"),
        make_vs("off", vip="169.254.11.4", bgp={"communities": ["1:1"]}),  # announce: none: ignored
    ]


def rendered() -> str:
    return render_bird(two_peers(), services(), password_of=lambda peer: PASSWORD if peer.password_file else None)


def test_two_peer_speaker_matches_golden() -> None:
    check_golden(GOLDEN / "two-peers.conf", rendered())


def test_only_vips_with_options_are_in_the_file_so_adding_a_vip_never_rewrites_it() -> None:
    text = rendered()
    assert "169.254.11.2/32" in text and "2001:db8::10/128" in text
    assert "169.254.11.3" not in text and "169.254.11.4" not in text
    assert render_bird(two_peers(), services()[1:2], password_of=lambda p: PASSWORD) == render_bird(
        two_peers(), services()[1:], password_of=lambda p: PASSWORD
    )


def test_bird_logs_to_syslog_on_a_host_and_to_stderr_when_asked_as_in_a_pod() -> None:
    assert "\nlog syslog all;\n" in rendered()
    in_a_pod = render_bird(two_peers(), services(), password_of=lambda p: PASSWORD if p.password_file else None, log="stderr")
    assert in_a_pod == rendered().replace("\nlog syslog all;\n", "\nlog stderr all;\n")
    with pytest.raises(ValueError, match="not a safe BIRD word"):
        render_bird(two_peers(), (), password_of=lambda p: None, log='"/tmp/x"')


def test_table_and_protocol_follow_the_names() -> None:
    text = render_bird(two_peers(), (), names=Names(route_table=7, route_protocol=99), password_of=lambda p: None)
    assert "kernel table 7;" in text and "krt_source = 99" in text


@pytest.mark.parametrize("secret", ['a"b', "a\\b", "two words", "", "x" * 81, "é"])
def test_a_password_bird_cannot_carry_is_refused_naming_the_field_not_the_password(secret: str) -> None:
    with pytest.raises(InvalidInput) as failure:
        render_bird(two_peers(), (), password_of=lambda peer: secret if peer.password_file else None)
    (error,) = failure.value.errors
    assert (error.obj, error.path) == ("edge", "spec.peers[1].passwordFile") and "printable" in error.reason
    assert secret not in error.reason or not secret


def test_an_unreadable_password_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as failure:
        render_bird(two_peers(), ())  # /etc/vsop/bgp-password does not exist here
    assert failure.value.errors[0].path == "spec.peers[1].passwordFile" and "cannot read" in failure.value.errors[0].reason
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    doc = yaml.safe_load((ROOT / "examples" / "bgp" / "speaker.yaml").read_text())
    doc["spec"]["peers"][1]["passwordFile"] = str(secret)
    assert '\tpassword "hunter2";\n' in render_bird(parse_bgp_speaker(doc), ())


def test_only_checked_words_reach_the_file() -> None:
    with pytest.raises(ValueError):
        Token('x"; protocol static {', _PASSWORD, frozenset('"\\'))
    from vsop.bgp.render import _environment

    with pytest.raises(TypeError, match="only ints and checked Tokens"):
        _environment().from_string("{{ value }}").render(value="10.0.0.1; }")


def test_a_peer_naming_a_secret_is_refused_on_a_host_not_rendered_without_its_password() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "bgp" / "speaker.yaml").read_text())
    peer = doc["spec"]["peers"][1]
    peer.pop("passwordFile", None)
    peer["passwordSecretRef"] = {"name": "bgp", "key": "password"}
    with pytest.raises(InvalidInput) as failure:
        render_bird(parse_bgp_speaker(doc), ())  # the host's way: read_password_file
    (error,) = failure.value.errors
    assert (error.obj, error.path) == ("edge", "spec.peers[1].passwordSecretRef") and "passwordFile" in error.reason
