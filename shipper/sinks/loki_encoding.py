"""Loki push bodies: entries grouped per stream, time-ordered, as protobuf+snappy or JSON.

An entry is the tuple ``(ts_ns, line, metadata, chunk)`` (epoch nanoseconds, the line,
structured metadata pairs, the number of the chunk it came from): one small tuple per record.
The sink hands entries over in groups ``(labels, entries)``, one per chunk and stream.

Protobuf goes through the generated ``loki_push_pb2`` (upb, the C implementation): measured at
0.87 us per entry including serialisation, the same as the best hand-written Python encoder
(0.85 us, 2.3 us for a plain one), so the library keeps the wire format right at no cost. Snappy
is the raw block format (``cramjam.snappy.compress_raw``), which Loki's ``snappy.Decode``
expects, not the framed one.

Timestamps are the runtime's own (``@timestamp_nanos``, RFC3339 with nanoseconds and any
offset) to the nanosecond, so a replay after a crash sends entries identical to the first
attempt and Loki drops the duplicates.
"""

from datetime import datetime, timezone
from operator import itemgetter

import cramjam
import orjson

from shipper.sinks.loki_push_pb2 import LabelPairAdapter, PushRequest

_seconds_cache: dict[str, int | None] = {}
# containerd's form, 'YYYY-MM-DDTHH:MM:SS' of a '...Z' time -> epoch ns: the sink's fast path.
utc_second_ns: dict[str, int] = {}
_MAX_CACHED_SECONDS = 100000
_by_time = itemgetter(0)


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


def group_streams(groups: list[tuple]) -> list[tuple[object, list[tuple]]]:
    """Groups ``(labels, entries)`` of the same stream merged, each stream's entries in time
    order (stable: equal times keep read order)."""
    streams: dict[str, tuple[object, list]] = {}
    for labels, entries in groups:
        stream = streams.get(labels.text)
        if stream is None:
            streams[labels.text] = (labels, list(entries))
        else:
            stream[1].extend(entries)
    for _, stream_entries in streams.values():
        stream_entries.sort(key=_by_time)  # linear when already ordered, as a file's lines are
    return list(streams.values())


def protobuf_body(streams: list[tuple[object, list[tuple]]]) -> tuple[bytes, bytes]:
    """A ``logproto.PushRequest``, snappy block-compressed (unframed) as Promtail sends it, and
    its uncompressed bytes."""
    request = PushRequest()
    add_stream = request.streams.add
    for labels, entries in streams:
        add_entry = add_stream(labels=labels.text).entries.add
        for ts_ns, line, metadata, _ in entries:
            entry = add_entry(line=line)
            timestamp = entry.timestamp
            timestamp.seconds, timestamp.nanos = divmod(ts_ns, 1_000_000_000)
            if metadata:
                entry.structuredMetadata.extend(LabelPairAdapter(name=n, value=v) for n, v in metadata)
    raw = request.SerializeToString()
    return cramjam.snappy.compress_raw(raw).read(), raw


def json_body(streams: list[tuple[object, list[tuple]]]) -> bytes:
    """``{"streams":[{"stream":{...},"values":[["<ns>","<line>"(,{metadata})],...]}]}``."""
    return orjson.dumps({"streams": [
        {
            "stream": labels.pairs,
            "values": [
                [str(ts_ns), line, dict(metadata)] if metadata else [str(ts_ns), line]
                for ts_ns, line, metadata, _ in entries
            ],
        }
        for labels, entries in streams
    ]})
