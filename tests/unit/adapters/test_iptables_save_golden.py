"""core.desired's constant rule texts are what iptables-save prints (kept in a golden file that the
netns tier checks against both real backends): otherwise every sync would rewrite them."""

from __future__ import annotations

from tests.contracts.iptables_contract import CONSTANT_RULES_GOLDEN, constant_rules_text, render_save_rules, vsop_save_rules
from tests.golden import GOLDEN, check_golden


def test_the_constant_rules_are_written_as_iptables_save_prints_them():
    check_golden(GOLDEN / CONSTANT_RULES_GOLDEN, constant_rules_text())


def test_the_save_reader_keeps_vsop_chains_and_jumps_into_them_only():
    save = "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            "-A PREROUTING -j FOREIGN",
            '-A PREROUTING -m comment --comment "vsop: VIP services" -j VSOP-SERVICES',
            '-A POSTROUTING -m comment --comment "see -j VSOP-POSTROUTING" -j RETURN',
            "-A VSOP-MARK-MASQ -j MARK --set-xmark 0x2000/0x2000",
            "-A FOREIGN -j RETURN",
            "COMMIT",
        ]
    )
    rules = vsop_save_rules(4, "nat", save)
    assert rules == {
        (4, "nat", "PREROUTING"): ['-m comment --comment "vsop: VIP services" -j VSOP-SERVICES'],
        (4, "nat", "VSOP-MARK-MASQ"): ["-j MARK --set-xmark 0x2000/0x2000"],
    }
    assert render_save_rules(rules) == (
        "# ipv4 *nat\n"
        '-A PREROUTING -m comment --comment "vsop: VIP services" -j VSOP-SERVICES\n'
        "-A VSOP-MARK-MASQ -j MARK --set-xmark 0x2000/0x2000\n"
    )
