"""Decoded lines to records: the record layout every sink receives.

Layout (compatible with fluentd-kubernetes-daemonset + kubernetes_metadata, so existing
``logstash-*`` dashboards keep working)::

    {"@timestamp": "2026-11-20T10:00:00.123Z",          # UTC, milliseconds
     "@timestamp_nanos": "2026-11-20T10:00:00.123456789Z",  # the runtime's timestamp verbatim
     "stream": "stdout",
     "log": "the message",                              # unless keep_raw is off and JSON merged
     ...app JSON keys (json.mode: top) or "<json.key>": {...} (json.mode: key)...
     "kubernetes": {"pod_name": ..., "namespace_name": ..., ...},
     "shipper": {"flags": ["invalid_utf8", ...]}}       # only when something was repaired

Collision precedence: the shipper's own keys (``RESERVED_KEYS``) always win. An app JSON key
that collides is kept, renamed to ``app_<key>`` (``@`` dropped: ``@timestamp`` becomes
``app_timestamp``), and counted; nothing the app wrote is lost.
"""

from dataclasses import dataclass

import orjson

from shipper.decode import flags as line_flags
from shipper.parse.timestamps import now_ms, to_timestamp_ms

RESERVED_KEYS = ("@timestamp", "@timestamp_nanos", "stream", "log", "kubernetes", "shipper")
_RESERVED = frozenset(RESERVED_KEYS)


@dataclass(frozen=True)
class JsonOptions:
    mode: str = "top"  # top: merge at the top level; key: under `key`; off: leave the message alone
    key: str = "log_json"
    keep_raw: bool = True  # keep the message text in `log` when it parsed as a JSON object


@dataclass
class BuildCounts:
    """What one call to ``RecordBuilder.build`` repaired or noticed, for the metrics."""

    flagged: dict  # flag name -> records
    json_merged: int = 0
    json_key_conflicts: int = 0


class RecordBuilder:
    """Builds the records of one input; holds only configuration, no per-file state."""

    __slots__ = ("_json",)

    def __init__(self, json: JsonOptions) -> None:
        self._json = json

    def build(self, lines: list[tuple], kubernetes, out: list, offsets: list) -> BuildCounts:
        """Append one record per decoded line to ``out`` and its byte offset to ``offsets``.

        ``kubernetes`` is the file's metadata, pre-encoded once per file (an orjson.Fragment).
        """
        counts = BuildCounts(flagged={})
        mode, json_key, keep_raw = self._json.mode, self._json.key, self._json.keep_raw
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        to_ms = to_timestamp_ms
        reserved = _RESERVED
        append, append_offset = out.append, offsets.append
        for offset, time, stream, content, flags in lines:
            if type(content) is bytes:
                try:
                    message = content.decode()
                except UnicodeDecodeError:
                    message = content.decode("utf-8", "replace")
                    flags |= line_flags.INVALID_UTF8
            else:
                message = content
            # containerd's UTC form inline (most lines); everything else via to_timestamp_ms.
            if time is not None and time[-1:] == "Z" and time[19:20] == ".":
                timestamp = time[:19] + "." + (time[20:-1] + "000")[:3] + "Z"
            else:
                timestamp = to_ms(time) if time is not None else None
            if timestamp is None:
                if time is not None:
                    flags |= line_flags.BAD_TIME
                timestamp = now_ms()
            record = {"@timestamp": timestamp, "@timestamp_nanos": time, "stream": stream, "log": message}
            if mode != "off" and message[:1] == "{":
                try:
                    parsed = loads(message)
                except JSONDecodeError:
                    parsed = None
                if type(parsed) is dict:
                    counts.json_merged += 1
                    if not keep_raw:
                        del record["log"]
                    if mode == "key":
                        record[json_key] = parsed
                    elif reserved.isdisjoint(parsed):
                        record.update(parsed)
                    else:
                        counts.json_key_conflicts += _merge_renaming(record, parsed)
            record["kubernetes"] = kubernetes
            if flags:
                record["shipper"] = {"flags": line_flags.names(flags)}
                for name in line_flags.names(flags):
                    counts.flagged[name] = counts.flagged.get(name, 0) + 1
            append(record)
            append_offset(offset)
        return counts


def _merge_renaming(record: dict, parsed: dict) -> int:
    """Merge ``parsed`` into ``record``, renaming colliding keys; returns how many were renamed."""
    conflicts = 0
    for key, value in parsed.items():
        if key in _RESERVED:
            conflicts += 1
            key = "app_" + key.lstrip("@")
            while key in record or key in parsed:
                key = "_" + key
        record[key] = value
    return conflicts
