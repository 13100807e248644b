"""Every `studio_*` metric the running services expose follows Prometheus naming conventions and is documented
in README's metrics table, so a metric added anywhere without documentation fails here."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^studio_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UNIT_SUFFIXES = ("_seconds", "_bytes")


def _exposed_types(text: str) -> dict[str, str]:
    """name -> type, from the exposition's `# TYPE` lines (prometheus_client keeps `_total` on counters)."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    # prometheus_client's `_created` timestamps belong to their counter or histogram, not metrics of their own.
    return {
        name: kind
        for name, kind in types.items()
        if not (name.endswith("_created") and kind == "gauge" and _owner_of_created(name, types))
    }


def _owner_of_created(name: str, types: dict[str, str]) -> bool:
    base = name.removesuffix("_created")
    return f"{base}_total" in types or base in types


def documented_metrics() -> dict[str, str]:
    """README's metrics table: name -> type."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(studio_[a-z0-9_]+)` \| (\w+) \|", section, re.M)
    assert rows, "README has no metrics table"
    return dict(rows)


def convention_problem(name: str, kind: str) -> str | None:
    if not NAME.match(name):
        return "must be studio_ followed by snake_case"
    if kind == "counter" and not name.endswith("_total"):
        return "a counter's name ends in _total"
    if kind != "counter" and name.endswith("_total"):
        return "only counters end in _total"
    if kind in ("histogram", "summary") and not name.endswith(UNIT_SUFFIXES):
        return "a histogram's name ends in its base unit, _seconds or _bytes"
    if re.search(r"_(milliseconds|ms|millis|kilobytes|kb|mb)(_|$)", name):
        return "use base units: seconds and bytes"
    return None


def test_the_documented_metrics_follow_the_conventions():
    documented = documented_metrics()
    problems = {name: convention_problem(name, kind) for name, kind in documented.items()}
    assert not {name: why for name, why in problems.items() if why}
    # Sanity of the check itself: it catches what it is meant to.
    assert convention_problem("studio_jobs", "counter") and convention_problem("studio_wait_ms", "histogram")
    assert convention_problem("studio_latency", "histogram") and convention_problem("Studio_x_total", "counter")


async def test_every_exposed_studio_metric_follows_the_conventions_and_is_documented(services, urls):
    documented = documented_metrics()
    endpoints = {
        "api": f"{urls.api}/metrics",
        "webhook": f"{urls.webhook}/metrics",
        "persister": f"http://127.0.0.1:{services.env['PERSISTER_PORT']}/metrics",
        "notifier": f"http://127.0.0.1:{services.env['NOTIFIER_PORT']}/metrics",
    }
    async with httpx.AsyncClient(timeout=10) as client:
        for service, url in endpoints.items():
            await client.get(url.replace("/metrics", "/readyz"))  # so request metrics have samples
            response = await client.get(url)
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            exposed = {name: kind for name, kind in _exposed_types(response.text).items() if name.startswith("studio_")}
            # Every service has the shared HTTP metrics, with samples.
            assert exposed.get("studio_http_requests_total") == "counter", service
            assert exposed.get("studio_http_request_duration_seconds") == "histogram", service
            assert re.search(r'^studio_http_requests_total\{[^}]*route="/readyz"', response.text, re.M), service
            for name, kind in exposed.items():
                problem = convention_problem(name, kind)
                assert problem is None, f"{service} exposes {name} ({kind}): {problem}"
                assert name in documented, f"{service} exposes {name}, missing from README's metrics table"
                assert documented[name] == kind, f"README says {name} is a {documented[name]}, it is a {kind}"
