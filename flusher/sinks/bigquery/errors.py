"""BigQuery's classifier: a client-library failure -> one oceanus error with a :class:`Reason`.

Only classifies: what to do next (back off, split, dead-letter) is the
flusher's worker's decision. REST (insertAll, load jobs, table sync) and gRPC
(the Storage Write API) answers are mapped to the same reasons.
"""

from __future__ import annotations

from typing import Any

from oceanus.errors import PayloadTooLarge, PermanentError, Reason, SinkError, TransientError

#: insertAll per-row reasons that say "this row was fine, send it again":
#: ``stopped`` marks rows refused only because another row of the request was
#: invalid (skipInvalidRows=false); the others are transient service errors.
RETRY_ROW_REASONS = frozenset({"stopped", "backendError", "internalError", "timeout", "rateLimitExceeded"})
#: Load-job error reasons that say "the service failed, the data may be fine".
RETRY_JOB_REASONS = frozenset({"backendError", "internalError", "rateLimitExceeded", "quotaExceeded", "timeout"})

#: Permanent HTTP statuses with a reason of their own (anything else 4xx is ``invalid``).
_HTTP_PERMANENT = {401: Reason.AUTH, 403: Reason.AUTH, 404: Reason.NOT_FOUND}

# gRPC status codes (google.rpc.Code), as carried by AppendRowsResponse.error.
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16
_GRPC_TRANSIENT = {
    DEADLINE_EXCEEDED: Reason.TIMEOUT,
    ABORTED: Reason.SERVER,
    INTERNAL: Reason.SERVER,
    UNAVAILABLE: Reason.CONNECTION,
    RESOURCE_EXHAUSTED: Reason.THROTTLED,
}


def _reasons(exc: BaseException) -> set[str]:
    errors = getattr(exc, "errors", None) or ()
    return {str(e.get("reason", "")) for e in errors if isinstance(e, dict)}


def classify(exc: BaseException, what: str) -> SinkError:
    """Wrap a REST client-library exception into the oceanus hierarchy (see the Sink protocol)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, gexc.RetryError) and exc.cause is not None:
        # A bounded library retry gave up (table sync): classify what it last saw.
        return classify(exc.cause, what)
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return TransientError(f"{what}: BigQuery did not answer in time ({exc})", Reason.TIMEOUT)
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | auth_exc.TransportError):
        return TransientError(f"{what}: cannot reach BigQuery ({exc})", Reason.CONNECTION)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return TransientError(f"{what}: connection broken mid-response ({exc})", Reason.CONNECTION)
    if isinstance(exc, gexc.GoogleAPICallError):
        code = int(exc.code or 0)
        reasons = _reasons(exc)
        message = f"{what}: HTTP {code} {exc.message}"
        if code == 413 or "payload size exceeds" in str(exc.message).lower():
            return PayloadTooLarge(message)
        if code == 429 or reasons & {"rateLimitExceeded", "quotaExceeded"}:
            return TransientError(message, Reason.THROTTLED)
        if code >= 500 or reasons & {"backendError", "internalError", "badGateway"}:
            return TransientError(message, Reason.SERVER)
        if code == 408:
            return TransientError(message, Reason.TIMEOUT)
        if code in _HTTP_PERMANENT:
            return PermanentError(message, _HTTP_PERMANENT[code])
        return PermanentError(message, Reason.INVALID if 400 <= code < 500 else Reason.ERROR)
    return PermanentError(f"{what}: {type(exc).__name__}: {exc}", Reason.ERROR)


def grpc_code(exc: Any) -> int:
    """The numeric status of a gRPC GoogleAPICallError (0 when it has none)."""
    status = getattr(exc, "grpc_status_code", None)
    return int(status.value[0]) if status is not None else 0


def classify_grpc(code: int, where: str) -> SinkError:
    """A failed Storage Write API call (not ALREADY_EXISTS, not a stream-level error) -> its error."""
    if code in _GRPC_TRANSIENT:
        return TransientError(where, _GRPC_TRANSIENT[code])
    if code == NOT_FOUND:
        return PermanentError(where + " (run `oceanus tables sync`)", Reason.NOT_FOUND)
    if code in (PERMISSION_DENIED, UNAUTHENTICATED):
        return PermanentError(where + " (check the service account's BigQuery roles)", Reason.AUTH)
    if code == INVALID_ARGUMENT:
        return PermanentError(where, Reason.INVALID)
    return PermanentError(where, Reason.ERROR)


def row_reason(details: list[dict[str, Any]]) -> str:
    """``invalid: <message> (at <location>)`` from insertAll's per-row errors, first non-``stopped`` one."""
    real = [e for e in details if e.get("reason") != "stopped"] or details
    if not real:
        return "invalid: refused without a reason"
    e = real[0]
    text = f"{e.get('reason') or 'invalid'}: {e.get('message') or 'no message'}"
    if e.get("location"):
        text += f" (at {e['location']})"
    return text


def row_retry_reason(reasons: set[str]) -> Reason:
    """The label of an insertAll row refused as transient (``stopped`` rows were fine: ``server``)."""
    return Reason.THROTTLED if "rateLimitExceeded" in reasons else Reason.SERVER
