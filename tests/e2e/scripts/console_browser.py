#!/usr/bin/env python3
"""Drives Gannet's web console in Debian's Chromium through Playwright (no browser download).

Usage: console_browser.py BASE_URL ARTEFACT_DIR USERS_JSON
USERS_JSON: {"password": "...", "secrets": {"alice": "BASE32", ...}}

Signs in with TOTP codes computed here (RFC 6238 with hmac, independent of Gannet's crate),
then: search a recipient, open a message story, export CSV, download the person's access export
as CSV, erasure requested by alice and confirmed by carol (progress, then the receipt), add and remove a suppression (alice), suspend and resume a campaign
(oscar). Saves a screenshot of each page and the CSV download in ARTEFACT_DIR; prints one JSON
line with what it measured. Any failed expectation raises (exit status 1).
"""
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import tempfile
import time

from playwright.sync_api import expect, sync_playwright

BASE, OUT, USERS = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def totp(secret, at=None):
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000)


page_bytes = []


def shot(page, name):
    page.screenshot(path=os.path.join(OUT, name + ".png"), full_page=True)


def login(context, name):
    page = context.new_page()
    page.on("response", lambda r: page_bytes.append(len(r.body())) if r.request.resource_type == "document" and r.status == 200 else None)
    page.goto(BASE + "/console/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(USERS["password"])
    secret = USERS["secrets"].get(name)
    if secret:
        page.get_by_label("Authenticator code (6 digits)").fill(totp(secret))
    if name == "alice":
        shot(page, "01-login")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Console")).to_be_visible()
    return page


def main():
    os.makedirs(OUT, exist_ok=True)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile_a, tempfile.TemporaryDirectory() as profile_b:
        def context(profile):
            return p.chromium.launch_persistent_context(
                profile, executable_path="/usr/bin/chromium", headless=True, args=ARGS,
                accept_downloads=True, viewport={"width": 1280, "height": 900})

        ctx_a = context(profile_a)
        page = login(ctx_a, "alice")
        shot(page, "02-home")

        # Search a recipient.
        page.get_by_role("link", name="Send log").first.click()
        page.get_by_label("Recipient").fill("reader@dest.test")
        page.get_by_role("button", name="Search").click()
        expect(page.get_by_role("cell", name="delivered").first).to_be_visible()
        expect(page.get_by_role("cell", name="reader@dest.test").first).to_be_visible()
        shot(page, "03-search")

        # Export CSV (a download of the same search).
        with page.expect_download() as dl:
            page.get_by_role("link", name="Export CSV").click()
        dl.value.save_as(os.path.join(OUT, "search.csv"))

        # The message's story.
        page.get_by_role("link", name="console-1@origin.test").first.click()
        expect(page.get_by_role("heading", name="Message story")).to_be_visible()
        expect(page.get_by_role("cell", name="forget-me@dest.test").first).to_be_visible()
        shot(page, "04-story")

        # Access export (Art. 15) of the person, downloaded as CSV.
        page.get_by_role("link", name="Data subjects").first.click()
        page.locator("#access-address").fill("forget-me@dest.test")
        page.get_by_role("button", name="Show what we hold").click()
        expect(page.get_by_role("heading", name="Access export")).to_be_visible()
        with page.expect_download() as dl:
            page.get_by_role("link", name="Download as CSV").click()
        dl.value.save_as(os.path.join(OUT, "access.csv"))
        shot(page, "04b-access-export")

        # Erasure: alice requests...
        page.get_by_role("link", name="Data subjects").first.click()
        page.locator("#erase-address").fill("forget-me@dest.test")
        page.get_by_role("button", name="Request erasure").click()
        expect(page.get_by_role("status")).to_contain_text("Another user must confirm it")
        # ...and cannot confirm her own request.
        expect(page.get_by_role("button", name="Confirm erasure request 1")).to_have_count(0)
        shot(page, "05-erasure-requested")

        # ...carol confirms, in her own browser profile.
        ctx_b = context(profile_b)
        page_b = login(ctx_b, "carol")
        page_b.get_by_role("link", name="Data subjects").first.click()
        page_b.get_by_role("button", name="Confirm erasure request 1").click()
        # The request's page shows the progress (refreshing itself) until the receipt.
        expect(page_b.get_by_role("heading", name="Erasure receipt")).to_be_visible(timeout=60_000)
        expect(page_b.locator("#receipt")).to_contain_text("Send-log key destroyed")
        expect(page_b.locator("#receipt")).to_contain_text("alice")
        expect(page_b.locator("#receipt")).to_contain_text("carol")
        shot(page_b, "06-erasure-receipt")
        ctx_b.close()

        # Suppressions: add, then remove with a reason.
        page.get_by_role("link", name="Suppressions").first.click()
        page.locator("#add-address").fill("blocked@dest.test")
        page.locator("#add-reason").fill("manual")
        page.get_by_role("button", name="Add").click()
        expect(page.get_by_role("status")).to_contain_text("Added blocked@dest.test")
        expect(page.get_by_role("cell", name="blocked@dest.test", exact=True)).to_be_visible()
        shot(page, "07-suppression-added")
        page.get_by_label("Reason for removal").first.fill("added by mistake")
        page.get_by_role("button", name="Remove").first.click()
        expect(page.get_by_role("status")).to_contain_text("Removed blocked@dest.test")
        expect(page.get_by_role("cell", name="blocked@dest.test", exact=True)).to_have_count(0)
        shot(page, "08-suppression-removed")
        ctx_a.close()

        # Operations: oscar suspends and resumes the campaign.
        with tempfile.TemporaryDirectory() as profile_c:
            ctx_c = context(profile_c)
            page_c = login(ctx_c, "oscar")
            page_c.get_by_role("link", name="Operations").first.click()
            page_c.get_by_label("Campaign").fill("spring")
            page_c.get_by_role("button", name="Suspend").click()
            expect(page_c.get_by_role("status")).to_contain_text("is in force")
            expect(page_c.get_by_role("cell", name='{"campaign":"spring"}')).to_be_visible()
            shot(page_c, "09-suspended")
            page_c.get_by_role("button", name="Resume suspension").first.click()
            expect(page_c.get_by_role("status")).to_contain_text("1 suspensions removed")
            shot(page_c, "10-resumed")
            ctx_c.close()

    print(json.dumps({"pages": len(page_bytes), "max_page_bytes": max(page_bytes or [0])}))


if __name__ == "__main__":
    main()
