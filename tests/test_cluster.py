"""Past one machine: a three-node RabbitMQ cluster and a PostgreSQL primary with a synchronous standby, as the
local stack starts them, with Studio's processes failing over between their nodes.

Both run for this module only (the session's servers are never disturbed): a gateway streams callbacks while
the node it is connected to, which leads the persister's queue, is killed; an API and a persister keep
answering and finishing events across a promotion of the standby.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from common.broker import Broker
from common.topology import QUEUE
from devstack.environment import amqp_cluster_url, cluster_env
from devstack.postgres_pair import PostgresPair
from devstack.processes import StartError, free_port
from devstack.rabbitmq import RabbitCluster
from devstack.stack import Stack
from tests.gateway_kit import Tally, answers, queued_prediction_ids, ready_gateway
from tests.helpers import eventually, wait_for_status

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster([f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(3)]).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster_url(rabbit_cluster: RabbitCluster) -> str:
    return ",".join(node.url for node in rabbit_cluster.nodes)


@pytest.fixture(scope="module")
def postgres_pair() -> Iterator[PostgresPair]:
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    pair = PostgresPair(f"postgresql://studio:studio@{hosts}/studio?target_session_attrs=read-write").start()
    try:
        yield pair
    finally:
        pair.stop()


def test_the_local_stack_names_every_node_it_is_asked_for() -> None:
    env = cluster_env(
        {
            "AMQP_URL": "amqp://u:p@127.0.0.1:5672/",
            "DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/studio",
            "DEVSTACK_RABBITMQ_NODES": "3",
            "DEVSTACK_POSTGRES_STANDBY": "1",
        }
    )
    assert env["AMQP_URL"] == "amqp://u:p@127.0.0.1:5672/,amqp://u:p@127.0.0.1:5673/,amqp://u:p@127.0.0.1:5674/"
    assert env["DATABASE_URL"] == (
        "postgresql://u:p@127.0.0.1:5432,127.0.0.1:5433/studio?target_session_attrs=read-write"
    )
    assert amqp_cluster_url(env["AMQP_URL"], 2, lambda n: 0) == env["AMQP_URL"]  # as many listed: unchanged
    assert cluster_env({"AMQP_URL": "amqp://u:p@127.0.0.1:5672/"}) == {"AMQP_URL": "amqp://u:p@127.0.0.1:5672/"}
    assert amqp_cluster_url("amqp://rmq:5672/", 2, lambda n: 6000 + n) == "amqp://rmq:5672/,amqp://rmq:6001/"
    for bad in ({"DEVSTACK_RABBITMQ_NODES": "three"}, {"DEVSTACK_POSTGRES_STANDBY": "maybe"}):
        with pytest.raises(StartError, match=next(iter(bad))):
            cluster_env(bad)


async def test_three_nodes_form_one_cluster_and_no_callback_is_lost_when_the_leaders_node_dies(
    stack: Stack, rabbit_cluster: RabbitCluster, cluster_url: str
) -> None:
    names = {node.node for node in rabbit_cluster.nodes}
    assert set(rabbit_cluster.running()) == names
    tally = Tally("pred_cluster_")
    stop = asyncio.Event()

    async def at_least(n: int) -> bool:
        return len(tally.accepted) >= n

    async with ready_gateway(stack, cluster_url) as gateway, httpx.AsyncClient(timeout=30) as client:
        senders = [asyncio.create_task(tally.send(client, gateway.url, stop, 0.05)) for _ in range(4)]
        try:
            await eventually("30 accepted", lambda: at_least(30))
            # The gateway declared the queue first, on the node it connected to: that node leads it.
            leader = await asyncio.to_thread(rabbit_cluster.leader, QUEUE)
            await asyncio.to_thread(rabbit_cluster.kill, leader)
            before = len(tally.accepted)
            await eventually("30 accepted after the kill", lambda: at_least(before + 30), 60)
            assert await answers(gateway.url, "/readyz", 200)
            new_leader = await asyncio.to_thread(rabbit_cluster.leader, QUEUE)
            assert new_leader != leader
        finally:
            stop.set()
            await asyncio.gather(*senders)
            await asyncio.to_thread(rabbit_cluster.resume, leader)

    queued = await queued_prediction_ids(rabbit_cluster.nodes[new_leader].url)
    logger.warning("cluster: %d accepted, %d refused (503) around the kill", len(tally.accepted), len(tally.refused))
    assert tally.other == []  # a 200 or a 503 with Retry-After, never a 500
    assert set(tally.accepted) <= set(queued)  # every callback answered 200 is in the queue
    arguments = rabbit_cluster.nodes[new_leader].ctl("list_queues", "-q", "--no-table-headers", "name", "arguments")
    assert f"{QUEUE}\t" in arguments and '{"x-quorum-initial-group-size",3}' in arguments


async def test_after_a_promotion_the_api_answers_and_the_persister_finishes_events(
    stack: Stack, postgres_pair: PostgresPair, cluster_url: str, auth: dict[str, str], http: httpx.AsyncClient
) -> None:
    dsn = postgres_pair.servers[0].dsn
    gateway_port, api_port = free_port(), free_port()
    common = {"DATABASE_URL": dsn, "AMQP_URL": cluster_url}
    labels = [f"webhook-pair-{gateway_port}", f"api-pair-{api_port}", f"persister-pair-{api_port}"]
    started = [
        await asyncio.to_thread(
            stack.start_service, "webhook", {**common, "WEBHOOK_PORT": str(gateway_port)}, labels[0]
        ),
        await asyncio.to_thread(
            stack.start_service,
            "api",
            {
                **common,
                "API_PORT": str(api_port),
                "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{gateway_port}/api/webhooks",
            },
            labels[1],
        ),
        await asyncio.to_thread(
            stack.start_service, "persister", {**common, "PERSISTER_PORT": str(free_port())}, labels[2]
        ),
    ]
    api = f"http://127.0.0.1:{api_port}"

    async def generate(prompt: str) -> httpx.Response:
        return await http.post(f"{api}/api/generate", json={"prompt": prompt}, headers=auth)

    try:
        first = await generate("before the failover")
        assert first.status_code in (200, 201, 202), first.text
        await wait_for_status(http, api, first.json()["id"], auth, statuses={"succeeded"})

        # The primary dies; until the standby is promoted no host takes writes.
        await asyncio.to_thread(postgres_pair.servers[postgres_pair.primary].crash)
        during = [await generate("during the failover"), await http.get(f"{api}/api/generations", headers=auth)]
        for response in during:
            assert response.status_code == 503 and response.headers["Retry-After"], response.text

        await asyncio.to_thread(postgres_pair.fail_over)
        await asyncio.to_thread(postgres_pair.rebuild_standby)

        async def created() -> httpx.Response | None:
            response = await generate("after the failover")
            assert response.status_code in (200, 201, 202, 503), response.text
            return response if response.status_code != 503 else None

        after = await eventually("a create after the promotion", created, 60, interval=0.5)
        done = await wait_for_status(http, api, after.json()["id"], auth, timeout=60, statuses={"succeeded"})
        assert done["outputUrls"]
        assert (await http.get(f"{api}/api/predictions/{first.json()['id']}", headers=auth)).status_code == 200
        conn = await asyncpg.connect(dsn)
        try:
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
            standby_port = postgres_pair.servers[postgres_pair.standby].port
            assert await conn.fetchval("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == 1
            assert standby_port != postgres_pair.servers[postgres_pair.primary].port
        finally:
            await conn.close()
    finally:
        for process in started:
            await asyncio.to_thread(process.stop)


async def test_a_process_connects_to_a_node_that_answers_whichever_it_tries_first(settings) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    for url in (f"{dead},{settings.amqp_url}", f"{settings.amqp_url},{dead}"):
        broker = await Broker.connect(url)
        try:
            assert broker.ready
        finally:
            await broker.close()
    with pytest.raises(ConnectionError, match="no RabbitMQ node answered"):
        await Broker.connect(f"{dead},amqp://guest:guest@127.0.0.1:{free_port()}/")
    # aio-pika finalises a connection that never connected by scheduling its close on the loop; collected later,
    # between tests, that loop no longer runs ("coroutine 'RobustConnection.close' was never awaited" failed
    # whichever test came next). Collected here, the closes run on this test's loop.
    gc.collect()
    await asyncio.sleep(0.1)
