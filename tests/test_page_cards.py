"""The page's cards in a real browser: deleting, a model's options built from its schema, several images,
a reference image uploaded, a refused option, webhook deliveries, and a screenshot of finished images."""

from __future__ import annotations

import asyncio
import base64
import io
import re

from PIL import Image
from playwright.async_api import expect

from tests.page_kit import ALL_IMAGES_SHOWN, IMAGE_SHOWN, final_state, generate, open_page, page_token
from tests.webhook_receiver import Reply, receiving


async def test_screenshot_of_a_few_finished_images(visit, urls, user_id, settings, tmp_path, request, capsys):
    page = await open_page(visit, urls.api, page_token(user_id))
    prompts = ["a teacup full of stars", "a city of glass at night", "a fox in the snow", "a lighthouse at dawn"]
    finished = [await generate(page, prompt) for prompt in prompts]
    failed = await generate(page, "an impossible staircase #sim:fail")

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
    page = await open_page(visit, urls.api, page_token(user_id))
    generation_id = await generate(page, "a sandcastle at low tide #sim:delay=0.2")
    await page.wait_for_function(IMAGE_SHOWN, arg=generation_id, timeout=30_000)
    card = page.locator(f'.card[data-id="{generation_id}"]')
    asked: list[str] = []

    async def answer(dialog, accept: bool) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda dialog: asyncio.ensure_future(answer(dialog, False)))
    await card.get_by_role("button", name="Delete").click()
    await expect(card).to_have_count(1)  # kept: the person said no
    assert (await final_state(http, urls, user_id, generation_id))["status"] == "succeeded"

    page.once("dialog", lambda dialog: asyncio.ensure_future(answer(dialog, True)))
    await card.get_by_role("button", name="Delete").click()

    await expect(card).to_have_count(0)
    await expect(page.locator("#announcer")).to_have_text("“a sandcastle at low tide #sim:delay=0.2” was deleted.")
    assert asked == ["Delete “a sandcastle at low tide #sim:delay=0.2” and its images for good?"] * 2
    response = await http.get(
        f"{urls.api}/api/predictions/{generation_id}", headers={"Authorization": f"Bearer {page_token(user_id)}"}
    )
    assert response.status_code == 404


async def test_an_unfinished_generation_offers_no_delete(visit, urls, user_id):
    page = await open_page(visit, urls.api, page_token(user_id))
    generation_id = await generate(page, "a slow tide #sim:delay=60")
    card = page.locator(f'.card[data-id="{generation_id}"]')
    await expect(card).to_have_attribute("data-status", "processing")

    await expect(card.get_by_role("button", name="Delete")).to_be_hidden()
    await card.get_by_role("button", name="Cancel").click()
    await expect(card.get_by_role("button", name="Delete")).to_be_visible()


async def test_the_models_options_are_built_from_its_schema(visit, urls, user_id):
    page = await open_page(visit, urls.api, page_token(user_id))

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
    page = await open_page(visit, urls.api, page_token(user_id))
    await page.fill("#option-width", "512")
    await page.fill("#option-height", "768")
    await page.fill("#option-num_outputs", "2")
    await page.fill("#option-seed", "7")
    await page.get_by_label("Output format").select_option(label="jpeg")
    await page.fill("#option-negative_prompt", "fog")

    generation_id = await generate(page, "two harbours at dusk")

    await page.wait_for_function(ALL_IMAGES_SHOWN, arg=[generation_id, 2], timeout=30_000)
    done = await final_state(http, urls, user_id, generation_id)
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
    page = await open_page(visit, urls.api, page_token(user_id))
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (30, 90, 200)).save(buffer, "PNG")
    reference = buffer.getvalue()
    await page.get_by_label("Model").select_option("truefusion-2.0")
    await page.locator("#option-image").set_input_files(
        {"name": "reference.png", "mimeType": "image/png", "buffer": reference}
    )

    generation_id = await generate(page, "like my sketch")

    await page.wait_for_function(IMAGE_SHOWN, arg=generation_id, timeout=30_000)
    done = await final_state(http, urls, user_id, generation_id)
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
    page = await open_page(visit, urls.api, page_token(user_id))
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
        page = await open_page(visit, urls.api, page_token(user_id))
        response = await http.post(
            f"{urls.api}/api/generate",
            json={"prompt": "told by webhook #sim:delay=0.5", "webhook": receiver.url("card")},
            headers={"Authorization": f"Bearer {page_token(user_id)}"},
        )
        assert response.status_code == 201
        card = page.locator(f'.card[data-id="{response.json()["id"]}"]')
        await expect(card).to_have_attribute("data-status", "succeeded")
        await expect(card.locator(".deliveries li")).to_have_text("Completed: delivered · 2 attempts · HTTP 200")
        await expect(card.locator(".deliveries")).to_be_visible()
        assert len(receiver.to("card")) == 2
