"""The distribution: `integrations/` ships as `proxaro_scrape.integrations`, wheel and editable."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_imports_integrations() -> None:
    import proxaro_scrape.integrations as integrations

    assert Path(integrations.__file__).resolve().parent == ROOT / "integrations"


@pytest.mark.timeout(300)
def test_wheel_contains_and_imports_integrations(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = out.glob("proxaro_scrape-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "proxaro_scrape/integrations/__init__.py" in names
    assert "proxaro_scrape/py.typed" in names
    assert not any(n.startswith("integrations/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import proxaro_scrape.integrations as i, proxaro_scrape as p; "
        "print(i.__file__); print(p.__file__)"
    )
    res = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    files = res.stdout.split()
    assert all(f.startswith(str(site)) for f in files), files
