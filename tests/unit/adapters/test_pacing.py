"""vsop.adapters.pacing: a read aside gives way to the work a change waits on, and only it does."""

from __future__ import annotations

import threading

from vsop.adapters.kernel import fake_kernel, read_observed
from vsop.adapters.pacing import Priority, pace, paced
from vsop.core.state import Names


def test_pace_is_a_no_op_in_a_thread_not_set_to_give_way() -> None:
    priority = Priority(cap=3600.0)
    with priority.serving():
        pace()  # returns: this thread reads nothing aside
    assert priority.waited == 0.0


def test_a_paced_read_waits_while_priority_work_runs_and_goes_on_once_it_ends() -> None:
    priority = Priority(cap=3600.0)
    steps: list[str] = []
    serving = priority.serving()
    serving.__enter__()
    assert priority.busy

    def read() -> None:
        with paced(priority.wait):
            steps.append("before")
            pace()
            steps.append("after")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and steps == ["before"]  # held at its step while the turn runs
    serving.__exit__(None, None, None)
    reader.join(30)
    assert not reader.is_alive() and steps == ["before", "after"] and not priority.busy


def test_nested_priority_work_keeps_the_read_waiting_until_the_last_ends() -> None:
    priority = Priority(cap=3600.0)
    with priority.serving():
        with priority.serving():
            pass
        assert priority.busy  # the poll ended, the turn still runs
    assert not priority.busy


def test_a_read_gives_way_at_most_cap_seconds_a_step() -> None:
    priority = Priority(cap=0.0)
    done: list[bool] = []

    def read() -> None:
        with paced(priority.wait):
            pace()  # never held for good, however long the node stays busy
            done.append(True)

    with priority.serving():
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(30)
        assert done == [True]


def test_reading_the_kernel_gives_way_between_the_adapters_reads() -> None:
    kernel, _ = fake_kernel()
    steps: list[int] = []
    with paced(lambda: steps.append(1)):
        read_observed(kernel, Names())
    paced_steps = len(steps)
    assert paced_steps >= 4
    read_observed(kernel, Names())  # not paced: the hook is this thread's, and gone
    assert len(steps) == paced_steps
