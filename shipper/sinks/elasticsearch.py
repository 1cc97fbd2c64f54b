"""Elasticsearch ``_bulk`` sink: idempotent ``create`` with derived ids, classified errors.

Every document's ``_id`` is derived from its source file's identity and its byte offset in
that file, and every action is ``create``: a batch sent again after a crash or a lost answer
is answered 409 for the documents already there, which count as delivered. So delivery is
exactly once in the index even though it is at least once on the wire.

Errors are classified as Elasticsearch defines them (PROTOCOLS.md §1): whole-request 429,
5xx, connection errors and timeouts are retried with backoff for as long as it takes (the
log files are the buffer); 413 splits the batch; per-item 429/5xx are retried alone; other
per-item errors (mapping and parsing) go to the dead-letter file with ES's reason; 401/403
are logged loudly and retried slowly.

The official client handles connections, auth and TLS. The version in ``GET /`` decides the
REST compatibility headers, so the 9.x client talks to Elasticsearch 8 and 9 alike.
"""

import asyncio
import base64
import hashlib
import logging
import time

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, NdjsonSerializer, OrjsonSerializer, TlsError, TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from shipper.acks import AckRange
from shipper.metrics import Metrics
from shipper.sinks import Source
from shipper.sinks.delivery import Backoff, BatchingSink, PendingAck
from shipper.sinks.elasticsearch_options import ElasticsearchOptions, file_index_template, render_index

log = logging.getLogger("shipper.sinks.elasticsearch")

SUPPORTED_MAJORS = (8, 9)
# Keep per-item status and error only: successful items shrink to {"status":201}, and the
# items still line up with the actions (filtering out "status" too would drop them).
FILTER_PATH = {"filter_path": "errors,items.*.error,items.*.status"}
_ALL_SUCCEEDED = b'{"errors":false'  # how an answer under FILTER_PATH starts when no item failed
DISCOVERY_HEADERS = {"accept": "application/vnd.elasticsearch+json; compatible-with=8"}


class ElasticsearchSink(BatchingSink):
    def __init__(self, name: str, options: ElasticsearchOptions, metrics: Metrics, node_name: str = "") -> None:
        super().__init__(name, options.delivery, metrics)
        self.options = options
        self._node_name = node_name
        self._client: AsyncElasticsearch | None = None
        self._headers: dict[str, str] | None = None  # set by version discovery
        self._discovery_lock = asyncio.Lock()
        self._files: dict[str, tuple[bytes, str]] = {}  # source key -> (file id, index template)
        self._action_starts: dict[tuple[str, str], bytes] = {}  # (index template, hour) -> bytes
        self._replayed = metrics.sink_replayed.labels(sink=name)

    def _open_client(self) -> None:
        self._client = AsyncElasticsearch(list(self._delivery.endpoints), **client_options(self.options))

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.close()

    # ---- encoding (on the pipeline's loop, per chunk) -------------------------------------

    def accept(self, records: list[dict], offsets: list[int], source: Source, ack_range: AckRange) -> None:
        known = self._files.get(source.key)
        if known is None:
            template = self.options.data_stream or file_index_template(self.options.index, source.kubernetes)
            # Not the position key, which names the input too: renaming an input re-reads its
            # files, and ids from the file alone make that replay a 409 instead of duplicates.
            known = self._files[source.key] = (_file_id(self._node_name, source.identity.key), template)
        file_id, template = known
        pending = PendingAck(ack_range, len(records))
        start, end = 0, len(records)
        while start < end:
            # Cut at the open batch's room so every batch keeps to batch.max_records.
            stop = min(end, start + self._batcher.room())
            body = self._encode(records, offsets, start, stop, file_id, template)
            self._batcher.add(_Piece(body, stop - start, pending), len(body), stop - start)
            start = stop

    def _encode(self, records: list[dict], offsets: list[int], start: int, stop: int, file_id: bytes,
                template: str) -> bytes:
        """Action and document lines of ``records[start:stop]``, joined."""
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        parts = []
        append = parts.append
        last_hour, action_start = None, b""
        for i in range(start, stop):
            record = records[i]
            hour = record["@timestamp"][:13]
            if hour != last_hour:  # records of a chunk mostly share their hour
                last_hour = hour
                action_start = self._action_starts.get((template, hour)) or self._action_start(template, hour)
            append(b'%s%s-%x"}}\n' % (action_start, file_id, offsets[i]))
            append(dumps(record, option=newline))
        return b"".join(parts)

    def _action_start(self, template: str, hour: str) -> bytes:
        index = render_index(template, hour)
        start = self._action_starts[template, hour] = b'{"create":{"_index":"%s","_id":"' % index.encode()
        return start

    # ---- delivery (sender tasks) ----------------------------------------------------------

    async def _send(self, pieces: list["_Piece"]) -> None:
        """Deliver or dead-letter every document of a batch of pieces; returns only when
        none is left to retry."""
        await self._deliver(_Batch.of_pieces(pieces))

    async def _deliver(self, batch: "_Batch") -> None:
        retry = self._delivery.retry
        backoff = Backoff(retry.initial_backoff_secs, retry.max_backoff_secs)
        while batch is not None:
            try:
                headers = await self._discover()
            except _NotReady as not_ready:
                await asyncio.sleep(not_ready.delay or backoff.next_delay())
                continue
            started = time.monotonic()
            try:
                response = await self._client.perform_request(
                    "POST", "/_bulk", params=FILTER_PATH, headers=headers, body=batch.body
                )
            except ApiError as error:
                self._observe(started, f"http_{error.meta.status}")
                batch, delay = await self._request_failed(batch, error, backoff)
            except TransportError as error:
                reason = transport_reason(error)
                self._observe(started, reason)
                self._retries.labels(sink=self.name, reason=reason).inc()
                log.warning("%s: %s on _bulk (%s); retrying %d documents", self.name, reason,
                            transport_error_text(error), batch.documents)
                delay = self._slow_delay if isinstance(error, TlsError) else backoff.next_delay()
            else:
                self._observe(started, "ok")
                self._sent_bytes.inc(len(batch.body))
                batch, delay = await self._answered(batch, response.body, backoff)
            if batch is not None:
                await asyncio.sleep(delay)

    @property
    def _slow_delay(self) -> float:
        """For what will not heal by retrying soon: credentials, roles, certificates, routes."""
        return self._delivery.retry.auth_backoff_secs

    async def _request_failed(self, batch: "_Batch", error: ApiError,
                              backoff: Backoff) -> tuple["_Batch | None", float]:
        """After a non-2xx answer: what to send again (or None) and after how long. Async
        because a 413 sends the halves before returning."""
        status, error_type = error.meta.status, body_error(error).get("type")
        self._retries.labels(sink=self.name, reason=f"http_{status}").inc()
        if status == 413:
            # Too large for http.max_content_length: halves until each fits or is one document.
            singles = batch.singles()
            if len(singles) > 1:
                half = len(singles) // 2
                await self._deliver(_Batch.of_singles(singles[:half]))
                await self._deliver(_Batch.of_singles(singles[half:]))
                return None, 0
            too_large = {"status": 413, "error": {"type": "request_entity_too_large",
                                                  "reason": "document exceeds http.max_content_length"}}
            await self._dead_letter(singles, [too_large])
            return None, 0
        if status == 429 or status >= 500 or status == 408:
            log.warning("%s: _bulk answered %d (%s); retrying %d documents", self.name, status, error_text(error),
                        batch.documents)
            return batch, backoff.next_delay()
        if status == 406 or error_type == "media_type_header_exception":
            # The node answering now speaks another major than the one GET / found (a rolling
            # upgrade, a replaced node): ask again.
            log.warning("%s: _bulk refused the compatibility headers (%s); asking GET / again", self.name,
                        error_text(error))
            self._headers = None
            return batch, backoff.next_delay()
        if status in (401, 403):
            log.error("%s: Elasticsearch refused the credentials (HTTP %d: %s); %d documents wait, retrying in %.0fs",
                      self.name, status, error_text(error), batch.documents, self._slow_delay)
            return batch, self._slow_delay
        if status == 400 and body_error(error):
            # Elasticsearch refused the request itself; sending it again cannot change that.
            log.error("%s: _bulk refused the whole request with 400: %s; dead-lettering %d documents",
                      self.name, error_text(error), batch.documents)
            refusal = {"status": status, "error": body_error(error)}
            await self._dead_letter(batch.singles(), [refusal] * batch.documents)
            return None, 0
        # Not an Elasticsearch answer (a proxy's 404 or 405, a wrong path): keep the documents.
        log.error("%s: _bulk answered %d (%s), not Elasticsearch's answer; %d documents wait, retrying in %.0fs",
                  self.name, status, error_text(error), batch.documents, self._slow_delay)
        return batch, self._slow_delay

    async def _answered(self, batch: "_Batch", answer: dict, backoff: Backoff) -> tuple["_Batch | None", float]:
        """Settle each document by its per-item status: what to send again and after how long.
        Async because refused documents are settled only once the dead-letter file took them."""
        if not answer.get("errors"):
            self._delivered.inc(batch.documents)
            for count, pending in batch.owners:
                pending.done(count)
            return None, 0
        results = answer.get("items", [])
        if len(results) != batch.documents:
            log.error("%s: _bulk answered %d items for %d actions; sending them again", self.name, len(results),
                      batch.documents)
            self._retries.labels(sink=self.name, reason="item_count_mismatch").inc()
            return batch, backoff.next_delay()
        delivered, replayed, retry, slow, refused, refusals = 0, 0, [], False, [], []
        retry_reasons: dict[str, int] = {}
        for single, result in zip(batch.singles(), results):
            (outcome,) = result.values()
            status = outcome.get("status")
            if type(status) is int and (status < 300 or status == 409):  # 409: created before (a replay)
                delivered += 1
                replayed += status == 409
                single[2].done(1)
            elif type(status) is int and 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
                refused.append(single)
                refusals.append(outcome)
            else:
                # 429/5xx heal soon; 401/403 (a role without write on this index) and 404 (no
                # index template, auto-create off) need an operator; no status: a mangled answer.
                retry.append(single)
                slow |= status in (401, 403, 404)
                reason = outcome_reason(outcome)
                retry_reasons[reason] = retry_reasons.get(reason, 0) + 1
        self._delivered.inc(delivered)
        if replayed:
            self._replayed.inc(replayed)
        if refused:
            await self._dead_letter(refused, refusals)
        for reason, count in retry_reasons.items():
            self._retries.labels(sink=self.name, reason=reason).inc(count)
        if not retry:
            return None, 0
        if slow:
            log.error("%s: %d documents wait for an operator (%s); retrying in %.0fs", self.name, len(retry),
                      ", ".join(sorted(retry_reasons)), self._slow_delay)
        return _Batch.of_singles(retry), self._slow_delay if slow else backoff.next_delay()

    async def _dead_letter(self, singles: list[tuple], outcomes: list[dict]) -> None:
        """Write refused documents to the dead-letter file, then settle them."""
        entries = []
        for (action, document, _), outcome in zip(singles, outcomes):
            error = outcome.get("error") or {}
            target = orjson.loads(action)["create"]
            entries.append({
                "reason": outcome_reason(outcome), "status": outcome.get("status"), "error": error.get("reason", ""),
                "index": target["_index"], "id": target["_id"], "record": orjson.Fragment(document),
            })
        await self._dead_letters.write_held(entries, self._slow_delay)
        for entry in entries:
            self._rejected.labels(sink=self.name, reason=entry["reason"]).inc()
        log.warning("%s: %d documents refused (%s); written to %s", self.name, len(entries),
                    ", ".join(sorted({e["reason"] for e in entries})), self._dead_letters.path)
        for _, _, pending in singles:
            pending.done(1)

    async def _discover(self) -> dict[str, str]:
        """The compatibility headers for the cluster's major version, from ``GET /``; raises
        ``_NotReady`` while the cluster cannot say (down, refusing credentials, unsupported)."""
        if self._headers is not None:
            return self._headers
        async with self._discovery_lock:
            if self._headers is not None:
                return self._headers
            try:
                info = await self._client.perform_request("GET", "/", headers=DISCOVERY_HEADERS)
                number = str(info.body["version"]["number"])
                major = int(number.split(".")[0])
            except (KeyError, TypeError, ValueError):
                log.error("%s: GET / did not answer like Elasticsearch (no version.number); retrying in %.0fs",
                          self.name, self._slow_delay)
                raise _NotReady(self._slow_delay) from None
            except ApiError as error:
                status = error.meta.status
                slow = status in (401, 403)
                log.error("%s: GET / answered %d (%s); retrying%s", self.name, status, error_text(error),
                          f" in {self._delivery.retry.auth_backoff_secs:.0f}s" if slow else "")
                self._retries.labels(sink=self.name, reason=f"http_{status}").inc()
                raise _NotReady(self._delivery.retry.auth_backoff_secs if slow else None) from None
            except TlsError as error:
                # A certificate that does not verify will not start verifying by itself.
                log.error("%s: TLS with Elasticsearch failed (%s); retrying in %.0fs", self.name,
                          transport_error_text(error), self._delivery.retry.auth_backoff_secs)
                self._retries.labels(sink=self.name, reason="tls").inc()
                raise _NotReady(self._delivery.retry.auth_backoff_secs) from None
            except TransportError as error:
                reason = transport_reason(error)
                log.warning("%s: cannot reach Elasticsearch (%s: %s); retrying", self.name, reason,
                            transport_error_text(error))
                self._retries.labels(sink=self.name, reason=reason).inc()
                raise _NotReady(None) from None
            if major not in SUPPORTED_MAJORS:
                log.error("%s: Elasticsearch %s is not supported (only %s)", self.name, number,
                          " and ".join(map(str, SUPPORTED_MAJORS)))
                raise _NotReady(self._delivery.retry.auth_backoff_secs)
            log.info("%s: Elasticsearch %s", self.name, number)
            self._headers = bulk_headers(major)
            return self._headers


class _EncodedNdjson(NdjsonSerializer):
    """Bodies are already NDJSON bytes: pass them on. The stock serializer copies each body
    twice more (a bytearray, then bytes), which with several 5 MB requests in flight is most
    of the sink's memory."""

    def dumps(self, data) -> bytes:
        if isinstance(data, bytes):
            return data
        return super().dumps(data)


class _Answers(OrjsonSerializer):
    """A ``_bulk`` answer in which every item succeeded is not parsed: with the filter path
    Elasticsearch writes ``errors`` first, and the rest would be one small object per document
    (about 0.5 us each) that nothing reads."""

    def loads(self, data: bytes):
        if data.startswith(_ALL_SUCCEEDED):
            return {"errors": False}
        return super().loads(data)


class _Piece:
    """``count`` action and document line pairs, encoded together from one chunk."""

    __slots__ = ("body", "count", "pending")

    def __init__(self, body: bytes, count: int, pending: PendingAck) -> None:
        self.body = body
        self.count = count
        self.pending = pending


class _Batch:
    """One ``_bulk`` body and whose documents it holds, in order: ``owners`` is
    ``(documents, PendingAck)`` per piece."""

    __slots__ = ("body", "owners", "documents")

    def __init__(self, body: bytes, owners: list[tuple[int, PendingAck]]) -> None:
        self.body = body
        self.owners = owners
        self.documents = sum(count for count, _ in owners)

    @classmethod
    def of_pieces(cls, pieces: list[_Piece]) -> "_Batch":
        body = pieces[0].body if len(pieces) == 1 else b"".join([piece.body for piece in pieces])
        return cls(body, [(piece.count, piece.pending) for piece in pieces])

    @classmethod
    def of_singles(cls, singles: list[tuple]) -> "_Batch":
        body = b"".join([b"%s\n%s\n" % (action, document) for action, document, _ in singles])
        return cls(body, [(1, pending) for _, _, pending in singles])

    def singles(self) -> list[tuple[bytes, bytes, PendingAck]]:
        """``(action line, document line, its PendingAck)`` per document (error paths only)."""
        lines = self.body.split(b"\n")
        singles, line = [], 0
        for count, pending in self.owners:
            for _ in range(count):
                singles.append((lines[line], lines[line + 1], pending))
                line += 2
        return singles


class _NotReady(Exception):
    """The cluster's version is not known yet; retry after ``delay`` (None: the backoff's)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay


def _file_id(node_name: str, identity_key: str) -> bytes:
    """12 url-safe characters naming one file on one node; with the offset, one record."""
    digest = hashlib.blake2b(f"{node_name}|{identity_key}".encode(), digest_size=9).digest()
    return base64.urlsafe_b64encode(digest)


def outcome_reason(outcome: dict) -> str:
    error = outcome.get("error")
    if isinstance(error, dict) and error.get("type"):
        return str(error["type"])
    return f"http_{outcome.get('status')}"


def transport_reason(error: TransportError) -> str:
    if isinstance(error, TlsError):
        return "tls"
    if isinstance(error, ConnectionTimeout):
        return "timeout"
    return "connection" if isinstance(error, TransportConnectionError) else "transport"


def body_error(error: ApiError) -> dict:
    """Elasticsearch's ``{"error": {"type", "reason", ...}}``, or {} when the body is not one."""
    body = error.body
    return body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}


def transport_error_text(error: Exception) -> str:
    """The transport's own message: its str() is only the kind ("TLS error")."""
    return str(getattr(error, "message", "") or error)


def bulk_headers(major: int) -> dict[str, str]:
    """The REST compatibility headers for ``_bulk`` on a cluster of this major version."""
    return {
        "accept": f"application/vnd.elasticsearch+json; compatible-with={major}",
        "content-type": f"application/vnd.elasticsearch+x-ndjson; compatible-with={major}",
    }


def error_text(error: ApiError) -> str:
    refusal = body_error(error)
    if refusal:
        return f"{refusal.get('type')}: {refusal.get('reason')}"
    return str(error.body)[:200] if error.body else error.message


def client_options(options: ElasticsearchOptions) -> dict:
    delivery = options.delivery
    auth, tls = delivery.auth, delivery.tls
    client: dict = {
        "node_class": "httpxasync",
        # Retries are ours: classified per status and per item, with backoff, forever.
        "max_retries": 0,
        "retry_on_timeout": False,
        "request_timeout": delivery.request_timeout_secs,
        "http_compress": delivery.compression == "gzip",
        "verify_certs": tls.verify,
        # orjson reads the _bulk answers: one small object per document even when all succeed.
        "serializers": {"application/x-ndjson": _EncodedNdjson(), "application/json": _Answers()},
    }
    if auth.user:
        client["basic_auth"] = (auth.user, auth.password)
    elif auth.api_key:
        client["api_key"] = auth.api_key
    elif auth.bearer_token:
        client["bearer_auth"] = auth.bearer_token
    if tls.ca_file:
        client["ca_certs"] = tls.ca_file
    if tls.cert_file:
        client["client_cert"], client["client_key"] = tls.cert_file, tls.key_file
    if not tls.verify:
        client["ssl_show_warn"] = False
    return client
