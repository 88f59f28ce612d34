"""
The systemd units (issue 13): they verify (systemd-analyze verify, the three units together,
ExecStart pointed at this venv's twistd) and the service's sandboxing keeps its exposure under
3 (systemd-analyze security --offline, whose --threshold counts tenths). Skipped with a message
where systemd-analyze is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ETC = Path(__file__).parent.parent / "etc"
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def units(tmp_path: Path) -> Path:
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed here: the units are not analysed")
    twistd = str(Path(sys.executable).with_name("twistd"))
    for unit in [*ETC.glob("*.service"), *ETC.glob("*.socket")]:
        text = unit.read_text().replace("/opt/lnt-recharge/bin/twistd", twistd)
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def test_the_units_verify(units: Path) -> None:
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "verify", "lnt-recharge.service", "lnt-recharge.socket",
                          "lnt-recharge-http.socket"], cwd=units, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_the_service_is_sandboxed_under_exposure_3(units: Path) -> None:
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "security", "--offline=true", "--threshold=29",
                          "lnt-recharge.service"], cwd=units, capture_output=True, text=True,
                         timeout=60)
    level = re.search(r"Overall exposure level for lnt-recharge.service: ([\d.]+)", out.stdout)
    assert level is not None, out.stdout + out.stderr
    assert float(level.group(1)) < 3 and out.returncode == 0, out.stdout[-2000:]


def test_the_descriptor_limit_has_room_for_the_connection_limits() -> None:
    unit = (ETC / "lnt-recharge.service").read_text()
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    from lnt.daemon.config import SETTINGS
    from lnt.daemon.service import DESCRIPTOR_MARGIN

    defaults = {s.name: s.default for s in SETTINGS}
    needed = (int(defaults["max-connections"] or 0) + int(defaults["http-max-connections"] or 0)
              + DESCRIPTOR_MARGIN)
    assert limit >= 2 * needed
