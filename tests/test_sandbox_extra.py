"""Without the ``sandbox`` extra: the import and the commands that need it say what to install.

aiohttp and trustme are hidden from this process (``None`` in ``sys.modules``, which makes their
import fail as a missing module does) and the sandbox package is imported afresh; the bare-install
test of tests/test_packaging.py checks the same in a real environment without them (slow).
"""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner, Result

from proxaro_scrape.cli import main

HINT = 'pip install "proxaro-scrape[sandbox]"'


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` unimportable and the sandbox package be imported again."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "proxaro_scrape.sandbox", raising=False)


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("missing", ["aiohttp", "trustme"])
def test_importing_the_sandbox_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    _hide(monkeypatch, missing)
    with pytest.raises(ModuleNotFoundError) as caught:
        import proxaro_scrape.sandbox  # noqa: F401
    # Still the missing module's name, which the demo command and the pytest plugin read.
    assert caught.value.name == missing
    assert str(caught.value) == f"proxaro_scrape.sandbox needs {missing}: {HINT}"


@pytest.mark.parametrize("missing", ["aiohttp", "trustme"])
def test_the_sandbox_command_without_the_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    _hide(monkeypatch, missing)
    line = _one_error_line(CliRunner().invoke(main, ["sandbox", "--port", "0"]))
    assert line == f"Error: the sandbox needs {missing}: {HINT}"


@pytest.mark.parametrize(
    ("missing", "args"),
    [
        ("aiohttp", ()),
        ("trustme", ()),
        # With a certificate of one's own trustme is not needed, aiohttp still is.
        ("aiohttp", ("--cert", __file__)),
    ],
)
def test_webhooks_listen_without_the_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, missing: str, args: tuple[str, ...]
) -> None:
    _hide(monkeypatch, missing)
    result = CliRunner().invoke(
        main, ["webhooks", "listen", "--port", "0", "--secret", "s" * 32, *args]
    )
    assert _one_error_line(result) == f"Error: webhooks listen needs {missing}: {HINT}"


def test_webhooks_listen_with_its_own_certificate_does_not_need_trustme(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trustme only makes a CA when no --cert is given: without it the command goes on (here
    to loading the certificate, which this file is not: an error about that, not trustme)."""
    _hide(monkeypatch, "trustme")
    result = CliRunner().invoke(
        main, ["webhooks", "listen", "--port", "0", "--secret", "s" * 32, "--cert", __file__]
    )
    assert result.exit_code == 1
    assert "trustme" not in result.stderr and HINT not in result.stderr
