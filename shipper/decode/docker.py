"""Docker json-file lines: ``{"log":"...\\n","stream":"stdout","time":"<RFC3339Nano>"}``.

Docker splits messages longer than 16 KiB into several lines; every piece but the last has
no trailing newline in ``log`` (PROTOCOLS.md section 3).
"""

import orjson

from shipper.decode.flags import MALFORMED
from shipper.decode.partial import PartialJoiner


class DockerDecoder:
    """Decodes the json-file lines of one file; joins split messages per stream."""

    __slots__ = ("partials",)

    def __init__(self, max_record_bytes: int) -> None:
        self.partials = PartialJoiner(max_record_bytes)

    def decode(self, lines: list[bytes], offset: int, out: list) -> None:
        """Append the decoded lines of ``lines`` (newlines removed) that start at ``offset``."""
        partials = self.partials
        pending = partials.pending
        append = out.append
        loads = orjson.loads
        for raw in lines:
            try:
                entry = loads(raw)
                log = entry["log"]
                stream = entry.get("stream")
                time = entry.get("time")
                if type(log) is not str or stream not in ("stdout", "stderr"):
                    raise TypeError
                if time is not None and type(time) is not str:
                    # Kept as its JSON text: the record builder flags it bad_time, as any time
                    # it cannot read, and keeps it in @timestamp_nanos.
                    time = orjson.dumps(time).decode()
            except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                append((offset, None, None, raw, MALFORMED))
            else:
                if log[-1:] != "\n":
                    partials.add_part(offset, time, stream, log)
                elif stream in pending:
                    append(partials.finish(None, stream, log[:-1], 0))
                else:
                    append((offset, time, stream, log[:-1], 0))
            offset += len(raw) + 1
