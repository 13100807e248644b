"""One output of a prediction: its bytes as parts (shared ones included), length, SHA-256 and type."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Output:
    parts: tuple[bytes | memoryview, ...]
    size: int
    sha256: str
    extension: str = "png"
    content_type: str = "image/png"

    def chunks(self, step: int = 256 * 1024) -> Iterator[memoryview]:
        for part in self.parts:
            view = memoryview(part)
            for start in range(0, len(view), step):
                yield view[start : start + step]

    def read(self) -> bytes:
        """All bytes at once: for tests and small outputs only."""
        return b"".join(bytes(part) for part in self.parts)


def digest_of(state: Any, parts: tuple[bytes | memoryview, ...]) -> str:
    """The SHA-256 of `parts` continued from `state` (a hash of what precedes them, copied, never changed)."""
    hasher = state.copy()
    for part in parts:
        hasher.update(part)
    return str(hasher.hexdigest())
