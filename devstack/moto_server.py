"""`python -m devstack.moto_server`: moto's S3 in server mode, whose objects survive a restart.

moto keeps everything in memory and has no persistence of its own (its request recorder replays requests, which
breaks on multipart upload ids), so this wrapper saves the buckets itself: on SIGTERM or SIGINT it stops
accepting connections, lets the requests in flight finish, then writes every bucket (objects with their
content type and metadata, the bucket policy) under `--state DIR`; at start it loads them back before it
listens. Saving is incremental: an object already saved with the same ETag is not written again. A SIGKILL loses
what changed since the last stop, and uploads still in progress (multipart) are not kept: S3's own lifecycle
rule would abort them anyway.

moto accepts a presigned URL however old it is; S3 refuses one past its `X-Amz-Expires`, and so does this
server, so that the expiry of the URLs Studio hands out can be seen locally (the signature itself is not
checked here, as moto does not check it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.s3.models import s3_backends
from werkzeug.serving import make_server

logger = logging.getLogger("devstack.moto_server")
DRAIN_S = 30.0


class _InFlight:
    """The WSGI app, counting requests in flight so a stop can wait for them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self.closing = False
        self.idle = threading.Condition()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.idle:
            if self.closing:  # a kept-alive connection asking for more after the stop began: not saved, refused
                start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Connection", "close")])
                return [b"stopping"]
            self.count += 1
        try:
            return list(self.app(environ, start_response))  # the body is built before the count drops
        finally:
            with self.idle:
                self.count -= 1
                self.idle.notify_all()

    def close(self, timeout: float) -> None:
        """Refuse new requests, then wait for those in flight."""
        with self.idle:
            self.closing = True
            self.idle.wait_for(lambda: self.count == 0, timeout)


EXPIRED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
)


def presigned_url_expired(query_string: str, now: datetime) -> bool:
    """Whether a presigned request's URL (SigV4 query parameters) is past its expiry, as S3 judges it."""
    query = parse_qs(query_string)
    date, expires = query.get("X-Amz-Date"), query.get("X-Amz-Expires")
    if not date or not expires:
        return False  # not a presigned request
    try:
        signed_at = datetime.strptime(date[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        lifetime = timedelta(seconds=int(expires[0]))
    except ValueError:
        return True  # S3 refuses a malformed one too
    return now > signed_at + lifetime


class _ExpiringPresignedUrls:
    """The WSGI app, refusing a presigned URL past its expiry as S3 does (moto serves it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if presigned_url_expired(environ.get("QUERY_STRING", ""), datetime.now(UTC)):
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [EXPIRED]
        return self.app(environ, start_response)


def _backend() -> Any:
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def save(state: Path) -> int:
    """Write every bucket under `state`; returns how many objects were written (the unchanged are skipped)."""
    written = 0
    backend = _backend()
    for name, bucket in list(backend.buckets.items()):
        folder = state / name
        (folder / "objects").mkdir(parents=True, exist_ok=True)
        index_path = folder / "index.json"
        previous = json.loads(index_path.read_text()) if index_path.exists() else {"objects": {}}
        objects: dict[str, dict[str, Any]] = {}
        for key_name, key in list(bucket.keys.items()):
            file = _file_name(key_name)
            entry = {"file": file, "etag": key.etag, "metadata": dict(key.metadata)}
            path = folder / "objects" / file
            if previous["objects"].get(key_name, {}).get("etag") != key.etag or not path.exists():
                path.with_suffix(".tmp").write_bytes(key.value)
                os.replace(path.with_suffix(".tmp"), path)
                written += 1
            objects[key_name] = entry
        for gone in set(previous["objects"]) - set(objects):
            (folder / "objects" / previous["objects"][gone]["file"]).unlink(missing_ok=True)
        policy = bucket.policy.decode() if bucket.policy else None
        index = {"region": bucket.region_name, "policy": policy, "objects": objects}
        (folder / "index.tmp").write_text(json.dumps(index))
        os.replace(folder / "index.tmp", index_path)
    return written


def load(state: Path) -> int:
    """Create the saved buckets and objects; returns how many objects were loaded."""
    loaded = 0
    backend = _backend()
    for index_path in sorted(state.glob("*/index.json")):
        name = index_path.parent.name
        index = json.loads(index_path.read_text())
        backend.create_bucket(name, index["region"])
        if index["policy"]:
            backend.put_bucket_policy(name, index["policy"].encode())
        for key_name, entry in index["objects"].items():
            value = (index_path.parent / "objects" / entry["file"]).read_bytes()
            key = backend.put_object(name, key_name, value)
            key.set_metadata(entry["metadata"], replace=True)
            loaded += 1
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--state", type=Path, help="folder the buckets are saved to and loaded from")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request costs more than the request
    if args.state is not None:
        args.state.mkdir(parents=True, exist_ok=True)
        logger.info("loaded %d objects from %s", load(args.state), args.state)
    app = _InFlight(_ExpiringPresignedUrls(DomainDispatcherApplication(create_backend_app)))
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever()
    server.socket.close()  # refuse new connections while the last requests finish
    app.close(DRAIN_S)
    if args.state is not None:
        logger.info("saved %d changed objects to %s", save(args.state), args.state)


if __name__ == "__main__":
    main()
