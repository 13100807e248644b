"""The page in a real browser: Debian's Chromium driven by Playwright against the session's real stack.

Playwright never downloads a browser here: it drives `/usr/bin/chromium`, which `make install` puts there.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from common.db import generations
from common.predictions import Status
from devstack.processes import free_port
from devstack.tokens import issue_token
from tests.helpers import JWT_SECRET, wait_for_status
from tests.webhook_receiver import Reply, receiving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
# Generous: the machine is shared; a deadline here only bounds a failure, it is not a speed goal.
expect.set_options(timeout=30_000)

# Records every status each card shows, in order, from the moment the page builds its grid.
RECORD_STATUSES = """() => {
  window.seenStatuses = {};
  new MutationObserver((records) => {
    for (const record of records) {
      const card = record.target;
      if (record.attributeName === "data-status" && card.dataset.id) {
        (window.seenStatuses[card.dataset.id] ??= []).push(card.dataset.status);
      }
    }
  }).observe(document.getElementById("grid"), { subtree: true, attributes: true, attributeFilter: ["data-status"] });
}"""
IMAGE_SHOWN = """(id) => {
  const image = document.querySelector(`.card[data-id="${id}"] img`);
  return image !== null && image.complete && image.naturalWidth > 0;
}"""


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


class Visit:
    """One browser context on the page, failing the test on any script error or blocked resource."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.problems: list[str] = []
        self.requests: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)
        page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message) -> None:
        # Refusals the page handles show up as failed loads; a CSP block or a script error never should.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(message.text)


@pytest.fixture
async def visit(browser: Browser) -> AsyncIterator[Visit]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    visit = Visit(context, await context.new_page())
    yield visit
    await context.close()
    assert visit.problems == []


def _token(user_id: str, ttl_s: int = 3600) -> str:
    return issue_token(JWT_SECRET, user_id, ttl_s)


async def _open(visit: Visit, api: str, token: str) -> Page:
    page = visit.page
    await page.goto(f"{api}/#token={token}")
    await expect(page.get_by_role("heading", name="Your generations")).to_be_visible()
    await page.evaluate(RECORD_STATUSES)
    return page


async def _generate(page: Page, prompt: str) -> str:
    await page.fill("#prompt", prompt)
    await page.get_by_role("button", name="Generate").click()
    card = page.locator(".card", has_text=prompt)
    await expect(card).to_have_count(1)
    generation_id = await card.get_attribute("data-id")
    assert generation_id
    return generation_id


async def _final_state(http, urls, user_id: str, generation_id: str) -> dict:
    response = await http.get(
        f"{urls.api}/api/predictions/{generation_id}", headers={"Authorization": f"Bearer {_token(user_id)}"}
    )
    assert response.status_code == 200
    return response.json()


async def test_token_from_the_fragment_signs_in_then_leaves_the_address_bar(visit, urls, user_id):
    token = _token(user_id)

    page = await _open(visit, urls.api, token)

    assert page.url == f"{urls.api}/"
    assert await page.evaluate("sessionStorage.getItem('studio.token')") == token
    assert not [url for url in visit.requests if token in url]  # sent only in the Authorization header
    await expect(page.locator("#live")).to_have_text("Live")  # the per-user event stream is open


async def test_a_pasted_token_signs_in(visit, urls, user_id):
    page = visit.page
    await page.goto(f"{urls.api}/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    await page.get_by_label("Token").fill(_token(user_id))
    await page.get_by_label("Token").press("Enter")

    await expect(page.get_by_role("heading", name="Your generations")).to_be_visible()
    await expect(page.get_by_label("Model")).to_have_value("truefusion-pro")


async def test_a_generation_goes_live_from_queued_to_its_image(visit, urls, user_id, http):
    page = await _open(visit, urls.api, _token(user_id))

    generation_id = await _generate(page, "a lighthouse at dawn #sim:delay=2")

    await page.wait_for_function(IMAGE_SHOWN, arg=generation_id, timeout=30_000)
    seen = await page.evaluate("(id) => window.seenStatuses[id]", generation_id)
    assert seen == ["queued", "processing", "succeeded"]
    done = await _final_state(http, urls, user_id, generation_id)
    card = page.locator(f'.card[data-id="{generation_id}"]')
    assert await card.locator("img").get_attribute("src") == done["outputUrl"]
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()


async def test_a_failed_generation_shows_its_error(visit, urls, user_id):
    page = await _open(visit, urls.api, _token(user_id))

    generation_id = await _generate(page, "a broken dream #sim:fail")

    card = page.locator(f'.card[data-id="{generation_id}"]')
    await expect(card).to_have_attribute("data-status", "failed")
    await expect(card.locator(".error")).to_have_text("Simulated failure: the model could not generate this image")
    await expect(card.locator(".badge")).to_have_text("Failed")


async def test_cancel_ends_an_unfinished_generation(visit, urls, user_id, http, settings):
    page = await _open(visit, urls.api, _token(user_id))
    generation_id = await _generate(page, "a very slow painting #sim:delay=60")
    card = page.locator(f'.card[data-id="{generation_id}"]')
    await expect(card).to_have_attribute("data-status", "processing")
    await expect(page.locator("#quota-text")).to_have_text(f"1 of {settings.quota_max_active} in progress")

    await card.get_by_role("button", name="Cancel").click()

    await expect(card).to_have_attribute("data-status", "canceled")
    await expect(page.locator("#quota-text")).to_have_text(f"0 of {settings.quota_max_active} in progress")
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
    assert (await _final_state(http, urls, user_id, generation_id))["status"] == "canceled"


async def test_over_quota_the_429_reads_as_a_sentence(visit, urls, user_id, http, settings):
    auth = {"Authorization": f"Bearer {_token(user_id)}"}
    held = []
    for n in range(settings.quota_max_active):
        response = await http.post(f"{urls.api}/api/generate", json={"prompt": f"slow {n} #sim:delay=60"}, headers=auth)
        assert response.status_code == 201
        held.append(response.json()["id"])
    page = await _open(visit, urls.api, _token(user_id))
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
    page = await _open(visit, urls.api, _token(user_id))

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
        page = await _open(visit, api, _token(user_id))
        await expect(page.locator("#live")).to_have_text("Live")
        generation_id = await _generate(page, "patience #sim:delay=3")
        card = page.locator(f'.card[data-id="{generation_id}"]')

        await asyncio.to_thread(replica.kill)  # a crash: the stream is cut at once
        await expect(page.locator("#live")).to_have_text("Reconnecting…")
        # It ends while the page hears nothing; back, the stream replays only what is still unfinished.
        auth = {"Authorization": f"Bearer {_token(user_id)}"}
        assert (await wait_for_status(http, urls.api, generation_id, auth))["status"] == "succeeded"
        await expect(card).not_to_have_attribute("data-status", "succeeded")
        replica = await asyncio.to_thread(services.start_service, "api", env, "api-page")

        await expect(page.locator("#live")).to_have_text("Live")
        await page.wait_for_function(IMAGE_SHOWN, arg=generation_id)
    finally:
        await asyncio.to_thread(replica.kill)


async def test_an_expired_token_asks_to_sign_in_again(visit, urls, user_id):
    page = visit.page

    await page.goto(f"{urls.api}/#token={_token(user_id, ttl_s=-60)}")

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
    page = await _open(visit, urls.api, _token(user_id))
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
        await _open(visit, urls.api, _token(user_id))
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


async def test_screenshot_of_a_few_finished_images(visit, urls, user_id, settings, tmp_path, request, capsys):
    page = await _open(visit, urls.api, _token(user_id))
    prompts = ["a teacup full of stars", "a city of glass at night", "a fox in the snow", "a lighthouse at dawn"]
    finished = [await _generate(page, prompt) for prompt in prompts]
    failed = await _generate(page, "an impossible staircase #sim:fail")

    for generation_id in finished:
        await page.wait_for_function(IMAGE_SHOWN, arg=generation_id)
    await expect(page.locator(f'.card[data-id="{failed}"] .error')).to_be_visible()
    shown = [await card.get_attribute("data-id") for card in await page.locator(".card").all()]
    assert shown == [failed, *reversed(finished)]  # newest first
    await expect(page.locator("#quota-text")).to_have_text(f"0 of {settings.quota_max_active} in progress")

    path = tmp_path / "page.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    with capsys.disabled():  # shown in the run's output, not captured with the test's
        request.config.pluginmanager.get_plugin("terminalreporter").write_line(f"page screenshot: {path}")


async def test_delete_asks_first_then_removes_the_card_and_the_generation(visit, urls, user_id, http):
    page = await _open(visit, urls.api, _token(user_id))
    generation_id = await _generate(page, "a sandcastle at low tide #sim:delay=0.2")
    await page.wait_for_function(IMAGE_SHOWN, arg=generation_id, timeout=30_000)
    card = page.locator(f'.card[data-id="{generation_id}"]')
    asked: list[str] = []

    async def answer(dialog, accept: bool) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda dialog: asyncio.ensure_future(answer(dialog, False)))
    await card.get_by_role("button", name="Delete").click()
    await expect(card).to_have_count(1)  # kept: the person said no
    assert (await _final_state(http, urls, user_id, generation_id))["status"] == "succeeded"

    page.once("dialog", lambda dialog: asyncio.ensure_future(answer(dialog, True)))
    await card.get_by_role("button", name="Delete").click()

    await expect(card).to_have_count(0)
    await expect(page.locator("#announcer")).to_have_text("“a sandcastle at low tide #sim:delay=0.2” was deleted.")
    assert asked == ["Delete “a sandcastle at low tide #sim:delay=0.2” and its images for good?"] * 2
    response = await http.get(
        f"{urls.api}/api/predictions/{generation_id}", headers={"Authorization": f"Bearer {_token(user_id)}"}
    )
    assert response.status_code == 404


async def test_an_unfinished_generation_offers_no_delete(visit, urls, user_id):
    page = await _open(visit, urls.api, _token(user_id))
    generation_id = await _generate(page, "a slow tide #sim:delay=60")
    card = page.locator(f'.card[data-id="{generation_id}"]')
    await expect(card).to_have_attribute("data-status", "processing")

    await expect(card.get_by_role("button", name="Delete")).to_be_hidden()
    await card.get_by_role("button", name="Cancel").click()
    await expect(card.get_by_role("button", name="Delete")).to_be_visible()


ALL_IMAGES_SHOWN = """([id, count]) => {
  const images = [...document.querySelectorAll(`.card[data-id="${id}"] img`)];
  return images.length === count && images.every((image) => image.complete && image.naturalWidth > 0);
}"""


async def test_the_models_options_are_built_from_its_schema(visit, urls, user_id):
    page = await _open(visit, urls.api, _token(user_id))

    await expect(page.get_by_label("Model")).to_have_value("truefusion-pro")
    width = page.locator("#option-width")
    await expect(width).to_have_attribute("type", "number")
    assert [await width.get_attribute(name) for name in ("min", "max", "step")] == ["256", "2048", "64"]
    await expect(width).to_have_value("1024")  # the schema's default, filled in
    await expect(page.locator("#option-seed")).to_have_value("")  # no default: the model draws one
    formats = page.locator("#option-output_format option")
    assert await formats.all_inner_texts() == ["png", "jpeg", "webp"]
    await expect(page.get_by_label("Output format")).to_have_value('"png"')
    await expect(page.locator("#option-image")).to_have_count(0)  # this model takes no reference image

    await page.get_by_label("Model").select_option("truefusion-2.0")
    await expect(page.locator("#option-image")).to_have_attribute("type", "file")
    strength = page.locator("#option-image_strength")
    await expect(strength).to_have_value("0.6")
    assert [await strength.get_attribute(name) for name in ("min", "max", "step")] == ["0", "1", "any"]

    await page.get_by_label("Model").select_option("truefusion-edge")
    await expect(page.locator("#option-width")).to_have_attribute("max", "1024")
    await expect(page.locator("#option-num_outputs")).to_have_count(0)
    await expect(page.locator("#option-negative_prompt")).to_have_count(0)


async def test_several_images_of_the_asked_size_are_all_shown(visit, urls, user_id, http, tmp_path, request):
    page = await _open(visit, urls.api, _token(user_id))
    await page.fill("#option-width", "512")
    await page.fill("#option-height", "768")
    await page.fill("#option-num_outputs", "2")
    await page.fill("#option-seed", "7")
    await page.get_by_label("Output format").select_option(label="jpeg")
    await page.fill("#option-negative_prompt", "fog")

    generation_id = await _generate(page, "two harbours at dusk")

    await page.wait_for_function(ALL_IMAGES_SHOWN, arg=[generation_id, 2], timeout=30_000)
    done = await _final_state(http, urls, user_id, generation_id)
    assert done["input"] == {
        "negative_prompt": "fog", "width": 512, "height": 768, "num_outputs": 2, "seed": 7, "output_format": "jpeg",
    }  # fmt: skip
    card = page.locator(f'.card[data-id="{generation_id}"]')
    assert [await image.get_attribute("src") for image in await card.locator("img").all()] == done["outputUrls"]
    sizes = await card.locator("img").evaluate_all("(images) => images.map((i) => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[512, 768], [512, 768]]
    await expect(card.get_by_role("link", name=re.compile("Open image 2 of 2"))).to_have_attribute(
        "href", done["outputUrls"][1]
    )
    asked = set((await card.locator(".asked").inner_text()).split(" · "))  # in the order the database keeps
    assert asked == {
        'negative_prompt "fog"',
        "width 512",
        "height 768",
        "num_outputs 2",
        "seed 7",
        'output_format "jpeg"',
    }
    path = tmp_path / "page-inputs.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


async def test_a_reference_image_is_attached_through_an_upload(visit, urls, user_id, http):
    page = await _open(visit, urls.api, _token(user_id))
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (30, 90, 200)).save(buffer, "PNG")
    reference = buffer.getvalue()
    await page.get_by_label("Model").select_option("truefusion-2.0")
    await page.locator("#option-image").set_input_files(
        {"name": "reference.png", "mimeType": "image/png", "buffer": reference}
    )

    generation_id = await _generate(page, "like my sketch")

    await page.wait_for_function(IMAGE_SHOWN, arg=generation_id, timeout=30_000)
    done = await _final_state(http, urls, user_id, generation_id)
    assert done["input"]["image"].startswith("upload:") and done["input"]["image_strength"] == 0.6
    card = page.locator(f'.card[data-id="{generation_id}"]')
    asked = (await card.locator(".asked").inner_text()).split(" · ")
    assert "image: uploaded image" in asked and "image_strength 0.6" in asked
    (record,) = [
        r
        for r in (await http.get(f"{urls.simulator}/_sim/predictions")).json()
        if r["prompt"] == "like my sketch"
        and r["input"].get("image_strength") == 0.6
        and r["imageBytes"]
        and base64.b64decode(r["imageBytes"]) == reference
    ]  # noqa: E501
    assert record["status"] == "succeeded"


async def test_an_option_the_model_refuses_reads_as_a_sentence(visit, urls, user_id):
    page = await _open(visit, urls.api, _token(user_id))
    await page.get_by_label("Model").select_option("truefusion-2.0")
    await page.locator("#option-image").set_input_files(
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"this is not an image"}
    )
    await page.fill("#prompt", "from a broken file")
    await page.get_by_role("button", name="Generate").click()

    await expect(page.locator("#notice")).to_have_text("The reference image must be a PNG, JPEG or WebP file.")
    await expect(page.locator(".card")).to_have_count(0)


async def test_a_generations_webhook_deliveries_show_on_its_card(visit, urls, user_id, http):
    async with receiving() as receiver:
        receiver.script("card", [Reply(503, {"Retry-After": "1"})])  # one failure first, then delivered
        page = await _open(visit, urls.api, _token(user_id))
        response = await http.post(
            f"{urls.api}/api/generate",
            json={"prompt": "told by webhook #sim:delay=0.5", "webhook": receiver.url("card")},
            headers={"Authorization": f"Bearer {_token(user_id)}"},
        )
        assert response.status_code == 201
        card = page.locator(f'.card[data-id="{response.json()["id"]}"]')
        await expect(card).to_have_attribute("data-status", "succeeded")
        await expect(card.locator(".deliveries li")).to_have_text("Completed: delivered · 2 attempts · HTTP 200")
        await expect(card.locator(".deliveries")).to_be_visible()
        assert len(receiver.to("card")) == 2
