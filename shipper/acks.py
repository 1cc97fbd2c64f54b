"""Acknowledgements back from the sinks, and the checkpoint they allow.

Each chunk read from a file becomes one ``AckRange`` (a byte range of that file) shared by
every sink the chunk was routed to. A sink acks the range once the records are delivered;
when every sink has, the range is done. A file's checkpoint is the end of the longest prefix
of done ranges (sinks may finish out of order), so a crash re-reads only what some sink has
not confirmed. One object per chunk, never one per record.
"""

from collections import deque
from collections.abc import Callable


class AckRange:
    __slots__ = ("file", "start", "end", "waiting_sinks", "size")

    def __init__(self, file: "FileAcks", start: int, end: int, waiting_sinks: int, size: int) -> None:
        self.file = file
        self.start = start
        self.end = end
        self.waiting_sinks = waiting_sinks
        self.size = size  # bytes this range holds against the in-flight budget

    def ack(self) -> None:
        """One sink delivered every record of this range."""
        self.waiting_sinks -= 1
        if self.waiting_sinks == 0:
            self.file.range_done(self)


class FileAcks:
    """The ranges of one file in read order and the checkpoint they allow."""

    __slots__ = ("checkpoint", "_ranges", "_on_done")

    def __init__(self, checkpoint: int, on_done: Callable[[AckRange], None]) -> None:
        self.checkpoint = checkpoint
        self._ranges: deque[AckRange] = deque()
        self._on_done = on_done

    def open_range(self, start: int, end: int, sinks: int, size: int) -> AckRange:
        """A range awaiting ``sinks`` acks; with no sinks (all records dropped) it is done now."""
        ack_range = AckRange(self, start, end, sinks, size)
        self._ranges.append(ack_range)
        if sinks == 0:
            self.range_done(ack_range)
        return ack_range

    def range_done(self, ack_range: AckRange) -> None:
        ranges = self._ranges
        while ranges and ranges[0].waiting_sinks == 0:
            self.checkpoint = ranges.popleft().end
        self._on_done(ack_range)
