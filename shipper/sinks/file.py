"""JSON lines appended to a file; acks once written to the OS (survives a crash of shipper,
not of the node). For local runs, and the sink the crash tests count lines with."""

import orjson

from shipper.acks import AckRange
from shipper.sinks import Source
from shipper.metrics import Metrics


class FileSink:
    buffered_bytes = 0  # writes before acking: holds nothing

    def __init__(self, name: str, path: str, metrics: Metrics) -> None:
        self.name = name
        self.path = path
        self._file = None
        self._delivered = metrics.sink_records.labels(sink=name)

    async def start(self) -> None:
        self._file = open(self.path, "ab")

    def accept(self, records: list[dict], offsets: list[int], source: Source, ack_range: AckRange) -> None:
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        self._file.write(b"".join([dumps(record, option=newline) for record in records]))
        self._file.flush()
        self._delivered.inc(len(records))
        ack_range.ack()

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
