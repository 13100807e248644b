"""Real PNG outputs, made once per size and varied cheaply per prediction (no imaging library).

Drawing pixels in Python per prediction made the simulator the bottleneck of every measurement. Instead the
bulk of an image (signature, header, pixel data) is built once and shared; what makes each output distinct is a
few hundred bytes built per prediction:
- the default image is a 256x256 gradient in indexed colour: the shared pixel data holds palette indices, and
  each output gets its own palette (`PLTE`, derived from its seed) and a `tEXt` chunk naming it;
- a `#sim:size=BYTES` image is RGB noise (stored, not compressed, so its size is what was asked) followed by a
  `tEXt` chunk naming the output, padded so the file has exactly the requested length. Noise templates are
  quantised to eighth-octave buckets and kept in a bounded LRU, so random sizes cost little and memory stays
  flat; the SHA-256 of the shared prefix is kept too, so an output's digest costs only its own tail.

An output is a sequence of byte parts, streamed as they are: a 64 MiB output is never copied per prediction.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRADIENT_SIDE = 256
TEXT_KEYWORD = b"Comment\x00"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_CHUNK_OVERHEAD = 12  # length, type, CRC
_CACHE_BYTES = 256 * 1024 * 1024  # noise templates kept beyond the one in use
_PAD = b" " * (8 * 1024 * 1024)  # padding of a tEXt chunk is sliced from here, never built per output
_BUCKETS_PER_OCTAVE = 8


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header(width: int, height: int, colour_type: int) -> bytes:
    return SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))


@dataclass(frozen=True)
class Output:
    """One output's bytes as parts (shared ones included), with its length and SHA-256."""

    parts: tuple[bytes | memoryview, ...]
    size: int
    sha256: str

    def chunks(self, step: int = 256 * 1024) -> Iterator[memoryview]:
        for part in self.parts:
            view = memoryview(part)
            for start in range(0, len(view), step):
                yield view[start : start + step]

    def read(self) -> bytes:
        """All bytes at once: for tests and small outputs only."""
        return b"".join(bytes(part) for part in self.parts)


def _text_chunk(label: bytes, pad: int) -> tuple[bytes | memoryview, ...]:
    """A `tEXt` chunk carrying `label` then `pad` spaces, its CRC computed over the shared padding slice."""
    padding = memoryview(_PAD)[:pad] if pad <= len(_PAD) else memoryview(b" " * pad)
    data_head = TEXT_KEYWORD + label
    crc = zlib.crc32(padding, zlib.crc32(b"tEXt" + data_head))
    return (struct.pack(">I", len(data_head) + pad) + b"tEXt" + data_head, padding, struct.pack(">I", crc))


def _digest(state: Any, parts: tuple[bytes | memoryview, ...]) -> str:
    hasher = state.copy()
    for part in parts:
        hasher.update(part)
    return str(hasher.hexdigest())


class _Gradient:
    """The default image: shared palette indices, a palette and a label per output."""

    def __init__(self) -> None:
        side = GRADIENT_SIDE
        rows = bytearray()
        for y in range(side):  # once per process, not per prediction
            rows.append(0)
            rows += bytes(((x + y) // 2) & 255 for x in range(side))
        self.head = _header(side, side, 3)
        self.body = _chunk(b"IDAT", zlib.compress(bytes(rows), 6))

    def make(self, seed: str) -> Output:
        key = hashlib.sha256(seed.encode()).digest()
        r0, g0, b0 = key[0], key[1], key[2]
        palette = bytes(value & 255 for i in range(256) for value in (r0 + i, g0 + i // 2, b0 + 255 - i))
        parts = (self.head, _chunk(b"PLTE", palette), self.body, *_text_chunk(seed.encode()[:512], 0), _IEND)
        return Output(parts, sum(len(p) for p in parts), _digest(hashlib.sha256(), parts))


@dataclass(frozen=True)
class _Noise:
    """RGB noise of one size bucket: the shared prefix (signature, header, pixel data) and its digest state."""

    prefix: bytes
    state: Any

    @classmethod
    def build(cls, nominal: int) -> _Noise:
        pixels = max(1, nominal - 100) // 3
        side = max(1, math.isqrt(pixels))
        height = max(1, pixels // side)
        noise = os.urandom(side * 3 * height)
        stride = side * 3
        rows = b"".join(b"\x00" + noise[y * stride : (y + 1) * stride] for y in range(height))
        prefix = _header(side, height, 2) + _chunk(b"IDAT", zlib.compress(rows, 0))
        return cls(prefix, hashlib.sha256(prefix))


class Outputs:
    """Makes outputs; thread-safe, so large templates can be built off the event loop."""

    def __init__(self, cache_bytes: int = _CACHE_BYTES) -> None:
        self.gradient = _Gradient()
        self.cache_bytes = cache_bytes
        self._noise: OrderedDict[int, _Noise] = OrderedDict()
        self._lock = threading.Lock()

    def gradient_of(self, seed: str) -> Output:
        return self.gradient.make(seed)

    def noise_of(self, size: int, label: str) -> Output:
        """An output of exactly `size` bytes when `size` is above a few hundred bytes (else the smallest)."""
        tag = label.encode()[:256]
        tail = _CHUNK_OVERHEAD + len(TEXT_KEYWORD) + len(tag) + len(_IEND)
        bucket = self._bucket_index(max(size - tail, 1))
        template = self._template(bucket)
        while len(template.prefix) + tail > size and bucket > 0:  # a bucket's file runs a little over it
            bucket -= 1
            template = self._template(bucket)
        pad = max(0, size - len(template.prefix) - tail)
        parts = (template.prefix, *_text_chunk(tag, pad), _IEND)
        return Output(parts, len(template.prefix) + tail + pad, _digest(template.state, parts[1:]))

    def is_cached(self, size: int) -> bool:
        with self._lock:
            return self._bucket_index(max(size, 1)) in self._noise

    @staticmethod
    def _bucket_index(size: int) -> int:
        return int(math.log2(size) * _BUCKETS_PER_OCTAVE)

    def _template(self, bucket: int) -> _Noise:
        with self._lock:
            found = self._noise.get(bucket)
            if found is not None:
                self._noise.move_to_end(bucket)
                return found
        built = _Noise.build(int(2 ** (bucket / _BUCKETS_PER_OCTAVE)))  # outside the lock: may take a while
        with self._lock:
            template = self._noise.setdefault(bucket, built)
            self._noise.move_to_end(bucket)
            held = sum(len(t.prefix) for t in self._noise.values())
            while held > self.cache_bytes and len(self._noise) > 1:
                _, evicted = self._noise.popitem(last=False)
                held -= len(evicted.prefix)
            return template
