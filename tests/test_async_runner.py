"""The one async test runner (tests/conftest.py), run by pytest on test files of its own: a body
that fails fails its test, each test gets a fresh loop off the main thread, a timeout cancels
the test's task, and pytest-asyncio stays out."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import asyncio
import threading

import pytest

loops = []


async def test_runs_off_the_main_thread_on_a_loop_of_its_own():
    assert threading.current_thread() is not threading.main_thread()
    loops.append(asyncio.get_running_loop())


async def test_every_test_gets_a_fresh_loop():
    assert loops and asyncio.get_running_loop() is not loops[0]
    assert loops[0].is_closed()


async def test_a_failing_body_fails():
    await asyncio.sleep(0)
    raise AssertionError("the body ran")


cancelled = []


@pytest.mark.timeout(0.5)
async def test_a_timeout_cancels_the_task():
    try:
        await asyncio.sleep(3600)
    finally:
        cancelled.append(True)


def test_the_timed_out_task_was_cancelled():
    assert cancelled == [True]
"""


@pytest.mark.timeout(120)
def test_the_runner(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_runner=TESTS)
    # pytest-timeout off: the timeout marker is the runner's alone here.
    pytester.makeini(
        "[pytest]\naddopts = -p no:asyncio -p no:timeout -p no:cacheprovider\n"
        "markers =\n    timeout: seconds\n"
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["*AssertionError: the body ran*"])
    result.stdout.fnmatch_lines(["*did not finish within 0.5 s*"])
    assert "asyncio: mode" not in result.stdout.str()  # pytest-asyncio's header line
