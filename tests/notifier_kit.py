"""What the notifier tests ask the API: create a generation with a webhook, the caller's signing key, a
generation's deliveries, and those deliveries once they have settled; and a generation object with its output
URLs' signatures left out."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.helpers import eventually


async def create(http, urls, auth, prompt: str, **fields: Any) -> dict:
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt, **fields}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


async def webhook_key(http, urls, auth) -> str:
    response = await http.get(f"{urls.api}/api/webhooks/secret", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["key"]


async def deliveries_of(http, urls, auth, generation_id: str) -> list[dict]:
    response = await http.get(f"{urls.api}/api/predictions/{generation_id}/deliveries", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def settled_deliveries(http, urls, auth, generation_id: str, count: int = 1, timeout: float = 20) -> list[dict]:
    """The generation's deliveries once `count` of them exist and none is pending."""

    async def done() -> list[dict] | None:
        items = await deliveries_of(http, urls, auth, generation_id)
        return items if len(items) == count and all(d["status"] != "pending" for d in items) else None

    settled: list[dict] = await eventually(f"deliveries of {generation_id} to settle", done, timeout)
    return settled


def unsigned(generation: dict[str, Any]) -> dict[str, Any]:
    """The generation object with each output URL cut to its address: the notifier and the API presign apart, and
    two signatures made in different seconds differ (X-Amz-Date) while naming the same object."""

    def address(url: str | None) -> str | None:
        return None if url is None else urlsplit(url)._replace(query="").geturl()

    return {
        **generation,
        "outputUrl": address(generation["outputUrl"]),
        "outputUrls": [address(url) for url in generation["outputUrls"]],
    }
