"""IPv6 forwarding keeps router advertisements (accept_ra=2 first), and the record of what vsop changed."""

from __future__ import annotations

import pytest

from tests.conftest import make_vs
from vsop.core import ops
from vsop.core.commands import render
from vsop.core.desired import Node
from vsop.core.state import KernelState
from vsop.core.sysctls import accept_ra_interface, accept_ra_name, recorded, restore_order
from vsop.adapters.kernel import fake_kernel
from vsop.node.execute import changed_sysctls, restore_sysctls
from vsop.node.whole import sync

NODE = Node("n")
HOST = {
    "net.ipv6.conf.eth0.accept_ra": "1",  # learned its default route from an RA
    "net/ipv6/conf/eth0.100/accept_ra": "1",  # a VLAN: a dotted name, spelled as a path
    "net.ipv6.conf.eth1.accept_ra": "0",
    "net.ipv6.conf.vsop0.accept_ra": "1",  # vsop's own dummy link gets no RAs
    "net.ipv6.conf.all.accept_ra": "1",
    "net.ipv6.conf.default.accept_ra": "1",
}


def web6(**spec: object):
    return make_vs("web6", vip="fd00:11::2", backends=[{"address": "fd00:200:1::2"}], **spec)


def test_names_and_interfaces() -> None:
    assert accept_ra_name("eth0") == "net.ipv6.conf.eth0.accept_ra"
    assert accept_ra_name("eth0.100") == "net/ipv6/conf/eth0.100/accept_ra"
    assert accept_ra_interface("net/ipv6/conf/eth0.100/accept_ra") == "eth0.100"
    assert accept_ra_interface("net.ipv6.conf.all.accept_ra") is None
    assert accept_ra_interface("net.ipv6.conf.all.forwarding") is None


def test_accept_ra_becomes_2_before_forwarding_is_turned_on() -> None:
    kernel, fake = fake_kernel(KernelState(sysctls=HOST))
    result = sync(kernel, [web6()], NODE)
    sysctl_ops = [op for op in result.plan.ops if isinstance(op, ops.SetSysctl)]
    names = [op.name for op in sysctl_ops]
    assert names[:2] == ["net.ipv6.conf.eth0.accept_ra", "net/ipv6/conf/eth0.100/accept_ra"]
    assert names.index("net.ipv6.conf.all.forwarding") > 1
    assert fake.state.sysctls["net.ipv6.conf.eth0.accept_ra"] == "2"
    assert fake.state.sysctls["net/ipv6/conf/eth0.100/accept_ra"] == "2"
    for untouched in ("net.ipv6.conf.eth1.accept_ra", "net.ipv6.conf.vsop0.accept_ra", "net.ipv6.conf.default.accept_ra"):
        assert fake.state.sysctls[untouched] == HOST[untouched]
    assert sync(kernel, [web6()], NODE).writes == 0
    text = render(result.plan.ops)
    assert "router advertisements" in text and "sysctl -w net.ipv6.conf.eth0.accept_ra=2" in text


def test_a_host_that_already_forwards_is_left_as_it_is() -> None:
    kernel, fake = fake_kernel(KernelState(sysctls={**HOST, "net.ipv6.conf.all.forwarding": "1"}))
    sync(kernel, [web6()], NODE)
    assert fake.state.sysctls["net.ipv6.conf.eth0.accept_ra"] == "1"


def test_ipv4_only_touches_no_accept_ra() -> None:
    kernel, fake = fake_kernel(KernelState(sysctls=HOST))
    sync(kernel, [make_vs()], NODE)
    assert fake.state.sysctls["net.ipv6.conf.eth0.accept_ra"] == "1"
    assert fake.state.sysctls["net.ipv6.conf.all.forwarding"] == "0"


def test_keep_accept_ra_refuses_the_ipv6_vips_clearly_and_serves_the_rest() -> None:
    kernel, fake = fake_kernel(KernelState(sysctls=HOST))
    result = sync(kernel, [web6(), make_vs()], NODE, keep_accept_ra=True)
    [problem] = result.plan.problems
    assert problem.obj == "default/web6" and problem.reason == "RouterAdvertisements"
    assert "eth0, eth0.100 (accept_ra=1)" in problem.message and "fd00:11::2" in problem.message
    assert fake.state.sysctls["net.ipv6.conf.eth0.accept_ra"] == "1"
    assert fake.state.sysctls["net.ipv6.conf.all.forwarding"] == "0"
    assert fake.state.bound_vips() == {"169.254.11.2"}


def test_the_record_keeps_the_first_value_and_cleanup_restores_it() -> None:
    kernel, fake = fake_kernel(KernelState(sysctls=HOST))
    sync(kernel, [web6()], NODE)
    assert kernel.sysctl_record.load() == {
        "net.ipv6.conf.eth0.accept_ra": "1",
        "net/ipv6/conf/eth0.100/accept_ra": "1",
        "net.ipv6.conf.all.forwarding": "0",
        "net.ipv4.vs.conntrack": "0",
        "net.ipv4.vs.expire_nodest_conn": "0",
        "net.ipv4.vs.expire_quiescent_template": "0",
    }
    # A later change of a recorded setting keeps the first value found.
    assert recorded({"net.ipv6.conf.all.forwarding": "0"}, [ops.SetSysctl("net.ipv6.conf.all.forwarding", "0", "1")]) == {
        "net.ipv6.conf.all.forwarding": "0"
    }
    changed = changed_sysctls(kernel)
    assert changed["net.ipv6.conf.eth0.accept_ra"] == ("1", "2")
    assert list(changed)[-2:] == ["net.ipv6.conf.eth0.accept_ra", "net/ipv6/conf/eth0.100/accept_ra"]  # forwarding goes off first
    restored = restore_sysctls(kernel)
    assert {op.name: op.value for op in restored}["net.ipv6.conf.eth0.accept_ra"] == "1"
    assert fake.state.sysctls["net.ipv6.conf.all.forwarding"] == "0"
    assert fake.state.sysctls["net/ipv6/conf/eth0.100/accept_ra"] == "1"
    assert kernel.sysctl_record.load() == {} and restore_sysctls(kernel) == []


def test_restore_order_turns_forwarding_off_first() -> None:
    assert restore_order(["net.ipv6.conf.eth0.accept_ra", "net.ipv6.conf.all.forwarding"]) == [
        "net.ipv6.conf.all.forwarding",
        "net.ipv6.conf.eth0.accept_ra",
    ]


def test_file_record_round_trip(tmp_path) -> None:
    from vsop.adapters.sysctl import FileRecord

    record = FileRecord(str(tmp_path / "vsop" / "sysctls.json"))
    assert record.load() == {}
    record.save({"net.ipv4.ip_forward": "0"})
    assert record.load() == {"net.ipv4.ip_forward": "0"}
    record.save({})
    assert not (tmp_path / "vsop" / "sysctls.json").exists()
    (tmp_path / "vsop").mkdir(exist_ok=True)
    (tmp_path / "vsop" / "sysctls.json").write_text("{not json")
    with pytest.raises(OSError, match="not a sysctl record"):
        record.load()


def test_cleanup_dry_run_shows_the_sysctls_it_would_put_back_or_leave(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import vsop.adapters.real
    from vsop.cli.main import main

    kernel, fake = fake_kernel(KernelState(sysctls=HOST))
    sync(kernel, [web6()], NODE)
    before = repr(fake.state)
    monkeypatch.setattr(vsop.adapters.real, "real_kernel", lambda: kernel)
    assert main(["cleanup", "--dry-run", "--restore-sysctls"]) == 0
    out = capsys.readouterr().out
    assert "ipvsadm -D" in out
    restores = out[out.index("--restore-sysctls"):]
    assert "sysctl -w net.ipv6.conf.all.forwarding=0  # now 1" in restores and "sysctl -w net.ipv6.conf.eth0.accept_ra=1  # now 2" in restores
    assert restores.index("forwarding=0") < restores.index("eth0.accept_ra=1")  # forwarding goes off first
    assert main(["cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "left as they are" in out and "#   net.ipv6.conf.eth0.accept_ra: found 1, now 2" in out and "sysctl -w net.ipv6.conf.eth0" not in out
    assert main(["cleanup", "--dry-run", "--restore-sysctls", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "net.ipv6.conf.eth0.accept_ra" in doc["sysctlsRestored"] and doc["sysctls"]["net.ipv6.conf.eth0.accept_ra"] == {"before": "1", "now": "2"}
    assert any(cmd == "sysctl -w net.ipv6.conf.eth0.accept_ra=1" for op in doc["operations"] for cmd in op["commands"])
    # Nothing was changed, and the record is still there for the real run.
    assert repr(fake.state) == before and kernel.sysctl_record.load()["net.ipv6.conf.eth0.accept_ra"] == "1"
