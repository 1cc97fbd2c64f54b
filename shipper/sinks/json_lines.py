"""Records as JSON lines, to standard output (``stdout``, what ``--dry-run`` uses) or appended
to a file (``file``). Acks once written to the OS: survives a crash of shipper, not of the
node; the crash tests count lines with the file sink."""

import sys
from typing import BinaryIO

import orjson

from shipper.acks import AckRange
from shipper.metrics import Metrics
from shipper.sinks import Source


class JsonLinesSink:
    buffered_bytes = 0  # writes before acking: holds nothing

    def __init__(self, name: str, metrics: Metrics, *, path: str | None = None,
                 stream: BinaryIO | None = None) -> None:
        """Appends to ``path`` when given, else writes to ``stream`` (default stdout)."""
        self.name = name
        self._path = path
        self._stream = stream
        self._delivered = metrics.sink_records.labels(sink=name)

    async def start(self) -> None:
        if self._path is not None:
            self._stream = open(self._path, "ab")
        elif self._stream is None:
            self._stream = sys.stdout.buffer

    def accept(self, records: list[dict], offsets: list[int], source: Source, ack_range: AckRange) -> None:
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        self._stream.write(b"".join([dumps(record, option=newline) for record in records]))
        self._stream.flush()
        self._delivered.inc(len(records))
        ack_range.ack()

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        if self._stream is None:
            return
        if self._path is not None:
            self._stream.close()
        else:
            self._stream.flush()
