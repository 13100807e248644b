"""The page as files: `GET /`, its script and stylesheet, their headers, and `GET /api/config`."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest


class _Tags(HTMLParser):
    """Every start tag with its attributes, and whether any script or style is written inline."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        self._open = tag
        if "style" in attributes or any(name.startswith("on") for name in attributes):
            self.inline.append(f"{tag} attribute")
        if tag == "style":
            self.inline.append("style element")

    def handle_data(self, data):
        if self._open == "script" and data.strip():
            self.inline.append("script body")

    def handle_endtag(self, tag):
        self._open = None


def _directives(policy: str) -> dict[str, list[str]]:
    parts = [part.split() for part in policy.split(";") if part.strip()]
    return {part[0]: part[1:] for part in parts}


async def test_page_is_one_document_one_script_one_stylesheet_all_from_studio(http, urls):
    response = await http.get(f"{urls.api}/")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    tags = _Tags()
    tags.feed(response.text)
    assert tags.inline == []
    scripts = [a["src"] for tag, a in tags.tags if tag == "script"]
    sheets = [a["href"] for tag, a in tags.tags if tag == "link" and a.get("rel") == "stylesheet"]
    assert scripts == ["/static/studio.js"] and sheets == ["/static/studio.css"]
    # Nothing is fetched from another host: every URL the document names is on this origin.
    for _, attributes in tags.tags:
        for name in ("src", "href"):
            value = attributes.get(name)
            assert value is None or not urlsplit(value).netloc, value
    for path, kind in (("/static/studio.js", "text/javascript"), ("/static/studio.css", "text/css")):
        asset = await http.get(f"{urls.api}{path}")
        assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(kind)
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        assert not re.search(r"https?://", asset.text), f"{path} names another host"


async def test_policy_allows_no_inline_script_and_images_only_from_studio_and_the_bucket(http, urls, settings):
    response = await http.get(f"{urls.api}/")

    policy = _directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    presigning = urlsplit(settings.s3_public_endpoint_url)  # signed outputs (the default) load from there
    assert policy["img-src"] == ["'self'", f"{presigning.scheme}://{presigning.netloc}"]
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("name", ["index.html", "..%2fpage.py", "studio.txt", "%2e%2e/%2e%2e/app.py"])
async def test_only_the_page_files_are_served(http, urls, name):
    response = await http.get(f"{urls.api}/static/{name}")

    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


async def test_config_lists_the_allowed_models_without_a_token(http, urls, settings):
    response = await http.get(f"{urls.api}/api/config")

    assert response.status_code == 200
    assert response.json() == {
        "models": list(settings.allowed_models),
        "defaultModel": "truefusion-pro",
        "maxPromptLength": 500,
    }
    document = (await http.get(f"{urls.api}/api/openapi.json")).json()
    assert "/api/config" in document["paths"] and "/" in document["paths"]
