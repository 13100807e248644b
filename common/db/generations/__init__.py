"""The `generations` table: SQL as named constants and typed functions over them, by what they do: the record
(`record.py`), creating one within quota (`creation.py`), its state changes (`transitions.py`), reads and
deletion (`reads.py`). Callers use this package's names.

Functions never commit: the caller owns the transaction. Every state change is a conditional UPDATE whose
WHERE clause encodes the state machine, so concurrent or repeated deliveries cannot move a terminal
generation or regress one, whatever the interleaving. Each change a client may have asked to be told of
(`processing`, terminal) records its webhook deliveries in the same statement (`outbox.recorded`); a create
that Skytells refused (`FAIL_SUBMISSION`) was never accepted, so it tells no one.
"""

from common.db.generations.creation import (
    EXPIRE_UNSUBMITTED,
    FAIL_SUBMISSION,
    INSERT_WITHIN_QUOTA,
    LOCK_USER,
    MARK_SUBMIT_TIMED_OUT,
    UNANSWERED_ERROR,
    expire_unsubmitted,
    fail_submission,
    insert_within_quota,
    lock_user,
    mark_submit_timed_out,
)
from common.db.generations.reads import (
    DELETE_FINISHED,
    EXISTS,
    GET_BY_IDEMPOTENCY_KEY,
    GET_BY_PREDICTION_ID,
    GET_FOR_USER,
    LIST_FOR_USER,
    delete_finished,
    exists,
    get_by_idempotency_key,
    get_by_prediction_id,
    get_for_user,
    list_for_user,
)
from common.db.generations.record import Generation
from common.db.generations.transitions import (
    ATTACH_LATE_OUTPUTS,
    BIND_PREDICTION,
    MARK_ENDED,
    MARK_PROCESSING,
    MARK_SUCCEEDED,
    NO_METRICS,
    SET_METRICS,
    SET_PREDICTION,
    Metrics,
    attach_late_outputs,
    bind_prediction,
    mark_ended,
    mark_processing,
    mark_succeeded,
    set_metrics,
    set_prediction,
)

__all__ = [
    "ATTACH_LATE_OUTPUTS",
    "BIND_PREDICTION",
    "DELETE_FINISHED",
    "EXISTS",
    "EXPIRE_UNSUBMITTED",
    "FAIL_SUBMISSION",
    "GET_BY_IDEMPOTENCY_KEY",
    "GET_BY_PREDICTION_ID",
    "GET_FOR_USER",
    "Generation",
    "INSERT_WITHIN_QUOTA",
    "LIST_FOR_USER",
    "LOCK_USER",
    "MARK_ENDED",
    "MARK_PROCESSING",
    "MARK_SUBMIT_TIMED_OUT",
    "MARK_SUCCEEDED",
    "Metrics",
    "NO_METRICS",
    "SET_METRICS",
    "SET_PREDICTION",
    "UNANSWERED_ERROR",
    "attach_late_outputs",
    "bind_prediction",
    "delete_finished",
    "exists",
    "expire_unsubmitted",
    "fail_submission",
    "get_by_idempotency_key",
    "get_by_prediction_id",
    "get_for_user",
    "insert_within_quota",
    "list_for_user",
    "lock_user",
    "mark_ended",
    "mark_processing",
    "mark_submit_timed_out",
    "mark_succeeded",
    "set_metrics",
    "set_prediction",
]
