"""vsop.node.logs: the klog line, and SIGUSR1's stacks in the log of a process that goes on."""

from __future__ import annotations

import logging
import subprocess
import sys

from vsop.node.logs import KlogFormatter, kv


def test_a_line_is_the_level_time_source_then_the_message_with_key_values() -> None:
    record = logging.LogRecord("vsop.node", logging.INFO, __file__, 1, kv("Turn failed, will retry", error="x", failedTurns=3, skipped=None), None, None)
    line = KlogFormatter().format(record)
    assert line.startswith("I") and line.endswith('vsop.node] "Turn failed, will retry" error="x" failedTurns=3')


def test_sigusr1_writes_every_threads_stack_to_stderr_and_the_process_goes_on() -> None:
    program = (
        "import os, signal, threading\n"
        "from vsop.node.logs import setup_logging\n"
        "setup_logging()\n"
        "stuck = threading.Event()\n"
        "def a_turn_that_hangs():\n"
        "    stuck.wait()\n"
        "threading.Thread(target=a_turn_that_hangs, daemon=True).start()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('still running')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "still running\n"
    assert "a_turn_that_hangs" in done.stderr and "Current thread" in done.stderr


def test_set_up_without_a_file_descriptor_behind_stderr_all_the_same(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """stderr replaced by something without fileno (pytest's sys capture, an embedding program): no stacks, no failure."""
    import io

    from vsop.node.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        setup_logging()
        assert root.handlers[0].stream is sys.stderr  # type: ignore[attr-defined]
    finally:
        root.handlers[:], root.level = handlers, level
