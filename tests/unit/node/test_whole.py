"""The whole-node pipeline's middle (keep held -> draining -> plan) and its drift log, on fake adapters."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import make_vs
from vsop.adapters.kernel import fake_kernel, read_observed
from vsop.core.desired import Desired, Node
from vsop.core.held import Held
from vsop.core.state import KernelState, Names
from vsop.node.whole import derive, program, report_repairs, sync

NODE = Node("n")


def test_program_keeps_a_held_owner_before_check_and_plan_see_the_desired_state() -> None:
    kernel, _ = fake_kernel()
    vs = make_vs()
    sync(kernel, [vs], NODE)
    observed = read_observed(kernel, Names())
    seen: list[Desired] = []
    # The object is still declared but unusable: without it nothing is desired, yet it is held.
    desired, the_plan = program(derive([], NODE, observed), observed, held=Held(owners=frozenset({vs.ref})), check=seen.append)
    assert the_plan.ops == ()
    assert seen == [desired]  # no drain: check saw the state that was planned
    assert {s.owner for s in desired.state.services.values()} == {vs.ref}


def test_program_refused_by_check_plans_nothing_and_drain_amends_the_target() -> None:
    kernel, _ = fake_kernel()
    observed = read_observed(kernel, Names())
    desired = derive([make_vs()], NODE, observed)

    def refuse(_: Desired) -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        program(desired, observed, check=refuse, drain=lambda want, have: pytest.fail("drained after a refusal"))
    emptied, the_plan = program(desired, observed, drain=lambda want, have: replace(want, real_servers={}))
    assert emptied.state.real_servers == {} and emptied.programmed == desired.programmed
    assert not any(op.kind == "realserver.add" for op in the_plan.ops) and any(op.kind == "service.add" for op in the_plan.ops)


def test_report_repairs_logs_what_was_found_and_put_back(caplog: pytest.LogCaptureFixture) -> None:
    kernel, fake = fake_kernel()
    vs = make_vs()
    first = sync(kernel, [vs], NODE)
    key = next(iter(first.desired.state.real_servers))
    fake.state = replace(fake.state, real_servers={**fake.state.real_servers, key: replace(fake.state.real_servers[key], weight=5)})
    again = sync(kernel, [vs], NODE, dry_run=True)
    found = report_repairs(list(again.plan.ops), first.desired.state, again.observed or KernelState(), again.desired.state)
    assert [r.op.kind for r in found] == ["realserver.edit"]
    assert "repaired drift" in caplog.text and "weight 5" in caplog.text
