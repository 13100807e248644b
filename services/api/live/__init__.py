"""The API's live updates: what reaches an open stream or a waiting request when a generation changes.

- `feed`: this replica's end of `studio.updates` (its own queue into the hub, and the publisher of the API's
  own changes), as a clean-up context;
- `hub`: the replica's in-memory fan-out of updates to the inboxes that watch a generation or a user, and the
  periodic re-read that makes up for lost updates;
- `streams`: the Server-Sent Events endpoints; `sse`: their wire format and `Last-Event-ID`;
- `waiting`: `Prefer: wait` and the wait of a repeated `Idempotency-Key`.
"""
