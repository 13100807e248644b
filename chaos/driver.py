"""The soak's users: they create generations through the public API as a well-behaved client would.

A create is retried with the same `Idempotency-Key` until it gets an answer that settles it, honouring 429 and
503 with their `Retry-After`; some generations are canceled; each is then polled until it ends, and some are
then deleted (repeated through 503s until the API confirms). Every answer is counted, and a 5xx other than 503
with `Retry-After` is kept as a finding.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from chaos.receivers import Receivers
from chaos.schedule import Plan
from common.predictions import TERMINAL

USERS = 40
PER_USER = 11  # one more than the quota: users meet 429 and must honour it
QUOTA_BACKOFF_S = (2.0, 5.0)  # a user over quota waits for one of theirs to end, not hammering the API
POLL_S = 2.0
DELETE_ATTEMPTS = 120
# A create still unsettled after this many answers (429s aside) is given up and counted as wrong: under the
# soak's faults a well-behaved API settles one within a few tries, and a client must not retry forever.
MAX_CREATE_TRIES = 40


@dataclass
class Record:
    """What the clients saw: accepted generations, every answer by kind, and the answers that break the rules."""

    accepted: dict[str, str] = field(default_factory=dict)  # generation id -> user
    webhooks: dict[str, Plan] = field(default_factory=dict)  # accepted generation id -> its plan, if it has a webhook
    refused: Counter[int] = field(default_factory=Counter)  # final answers that settle a create without an id
    answers: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    cancels: int = 0
    deleted: set[str] = field(default_factory=set)  # generations whose deletion the API confirmed


class Pacer:
    """Spreads the creates over the fault window: at most `rate` starts per second."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            self.next = max(self.next + self.interval, now)
            delay = self.next - now
        await asyncio.sleep(delay)


def _retry_after(response: httpx.Response, default: float = 1.0) -> float:
    try:
        return min(10.0, max(0.1, float(response.headers.get("Retry-After", default))))
    except ValueError:
        return default


class Driver:
    """The users' side; `close` ends their connections."""

    def __init__(self, api: str, tokens: dict[str, str], receivers: Receivers) -> None:
        # A client per user, as separate people would have: one shared pool with hundreds of waiting requests
        # spends the soak's CPU matching requests to connections.
        self.clients = {user: httpx.AsyncClient(timeout=30) for user in tokens}
        self.api = api
        self.tokens = tokens
        self.receivers = receivers
        self.record = Record()
        self.creates_left = 0
        self.created_all = asyncio.Event()  # every create has been settled: the load is over

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    async def _call(self, kind: str, method: str, url: str, user: str, **kwargs: Any) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kwargs.pop("headers", {})}
        try:
            response = await self.clients[user].request(method, f"{self.api}{url}", headers=headers, **kwargs)
        except httpx.HTTPError as exc:  # a replica killed under the request, the balancer refusing: retry
            self.record.answers[f"{kind} {exc.__class__.__name__}"] += 1
            return None
        self.record.answers[f"{kind} {response.status_code}"] += 1
        if response.status_code >= 500 and not (response.status_code == 503 and "Retry-After" in response.headers):
            self.record.bad.append(f"{method} {url} -> {response.status_code} {response.text[:200]}")
        return response

    async def create(self, user: str, plan: Plan) -> str | None:
        """The generation's id once the API accepted it, or None when it refused it for good."""
        key = uuid.uuid4().hex
        body: dict[str, Any] = {"prompt": plan.prompt, "model": "truefusion-pro"}
        if plan.webhook is not None:
            body |= {"webhook": self.receivers.url(plan.webhook, user), "webhookEventsFilter": list(plan.events)}
        tries = 0
        while True:
            if tries == MAX_CREATE_TRIES:
                self.record.bad.append(f"POST /api/generate unsettled after {tries} tries: {plan.prompt}")
                return None
            response = await self._call(
                "create", "POST", "/api/generate", user, json=body, headers={"Idempotency-Key": key}
            )
            tries += response is None or response.status_code != 429
            if response is None:
                await asyncio.sleep(1.0)
            elif response.status_code in (200, 201):
                generation_id: str = response.json()["id"]
                self.record.accepted[generation_id] = user
                if plan.webhook is not None:
                    self.record.webhooks[generation_id] = plan
                return generation_id
            elif response.status_code == 429:
                await asyncio.sleep(max(_retry_after(response), random.uniform(*QUOTA_BACKOFF_S)))
            elif response.status_code == 409 or (response.status_code >= 500 and response.status_code != 502):
                await asyncio.sleep(_retry_after(response))  # 502 is Skytells' refusal: final, as 4xx are
            else:
                self.record.refused[response.status_code] += 1
                return None

    async def cancel(self, user: str, generation_id: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self.record.cancels += 1
        for _ in range(60):
            response = await self._call("cancel", "POST", f"/api/predictions/{generation_id}/cancel", user)
            settled = response is not None and (
                response.status_code == 200 or (response.status_code == 409 and "Retry-After" not in response.headers)
            )
            if settled:
                return  # canceled, or it had finished already
            await asyncio.sleep(1.0 if response is None else _retry_after(response))

    async def follow(self, user: str, generation_id: str, stop: asyncio.Event) -> bool:
        """Poll until the generation ends (True) or the soak stops following: a user waiting for their image."""
        while not stop.is_set():
            response = await self._call("get", "GET", f"/api/predictions/{generation_id}", user)
            if response is not None and response.status_code == 200:
                if response.json()["status"] in TERMINAL:
                    return True
            await asyncio.sleep(POLL_S)
        return False

    async def delete(self, user: str, generation_id: str) -> None:
        """Delete an ended generation, repeating through refusals until the API confirms (a 404 after an attempt
        whose answer was lost with a killed replica confirms it too). Not cut short by the end of the load: a
        deletion left half-way would look like a lost object."""
        for _ in range(DELETE_ATTEMPTS):
            response = await self._call("delete", "DELETE", f"/api/predictions/{generation_id}", user)
            if response is not None and response.status_code in (204, 404):
                self.record.deleted.add(generation_id)
                return
            await asyncio.sleep(1.0 if response is None else _retry_after(response))

    async def user(self, user: str, plans: list[Plan], pacer: Pacer, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[Plan] = asyncio.Queue()
        for plan in plans:
            queue.put_nowait(plan)

        async def worker() -> None:
            while not queue.empty():
                plan = queue.get_nowait()
                await pacer.wait()
                generation_id = await self.create(user, plan)
                self.creates_left -= 1
                if self.creates_left == 0:
                    self.created_all.set()
                if generation_id is None:
                    continue
                if plan.cancel_after_s is not None:
                    await self.cancel(user, generation_id, plan.cancel_after_s)
                if await self.follow(user, generation_id, stop) and plan.delete:
                    await self.delete(user, generation_id)

        await asyncio.gather(*(worker() for _ in range(PER_USER)))


async def drive(driver: Driver, plans: list[Plan], rate: float, stop: asyncio.Event) -> None:
    users = list(driver.tokens)
    pacer = Pacer(rate)
    driver.creates_left = len(plans)
    shares = {user: plans[n :: len(users)] for n, user in enumerate(users)}
    await asyncio.gather(*(driver.user(user, shares[user], pacer, stop) for user in users))
