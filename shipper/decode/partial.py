"""Reassembly of lines the runtime split into parts (CRI ``P`` records, docker 16 KiB pieces)."""

from shipper.decode.flags import TRUNCATED, UNFINISHED_PARTIAL


class PartialJoiner:
    """Holds the parts of split lines per stream until their final part arrives.

    stdout and stderr are written independently, so their parts interleave and are joined
    separately. A joined line takes the offset and timestamp of its first part: a replay
    after a crash starts at that offset, so the record gets the same id and time again.
    Content beyond ``max_record_bytes`` is dropped and the line flagged ``TRUNCATED``, so a
    runaway line cannot grow memory.
    """

    __slots__ = ("_max_record_bytes", "pending")

    def __init__(self, max_record_bytes: int) -> None:
        self._max_record_bytes = max_record_bytes
        # stream -> [first offset, first time, parts, kept size, flags, empty content of its type]
        self.pending: dict = {}

    def add_part(self, offset: int, time, stream, content) -> None:
        entry = self.pending.get(stream)
        if entry is None:
            entry = self.pending[stream] = [offset, time, [], 0, 0, content[:0]]
        self._append(entry, content)

    def finish(self, time, stream, content, flags: int) -> tuple:
        """The joined line for ``stream`` ending with ``content`` (the final part)."""
        entry = self.pending.pop(stream)
        self._append(entry, content)
        return (entry[0], entry[1], stream, entry[5].join(entry[2]), entry[4] | flags)

    def _append(self, entry: list, content) -> None:
        room = self._max_record_bytes - entry[3]
        if len(content) > room:
            content = content[: max(room, 0)]
            entry[4] |= TRUNCATED
        if content:
            entry[2].append(content)
            entry[3] += len(content)

    def oldest_offset(self) -> int | None:
        """Offset of the first part still waiting, or None: the checkpoint may not pass it."""
        if not self.pending:
            return None
        return min(entry[0] for entry in self.pending.values())

    def flush(self) -> list[tuple]:
        """Every waiting line as it is, flagged: its final part is not coming (idle or EOF)."""
        lines = []
        for stream, (offset, time, parts, _size, flags, empty) in sorted(
            self.pending.items(), key=lambda item: item[1][0]
        ):
            lines.append((offset, time, stream, empty.join(parts), flags | UNFINISHED_PARTIAL))
        self.pending.clear()
        return lines
