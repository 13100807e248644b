"""The allowed models and their input schemas, as Skytells publishes them, and the check of a request's input.

Studio holds no model's options itself: each schema is read from Skytells (`GET /models/{model}?fields=
input_schema`) when first needed and kept `MODELS_CACHE_S`. An expired schema is still answered at once while
one read refreshes it; when Skytells cannot be read, the last schema read stays in use (and the next read is
tried a few seconds later), and with none read yet a create is a 503 with `Retry-After`. A model for which
Skytells publishes no usable schema (none, not a JSON Schema, or a 404) accepts `prompt` alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from common import inputs
from common.errors import ApiError, SkytellsError
from common.skytells import SkytellsClient

logger = logging.getLogger(__name__)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
PROMPT_ONLY: dict[str, Any] = {
    "$schema": DRAFT,
    "type": "object",
    "properties": {"prompt": {"type": "string"}},
    "required": ["prompt"],
    "additionalProperties": False,
}
RETRY_S = 5.0  # after a failed read, how long the last schema read is used before Skytells is asked again
UNAVAILABLE_RETRY_AFTER = "5"


@dataclass(frozen=True)
class ModelSchema:
    model: str
    schema: dict[str, Any]
    validator: Draft202012Validator
    fresh_until: float

    def problem(self, prompt: str, model_input: dict[str, Any]) -> str | None:
        """`field: reason` when `{"prompt", ...input}` breaks the schema, else None."""
        return inputs.problem(self.validator, {"prompt": prompt, **model_input})


def usable(raw: Any) -> dict[str, Any]:
    """The schema Skytells published when it is a JSON Schema of an object; else the prompt alone."""
    if not isinstance(raw, dict):
        return PROMPT_ONLY
    try:
        Draft202012Validator.check_schema(raw)
        # A schema the validator cannot apply (a `$ref` to a document it may not fetch, say) fails here, at
        # once, rather than on a client's request.
        list(Draft202012Validator(raw).iter_errors({"prompt": "a probe"}))
    except Exception:  # noqa: BLE001 (whatever it is, the schema cannot be used)
        return PROMPT_ONLY
    return raw if raw.get("type", "object") == "object" else PROMPT_ONLY


class ModelCatalog:
    """One per API process: the schemas read so far and the reads under way (one per model at a time)."""

    def __init__(self, skytells: SkytellsClient, cache_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._skytells = skytells
        self._cache_s = cache_s
        self._clock = clock
        self._known: dict[str, ModelSchema] = {}
        self._reads: dict[str, asyncio.Task[ModelSchema | None]] = {}

    async def schema(self, model: str) -> ModelSchema:
        """The model's schema; ApiError 503 when Skytells cannot be read and none was read before."""
        known = self._known.get(model)
        if known is not None and self._clock() < known.fresh_until:
            return known
        read = self._reads.get(model)
        if read is None:
            read = self._reads[model] = asyncio.get_running_loop().create_task(self._read(model))
            read.add_done_callback(lambda _: self._reads.pop(model, None))
        if known is not None:
            return known  # the read refreshes it for the next request
        fetched = await asyncio.shield(read)
        if fetched is None:
            raise ApiError(
                503, "The model's input schema cannot be read from Skytells", {"Retry-After": UNAVAILABLE_RETRY_AFTER}
            )
        return fetched

    async def _read(self, model: str) -> ModelSchema | None:
        try:
            raw = await self._skytells.input_schema(model)
        except SkytellsError as exc:
            if exc.status != 404:
                known = self._known.get(model)
                logger.warning("could not read the input schema of %s: %s", model, exc.message)
                if known is not None:  # the last one read, until the next try
                    self._known[model] = ModelSchema(
                        model, known.schema, known.validator, self._clock() + min(RETRY_S, self._cache_s)
                    )
                return None
            raw = None  # Skytells does not know the model: nothing beyond the prompt can be checked
        schema = usable(raw)
        read = ModelSchema(model, schema, Draft202012Validator(schema), self._clock() + self._cache_s)
        self._known[model] = read
        return read

    async def aclose(self) -> None:
        reads = list(self._reads.values())
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
