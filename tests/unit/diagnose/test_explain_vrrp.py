"""`vsop explain` says how a packet from the LAN reaches this node when its VIP is announced by VRRP."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.diagnose.test_explain_doctor import KEY, healthy
from vsop.diagnose.explain import explain
from vsop.diagnose.facts import Interface


def steps(facts) -> dict:
    return {s["id"]: s for s in explain(facts, KEY)["steps"]}


def announced(state: str, on_eth0: bool, eth0_up: bool = True, running: bool | None = None):  # type: ignore[no-untyped-def]
    facts = healthy(announce="vrrp", vrrp={"interface": "eth0", "virtualRouterID": 61})
    addresses = ("192.168.50.1/24", "169.254.11.2/32") if on_eth0 else ("192.168.50.1/24",)
    keepalived = {"announced": {"169.254.11.2": state}, **({"running": running} if running is not None else {})}
    return replace(
        facts,
        agent={**(facts.agent or {}), "keepalived": keepalived},
        interfaces={"eth0": Interface("eth0", eth0_up, addresses), "vsop0": Interface("vsop0", True, ("169.254.11.2/32",))},
    )


def owner(facts) -> dict:  # type: ignore[no-untyped-def]
    from vsop.diagnose.doctor import doctor

    return next(f for f in doctor(facts)["findings"] if f["check"] == "vrrp.owner 169.254.11.2")


def test_the_master_owns_the_vip_on_its_interface() -> None:
    step = steps(announced("master", on_eth0=True))["arrival"]
    assert step["ok"] is True and "this node owns 169.254.11.2 on eth0 (VRRP master)" in step["found"]
    assert list(steps(announced("master", on_eth0=True)))[0] == "arrival"  # the first thing a packet needs


def test_a_backup_says_another_node_owns_it_and_a_master_without_the_address_is_a_problem() -> None:
    backup = steps(announced("backup", on_eth0=False))["arrival"]
    assert backup["ok"] is None and "another node owns 169.254.11.2 (this node is VRRP backup)" in backup["found"]
    broken = explain(announced("master", on_eth0=False), KEY)
    assert "arrival" in broken["problems"]
    assert "arrival" not in steps(healthy())  # not announced by VRRP: no such step


def test_doctor_checks_who_holds_the_vip_and_that_vsop0_answers_no_arp() -> None:
    from vsop.diagnose.doctor import doctor

    def findings(facts) -> dict:  # type: ignore[no-untyped-def]
        return {f["check"]: f for f in doctor(facts)["findings"] if f["check"].startswith("vrrp.")}

    assert findings(announced("master", on_eth0=True))["vrrp.owner 169.254.11.2"]["status"] == "pass"
    assert findings(announced("backup", on_eth0=False))["vrrp.owner 169.254.11.2"]["status"] == "pass"
    two = findings(announced("backup", on_eth0=True))["vrrp.owner 169.254.11.2"]
    assert two["status"] == "fail" and "two nodes may answer" in two["message"]
    loud = announced("backup", on_eth0=False)
    loud = replace(loud, sysctls={**loud.sysctls, "net.ipv4.conf.all.arp_ignore": "0"},
                   observed=replace(loud.observed, sysctls={**loud.observed.sysctls, "net.ipv4.conf.all.arp_ignore": "0"}))
    assert findings(loud)["vrrp.arp 169.254.11.2"]["status"] == "fail"


def test_a_vip_left_by_a_killed_keepalived_is_a_problem_with_its_fix() -> None:
    """keepalived SIGKILLed removes nothing: the VIP it added stays on eth0. Its agent says stop (found gone by
    its pidfile): this node must not be said to answer ARP for it, link up or down, and doctor names the command."""
    fix = ["ip addr del 169.254.11.2/32 dev eth0"]
    for up in (True, False):
        facts = announced("stop", on_eth0=True, eth0_up=up, running=False)
        step = steps(facts)["arrival"]
        assert step["ok"] is False and "arrival" in explain(facts, KEY)["problems"], step
        assert "keepalived is not running" in step["found"] and "ip addr del 169.254.11.2/32 dev eth0" in step["found"]
        assert "this node owns" not in step["found"] and ("DOWN" in step["found"]) is not up
        finding = owner(facts)
        assert finding["status"] == "fail" and finding["fix"] == fix, finding
    # Even before the agent's next turn (it still says master): the link is down, nobody answers here.
    stale = announced("master", on_eth0=True, eth0_up=False)
    assert steps(stale)["arrival"]["ok"] is False and "which is DOWN (keepalived says master)" in steps(stale)["arrival"]["found"]
    assert owner(stale)["status"] == "fail" and owner(stale)["fix"] == fix
    # A backup that had left the VIP on its downed link: the same leftover.
    assert owner(announced("backup", on_eth0=True, eth0_up=False))["fix"] == fix
    # The master with keepalived running, on its link up: nothing to fix.
    fine = announced("master", on_eth0=True, running=True)
    assert steps(fine)["arrival"]["ok"] is True and owner(fine)["status"] == "pass" and owner(fine)["fix"] == []
    # keepalived dead, the address gone with the link's reset or an operator: another node's business.
    gone = steps(announced("stop", on_eth0=False, running=False))["arrival"]
    assert gone["ok"] is None and "this node is VRRP stop, keepalived is not running" in gone["found"]


def test_a_master_holding_the_vip_on_no_interface_names_how_to_look_at_keepalived_on_a_host_and_in_a_cluster() -> None:
    lost = owner(announced("master", on_eth0=False))
    assert lost["status"] == "fail" and lost["fix"] == ["journalctl -u vsop-keepalived", "systemctl restart vsop-keepalived"]
    assert "kubectl -n vsop-system logs POD -c keepalived" in lost["setting"]
