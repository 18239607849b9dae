"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright.

A finance approver signs in with her token, finds the large refund waiting, reads why policy
asked, approves it, and follows the run until it completes. `.ci/run` installs the browser; a
machine without it fails this test rather than skipping it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from charter.demo import ledger
from tests.e2e.conftest import Stack, run_id, wait_approval, wait_audited

pytestmark = pytest.mark.e2e
REFUNDS = "support-refunds"
CHROMIUM = os.environ.get("CHARTER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is required for the console test ({CHROMIUM}); `.ci/run` installs it")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def test_an_approver_signs_in_approves_a_large_refund_and_watches_the_run_complete(
    stack: Stack, browser: Browser
) -> None:
    order = "B-2500"
    trigger = stack.publish("support.refund_requested", {"order_id": order, "amount": 2500})
    run = run_id(trigger, "support-refunds")
    request = wait_approval(stack, run)
    wait_audited(stack, trigger)  # the approval page shows the trigger from the audit log, once
    # Chromium shares two cores with the stack: Playwright's 5 s default is short there.
    expect.set_options(timeout=20_000)
    page = browser.new_page()
    try:
        page.goto(f"{stack.api_url}/console")
        expect(page).to_have_title("Sign in · Charter")
        page.fill("#token", "chr_not_a_real_token")
        page.click("#sign-in")
        expect(page.locator("#login-error")).to_be_visible()
        page.fill("#token", stack.token("dana"))
        page.click("#sign-in")

        row = page.locator("#pending tr", has_text=order)
        expect(row).to_contain_text("2500")
        expect(row).to_contain_text("finance")
        row.locator("a.approval-link").click()
        expect(page.locator("#approval-status")).to_have_text("pending")
        expect(page.locator("#action-hash")).to_have_text(request.action_hash or "")
        expect(page.locator("#parameters")).to_contain_text("2500")
        expect(page.locator("main")).to_contain_text("refunds above 100 need finance to approve")
        expect(page.locator("main")).to_contain_text("support.refund_requested")

        page.fill("#approve-note", "customer verified")
        page.click("#approve")
        expect(page.locator("#flash")).to_contain_text("approved")
        page.click("#watch-run")
        # The run page refreshes itself while the run is under way.
        expect(page.locator("#run-status")).to_have_text("completed", timeout=30_000)
        expect(page.locator("main")).to_contain_text("issue_refund")
    finally:
        page.close()
    refunds = [
        e for e in ledger.entries(stack.settings.data_dir) if e["run_id"] == run and e["kind"] == "refund"
    ]
    assert len(refunds) == 1
