"""JSON lines on standard output; acks once written. What ``--dry-run`` uses."""

import sys
from typing import BinaryIO

import orjson

from shipper.acks import AckRange
from shipper.sinks import Source
from shipper.metrics import Metrics


class StdoutSink:
    buffered_bytes = 0  # writes before acking: holds nothing

    def __init__(self, name: str, metrics: Metrics, stream: BinaryIO | None = None) -> None:
        self.name = name
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._delivered = metrics.sink_records.labels(sink=name)

    async def start(self) -> None:
        pass

    def accept(self, records: list[dict], offsets: list[int], source: Source, ack_range: AckRange) -> None:
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        self._stream.write(b"".join([dumps(record, option=newline) for record in records]))
        self._stream.flush()
        self._delivered.inc(len(records))
        ack_range.ack()

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        self._stream.flush()
