"""
The benchmark's disk tools (bench/run.py): the probe of how long a sync takes, and the slower
disk of --fsync-delay-us (bench/slowsync.c, preloaded into a process), which must still make
the real call (its result and errno are the caller's) and only answer later.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run

PROBE = r"""
import errno, json, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, b"x")
start = time.monotonic()
os.fsync(fd)
fsync_s = time.monotonic() - start
start = time.monotonic()
os.fdatasync(fd)
fdatasync_s = time.monotonic() - start
os.close(fd)
try:
    os.fdatasync(fd)  # closed: the real call's EBADF must come through the shim
    bad = None
except OSError as e:
    bad = e.errno
print(json.dumps({"fsync": fsync_s, "fdatasync": fdatasync_s, "bad": bad}))
"""


def test_disk_sync_reports_p50_and_p99_and_leaves_nothing(tmp_path: Path) -> None:
    line = run.disk_sync(tmp_path, writes=5)
    assert re.fullmatch(r"disk: fdatasync of a 4 KiB append \d+\.\d\d ms \(p50\), "
                        r"\d+\.\d\d ms \(p99\), in .+", line), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler to build bench/slowsync.c")
def test_slow_disk_delays_every_sync_after_the_real_call(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "DAEMON_ENV", {})
    run.slow_disk(tmp_path, 200_000)
    assert run.DAEMON_ENV["LNT_BENCH_FSYNC_DELAY_US"] == "200000"
    assert Path(run.DAEMON_ENV["LD_PRELOAD"]).is_file()
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "f")],
                         env={**os.environ, **run.DAEMON_ENV}, capture_output=True, text=True,
                         timeout=60, check=True)
    seen = json.loads(out.stdout)
    assert seen["fsync"] >= 0.2
    assert seen["fdatasync"] >= 0.2
    assert seen["bad"] == errno.EBADF


def test_fsync_delay_out_of_range_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.run", "--fsync-delay-us", "-1"],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 2
    assert "--fsync-delay-us: from 0 to 1000000" in out.stderr
    assert "Traceback" not in out.stderr
