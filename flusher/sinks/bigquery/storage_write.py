"""BigQuery Storage Write API mode (``mode = "storage_write"``): gRPC appends, exactly-once.

Why this mode: about half insertAll's price per GB, no 1 KB minimum per row,
and the first 2 TiB a month are free (see :mod:`oceanus.cost`).

Exactly-once with a COMMITTED write stream and explicit offsets
---------------------------------------------------------------
A batch *reserves* a run of offsets on a write stream: row ``k`` of the
batch's pending rows goes to ``offset + k``. The reservation (stream name,
first offset, first row, request-size cap, rows refused so far) is written to
the batch's :class:`WriteState` **before** the first append, so a retry - by
this writer or by another flusher after a crash - re-sends every row at the
very offset it had. BigQuery then refuses what it already holds with
ALREADY_EXISTS, which is treated as written: no row twice, none lost.

Invariants that make this hold:

- one appender per stream tail: a writer reserves offsets only on a stream it
  opened itself, and only after the previous batch on it fully succeeded; a
  batch that failed half-way keeps its reservation and its stream is never
  handed to another batch (the next batch opens a new stream);
- a resumed reservation is never adopted as this writer's own stream;
- requests are cut at the same row boundaries on every attempt (the cap is
  in the reservation), so each append is all-or-nothing at a known offset.

Stream-level errors (finalized, not found, expired, schema mismatch, offset
out of range) move the rest of the batch to a new stream: the new reservation
is persisted and the write raises a transient error, so the rest is appended
by the worker's next attempt (the writer never retries by itself). When the batch may
have appended to the old stream before (a resumed reservation), the old stream
is *sealed* first with FinalizeWriteStream, whose row count says exactly which
offsets hold rows - and which fences off a flusher presumed dead that is in
fact still appending. Only if the old stream is gone entirely (expired after
days) is the rest re-sent without that proof: at-least-once, logged, and the
``_dedup`` view removes any duplicate by ``event_id``.

``write_stream = "default"`` appends to the table's ``_default`` stream
without offsets: at-least-once, simpler, no stream to manage.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from flusher.sinks.base import Batch, WriteResult, WriteState
from flusher.sinks.bigquery.errors import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    OUT_OF_RANGE,
    classify_grpc,
    grpc_code,
)
from flusher.sinks.common import (
    arrow_types,
    column_type,
    decode_refused,
    encode_refused,
    event_id_text,
    progress_mark,
    read_progress,
    refused_rows,
)
from oceanus.config import BIGQUERY_MAX_REQUEST_BYTES, StreamConfig
from oceanus.errors import Reason, SinkError, TransientError

if TYPE_CHECKING:
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient, types

    from flusher.sinks.bigquery import BigQuerySink

log = logging.getLogger("oceanus.flusher.bigquery")

#: WriteState keys. ``write_stream``/``offset`` name the reservation; ``sw_plan``
#: is ``<batch_id>:<rows>:<first row>:<request cap bytes>``; ``sw_rejected`` is
#: the JSON list of ``[row, reason]`` refused so far (never re-sent).
STATE_STREAM = "write_stream"
STATE_OFFSET = "offset"
STATE_PLAN = "sw_plan"
STATE_REJECTED = "sw_rejected"
#: ``_default`` stream progress: ``<batch_id>:<rows>:<rows done>``.
STATE_DEFAULT_DONE = "sw_default_done"

#: Request bytes besides the rows: the writer schema, stream name, framing.
REQUEST_OVERHEAD_BYTES = 64 * 1024
#: Per proto row: the repeated-bytes tag and length varint.
PROTO_ROW_OVERHEAD_BYTES = 6

#: Words of FAILED_PRECONDITION / INVALID_ARGUMENT messages that are about the
#: write stream rather than the rows (BigQuery's StorageError codes say the same).
_STREAM_GONE_WORDS = ("finalized", "expired", "schema", "extra field", "invalid stream", "stream not found")


class _StreamGone(Exception):
    """The write stream cannot take this append (finalized, missing, schema, offset gap)."""


class _RowsRefused(Exception):
    """The request was refused for some of its rows (indexes relative to the request)."""

    def __init__(self, errors: dict[int, str]) -> None:
        super().__init__(f"{len(errors)} rows refused")
        self.errors = errors


# --------------------------------------------------------------------------- encoders


class _Encoder:
    """Rows of one stream config -> AppendRowsRequest payloads. Built once per column layout."""

    def __init__(self, stream: StreamConfig, columns: Sequence[str], fmt: str) -> None:
        self.columns = tuple(columns)
        # event_id is its own kind: raw bytes in the frame, hex text in the table.
        self.kinds = tuple("event_id" if c == "event_id" else column_type(stream, c) for c in self.columns)
        self.fmt = fmt
        digest = hashlib.sha1(repr((self.columns, self.kinds)).encode()).hexdigest()[:12]
        #: Changes with the column layout: a write stream opened for one layout
        #: is not reused for another (reopen with the new schema).
        self.signature = f"{fmt}:{digest}"
        if fmt == "arrow":
            self._init_arrow()
        else:
            self._init_proto(stream.name, digest)

    # ----------------------------------------------------------------- proto

    def _init_proto(self, name: str, digest: str) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fd = descriptor_pb2.FieldDescriptorProto
        proto_type = {
            "event_id": fd.TYPE_STRING,  # 32 hex digits, as in the other modes
            "string": fd.TYPE_STRING,
            "json": fd.TYPE_STRING,
            "int": fd.TYPE_INT64,
            "timestamp": fd.TYPE_INT64,  # TIMESTAMP as int64 microseconds since the epoch
            "float": fd.TYPE_DOUBLE,
            "bool": fd.TYPE_BOOL,
        }
        file_proto = descriptor_pb2.FileDescriptorProto(
            name=f"oceanus_{name}_{digest}.proto", package=f"oceanus_{digest}", syntax="proto2"
        )
        message = file_proto.message_type.add(name="Row")
        for number, (column, kind) in enumerate(zip(self.columns, self.kinds, strict=True), start=1):
            message.field.add(name=column, number=number, label=fd.LABEL_OPTIONAL, type=proto_type[kind])
        # A private pool: the same message name for another layout must not clash.
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file_proto)
        self._message = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"oceanus_{digest}.Row"))
        self.descriptor = message
        self._converters: tuple[Callable[[Any], Any] | None, ...] = tuple(
            event_id_text if kind == "event_id" else None for kind in self.kinds
        )

    def proto_rows(self, rows: Sequence[Sequence[Any]]) -> list[bytes]:
        names = self.columns
        convs = self._converters
        cls = self._message
        out: list[bytes] = []
        for row in rows:
            values = {
                name: (conv(v) if conv is not None else v)
                for name, conv, v in zip(names, convs, row, strict=False)
                if v is not None
            }
            out.append(cls(**values).SerializeToString())
        return out

    # ----------------------------------------------------------------- arrow

    def _init_arrow(self) -> None:
        import pyarrow as pa

        arrow_type: dict[str, pa.DataType] = {str(k): t for k, t in arrow_types("UTC").items()}
        arrow_type["event_id"] = pa.string()
        self.arrow_schema = pa.schema([(c, arrow_type[k]) for c, k in zip(self.columns, self.kinds, strict=True)])
        self.serialized_schema: bytes = self.arrow_schema.serialize().to_pybytes()

    def arrow_batch(self, rows: Sequence[Sequence[Any]]) -> bytes:
        import pyarrow as pa

        arrays = []
        for j, (kind, field) in enumerate(zip(self.kinds, self.arrow_schema, strict=True)):
            values = [r[j] for r in rows]
            if kind == "event_id":
                values = [event_id_text(v) if v is not None else None for v in values]
            arrays.append(pa.array(values, type=field.type))
        batch = pa.record_batch(arrays, schema=self.arrow_schema)
        return bytes(batch.serialize().to_pybytes())


# --------------------------------------------------------------------------- plans


class _Chunk(msgspec.Struct, frozen=True):
    """One AppendRows request: batch rows ``rows`` at ``offset`` (None on ``_default``)."""

    rows: tuple[int, ...]
    offset: int | None
    payload: bytes | list[bytes]


def _greedy(sizes: Sequence[int], cap: int) -> list[tuple[int, int]]:
    """Cut ``sizes`` into [lo, hi) runs of at most ``cap`` bytes (a lone row may exceed it)."""
    runs: list[tuple[int, int]] = []
    lo = 0
    while lo < len(sizes):
        hi, total = lo, 0
        while hi < len(sizes) and (hi == lo or total + sizes[hi] <= cap):
            total += sizes[hi]
            hi += 1
        runs.append((lo, hi))
        lo = hi
    return runs


class _Reservation(msgspec.Struct, kw_only=True):
    """Where a batch's rows go; mirrored in the WriteState before any append."""

    stream: str
    offset: int
    first_row: int
    cap: int
    rejected: dict[int, str]
    resumed: bool = False

    def pending(self, n: int) -> list[int]:
        return [i for i in range(self.first_row, n) if i not in self.rejected]

    def save(self, batch: Batch, state: WriteState) -> None:
        state.set(
            **{
                STATE_STREAM: self.stream,
                STATE_OFFSET: str(self.offset),
                STATE_PLAN: progress_mark(batch, self.first_row, self.cap),
                STATE_REJECTED: encode_refused(self.rejected),
            }
        )

    @classmethod
    def load(cls, batch: Batch, state: WriteState) -> _Reservation | None:
        stream = state.get(STATE_STREAM)
        offset = state.get(STATE_OFFSET)
        # A reservation of another batch (a split half, a new claim) is not ours.
        plan = read_progress(batch, state.get(STATE_PLAN), 2)
        if plan is None or not stream or offset is None:
            return None
        try:
            return cls(
                stream=stream,
                offset=int(offset),
                first_row=int(plan[0]),
                cap=int(plan[1]),
                rejected=decode_refused(state.get(STATE_REJECTED)),
                resumed=True,
            )
        except ValueError:
            return None


class _OwnStream(msgspec.Struct):
    """A COMMITTED stream this writer opened; ``next_offset`` is its committed length."""

    name: str
    next_offset: int
    signature: str


# --------------------------------------------------------------------------- writer


class StorageWriter:
    """``mode = "storage_write"`` through ``sink`` (see the module docstring)."""

    def __init__(self, sink: BigQuerySink) -> None:
        self.sink = sink
        self.settings = sink.config.sink.bigquery
        self.timeout_s = self.settings.timeout_s
        self.cap = min(self.settings.max_request_bytes, BIGQUERY_MAX_REQUEST_BYTES) - REQUEST_OVERHEAD_BYTES
        self._client: BigQueryWriteClient | None = None
        self._encoders: dict[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], _Encoder] = {}
        self._own: dict[str, _OwnStream] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # ----------------------------------------------------------------- plumbing

    @property
    def client(self) -> BigQueryWriteClient:
        if self._client is None:
            from google.cloud.bigquery_storage_v1 import BigQueryWriteClient

            endpoint = self.settings.grpc_endpoint
            if endpoint:
                import grpc
                from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
                    BigQueryWriteGrpcTransport,
                )

                # An explicit endpoint is an emulator or a local proxy: plaintext.
                channel = grpc.insecure_channel(endpoint)
                self._client = BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))  # type: ignore[no-untyped-call]
            else:
                self._client = BigQueryWriteClient()  # type: ignore[no-untyped-call]
        return self._client

    def _parent(self, stream: StreamConfig) -> str:
        project, dataset, table = self.sink.table_id(stream).split(".")
        return f"projects/{project}/datasets/{dataset}/tables/{table}"

    def _encoder(self, batch: Batch) -> _Encoder:
        stream = batch.stream
        key = (stream.name, batch.columns, tuple((k, f.type) for k, f in stream.fields.items()))
        enc = self._encoders.get(key)
        if enc is None:
            enc = _Encoder(batch.stream, batch.columns, self.settings.write_format)
            self._encoders[key] = enc
        return enc

    def _lock(self, parent: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(parent, threading.Lock())

    def _plan(self, enc: _Encoder, batch: Batch, rows: list[int], offset: int | None, cap: int) -> list[_Chunk]:
        """Cut ``rows`` into requests under ``cap``; the same rows and cap give the same cuts."""
        chunks: list[_Chunk] = []
        pos = 0
        if enc.fmt == "proto":
            blobs = enc.proto_rows([batch.rows[i] for i in rows])
            for lo, hi in _greedy([len(b) + PROTO_ROW_OVERHEAD_BYTES for b in blobs], cap):
                at = None if offset is None else offset + lo
                chunks.append(_Chunk(tuple(rows[lo:hi]), at, blobs[lo:hi]))
            return chunks
        parts = 1
        while pos < len(rows):
            # Arrow sizes are known per request only: halve until every part fits.
            size = math.ceil((len(rows) - pos) / parts)
            hi = min(len(rows), pos + size)
            payload = enc.arrow_batch([batch.rows[i] for i in rows[pos:hi]])
            if len(payload) > cap and hi - pos > 1:
                parts *= 2
                continue
            chunks.append(_Chunk(tuple(rows[pos:hi]), None if offset is None else offset + pos, payload))
            pos = hi
        return chunks

    def _request(self, enc: _Encoder, name: str, chunk: _Chunk) -> types.AppendRowsRequest:
        from google.cloud.bigquery_storage_v1 import types

        # Every request names its stream: bqemulator needs it, and it costs BigQuery nothing.
        kwargs: dict[str, Any] = {"write_stream": name}
        if chunk.offset is not None:
            kwargs["offset"] = chunk.offset
        if enc.fmt == "proto":
            assert isinstance(chunk.payload, list)
            kwargs["proto_rows"] = types.AppendRowsRequest.ProtoData(
                writer_schema=types.ProtoSchema(proto_descriptor=enc.descriptor),
                rows=types.ProtoRows(serialized_rows=chunk.payload),
            )
        else:
            assert isinstance(chunk.payload, bytes)
            kwargs["arrow_rows"] = types.AppendRowsRequest.ArrowData(
                writer_schema=types.ArrowSchema(serialized_schema=enc.serialized_schema),
                rows=types.ArrowRecordBatch(serialized_record_batch=chunk.payload),
            )
        return types.AppendRowsRequest(**kwargs)

    def _append(self, enc: _Encoder, name: str, chunk: _Chunk) -> bool:
        """Append one request. True: stored now; False: the offset already held it (ALREADY_EXISTS)."""
        from google.api_core import exceptions as gexc

        request = self._request(enc, name, chunk)
        try:
            responses = list(
                self.client.append_rows(
                    iter([request]),
                    # One attempt: the flusher's worker retries (the library's own retry hides time).
                    retry=None,
                    timeout=self.timeout_s,
                    metadata=(("x-goog-request-params", f"write_stream={name}"),),
                )
            )
        except gexc.GoogleAPICallError as exc:
            return self._outcome(grpc_code(exc), str(exc.message), [], name)
        except Exception as exc:
            raise TransientError(f"AppendRows to {name}: {type(exc).__name__}: {exc}", Reason.CONNECTION) from exc
        if not responses:
            raise TransientError(f"AppendRows to {name}: no response")
        resp = responses[0]
        row_errors = [(int(e.index), str(e.message)) for e in resp.row_errors]
        return self._outcome(int(resp.error.code), str(resp.error.message), row_errors, name)

    @staticmethod
    def _outcome(code: int, message: str, row_errors: list[tuple[int, str]], name: str) -> bool:
        """What one append's status means for this writer; anything it cannot route is classified."""
        lowered = message.lower()
        if code == 0:
            return True
        if code == ALREADY_EXISTS:
            return False
        if row_errors:
            raise _RowsRefused({i: f"invalid: {m}" for i, m in row_errors})
        table_missing = code == NOT_FOUND and lowered.startswith("table")
        if code == OUT_OF_RANGE or (code == NOT_FOUND and not table_missing):
            raise _StreamGone(message)
        if code in (FAILED_PRECONDITION, INVALID_ARGUMENT) and any(w in lowered for w in _STREAM_GONE_WORDS):
            raise _StreamGone(message)
        raise classify_grpc(code, f"AppendRows to {name}: gRPC {code} {message}")

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except gexc.GoogleAPICallError as exc:
            code = grpc_code(exc)
            raise classify_grpc(code, f"{what}: gRPC {code} {exc.message}") from exc
        except Exception as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}", Reason.CONNECTION) from exc

    def _open_stream(self, parent: str) -> str:
        from google.cloud.bigquery_storage_v1 import types

        stream = self._call(
            f"CreateWriteStream on {parent}",
            lambda: self.client.create_write_stream(
                parent=parent,
                write_stream=types.WriteStream(type_=types.WriteStream.Type.COMMITTED),
                retry=None,
                timeout=self.timeout_s,
            ),
        )
        return str(stream.name)

    def _seal(self, name: str) -> int | None:
        """Finalize ``name``; its row count, or None when the stream is gone."""
        from google.api_core import exceptions as gexc

        try:
            resp = self.client.finalize_write_stream(name=name, retry=None, timeout=self.timeout_s)
        except (gexc.NotFound, gexc.InvalidArgument):
            return None
        except gexc.GoogleAPICallError as exc:
            raise TransientError(f"FinalizeWriteStream {name}: {exc.message}") from exc
        return int(resp.row_count)

    # ----------------------------------------------------------------- write

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        if not batch.rows:
            return WriteResult(written=0)
        parent = self._parent(batch.stream)
        enc = self._encoder(batch)
        if self.settings.write_stream == "default":
            rejected = self._write_default(batch, state, enc, parent)
        else:
            with self._lock(parent):
                rejected = self._write_committed(batch, state, enc, parent)
        return WriteResult(written=len(batch.rows) - len(rejected), rejected=refused_rows(rejected))

    def _write_committed(self, batch: Batch, state: WriteState, enc: _Encoder, parent: str) -> dict[int, str]:
        n = len(batch.rows)
        res = _Reservation.load(batch, state)
        if res is None:
            res = self._reserve(batch, state, enc, parent, first_row=0, rejected={})
        try:
            self._append_reserved(batch, state, enc, parent, res)
        except _StreamGone as gone:
            moved = self._move(batch, state, enc, parent, res, gone)
            if moved.first_row >= n:
                return moved.rejected  # the old stream held every row: nothing moves
            # The rest goes to the new stream on the worker's next attempt, which resumes
            # the reservation just persisted; meanwhile no other batch may take that tail.
            self._drop_own(parent, moved.stream)
            raise TransientError(
                f"write stream {res.stream} cannot take batch {batch.batch_id} ({gone}); rows {moved.first_row}.. "
                f"move to {moved.stream} on the next attempt"
            ) from None
        except BaseException:
            # Whatever failed, this batch keeps its reservation: its stream
            # must not take another batch's rows at those offsets.
            self._drop_own(parent, res.stream)
            raise
        own = self._own.get(parent)
        if own is not None and own.name == res.stream and not res.resumed:
            own.next_offset = res.offset + len(res.pending(n))
        return res.rejected

    def _reserve(
        self, batch: Batch, state: WriteState, enc: _Encoder, parent: str, *, first_row: int, rejected: dict[int, str]
    ) -> _Reservation:
        """Reserve offsets for rows ``first_row..`` on this writer's own stream and persist it first."""
        own = self._own.get(parent)
        if own is None or own.signature != enc.signature:
            # First batch, or the stream config's columns changed: a new stream
            # takes the table's current schema.
            own = _OwnStream(self._open_stream(parent), 0, enc.signature)
            self._own[parent] = own
        res = _Reservation(
            stream=own.name, offset=own.next_offset, first_row=first_row, cap=self.cap, rejected=dict(rejected)
        )
        res.save(batch, state)
        return res

    def _drop_own(self, parent: str, name: str) -> None:
        """A batch failed half-way on ``name``: it keeps the tail, so no other batch may use it."""
        own = self._own.get(parent)
        if own is not None and own.name == name:
            del self._own[parent]

    def _append_reserved(self, batch: Batch, state: WriteState, enc: _Encoder, parent: str, res: _Reservation) -> None:
        while True:
            pending = res.pending(len(batch.rows))
            chunks = self._plan(enc, batch, pending, res.offset, res.cap)
            refused: dict[int, str] | None = None
            for chunk in chunks:
                if len(chunk.rows) == 1 and _payload_size(chunk) > res.cap:
                    refused = {
                        0: f"too_large: row of {_payload_size(chunk)} bytes exceeds the request cap "
                        f"({res.cap} bytes, from sink.bigquery.max_request_bytes)"
                    }
                else:
                    try:
                        self._append(enc, res.stream, chunk)
                    except _RowsRefused as exc:
                        refused = exc.errors
                    else:
                        # Stored (now or by an earlier attempt): known for the
                        # rest of this call, so a move after a later failure
                        # does not re-send it. The state keeps the original
                        # reservation, whose cuts a retry repeats.
                        res.first_row, res.offset = chunk.rows[-1] + 1, res.offset + len(chunk.rows)
                        continue
                # Nothing of this request was stored: re-reserve from its first
                # row, at its offset, without the refused rows.
                assert chunk.offset is not None
                res.rejected.update({chunk.rows[i]: reason for i, reason in refused.items() if i < len(chunk.rows)})
                res.first_row, res.offset = chunk.rows[0], chunk.offset
                res.save(batch, state)
                break
            if refused is None:
                return

    def _move(
        self, batch: Batch, state: WriteState, enc: _Encoder, parent: str, res: _Reservation, gone: _StreamGone
    ) -> _Reservation:
        """Rows of ``res`` not yet in its stream go to a new stream of this writer."""
        self._drop_own(parent, res.stream)
        pending = res.pending(len(batch.rows))
        stored = self._seal(res.stream)
        if stored is None:
            if res.resumed:
                log.warning(
                    "write stream %s is gone (%s); re-sending batch %s rows %d.. without proof they were not "
                    "stored: duplicates, if any, share their event_id",
                    res.stream,
                    gone,
                    batch.batch_id,
                    res.first_row,
                )
            done = 0
        else:
            done = min(max(stored - res.offset, 0), len(pending))
        log.info(
            "write stream %s: %s; rows %d of batch %s already stored, the rest moves to a new stream",
            res.stream,
            gone,
            done,
            batch.batch_id,
        )
        if done == len(pending):
            res.first_row, res.offset = len(batch.rows), res.offset + done
            return res
        first_row = pending[done]
        # A new stream of ours, opened now: its schema is the table's current one.
        self._own.pop(parent, None)
        return self._reserve(batch, state, enc, parent, first_row=first_row, rejected=res.rejected)

    # ----------------------------------------------------------------- _default

    def _write_default(self, batch: Batch, state: WriteState, enc: _Encoder, parent: str) -> dict[int, str]:
        """At-least-once: progress is kept so a retry skips the requests already stored."""
        name = f"{parent}/streams/_default"
        n = len(batch.rows)
        done = 0
        rejected: dict[int, str] = {}
        mark = read_progress(batch, state.get(STATE_DEFAULT_DONE), 1)
        if mark is not None:
            done = int(mark[0])
            rejected = decode_refused(state.get(STATE_REJECTED))
        while True:
            pending = [i for i in range(done, n) if i not in rejected]
            if not pending:
                return rejected
            chunk = self._plan(enc, batch, pending, None, self.cap)[0]
            if len(chunk.rows) == 1 and _payload_size(chunk) > self.cap:
                rejected[chunk.rows[0]] = f"too_large: row exceeds the request cap ({self.cap} bytes)"
            else:
                try:
                    self._append(enc, name, chunk)
                    done = chunk.rows[-1] + 1
                except _RowsRefused as exc:
                    rejected.update({chunk.rows[i]: r for i, r in exc.errors.items() if i < len(chunk.rows)})
                except _StreamGone as gone:
                    raise TransientError(f"AppendRows to {name}: {gone}") from None
            state.set(**{STATE_DEFAULT_DONE: progress_mark(batch, done), STATE_REJECTED: encode_refused(rejected)})

    def close(self) -> None:
        own, self._own = list(self._own.values()), {}
        if self._client is None:
            return
        for stream in own:
            # Tidy, not needed for correctness: a finalized stream takes no more appends.
            with contextlib.suppress(SinkError):
                self._seal(stream.name)
        self._client.transport.close()  # type: ignore[no-untyped-call]
        self._client = None


def _payload_size(chunk: _Chunk) -> int:
    if isinstance(chunk.payload, bytes):
        return len(chunk.payload)
    return sum(len(b) + PROTO_ROW_OVERHEAD_BYTES for b in chunk.payload)
