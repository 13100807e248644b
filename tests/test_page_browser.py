"""The page in a real browser: Debian's Chromium driven by Playwright against the session's real stack.

Playwright never downloads a browser here: it drives `/usr/bin/chromium`, which `make install` puts there.
Deleting, options, images, uploads and deliveries on a card are in `test_page_cards.py`.
"""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect

from common.db import generations
from common.predictions import Status
from devstack.processes import free_port
from tests.helpers import wait_for_status
from tests.page_kit import IMAGE_SHOWN, Visit, final_state, generate, open_page, page_token


async def test_token_from_the_fragment_signs_in_then_leaves_the_address_bar(visit, urls, user_id):
    token = page_token(user_id)

    page = await open_page(visit, urls.api, token)

    assert page.url == f"{urls.api}/"
    assert await page.evaluate("sessionStorage.getItem('studio.token')") == token
    assert not [url for url in visit.requests if token in url]  # sent only in the Authorization header
    await expect(page.locator("#live")).to_have_text("Live")  # the per-user event stream is open


async def test_a_pasted_token_signs_in(visit, urls, user_id):
    page = visit.page
    await page.goto(f"{urls.api}/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    await page.get_by_label("Token").fill(page_token(user_id))
    await page.get_by_label("Token").press("Enter")

    await expect(page.get_by_role("heading", name="Your generations")).to_be_visible()
    await expect(page.get_by_label("Model")).to_have_value("truefusion-pro")


async def test_a_generation_goes_live_from_queued_to_its_image(visit, urls, user_id, http):
    page = await open_page(visit, urls.api, page_token(user_id))

    generation_id = await generate(page, "a lighthouse at dawn #sim:delay=2")

    await page.wait_for_function(IMAGE_SHOWN, arg=generation_id, timeout=30_000)
    seen = await page.evaluate("(id) => window.seenStatuses[id]", generation_id)
    assert seen == ["queued", "processing", "succeeded"]
    done = await final_state(http, urls, user_id, generation_id)
    card = page.locator(f'.card[data-id="{generation_id}"]')
    assert await card.locator("img").get_attribute("src") == done["outputUrl"]
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()


async def test_a_failed_generation_shows_its_error(visit, urls, user_id):
    page = await open_page(visit, urls.api, page_token(user_id))

    generation_id = await generate(page, "a broken dream #sim:fail")

    card = page.locator(f'.card[data-id="{generation_id}"]')
    await expect(card).to_have_attribute("data-status", "failed")
    await expect(card.locator(".error")).to_have_text("Simulated failure: the model could not generate this image")
    await expect(card.locator(".badge")).to_have_text("Failed")


async def test_cancel_ends_an_unfinished_generation(visit, urls, user_id, http, settings):
    page = await open_page(visit, urls.api, page_token(user_id))
    generation_id = await generate(page, "a very slow painting #sim:delay=60")
    card = page.locator(f'.card[data-id="{generation_id}"]')
    await expect(card).to_have_attribute("data-status", "processing")
    await expect(page.locator("#quota-text")).to_have_text(f"1 of {settings.quota_max_active} in progress")

    await card.get_by_role("button", name="Cancel").click()

    await expect(card).to_have_attribute("data-status", "canceled")
    await expect(page.locator("#quota-text")).to_have_text(f"0 of {settings.quota_max_active} in progress")
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
    assert (await final_state(http, urls, user_id, generation_id))["status"] == "canceled"


async def test_over_quota_the_429_reads_as_a_sentence(visit, urls, user_id, http, settings):
    auth = {"Authorization": f"Bearer {page_token(user_id)}"}
    held = []
    for n in range(settings.quota_max_active):
        response = await http.post(f"{urls.api}/api/generate", json={"prompt": f"slow {n} #sim:delay=60"}, headers=auth)
        assert response.status_code == 201
        held.append(response.json()["id"])
    page = await open_page(visit, urls.api, page_token(user_id))
    try:
        await page.fill("#prompt", "one too many")
        await page.get_by_role("button", name="Generate").click()

        await expect(page.locator("#notice")).to_have_text(
            f"You already have {settings.quota_max_active} images in progress, the most your quota allows. "
            "Wait for one to finish or cancel one, then try again."
        )
        await expect(page.locator(".card", has_text="one too many")).to_have_count(0)
    finally:
        for generation_id in held:
            await http.post(f"{urls.api}/api/predictions/{generation_id}/cancel", headers=auth)


async def test_a_busy_upstream_and_a_lost_network_read_as_sentences(visit, urls, user_id):
    page = await open_page(visit, urls.api, page_token(user_id))

    await page.fill("#prompt", "rate limited #sim:reject=429")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#notice")).to_have_text(
        re.compile(r"^Studio is busy right now: the image service asked it to slow down\. Try again in .+\.$")
    )

    await visit.context.set_offline(True)
    await page.fill("#prompt", "nobody hears this")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#notice")).to_have_text(
        "Studio can't be reached right now. Check your connection, then try again."
    )
    await visit.context.set_offline(False)
    await expect(page.locator("#live")).to_have_text("Live")


async def test_after_the_api_crashes_the_page_reconnects_and_catches_up(visit, services, urls, user_id, http):
    env = {"API_PORT": str(free_port())}
    api = f"http://127.0.0.1:{env['API_PORT']}"
    replica = await asyncio.to_thread(services.start_service, "api", env, "api-page")
    try:
        page = await open_page(visit, api, page_token(user_id))
        await expect(page.locator("#live")).to_have_text("Live")
        generation_id = await generate(page, "patience #sim:delay=3")
        card = page.locator(f'.card[data-id="{generation_id}"]')

        await asyncio.to_thread(replica.kill)  # a crash: the stream is cut at once
        await expect(page.locator("#live")).to_have_text("Reconnecting…")
        # It ends while the page hears nothing; back, the stream replays only what is still unfinished.
        auth = {"Authorization": f"Bearer {page_token(user_id)}"}
        assert (await wait_for_status(http, urls.api, generation_id, auth))["status"] == "succeeded"
        await expect(card).not_to_have_attribute("data-status", "succeeded")
        replica = await asyncio.to_thread(services.start_service, "api", env, "api-page")

        await expect(page.locator("#live")).to_have_text("Live")
        await page.wait_for_function(IMAGE_SHOWN, arg=generation_id)
    finally:
        await asyncio.to_thread(replica.kill)


async def test_an_expired_token_asks_to_sign_in_again(visit, urls, user_id):
    page = visit.page

    await page.goto(f"{urls.api}/#token={page_token(user_id, ttl_s=-60)}")

    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator("#notice")).to_have_text(re.compile(r"^Your sign-in is no longer valid.*\.$"))
    assert await page.evaluate("sessionStorage.getItem('studio.token')") is None
    await expect(page.get_by_label("Token")).to_be_focused()


async def test_older_generations_come_by_cursor_newest_first(visit, urls, user_id, db):
    ids = []
    for n in range(30):
        async with db.transaction():
            row = await generations.insert_within_quota(
                db, user_id=user_id, model="truefusion-pro", prompt=f"archived {n:02d}", max_active=1000
            )
            assert row is not None
            await generations.mark_ended(db, row.id, Status.FAILED, "archived")
        ids.append(str(row.id))
    page = await open_page(visit, urls.api, page_token(user_id))
    cards = page.locator(".card")
    await expect(cards).to_have_count(24)

    await page.get_by_role("button", name="Show older generations").click()

    await expect(cards).to_have_count(30)
    assert [await card.get_attribute("data-id") for card in await cards.all()] == ids[::-1]
    await expect(page.get_by_role("button", name="Show older generations")).to_be_hidden()


async def test_keyboard_alone_at_a_phones_width(browser, urls, user_id, tmp_path):
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = (visit := Visit(context, await context.new_page())).page
    try:
        await open_page(visit, urls.api, page_token(user_id))
        await page.focus(".skip")  # the first focusable element of the document

        order = ["Skip to the prompt"]
        for _ in range(4):
            await page.keyboard.press("Tab")
            order.append(await page.evaluate("document.activeElement.id"))
        assert order == ["Skip to the prompt", "sign-out", "prompt", "model", "generate"]
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"  # the focused control is visibly marked

        await page.keyboard.press("Shift+Tab")
        await page.keyboard.press("Shift+Tab")
        await page.keyboard.type("a fox in the snow")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")

        card = page.locator(".card", has_text="a fox in the snow")
        await expect(card).to_have_attribute("data-status", "succeeded")
        await expect(page.locator("#announcer")).to_have_text("“a fox in the snow” is ready.")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing wider than the phone
        box = await card.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
        await page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        await context.close()
    assert visit.problems == []
