"""Loki push bodies: entries grouped per stream, time-ordered, as protobuf+snappy or JSON.

Entries are held as ``Entries``: one stream's times, lines, structured metadata and chunk
numbers in parallel tuples, with no object per entry: a tuple per entry, made, unpacked, copied
and sorted by key, cost 0.2 us per line of accepting and encoding. Tuples of numbers and strings,
unlike lists, are untracked by the garbage collector after its first look, so the entries held in
flight are not walked again by its older collections. The sink hands them over one ``Entries``
per chunk and stream; the rare paths (a refusal, a split) take them apart as tuples
``(ts_ns, line, metadata, chunk)``.

Protobuf goes through the generated ``loki_push_pb2`` (upb, the C implementation), which makes
every byte of the wire format: each stream's entries are parsed at once from the library's own
serialisation of one entry, then filled in. Measured in ``benchmarks/bench_loki.py`` at 0.87 us
per entry including serialisation and compression, from 1.15 us when each entry was added, and
its timestamp set, through Python wrappers of their own. Snappy is the raw block format
(``cramjam.snappy.compress_raw_into``), which Loki's ``snappy.Decode`` expects, not the framed
one.

Timestamps are the runtime's own (``@timestamp_nanos``, RFC3339 with nanoseconds and any
offset) to the nanosecond, so a replay after a crash sends entries identical to the first
attempt and Loki drops the duplicates.
"""

from datetime import datetime
from itertools import repeat

import cramjam
import orjson

from google.protobuf.timestamp_pb2 import Timestamp

from shipper.sinks.loki_push_pb2 import EntryAdapter, PushRequest, StreamAdapter

_seconds_cache: dict[str, int | None] = {}
# containerd's form, 'YYYY-MM-DDTHH:MM:SS' of a '...Z' time -> epoch ns: the sink's fast path.
utc_second_ns: dict[str, int] = {}
_MAX_CACHED_SECONDS = 100000
# A StreamAdapter's entries field holding one entry whose timestamp is present (and zero):
# repeated n times, it parses into n entries for ``protobuf_body`` to fill in.
_ENTRY_WITH_TIMESTAMP = StreamAdapter(entries=[EntryAdapter(timestamp=Timestamp())]).SerializeToString()


class Entries:
    """Entries of one stream, in parallel tuples (``metadata`` is None when none has any)."""

    __slots__ = ("labels", "times", "lines", "metadata", "chunks")

    def __init__(self, labels, times: tuple[int, ...], lines: tuple[str, ...], metadata: tuple[tuple, ...] | None,
                 chunks: tuple[int, ...]) -> None:
        self.labels = labels
        self.times = times  # epoch nanoseconds
        self.lines = lines
        self.metadata = metadata  # per entry, its structured metadata pairs
        self.chunks = chunks  # per entry, the number of the chunk it came from

    @classmethod
    def from_tuples(cls, labels, entries: list[tuple]) -> "Entries":
        """From ``(ts_ns, line, metadata, chunk)`` tuples."""
        times, lines, metadata, chunks = zip(*entries) if entries else ((), (), (), ())
        return cls(labels, times, lines, metadata if any(metadata) else None, chunks)

    def __len__(self) -> int:
        return len(self.times)

    def tuples(self) -> list[tuple]:
        """Each entry as ``(ts_ns, line, metadata, chunk)``."""
        metadata = repeat((), len(self.times)) if self.metadata is None else self.metadata
        return list(zip(self.times, self.lines, metadata, self.chunks))

    def part(self, start: int, stop: int) -> "Entries":
        metadata = None if self.metadata is None else self.metadata[start:stop]
        return Entries(self.labels, self.times[start:stop], self.lines[start:stop], metadata,
                       self.chunks[start:stop])


def epoch_seconds(second: str, zone: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS`` at offset ``zone`` (``Z``, ``+01:00``, or '' for UTC) as epoch
    seconds, or None when it is not a time; cached, since lines share their second."""
    key = second + zone
    seconds = _seconds_cache.get(key, 0)
    if seconds != 0:
        return seconds
    try:
        parsed = datetime.fromisoformat(second + ("+00:00" if zone in ("", "Z") else zone))
        seconds = int(parsed.timestamp()) if len(second) == 19 and second[10] == "T" else None
    except ValueError:
        seconds = None
    if len(_seconds_cache) >= _MAX_CACHED_SECONDS:
        _seconds_cache.clear()
    _seconds_cache[key] = seconds
    return seconds


def to_epoch_ns(time: str) -> int | None:
    """An RFC3339 timestamp with up to 9 fraction digits as epoch nanoseconds, or None."""
    second, rest = time[:19], time[19:]
    nanos = 0
    if rest[:1] == ".":
        digits = len(rest) - len(rest[1:].lstrip("0123456789")) - 1
        if digits == 0:
            return None
        nanos = int((rest[1:1 + digits] + "00000000")[:9])
        rest = rest[1 + digits:]
    seconds = epoch_seconds(second, rest)
    if seconds is None:
        return None
    if rest == "Z":
        if len(utc_second_ns) >= _MAX_CACHED_SECONDS:
            utc_second_ns.clear()
        utc_second_ns[second] = seconds * 1_000_000_000
    return seconds * 1_000_000_000 + nanos


def group_streams(groups: list[Entries]) -> list[Entries]:
    """Groups of the same stream merged, each stream's entries in time order (stable: equal
    times keep read order)."""
    by_stream: dict[str, list[Entries]] = {}
    for group in groups:
        by_stream.setdefault(group.labels.text, []).append(group)
    streams = []
    for parts in by_stream.values():
        if len(parts) == 1:
            stream = parts[0]
        else:
            metadata = None if all(part.metadata is None for part in parts) else _joined(
                part.metadata or ((),) * len(part) for part in parts)
            stream = Entries(parts[0].labels, _joined(part.times for part in parts),
                             _joined(part.lines for part in parts), metadata,
                             _joined(part.chunks for part in parts))
        times = stream.times
        if sorted(times) != list(times):  # a file's lines are in time order but for clock steps
            order = sorted(range(len(times)), key=times.__getitem__)
            metadata = None if stream.metadata is None else tuple(map(stream.metadata.__getitem__, order))
            stream = Entries(stream.labels, tuple(map(times.__getitem__, order)),
                             tuple(map(stream.lines.__getitem__, order)), metadata,
                             tuple(map(stream.chunks.__getitem__, order)))
        streams.append(stream)
    return streams


def _joined(columns) -> tuple:
    joined = []
    for column in columns:
        joined += column  # a copy of pointers, where a tuple from chain() goes item by item
    return tuple(joined)


class ProtobufBodies:
    """Protobuf push bodies built in two buffers kept from one push to the next (each as large
    as the largest push so far): as fresh objects, a push's megabyte uncompressed and its
    compressed form were each mapped from the kernel (glibc serves blocks that large with mmap)
    and faulted in page by page on every push (measured in bench_loki: 0.04 us per entry more).
    The body returned is a copy: the next push may be built while this one is in flight."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self._compressed = bytearray()

    def build(self, streams: list[Entries]) -> tuple[bytes, int]:
        """A ``logproto.PushRequest``, snappy block-compressed (unframed) as Promtail sends it, and
        its size uncompressed."""
        # Serialised stream by stream, as PushRequests of one stream: protobuf reads concatenated
        # messages as one, their repeated fields appended, and only a push of a single stream
        # needs a serialisation buffer as large as itself.
        parts = [_one_stream_request(stream) for stream in streams]
        size = sum(map(len, parts))
        if len(self._raw) < size:
            self._raw = bytearray(size)
        raw = memoryview(self._raw)[:size]
        start = 0
        for part in parts:
            end = start + len(part)
            raw[start:end] = part
            start = end
        bound = cramjam.snappy.compress_raw_max_len(raw)
        if len(self._compressed) < bound:
            self._compressed = bytearray(bound)
        length = cramjam.snappy.compress_raw_into(raw, self._compressed)
        return bytes(memoryview(self._compressed)[:length]), size


def protobuf_body(streams: list[Entries]) -> tuple[bytes, int]:
    """``ProtobufBodies.build`` for a single push (the dead-letter replay)."""
    return ProtobufBodies().build(streams)


def _one_stream_request(stream: Entries) -> bytes:
    request = PushRequest()
    message = request.streams.add(labels=stream.labels.text)
    # All the stream's entries at once, each with its timestamp present, parsed by the library
    # from its own serialisation: no Python wrapper per added entry or per timestamp stub (whose
    # arenas made upb call malloc_trim, which handed warm pages back to the kernel).
    message.MergeFromString(_ENTRY_WITH_TIMESTAMP * len(stream))
    entries = message.entries
    for entry, (seconds, nanos), line in zip(entries, map(divmod, stream.times, repeat(1_000_000_000)),
                                             stream.lines):
        entry.line = line
        timestamp = entry.timestamp
        timestamp.seconds = seconds
        timestamp.nanos = nanos
    if stream.metadata is not None:
        for entry, pairs in zip(entries, stream.metadata):
            if pairs:
                # Added in the entry's arena: a LabelPairAdapter of its own would be copied in and
                # its arena freed, and upb trims the whole heap every 10000 such frees.
                add_pair = entry.structuredMetadata.add
                for name, value in pairs:
                    add_pair(name=name, value=value)
    return request.SerializeToString()


def json_body(streams: list[Entries]) -> bytes:
    """``{"streams":[{"stream":{...},"values":[["<ns>","<line>"(,{metadata})],...]}]}``."""
    return orjson.dumps({"streams": [
        {
            "stream": stream.labels.pairs,
            "values": [
                [str(ts_ns), line, dict(pairs)] if pairs else [str(ts_ns), line]
                for ts_ns, line, pairs in zip(stream.times, stream.lines,
                                              repeat((), len(stream)) if stream.metadata is None else stream.metadata)
            ],
        }
        for stream in streams
    ]})
