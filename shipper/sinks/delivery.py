"""What every batching network sink shares: batches, acks, backoff and the dead-letter file.

A sink encodes each accepted chunk into items (one per record) that point at one
``PendingAck`` for the chunk's ``AckRange``. ``Batcher`` packs items into batches by count,
bytes and age and runs a few sender tasks; the sink's ``send`` coroutine owns a batch until
every item in it is either delivered or dead-lettered, retrying as long as it takes. The log
files are the buffer: while a destination is down, batches wait here, the pipeline's
in-flight budget fills and reading pauses, so memory stays bounded without a disk queue.
"""

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable

import orjson

from shipper.acks import AckRange
from shipper.metrics import Metrics
from shipper.sinks.options import BatchOptions, DeliveryOptions

log = logging.getLogger("shipper.sinks")


class PendingAck:
    """Counts the records of one chunk a sink still has to deliver; acks the range at zero."""

    __slots__ = ("ack_range", "remaining")

    def __init__(self, ack_range: AckRange, remaining: int) -> None:
        self.ack_range = ack_range
        self.remaining = remaining

    def done(self, count: int = 1) -> None:
        self.remaining -= count
        if self.remaining == 0:
            self.ack_range.ack()


class Backoff:
    """Capped exponential backoff with equal jitter: never zero, never in lockstep with the
    other nodes' shippers retrying against the same cluster."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return ceiling / 2 + random.random() * ceiling / 2


class DeadLetterFile:
    """Records a destination refused for good, one JSON object per line, with the reason.

    Written before the records are acknowledged (``write_held``): while the file cannot be
    written the records stay unacknowledged, so a refused record is either here or will be read
    again: never silently gone.
    """

    def __init__(self, path: str, sink_name: str) -> None:
        self.path = path
        self.sink_name = sink_name
        self._file = None

    def write(self, entries: list[dict]) -> None:
        """``entries``: ``{"reason", "status", "error", ...}`` plus the record (as an
        ``orjson.Fragment`` when it is already encoded)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = b"".join(
            orjson.dumps({"time": now, "sink": self.sink_name, **entry}, option=orjson.OPT_APPEND_NEWLINE)
            for entry in entries
        )
        try:
            if self._file is not None and self._moved():
                self.close()  # a replay renamed the file: new letters go to a new file at the path
            if self._file is None:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)  # unbuffered: no half-written rest
            self._file.write(lines)
        except OSError:
            self.close()  # opened again next time: the disk may have room then, the path may exist
            raise

    async def write_held(self, entries: list[dict], retry_secs: float) -> None:
        """``write``, tried again every ``retry_secs`` while it fails (a full disk, a path that
        is not a directory): the caller acknowledges the records only once this returns, so
        their positions hold meanwhile."""
        while True:
            try:
                self.write(entries)
                return
            except OSError as error:
                log.error("%s: cannot write dead-letter file %s (%s); keeping %d refused records, trying again "
                          "in %.0fs", self.sink_name, self.path, error.strerror, len(entries), retry_secs)
                await asyncio.sleep(retry_secs)

    def _moved(self) -> bool:
        """Whether the path no longer names the open file (renamed away, or deleted)."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return True
        opened = os.fstat(self._file.fileno())
        return (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Batcher:
    """Packs items into batches (``max_records``, ``max_bytes``, ``flush_secs``) and hands
    each to ``send`` on one of ``senders`` tasks, so several requests are in flight.

    An item is whatever the sink encodes: best one per accepted chunk holding many records
    (a few Python objects per chunk, not per record, keeps memory close to the encoded
    bytes). A sink keeps ``max_records`` exact by cutting items at ``room()``; ``max_bytes``
    may be passed by the one item that crossed it.
    """

    def __init__(self, options: BatchOptions, senders: int, send: Callable[[list], Awaitable[None]],
                 on_bytes: Callable[[int], None]) -> None:
        self.options = options
        self._senders = senders
        self._send = send
        self._on_bytes = on_bytes  # told of bytes taken in (+) and delivered (-)
        self._items: list = []
        self._records = 0
        self._bytes = 0
        self._opened_at = 0.0
        self._queue: asyncio.Queue[tuple[list, int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sender()) for _ in range(self._senders)]
        self._tasks.append(asyncio.create_task(self._flush_timer()))

    def room(self) -> int:
        """How many more records the batch being filled takes."""
        return self.options.max_records - self._records

    def add(self, item, size: int, records: int) -> None:
        """Take one item of ``size`` encoded bytes holding ``records`` records."""
        if not self._items:
            self._opened_at = time.monotonic()
        self._on_bytes(size)
        self._items.append(item)
        self._records += records
        self._bytes += size
        if self._records >= self.options.max_records or self._bytes >= self.options.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self._items:
            self._queue.put_nowait((self._items, self._bytes))
            self._items, self._records, self._bytes = [], 0, 0

    async def drain(self) -> None:
        """Return once every item taken so far is delivered or dead-lettered."""
        self.flush()
        await self._queue.join()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _flush_timer(self) -> None:
        interval = self.options.flush_secs
        while True:
            await asyncio.sleep(interval / 2)
            if self._items and time.monotonic() - self._opened_at >= interval:
                self.flush()

    async def _sender(self) -> None:
        while True:
            items, size = await self._queue.get()
            try:
                await self._send(items)
            except Exception:
                # A bug in the sink. Sending the batch again could settle records it had already
                # settled and ack ranges early; left unacknowledged, they are read again after
                # a restart. The other batches go on.
                log.exception("sending a batch of %d items failed unexpectedly; its records stay unacknowledged "
                              "and are read again after a restart", len(items))
            finally:
                self._on_bytes(-size)
                self._queue.task_done()


class BatchingSink:
    """What a network sink shares around its ``Batcher``: the lifecycle, the dead-letter file,
    the bytes it holds and the sink metrics. A subclass encodes in ``accept``, delivers a batch
    in ``_send`` and owns its client (``_open_client`` / ``_close_client``)."""

    def __init__(self, name: str, delivery: DeliveryOptions, metrics: Metrics) -> None:
        self.name = name
        self._delivery = delivery
        self._dead_letters = DeadLetterFile(delivery.dead_letter_path, name)
        self._batcher = Batcher(delivery.batch, delivery.max_in_flight_requests, self._send, self._count_bytes)
        self.buffered_bytes = 0  # what accepted, undelivered records hold encoded (Sink.buffered_bytes)
        self._delivered = metrics.sink_records.labels(sink=name)
        self._rejected = metrics.sink_rejected
        self._retries = metrics.sink_retries
        self._latency = metrics.sink_requests
        self._sent_bytes = metrics.sink_sent_bytes.labels(sink=name)
        self._in_flight_gauge = metrics.sink_in_flight_bytes.labels(sink=name)

    async def start(self) -> None:
        if not self._delivery.tls.verify:
            log.warning("%s: TLS certificate verification is off (tls.verify: false)", self.name)
        self._open_client()
        self._batcher.start()

    async def drain(self) -> None:
        await self._batcher.drain()

    async def close(self) -> None:
        await self._batcher.close()
        self._dead_letters.close()
        await self._close_client()

    def _open_client(self) -> None:
        raise NotImplementedError

    async def _close_client(self) -> None:
        raise NotImplementedError

    async def _send(self, items: list) -> None:
        raise NotImplementedError

    def _count_bytes(self, change: int) -> None:
        self.buffered_bytes += change
        self._in_flight_gauge.set(self.buffered_bytes)

    def _observe(self, started: float, outcome: str) -> None:
        self._latency.labels(sink=self.name, outcome=outcome).observe(time.monotonic() - started)
