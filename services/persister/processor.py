"""What the persister does with one event, idempotently (docs/architecture.md).

The database is the arbiter: the terminal write is a conditional UPDATE, so when two replicas handle
duplicates of one event at once, both may upload the (identical) object but only one row change wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx

from common import log as logs
from common.db import generations
from common.db.generations import Generation, Metrics
from common.errors import GenerationNotYetKnown, PermanentError, StorageUnavailable, UpstreamUnavailable
from common.events import PredictionEvent
from common.predictions import Status
from common.settings import Settings
from common.storage import PREFIX, delete_generation_objects, existing_keys, upload_stream
from common.updates import Notify, ignore_change
from services.persister.download import Output, open_output
from services.persister.metrics import LATE_OUTCOMES, PERSIST_SECONDS, STORED_BYTES, Outcome
from services.persister.spool import Entry, Spool

logger = logging.getLogger(__name__)


def object_key(generation_id: Any, index: int, extension: str) -> str:
    suffix = "" if index == 0 else f"-{index}"
    return f"{PREFIX}{generation_id}{suffix}.{extension}"


# The error of a generation whose reported output was refused (too large, not an image...): a later report of
# the same outcome would be refused again, so it is not a late outcome to store.
REJECTED = "Could not store the output:"


def _metrics(event: PredictionEvent) -> Metrics:
    return Metrics(predict_time=event.predict_time, credits_used=event.credits_used)


def _ended_without_outputs(generation: Generation) -> bool:
    return generation.status is not Status.SUCCEEDED and not (generation.error or "").startswith(REJECTED)


class Processor:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        s3: Any,
        http: httpx.AsyncClient,
        notify: Notify = ignore_change,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.s3 = s3
        self.http = http
        self.notify = notify  # told of every committed change, for the live updates
        self.spool = spool  # where outputs go while storage is down

    async def handle(self, event: PredictionEvent) -> Outcome:
        """Apply the event; returns the outcome's name. Raises TransientError to be retried later."""
        generation = await self._find(event)
        if generation is None:
            raise GenerationNotYetKnown(f"no generation has prediction id {event.prediction_id} yet")
        # Into the consumer's block, so its outcome and retry lines carry the generation too.
        logs.annotate(generation_id=str(generation.id))
        if generation.terminal:
            if event.status is Status.SUCCEEDED and event.output and _ended_without_outputs(generation):
                return await self._late(generation, event.output, _metrics(event))
            return Outcome.DUPLICATE
        if event.status is Status.SUCCEEDED:
            return await self._succeeded(generation, event)
        if event.status in (Status.FAILED, Status.CANCELED):
            return await self._end(generation, event.status, event.error)
        if event.status is Status.PROCESSING:
            async with self.pool.acquire() as conn:
                moved = await generations.mark_processing(conn, generation.id)
            self.notify(moved)
            return Outcome.PROCESSING if moved else Outcome.STALE
        return Outcome.IGNORED

    async def _find(self, event: PredictionEvent) -> Generation | None:
        """The generation by prediction id, else by the generation id the callback URL carried: the create call
        that would have recorded the prediction id timed out, or its API process died before writing it."""
        async with self.pool.acquire() as conn:
            generation = await generations.get_by_prediction_id(conn, event.prediction_id)
            if generation is not None or event.generation_id is None:
                return generation
            try:
                generation_id = uuid.UUID(event.generation_id)
            except ValueError:
                return None
            bound = await generations.bind_prediction(conn, generation_id, event.prediction_id)
            if bound is None:  # bound meanwhile, by the API's own write or a concurrent callback
                return await generations.get_by_prediction_id(conn, event.prediction_id)
        logs.annotate(generation_id=str(bound.id))
        logger.warning("prediction bound to its generation by the id in its callback")
        return bound

    async def _end(self, generation: Generation, status: Status, error: str | None) -> Outcome:
        async with self.pool.acquire() as conn:
            ended = await generations.mark_ended(conn, generation.id, status, error)
        self.notify(ended)
        if ended is None:
            return Outcome.DUPLICATE
        logger.info("generation ended %s", status, extra={"error": error})
        return Outcome(status.value)

    async def _succeeded(self, generation: Generation, event: PredictionEvent) -> Outcome:
        if not event.output:
            return await self._end(generation, Status.FAILED, "Skytells reported success without an output")
        started = time.perf_counter()
        try:
            keys = await self._keep(generation, event.output)
        except PermanentError as exc:
            logger.warning("output rejected: %s", exc)
            ended = await self._end(generation, Status.FAILED, f"{REJECTED} {exc}")
            return Outcome.REJECTED if ended is Outcome.FAILED else ended
        metrics = _metrics(event)
        if keys is None:  # the spool's drainer ends it: what Skytells reported waits with the row meanwhile
            async with self.pool.acquire() as conn:
                await generations.set_metrics(conn, generation.id, metrics)
            return Outcome.SPOOLED
        async with self.pool.acquire() as conn:
            done = await generations.mark_succeeded(conn, generation.id, keys, metrics)
        self.notify(done)
        if done is None:
            return Outcome.DUPLICATE
        seconds = time.perf_counter() - started
        PERSIST_SECONDS.observe(seconds)
        logger.info("generation succeeded", extra={"outputs": len(keys), "seconds": round(seconds, 3)})
        return Outcome.SUCCEEDED

    async def _late(self, generation: Generation, output: Sequence[str], metrics: Metrics) -> Outcome:
        """Skytells made the image of a generation that already ended: a paid image is stored, never thrown away,
        while the generation keeps its status (its owner was told it ended)."""
        try:
            keys = await self._keep(generation, output)
        except PermanentError as exc:
            logger.warning("late output rejected: %s", exc)
            return Outcome.DUPLICATE
        if keys is None:
            return Outcome.SPOOLED
        async with self.pool.acquire() as conn:
            attached = await generations.attach_late_outputs(conn, generation.id, keys, metrics)
        self.notify(attached)
        if attached is None:
            await self._discard_if_deleted(generation.id, keys)
            return Outcome.DUPLICATE
        LATE_OUTCOMES.inc()
        logger.warning("late outcome stored for a generation that had ended %s", generation.status)
        return Outcome.LATE

    async def _keep(self, generation: Generation, output: Sequence[str]) -> list[str] | None:
        """The key of every output once stored; None when storage is down and they went to the spool instead,
        whose drainer then finishes the generation (`settle_spooled`)."""
        try:
            # Objects an earlier event stored completely (a put or a completed multipart upload is atomic) are
            # kept, whichever message this is (a retry, a duplicate callback, the reconciler's): the CDN may have
            # deleted the output since, and a second download would turn a stored image into a failure. (A
            # duplicate handled elsewhere at the same time just writes the same bytes again.)
            stored = await existing_keys(self.s3, self.settings.s3_bucket, f"{PREFIX}{generation.id}")
            return [await self._store(generation, index, url, stored) for index, url in enumerate(output)]
        except StorageUnavailable as exc:
            if self.spool is None:
                raise
            logger.warning("storage unavailable, outputs kept in the local spool: %s", exc)
        spool = self.spool
        async with spool.writing(generation.id) as writer:
            for index, url in enumerate(output):
                reserved = await spool.reserve()  # before the deadline: waiting for room is not a slow download
                written = 0
                try:
                    async with self._download(url) as out:
                        written = await writer.add(
                            object_key(generation.id, index, out.extension), out.content_type, out.chunks
                        )
                finally:
                    await spool.release(reserved - written)
        return None

    async def settle_spooled(self, entry: Entry) -> None:
        """Put a spool entry's outputs (those not stored yet) and give the generation its outcome."""
        settings = self.settings
        stored = await existing_keys(self.s3, settings.s3_bucket, f"{PREFIX}{entry.generation_id}")
        for output in entry.outputs:
            if output.key not in stored:
                size = await upload_stream(
                    self.s3, settings.s3_bucket, output.key, output.chunks(), output.content_type
                )
                STORED_BYTES.inc(size)
        keys = [output.key for output in entry.outputs]
        async with self.pool.acquire() as conn:
            done = await generations.mark_succeeded(conn, entry.generation_id, keys)
            if done is None:  # it ended meanwhile: the outputs are still its own
                done = await generations.attach_late_outputs(conn, entry.generation_id, keys)
        self.notify(done)
        if done is None:
            await self._discard_if_deleted(entry.generation_id, keys)

    async def _discard_if_deleted(self, generation_id: uuid.UUID, keys: list[str]) -> None:
        """Outputs stored for a generation whose owner deleted it meanwhile (it had ended, so that was allowed)
        go too: nothing stays under generations/ that no generation holds. (The API lists the objects again
        after deleting the row, for a put that landed between its own deletion of the objects and of the row.)"""
        async with self.pool.acquire() as conn:
            if await generations.exists(conn, generation_id):
                return
        await delete_generation_objects(self.s3, self.settings.s3_bucket, generation_id, keys)
        logger.warning("the generation was deleted while its outputs were stored: deleted them too")

    @asynccontextmanager
    async def _download(self, url: str) -> AsyncIterator[Output]:
        """An output's download, as a whole bounded by DOWNLOAD_DEADLINE_S (read timeouts bound each wait for bytes),
        so a CDN that trickles cannot hold the message (and a consumer slot) without end, nor past the shutdown."""
        settings = self.settings
        try:
            async with asyncio.timeout(settings.download_deadline_s):
                async with open_output(self.http, url, settings.output_allowed_hosts, settings.output_max_bytes) as out:
                    yield out
        except TimeoutError:
            raise UpstreamUnavailable(f"download did not finish within {settings.download_deadline_s:g}s") from None

    async def _store(self, generation: Generation, index: int, url: str, stored: Collection[str]) -> str:
        settings = self.settings
        stem = object_key(generation.id, index, "")
        for key in stored:
            if key.startswith(stem) and "." not in key[len(stem) :]:
                logger.info("output %d already stored by an earlier attempt", index, extra={"key": key})
                return key
        async with self._download(url) as out:
            key = object_key(generation.id, index, out.extension)
            size = await upload_stream(self.s3, settings.s3_bucket, key, out.chunks, out.content_type)
        STORED_BYTES.inc(size)
        return key
