"""The web dashboard (issue 8), end to end in headless Chromium (Debian's `chromium`,
driven by Playwright): log in with the API key, see a sandbox made by the SDK appear,
open it, run `echo hi` in its terminal and read the output; its timeline, a killed
sandbox's history, and the templates page. Screenshots are kept in
tests/artifacts/ (SILO_ARTIFACTS to put them elsewhere)."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from silo_server import ROOT

pytestmark = pytest.mark.server_only

ARTIFACTS = Path(os.environ.get("SILO_ARTIFACTS", ROOT / "tests" / "artifacts"))
CHROMIUM = os.environ.get("SILO_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def page(silo):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root, where Chromium's own sandbox cannot start.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        try:
            yield page
        except Exception as failure:
            page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"))
            if errors:
                raise AssertionError(f"errors in the page: {errors}") from failure
            raise
        finally:
            browser.close()
        assert errors == [], errors


def test_log_in_see_a_sandbox_and_use_its_terminal(silo, page):
    from e2b import Sandbox

    page.goto(f"{silo.url}/dashboard/")
    page.fill("#api-key", "e2b_" + "0" * 40)
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not valid")
    page.fill("#api-key", silo.api_key)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Sandboxes")

    sbx = Sandbox.create("base", timeout=120, metadata={"purpose": "dashboard-e2e"})
    try:
        row = page.locator("tr", has_text=sbx.sandbox_id)
        expect(row).to_be_visible(timeout=20_000)  # the list refreshes by itself
        expect(row).to_contain_text("purpose=dashboard-e2e")
        page.screenshot(path=str(ARTIFACTS / "dashboard-sandboxes.png"))
        row.click()

        expect(page.get_by_test_id("terminal-status")).to_contain_text("connected", timeout=20_000)
        terminal = page.get_by_test_id("terminal")
        terminal.click()
        page.keyboard.type("echo hi-from-the-$((6*7))-terminal\n")
        expect(terminal.locator(".xterm-rows")).to_contain_text("hi-from-the-42-terminal", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-terminal.png"))

        page.get_by_role("button", name="metrics").click()
        expect(page.locator(".card", has_text="Memory")).to_contain_text("MiB", timeout=20_000)
        page.get_by_role("button", name="timeline").click()
        expect(page.get_by_test_id("timeline")).to_contain_text("agent ready")
        # The terminal's shell ran through the agent: its command is in the log.
        expect(page.get_by_test_id("timeline")).to_contain_text("/bin/bash -l", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-timeline.png"))
        page.get_by_role("button", name="files").click()
        expect(page.locator("table")).to_contain_text(".bashrc", timeout=20_000)
        # (The terminal's shell ended when its tab closed.)
        sbx.commands.run("sleep 300", background=True)
        page.get_by_role("button", name="processes").click()
        expect(page.locator("table")).to_contain_text("sleep 300", timeout=20_000)
    finally:
        sbx.kill()

    page.goto(f"{silo.url}/dashboard/#/history")
    expect(page.locator("tr", has_text=sbx.sandbox_id)).to_be_visible(timeout=20_000)
    page.goto(f"{silo.url}/dashboard/#/templates")
    expect(page.locator("tr", has_text="code-interpreter")).to_be_visible()
