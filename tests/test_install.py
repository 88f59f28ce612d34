"""
A non-editable install into a fresh venv finds its plugins, also where site-packages is
read-only (run as an unprivileged user against a root-owned venv), with and without a
regenerated plugin cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

SKIP = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache",
                              ".hypothesis", "lnt-data", "dropin.cache")


def _as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return []
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def venv() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="lnt-install-"))
    try:
        os.chmod(base, 0o755)
        src = base / "src"
        shutil.copytree(ROOT, src, ignore=SKIP)
        env = base / "venv"
        subprocess.run(["python3", "-m", "venv", str(env)], check=True, timeout=120)
        subprocess.run([str(env / "bin" / "pip"), "install", "-q", str(src)], check=True,
                       timeout=600)
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else
                           path.stat().st_mode | 0o044)
        yield env
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _plugins_dir(env: Path) -> Path:
    [d] = list(env.glob("lib/python*/site-packages/twisted/plugins"))
    return d


def test_installed_files(venv: Path) -> None:
    plugins = _plugins_dir(venv)
    assert (plugins / "lnt_recharge.py").exists()
    assert (plugins / "lnt_flows.py").exists()
    assert (venv / "bin" / "lnt-terminal").exists() and (venv / "bin" / "lnt-admin").exists()
    # the package is really installed, not linked to the source tree
    assert not list(venv.glob("lib/python*/site-packages/__editable__*"))


def test_twistd_lists_the_plugin_with_read_only_site_packages(venv: Path) -> None:
    (_plugins_dir(venv) / "dropin.cache").unlink(missing_ok=True)
    out = subprocess.run([*_as_nobody(), str(venv / "bin" / "twistd"), "--help"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "lnt-recharge" in out.stdout


def test_regenerated_cache_is_used_quietly(venv: Path) -> None:
    plugins = _plugins_dir(venv)
    (plugins / "dropin.cache").unlink(missing_ok=True)
    regen = subprocess.run([str(venv / "bin" / "lnt-admin"), "plugin-cache"],
                           capture_output=True, text=True, timeout=120, cwd="/")
    assert regen.returncode == 0, regen.stderr
    assert (plugins / "dropin.cache").exists()
    (plugins / "dropin.cache").chmod(0o644)
    before = (plugins / "dropin.cache").stat().st_mtime_ns
    out = subprocess.run([*_as_nobody(), str(venv / "bin" / "twistd"), "--help"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert "lnt-recharge" in out.stdout
    assert "Unable to write" not in out.stdout + out.stderr
    assert (plugins / "dropin.cache").stat().st_mtime_ns == before
