"""Driving the page in a real browser: Debian's Chromium (Playwright never downloads one here: `make install`
puts it at `/usr/bin/chromium`), one visit of the page, and the steps the page tests share."""

from __future__ import annotations

from playwright.async_api import BrowserContext, Page, expect

from devstack.tokens import issue_token
from tests.helpers import JWT_SECRET

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

ALL_IMAGES_SHOWN = """([id, count]) => {
  const images = [...document.querySelectorAll(`.card[data-id="${id}"] img`)];
  return images.length === count && images.every((image) => image.complete && image.naturalWidth > 0);
}"""


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


def page_token(user_id: str, ttl_s: int = 3600) -> str:
    return issue_token(JWT_SECRET, user_id, ttl_s)


async def open_page(visit: Visit, api: str, token: str) -> Page:
    page = visit.page
    await page.goto(f"{api}/#token={token}")
    await expect(page.get_by_role("heading", name="Your generations")).to_be_visible()
    await page.evaluate(RECORD_STATUSES)
    return page


async def generate(page: Page, prompt: str) -> str:
    await page.fill("#prompt", prompt)
    await page.get_by_role("button", name="Generate").click()
    card = page.locator(".card", has_text=prompt)
    await expect(card).to_have_count(1)
    generation_id = await card.get_attribute("data-id")
    assert generation_id
    return generation_id


async def final_state(http, urls, user_id: str, generation_id: str) -> dict:
    response = await http.get(
        f"{urls.api}/api/predictions/{generation_id}", headers={"Authorization": f"Bearer {page_token(user_id)}"}
    )
    assert response.status_code == 200
    return response.json()
