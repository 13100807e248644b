"""Real image outputs, made once per size and format and varied cheaply per prediction.

Drawing pixels in Python per prediction made the simulator the bottleneck of every measurement. Instead the
bulk of an image is built once per size and format and shared; what makes each output distinct is a few hundred
bytes built per prediction:
- a PNG (the default format) is a gradient in indexed colour of the asked size: the shared pixel data holds
  palette indices, and each output gets its own palette (`PLTE`, derived from its label) and a `tEXt` chunk
  naming it;
- a JPEG or WebP is encoded by Pillow once per size, format and one of a few tints, with a fixed-length
  placeholder in its comment (JPEG `COM` segment, WebP `XMP` chunk), which each output replaces by its own
  label of the same length: no length or checksum changes, so the bytes stay a valid image (`encoded.py`);
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
from dataclasses import dataclass
from typing import Any

from devstack.skytells.encoded import TINTS, Encoded
from devstack.skytells.output import Output, digest_of

SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_KEYWORD = b"Comment\x00"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_CHUNK_OVERHEAD = 12  # length, type, CRC
_CACHE_BYTES = 256 * 1024 * 1024  # noise templates kept beyond the one in use
_PAD = b" " * (8 * 1024 * 1024)  # padding of a tEXt chunk is sliced from here, never built per output
_BUCKETS_PER_OCTAVE = 8
_PICTURES_KEPT = 48  # size, format and tint templates kept (a 2048 x 2048 one holds a few hundred KiB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header(width: int, height: int, colour_type: int) -> bytes:
    return SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))


def _text_chunk(label: bytes, pad: int) -> tuple[bytes | memoryview, ...]:
    """A `tEXt` chunk carrying `label` then `pad` spaces, its CRC computed over the shared padding slice."""
    padding = memoryview(_PAD)[:pad] if pad <= len(_PAD) else memoryview(b" " * pad)
    data_head = TEXT_KEYWORD + label
    crc = zlib.crc32(padding, zlib.crc32(b"tEXt" + data_head))
    return (struct.pack(">I", len(data_head) + pad) + b"tEXt" + data_head, padding, struct.pack(">I", crc))


class _Gradient:
    """A PNG of one size: shared palette indices, a palette and a label per output."""

    def __init__(self, width: int, height: int) -> None:
        # A diagonal gradient: each row is the one above shifted by a pixel, sliced from one line of indices.
        line = bytes((i // 2) & 255 for i in range(width + height))
        rows = b"".join(b"\x00" + line[y : y + width] for y in range(height))
        self.head = _header(width, height, 3)
        self.body = _chunk(b"IDAT", zlib.compress(rows, 6))

    def make(self, label: str) -> Output:
        key = hashlib.sha256(label.encode()).digest()
        r0, g0, b0 = key[0], key[1], key[2]
        palette = bytes(value & 255 for i in range(256) for value in (r0 + i, g0 + i // 2, b0 + 255 - i))
        parts = (self.head, _chunk(b"PLTE", palette), self.body, *_text_chunk(label.encode()[:512], 0), _IEND)
        return Output(parts, sum(len(p) for p in parts), digest_of(hashlib.sha256(), parts))


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
        self.cache_bytes = cache_bytes
        self._noise: OrderedDict[int, _Noise] = OrderedDict()
        self._pictures: OrderedDict[tuple[int, int, str, int], _Gradient | Encoded] = OrderedDict()
        self._lock = threading.Lock()

    def picture(self, width: int, height: int, fmt: str, label: str) -> Output:
        """An image of exactly this size and format (`png`, `jpeg` or `webp`), distinct per label and the same
        for the same label."""
        tint = hashlib.sha256(label.encode()).digest()[0] % TINTS if fmt != "png" else 0
        key = (width, height, fmt, tint)
        with self._lock:
            template = self._pictures.get(key)
            if template is not None:
                self._pictures.move_to_end(key)
        if template is None:
            template = _Gradient(width, height) if fmt == "png" else Encoded(width, height, fmt, tint)
            with self._lock:
                template = self._pictures.setdefault(key, template)
                while len(self._pictures) > _PICTURES_KEPT:
                    self._pictures.popitem(last=False)
        return template.make(label)

    def is_built(self, width: int, height: int, fmt: str) -> bool:
        with self._lock:
            return any(key[:3] == (width, height, fmt) for key in self._pictures)

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
        return Output(parts, len(template.prefix) + tail + pad, digest_of(template.state, parts[1:]))

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
