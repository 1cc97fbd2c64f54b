"""CRI log lines: ``<RFC3339Nano> <stdout|stderr> <P|F>[:more] <content>``.

As the kubelet reads them: a tag whose first ``:``-separated field is ``P`` is a partial
part, anything else is a full line (PROTOCOLS.md section 3).
"""

from shipper.decode.flags import MALFORMED
from shipper.decode.partial import PartialJoiner

_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}


class CriDecoder:
    """Decodes the CRI lines of one file; keeps P parts across chunks per stream."""

    __slots__ = ("partials",)

    def __init__(self, max_record_bytes: int) -> None:
        self.partials = PartialJoiner(max_record_bytes)

    def decode(self, lines: list[bytes], offset: int, out: list) -> None:
        """Append the decoded lines of ``lines`` (newlines removed) that start at ``offset``."""
        pending = self.partials.pending
        streams = _STREAMS
        append = out.append
        for raw in lines:
            # The common line, a full one ('F') with content and no part pending, in few steps;
            # everything else (parts, tags with fields, empty content, garbage) in _decode_other.
            try:
                time, stream, tag, content = raw.split(b" ", 3)
                stream = streams[stream]
            except (ValueError, KeyError):
                self._decode_other(raw, offset, append)
            else:
                # A timestamp has 'T' at index 10 (YYYY-MM-DDT...); cheap, and rejects most garbage.
                if tag == b"F" and not pending and time[10:11] == b"T":
                    append((offset, time.decode("ascii", "replace"), stream, content, 0))
                else:
                    self._decode_other(raw, offset, append)
            offset += len(raw) + 1

    def _decode_other(self, raw: bytes, offset: int, append) -> None:
        partials = self.partials
        fields = raw.split(b" ", 3)
        if len(fields) >= 3 and fields[0][10:11] == b"T" and fields[1] in _STREAMS:
            stream = _STREAMS[fields[1]]
            tag = fields[2]
            content = fields[3] if len(fields) == 4 else b""
            if tag[:1] == b"P" and (len(tag) == 1 or tag[1:2] == b":"):
                partials.add_part(offset, fields[0].decode("ascii", "replace"), stream, content)
            elif stream in partials.pending:
                append(partials.finish(None, stream, content, 0))
            else:
                append((offset, fields[0].decode("ascii", "replace"), stream, content, 0))
        else:
            append((offset, None, None, raw, MALFORMED))
