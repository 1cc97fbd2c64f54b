"""Loki push sink: Promtail's streams, protobuf+snappy (or JSON) pushes, classified errors.

Each record becomes one entry: the container's original message (``log``) by default, or the
whole record as JSON (``line_format: json``), stamped with the runtime's timestamp to the
nanosecond. A push holds several streams, each stream's entries in time order.

Errors as Loki and Promtail define them (PROTOCOLS.md section 2): 429, 5xx, connection errors
and timeouts are retried with capped backoff and jitter for as long as it takes (the log files
are the buffer; reading pauses meanwhile); 401/403, and 404/405 (not Loki's push API), are
logged loudly and retried slowly; 413 splits the push. A 400 means Loki wrote the valid entries and refused the rest: the refused
ones are traced from its answer (``loki_rejections``) and go to the dead-letter file with
Loki's reason, the others count as delivered and are not sent again. Any other 4xx will not
change on retry: its entries are dead-lettered. A replay after a crash sends identical
entries (same stream, timestamp and line), which Loki drops as duplicates.
"""

import asyncio
import gzip
import logging
import ssl
import time

import httpx
import orjson

from shipper.acks import AckRange
from shipper.metrics import Metrics
from shipper.sinks import Source
from shipper.sinks.delivery import Backoff, BatchingSink, PendingAck
from shipper.sinks.loki_encoding import (Entries, ProtobufBodies, group_streams, json_body, to_epoch_ns,
                                          utc_second_ns)
from shipper.sinks.loki_labels import StreamLabeler
from shipper.sinks.loki_options import PUSH_PATH, LokiOptions
from shipper.sinks.loki_rejections import refusals_in_push

log = logging.getLogger("shipper.sinks.loki")

_NO_STREAM = object()  # the stream key before a chunk's first record: unequal to every key
# An entry's time (an int and its tuple slot, 40), its line's str header and slot (57) and its chunk's slot (8).
_ENTRY_OBJECT_BYTES = 105
_MESSAGE_MAX = 300  # characters of Loki's answer kept in a log line
# Nanoseconds per unit of an n-digit fraction; longer fractions than 9 digits go the slow way.
_FRACTION_SCALE = [10 ** (9 - digits) for digits in range(10)]


class LokiSink(BatchingSink):
    def __init__(self, name: str, options: LokiOptions, metrics: Metrics) -> None:
        super().__init__(name, options.delivery, metrics)
        self.options = options
        self._push_urls = [push_url(endpoint) for endpoint in options.delivery.endpoints]
        self._headers = push_headers(options)
        self._client: httpx.AsyncClient | None = None
        self._labeler = StreamLabeler(options, self._label_capped)
        self._protobuf_bodies = ProtobufBodies()
        self._chunks = 0  # numbers the chunks accepted
        self._pending: dict[int, PendingAck] = {}  # chunk number -> its pending ack
        self._streams_gauge = metrics.loki_streams.labels(sink=name)
        self._capped = metrics.loki_label_values_capped

    def _open_client(self) -> None:
        self._client = push_client(self._delivery, self._push_urls)

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # ---- entries (on the pipeline's loop, per chunk) --------------------------------------

    def accept(self, records: list[dict], offsets: list[int], source: Source, ack_range: AckRange) -> None:
        labeler = self._labeler
        streams = labeler.for_file(source)
        # Entries name their chunk by number, not by its PendingAck: numbers and strings give the
        # garbage collector nothing to walk, where a reference per entry had it walk every entry
        # held in flight on each full collection (measured: 0.4 us per line less).
        self._chunks += 1
        chunk = self._chunks
        self._pending[chunk] = PendingAck(ack_range, len(records))
        as_json = self.options.line_format == "json"
        per_record = labeler.per_record
        second_ns, scale, dumps = utc_second_ns, _FRACTION_SCALE, orjson.dumps
        groups: dict = {}  # stream name (or StreamLabels with record labels) -> (labels, times, lines, metadata)
        metadata = ()
        last_key = _NO_STREAM
        append_time = append_line = append_metadata = None
        for record in records:
            line = dumps(record).decode() if as_json else record.get("log")
            if line is None:  # the message was parsed and not kept (json.keep_raw: false)
                line = dumps(record).decode()
            time = record["@timestamp_nanos"]
            # containerd's 'YYYY-MM-DDTHH:MM:SS.fffZ' inline, from its second's cached epoch.
            try:
                fraction = time[20:-1]
                if time[-1] != "Z" or time[19] != "." or not fraction.isdigit():
                    raise ValueError(time)
                ts_ns = second_ns[time[:19]] + int(fraction) * scale[len(fraction)]
            except (TypeError, ValueError, KeyError, IndexError):
                ts_ns = _entry_time(record)
            if per_record:
                labels, metadata = labeler.record_stream(streams, record)
                key = labels
            else:
                key = record["stream"]
            if key != last_key:
                group = groups.get(key)
                if group is None:
                    labels = key if per_record else labeler.stream(streams, key)
                    group = groups[key] = (labels, [], [], [] if per_record else None)
                append_time, append_line, last_key = group[1].append, group[2].append, key
                if per_record:
                    append_metadata = group[3].append
            append_time(ts_ns)
            append_line(line)
            if per_record:
                append_metadata(metadata)
        # A push's size is its lines' (Promtail's batch size): the chunk's bytes as read stand for
        # its messages' share, with no per-line count; JSON lines are longer and are counted.
        batcher, total = self._batcher, len(records)
        for labels, times, lines, metadata in groups.values():
            start, end = 0, len(times)
            entries = Entries(labels, tuple(times), tuple(lines), None if metadata is None else tuple(metadata),
                              (chunk,) * end)
            while start < end:
                # Cut at the open batch's room so every push keeps to batch.max_records.
                stop = min(end, start + batcher.room())
                part = entries if stop - start == end else entries.part(start, stop)
                lines_size = (sum(map(len, part.lines)) if as_json
                              else ack_range.size * (stop - start) // total)
                batcher.add(part, lines_size, stop - start)
                start = stop
        # What the entries hold in memory besides their lines, until their push is answered.
        self._count_bytes(_ENTRY_OBJECT_BYTES * total)

    def _label_capped(self, label: str) -> None:
        self._capped.labels(sink=self.name, label=label).inc()

    # ---- pushes (sender tasks) ------------------------------------------------------------

    async def _send(self, groups: list[Entries]) -> None:
        """Deliver or dead-letter every entry; returns only when none is left to retry."""
        count = sum(map(len, groups))
        if await self._push(group_streams(groups)):
            # All written: each group is one chunk's entries of one stream.
            self._delivered.inc(count)
            for group in groups:
                self._done(group.chunks[0], len(group))
        self._count_bytes(-_ENTRY_OBJECT_BYTES * count)
        self._streams_gauge.set(self._labeler.stream_count)

    async def _push(self, streams: list[Entries]) -> bool:
        """Push until Loki answered for good: True when it wrote every entry (the caller
        settles them), False when this call already settled or dead-lettered them."""
        if self.options.encoding == "json":
            raw = json_body(streams)
            size = len(raw)
            body = gzip.compress(raw, compresslevel=1) if self._delivery.compression == "gzip" else raw
        else:
            body, size = self._protobuf_bodies.build(streams)
        retry = self._delivery.retry
        backoff = Backoff(retry.initial_backoff_secs, retry.max_backoff_secs)
        attempt = 0
        while True:
            url = self._push_urls[attempt % len(self._push_urls)]
            attempt += 1
            started = time.monotonic()
            try:
                response = await self._client.post(url, content=body, headers=self._headers)
            except (httpx.TimeoutException, httpx.TransportError) as error:
                reason = "timeout" if isinstance(error, httpx.TimeoutException) else "connection"
                self._observe(started, reason)
                self._retries.labels(sink=self.name, reason=reason).inc()
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s: %s pushing to %s (%s); retrying %d entries (attempt %d)", self.name, reason,
                                url, error or type(error).__name__, _count(streams), attempt)
                await asyncio.sleep(backoff.next_delay())
                continue
            status = response.status_code
            self._observe(started, "ok" if status < 300 else f"http_{status}")
            if status < 300:
                self._sent_bytes.inc(size)
                return True
            text = response.text.strip()
            if status == 429 or status >= 500:
                self._retries.labels(sink=self.name, reason=f"http_{status}").inc()
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s: push answered %d (%s); retrying %d entries (attempt %d)", self.name, status,
                                text[:_MESSAGE_MAX], _count(streams), attempt)
                await asyncio.sleep(backoff.next_delay())
                continue
            if status in (401, 403, 404, 405):
                # Credentials, or an endpoint that is not Loki's push API: nothing here was judged
                # by Loki, and no retry heals it before the configuration changes.
                problem = "refused the credentials" if status in (401, 403) else "has no push API at this URL"
                log.error("%s: %s %s (HTTP %d: %s); %d entries wait, retrying in %.0fs", self.name, url, problem,
                          status, text[:_MESSAGE_MAX], _count(streams), retry.auth_backoff_secs)
                self._retries.labels(sink=self.name, reason=f"http_{status}").inc()
                await asyncio.sleep(retry.auth_backoff_secs)
                continue
            self._sent_bytes.inc(size)
            if status == 413 and _count(streams) > 1:
                # Larger than Loki's grpc_server_max_recv_msg_size: halves until each fits.
                self._retries.labels(sink=self.name, reason="http_413_split").inc()
                entries = [Entries.from_tuples(stream.labels, [entry]) for stream in streams
                           for entry in stream.tuples()]
                half = len(entries) // 2
                for part in (group_streams(entries[:half]), group_streams(entries[half:])):
                    if await self._push(part):
                        self._settle(part)
                return False
            if status == 400:
                await self._partly_refused(streams, text)
                return False
            log.error("%s: Loki refused the whole push with %d: %s; dead-lettering %d entries", self.name, status,
                      text[:_MESSAGE_MAX], _count(streams))
            await self._dead_letter([(stream.labels, entry, f"http_{status}", text) for stream in streams
                                     for entry in stream.tuples()], status)
            return False

    async def _partly_refused(self, streams: list[Entries], text: str) -> None:
        """A 400: Loki wrote the valid entries; dead-letter the ones its answer refuses."""
        pushed = [(stream.labels, stream.tuples()) for stream in streams]
        rejections = refusals_in_push(text, pushed)
        refused, delivered = [], []
        for index, (labels, entries) in enumerate(pushed):
            stream_refusals = rejections.refused.get(index, {})
            kept = []
            for position, entry in enumerate(entries):
                refusal = stream_refusals.get(position)
                if refusal is not None:
                    refused.append((labels, entry, *refusal))
                elif rejections.unexplained:
                    # Loki refused something this sink cannot trace: keep every entry it may
                    # have refused rather than count a lost one as delivered.
                    refused.append((labels, entry, "unexplained", "; ".join(rejections.unexplained)))
                else:
                    kept.append(entry)
            delivered.append(Entries.from_tuples(labels, kept))
        if rejections.unexplained:
            log.error("%s: Loki's 400 names refusals this sink cannot trace (%s); dead-lettering every entry "
                      "not known to be written", self.name, "; ".join(rejections.unexplained)[:_MESSAGE_MAX])
        self._settle(delivered)
        await self._dead_letter(refused, 400)

    def _settle(self, streams: list[Entries]) -> None:
        self._delivered.inc(sum(map(len, streams)))
        self._done_chunks([chunk for stream in streams for chunk in stream.chunks])

    async def _dead_letter(self, refused: list[tuple], status: int) -> None:
        """``refused``: ``(labels, entry, reason, Loki's message)``; settled once written."""
        if not refused:
            return
        letters = []
        reasons: dict[str, int] = {}
        for labels, (ts_ns, line, metadata, _), reason, message in refused:
            letter = {"reason": reason, "status": status, "error": message, "stream": labels.text, "ts_ns": ts_ns,
                      "line": line}
            if metadata:
                letter["structured_metadata"] = dict(metadata)
            letters.append(letter)
            reasons[reason] = reasons.get(reason, 0) + 1
        summary = ", ".join(f"{reason}={count}" for reason, count in sorted(reasons.items()))
        await self._dead_letters.write_held(letters, self._delivery.retry.auth_backoff_secs)
        for reason, count in reasons.items():
            self._rejected.labels(sink=self.name, reason=reason).inc(count)
        log.warning("%s: Loki refused %d entries (%s); written to %s", self.name, len(letters), summary,
                    self._dead_letters.path)
        self._done_chunks([entry[3] for _, entry, _, _ in refused])

    def _done(self, chunk: int, count: int) -> None:
        pending = self._pending[chunk]
        pending.done(count)
        if pending.remaining == 0:
            del self._pending[chunk]

    def _done_chunks(self, chunks: list[int]) -> None:
        """Count entries (by their chunk numbers) off their chunks' pending acks, once per chunk."""
        counts: dict[int, int] = {}
        for chunk in chunks:
            counts[chunk] = counts.get(chunk, 0) + 1
        for chunk, count in counts.items():
            self._done(chunk, count)


def _entry_time(record: dict) -> int:
    """The runtime's time to the nanosecond in any RFC3339 form, or the record's (read) time
    when the runtime's was unusable (such records are flagged bad_time or malformed)."""
    time = record["@timestamp_nanos"]
    ts_ns = to_epoch_ns(time) if time is not None else None
    return ts_ns if ts_ns is not None else to_epoch_ns(record["@timestamp"])


def _count(streams: list[Entries]) -> int:
    return sum(map(len, streams))


def push_url(endpoint: str) -> str:
    """The push URL of an endpoint given as Loki's base URL or as the push URL itself."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(PUSH_PATH) else endpoint + PUSH_PATH


def push_headers(options: LokiOptions) -> dict[str, str]:
    headers = {"Content-Type": "application/json" if options.encoding == "json" else "application/x-protobuf",
               "User-Agent": "shipper"}
    if options.encoding == "json" and options.delivery.compression == "gzip":
        headers["Content-Encoding"] = "gzip"
    if options.tenant:
        headers["X-Scope-OrgID"] = options.tenant
    if options.delivery.auth.bearer_token:
        headers["Authorization"] = f"Bearer {options.delivery.auth.bearer_token}"
    return headers


def push_client(delivery, push_urls: list[str]) -> httpx.AsyncClient:
    """The HTTP client for ``push_urls``: the sink's timeout, TLS and basic auth."""
    auth = delivery.auth
    return httpx.AsyncClient(
        timeout=delivery.request_timeout_secs,
        # Plain http needs no TLS context (loading the CA bundle costs 20 ms).
        verify=_tls_context(delivery.tls) if any(url.startswith("https:") for url in push_urls) else False,
        auth=httpx.BasicAuth(auth.user, auth.password) if auth.user else None,
        limits=httpx.Limits(max_connections=delivery.max_in_flight_requests),
    )


def _tls_context(tls) -> ssl.SSLContext | bool:
    if not tls.verify:
        return False
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
