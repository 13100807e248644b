"""The `.env` docker compose reads, written from `.env.example` with a fresh random value on each empty line.

Compose refuses to start while a secret is unset and the repository holds no usable one, so `make up` needs
secrets that exist nowhere else: this makes them. An existing `.env` is never touched. Standard library only:
`make up` runs it before any virtual environment exists.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fill(template: str) -> str:
    """`template` with every `NAME=` line given 32 random bytes in hex (letters and digits: safe inside URLs)."""
    lines = []
    for line in template.splitlines():
        name, sep, value = line.partition("=")
        if sep and not value and name.isidentifier():
            line = f"{name}={secrets.token_hex(32)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write(example: Path, target: Path) -> bool:
    """Write `target` from `example` unless it exists; True when written. Readable by its owner only."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(fill(example.read_text()))
    return True


def main() -> None:
    target = ROOT / ".env"
    if write(ROOT / ".env.example", target):
        sys.stdout.write(f"wrote {target} with random secrets (the simulator's profile is on: see the file)\n")


if __name__ == "__main__":
    main()
