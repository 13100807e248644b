"""JPEG and WebP outputs: encoded by Pillow once per size, format and tint, labelled per output in place.

Pillow writes a fixed-length placeholder into the image's comment (JPEG `COM` segment, WebP `XMP` chunk); each
output is the shared bytes before and after it around a label of exactly that length, so no segment length or
RIFF size changes and every output is an image Pillow (or any decoder) opens.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from devstack.skytells.output import Output, digest_of

TINTS = 4  # colourings of a size and format; which one an output gets follows from its label
LABEL_BYTES = 64  # a SHA-256 in hex
_PLACEHOLDER = b"#" * LABEL_BYTES
_TYPES = {"jpeg": ("jpg", "image/jpeg"), "webp": ("webp", "image/webp")}
_COLOURS = ((230, 120, 40), (40, 140, 220), (60, 180, 90), (200, 60, 160))


class Encoded:
    def __init__(self, width: int, height: int, fmt: str, tint: int) -> None:
        self.extension, self.content_type = _TYPES[fmt]
        shade = Image.linear_gradient("L").resize((width, height))
        picture = Image.merge(
            "RGB", [shade.point(lambda v, c=channel: (v * c) // 255) for channel in _COLOURS[tint % len(_COLOURS)]]
        )
        buffer = io.BytesIO()
        if fmt == "jpeg":
            picture.save(buffer, "JPEG", quality=85, comment=_PLACEHOLDER)
        else:
            picture.save(buffer, "WEBP", quality=80, xmp=_PLACEHOLDER)
        data = buffer.getvalue()
        at = data.index(_PLACEHOLDER)
        self.head, self.tail = data[:at], data[at + LABEL_BYTES :]
        self.state = hashlib.sha256(self.head)

    def make(self, label: str) -> Output:
        tag = hashlib.sha256(label.encode()).hexdigest().encode()
        parts = (self.head, tag, self.tail)
        size = len(self.head) + LABEL_BYTES + len(self.tail)
        return Output(parts, size, digest_of(self.state, parts[1:]), self.extension, self.content_type)
