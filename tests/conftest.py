"""Session fixtures: real PostgreSQL, RabbitMQ and S3 server (started here unless their URLs are given in the
environment), the Skytells simulator, the four services as real processes on free loopback ports, and the
Chromium the page tests drive."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from common.broker import Broker
from common.settings import Settings
from devstack.environment import simulator_env
from devstack.processes import free_port
from devstack.rabbitmq import RabbitMQ
from devstack.stack import SERVICES, Stack
from tests.callback_kit import Events, published_events
from tests.helpers import JWT_SECRET, bearer
from tests.page_kit import CHROMIUM, CHROMIUM_ARGS, Visit
from tests.simulator_kit import Sim, running_sim
from tests.webhook_receiver import Receiver, receiving

CORS_ORIGIN = "https://studio-app.example"


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"postgresql://studio:studio@127.0.0.1:{free_port()}/studio")
    env.setdefault("AMQP_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    env.setdefault("S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    webhook_port = free_port()
    env.update(
        {
            "S3_BUCKET": f"studio-test-{uuid.uuid4().hex[:8]}",
            "SIM_PORT": str(free_port()),
            "SIM_DELAY_S": "0.3",
            "API_PORT": str(free_port()),
            "WEBHOOK_PORT": str(webhook_port),
            "PERSISTER_PORT": str(free_port()),
            "NOTIFIER_PORT": str(free_port()),
            "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/api/webhooks",
            "AUTH_JWT_SECRET": JWT_SECRET,
            "CORS_ALLOWED_ORIGINS": CORS_ORIGIN,
            "RETRY_BASE_S": "0.5",
            "RETRY_MAX_S": "4",
            # Webhook receivers of the tests listen on loopback; retries and leases short enough to watch.
            "NOTIFY_ALLOW_HOSTS": "127.0.0.1,127.0.0.2",
            "NOTIFY_MAX_AGE_S": "60",  # leftovers of earlier tests stop retrying
            "NOTIFY_TIMEOUT_S": "2",
            "NOTIFY_RETRY_BASE_S": "0.3",
            "NOTIFY_RETRY_MAX_S": "2",
            "NOTIFY_LEASE_S": "3",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(simulator_env(env))
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Infrastructure and the simulator, for the whole session. A server that cannot start fails the run."""
    stack = Stack(base_env(), tmp_path_factory.mktemp("stack"))
    try:
        stack.start_infrastructure()
        stack.start_simulator()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def services(stack: Stack) -> Stack:
    for name in SERVICES:
        if name not in stack.processes:
            stack.start_service(name)
    return stack


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings


@dataclass
class Urls:
    api: str
    webhook: str
    simulator: str


@pytest.fixture(scope="session")
def urls(services: Stack) -> Urls:
    env = services.env
    return Urls(
        api=f"http://127.0.0.1:{env['API_PORT']}",
        webhook=f"http://127.0.0.1:{env['WEBHOOK_PORT']}",
        simulator=f"http://127.0.0.1:{env['SIM_PORT']}",
    )


@pytest.fixture
def user_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def auth(user_id: str) -> dict[str, str]:
    return bearer(user_id)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def broker(services: Stack) -> AsyncIterator[Broker]:
    """A confirming publisher on the session's RabbitMQ, to feed the session's persister events directly."""
    broker = await Broker.connect(services.settings.amqp_url)
    yield broker
    await broker.close()


@pytest.fixture
async def own_sim() -> AsyncIterator[Sim]:
    """A simulator of the test's own, its callbacks received and kept (for tests of the simulator itself)."""
    async with running_sim() as running:
        yield running


@pytest.fixture(scope="session")
def sim(urls: Urls) -> str:
    """The simulator's base URL."""
    return urls.simulator


@pytest.fixture(scope="session")
def persister_port(services: Stack) -> str:
    return services.env["PERSISTER_PORT"]


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitMQ]:
    """A RabbitMQ of the module's own, for what the session's broker cannot show: its outages, or nobody bound."""
    broker = RabbitMQ(f"amqp://guest:guest@127.0.0.1:{free_port()}/").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def visit(browser: Browser) -> AsyncIterator[Visit]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    visit = Visit(context, await context.new_page())
    yield visit
    await context.close()
    assert visit.problems == []


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as receiver:
        yield receiver


@pytest.fixture
async def events(settings: Settings, services: Stack) -> AsyncIterator[Events]:
    """Every event the session's gateway publishes while the test runs."""
    async with published_events(settings) as seen:
        yield seen
