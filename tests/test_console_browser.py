"""
The console in a real browser (Debian's chromium driven by Playwright): an operator logs in,
sees a recharge just made, resolves a load in doubt through the form (its confirmation prompt
accepted) and sees the dashboard change. `make test` installs chromium where it can; where no
browser can be had the test is skipped with a message (CI=true makes that a failure).

LNT_SCREENSHOT=PATH keeps a screenshot of the dashboard (docs/console.png is one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon
from tests.test_recharge_e2e import tool

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser_or_skip() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    else:
        if CHROMIUM:
            return CHROMIUM
        reason = "no chromium on this machine (make test installs Debian's chromium as root)"
    if os.environ.get("CI"):
        pytest.fail(f"the browser test must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data", ["--admin", "tcp:0:interface=127.0.0.1"]).start()
    yield d
    d.stop()


def test_an_operator_resolves_a_load_in_doubt_in_the_browser(daemon: Daemon,
                                                             tmp_path: Path) -> None:
    chromium = browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    d = daemon
    assert "loaded order" in tool("lnt-terminal", "recharge", "--amount", "100",
                                  data=d.data_dir).stdout
    interrupted = tool("lnt-terminal", "recharge", "--amount", "70", "--interrupt",
                       "after-credit", data=d.data_dir)
    assert "connection dropped after credit" in interrupted.stdout + interrupted.stderr
    token = (d.data_dir / "admin-token").read_text().strip()
    base = f"http://127.0.0.1:{d.listening['admin']['port']}"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(base + "/")
            expect(page).to_have_url(base + "/login")
            page.fill("input[name=operator]", "alice")
            page.fill("input[name=token]", token)
            page.click("button:has-text('Log in')")
            expect(page.locator("h1")).to_have_text("Dashboard")
            expect(page.locator("#doubt b")).to_have_text("1")
            expect(page.locator("#today b")).to_have_text("1")

            page.click("header >> text=Orders")
            expect(page.locator("table tbody tr")).to_have_count(2)
            expect(page.locator("table")).to_contain_text("5100********0001")

            page.click("header >> text=Loads in doubt")
            form = page.locator("form.resolve").first
            form.locator("select[name=verdict]").select_option("settle")
            form.locator("input[name=reason]").fill("card read: the balance shows 70 fen")
            form.locator("input[name=confirm]").check()
            # the form's own confirmation prompt, if the browser shows it, is accepted; the
            # server insists on the ticked confirmation and the reason either way
            page.on("dialog", lambda dialog: dialog.accept())
            form.locator("button").click()
            expect(page.locator("#flash")).to_contain_text("load settled (loaded) by alice")
            expect(page.locator("main")).to_contain_text("console:alice")

            page.click("header >> text=Dashboard")
            expect(page.locator("#doubt b")).to_have_text("0")
            expect(page.locator("#today b")).to_have_text("2")
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            if os.environ.get("LNT_SCREENSHOT"):
                page.screenshot(path=os.environ["LNT_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    assert tool("lnt-admin", "check", data=d.data_dir).returncode == 0
