"""Decoded lines to records: the record layout every sink receives.

Layout (compatible with fluentd-kubernetes-daemonset + kubernetes_metadata, so existing
``logstash-*`` dashboards keep working)::

    {...app JSON keys (json.mode: top): a merged object is the record, its own keys first...
     "@timestamp": "2026-11-20T10:00:00.123Z",          # UTC, milliseconds
     "@timestamp_nanos": "2026-11-20T10:00:00.123456789Z",  # the runtime's timestamp verbatim
     "stream": "stdout",
     "log": "the message",                              # unless keep_raw is off and JSON merged
     "<json.key>": {...} (json.mode: key),
     "kubernetes": {"pod_name": ..., "namespace_name": ..., ...},
     "shipper": {"flags": ["invalid_utf8", ...]}}       # only when something was repaired

A merged object is not copied: the shipper's keys are added to the parsed dict (copying a
KubeArmor alert's 30 fields into a new dict cost 0.8 us a line in bench_parse), so its
keys come first in the document; Elasticsearch and Loki's JSON lines do not depend on order.

Collision precedence: the shipper's own keys (``RESERVED_KEYS``) always win. An app JSON key
that collides is kept, renamed to ``app_<key>`` (``@`` dropped: ``@timestamp`` becomes
``app_timestamp``), and counted; nothing the app wrote is lost.

Hostile JSON (README "Records"): an object deeper than ``JsonOptions.max_depth`` or with more
than ``max_fields`` keys in total is not merged (plain message, flagged ``json_too_deep`` /
``json_too_many_fields``); see ``json_limits``. KubeArmor and Falco objects are recognised by
shape and get stable types (``kubearmor``, ``falco``).
"""

from dataclasses import dataclass
from fnmatch import fnmatchcase
from operator import itemgetter

import orjson

from shipper.decode import flags as line_flags
from shipper.parse import falco, kubearmor
from shipper.parse.json_limits import TOO_DEEP, walk
from shipper.parse.timestamps import now_ms, to_timestamp_ms

RESERVED_KEYS = ("@timestamp", "@timestamp_nanos", "stream", "log", "kubernetes", "shipper")
_RESERVED = frozenset(RESERVED_KEYS)

# Record flags beyond the decoder's (shipper.decode.flags): set while parsing the message.
JSON_TOO_DEEP = 1 << 8  # nested deeper than json.max_depth: not merged, shipped as text
JSON_TOO_MANY_FIELDS = 1 << 9  # more than json.max_fields keys in total: not merged, shipped as text
KUBEARMOR_BAD_SEVERITY = 1 << 10  # KubeArmor Severity not an integer: kept as Severity_raw
FLAG_NAMES = {
    **line_flags.NAMES,
    JSON_TOO_DEEP: "json_too_deep",
    JSON_TOO_MANY_FIELDS: "json_too_many_fields",
    KUBEARMOR_BAD_SEVERITY: "kubearmor_bad_severity",
}


def flag_names(flags: int) -> list[str]:
    """The names of the bits set in ``flags`` (decoder and parser flags), in a stable order."""
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


@dataclass(frozen=True)
class JsonOptions:
    mode: str = "top"  # top: merge at the top level; key: under `key`; off: leave the message alone
    key: str = "log_json"
    keep_raw: bool = True  # keep the message text in `log` when it parsed as a JSON object
    max_depth: int = 20  # deeper objects are not merged (flag json_too_deep); the object is depth 1
    max_fields: int = 1000  # objects with more keys in total, nested counted, are not merged


@dataclass(frozen=True)
class SecurityOptions:
    """KubeArmor relay and Falco messages (recognised by shape, and by container when known)."""

    enabled: bool = True
    event_time: bool = False  # @timestamp from the event's own time instead of the runtime's
    kubearmor_containers: tuple = ("kubearmor*",)  # fnmatch patterns; kubearmor-relay* included
    falco_containers: tuple = ("falco*",)


@dataclass
class BuildCounts:
    """What one call to ``RecordBuilder.build`` repaired or noticed, for the metrics."""

    flagged: dict  # flag name -> records
    json_merged: int = 0
    json_key_conflicts: int = 0
    kubearmor: int = 0  # KubeArmor relay events recognised
    falco: int = 0  # Falco events recognised


class RecordBuilder:
    """Builds the records of one input; holds only configuration, no per-file state."""

    __slots__ = ("_json", "_security", "_containers")

    def __init__(self, json: JsonOptions, security: SecurityOptions = SecurityOptions()) -> None:
        self._json = json
        self._security = security
        self._containers: dict = {}  # container name -> (may be KubeArmor, may be Falco)

    def _kinds(self, container) -> tuple:
        if not self._security.enabled:
            return False, False
        if container is None:  # not told: recognise by shape alone
            return True, True
        kinds = self._containers.get(container)
        if kinds is None:
            security = self._security
            kinds = (
                any(fnmatchcase(container, p) for p in security.kubearmor_containers),
                any(fnmatchcase(container, p) for p in security.falco_containers),
            )
            if len(self._containers) < 10000:
                self._containers[container] = kinds
        return kinds

    def build(self, lines: list[tuple], kubernetes, out: list, offsets: list, container=None) -> BuildCounts:
        """Append one record per decoded line to ``out`` and its byte offset to ``offsets``.

        ``kubernetes`` is the file's metadata, pre-encoded once per file (an orjson.Fragment).
        ``container`` (the container name, when known) limits KubeArmor/Falco recognition to
        the configured container patterns; without it they are recognised by shape alone.
        """
        flagged: dict = {}
        merged = conflicts = kubearmor_events = falco_events = 0
        mode, json_key, keep_raw = self._json.mode, self._json.key, self._json.keep_raw
        max_depth, max_fields = self._json.max_depth, self._json.max_fields
        max_fields_chars = 4 * max_fields
        maybe_kubearmor, maybe_falco = self._kinds(container)
        event_time = self._security.event_time
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        to_ms = to_timestamp_ms
        reserved = _RESERVED
        append = out.append
        for _, time, stream, content, flags in lines:
            if type(content) is bytes:
                try:
                    message = content.decode()
                except UnicodeDecodeError:
                    message = content.decode("utf-8", "replace")
                    flags |= line_flags.INVALID_UTF8
            else:
                message = content
            # containerd's UTC form with 3 or more fraction digits inline (most lines).
            if time is not None and len(time) > 23 and time[-1] == "Z" and time[19] == ".":
                timestamp = time[:23] + "Z"
            else:
                timestamp = to_ms(time) if time is not None else None
                if timestamp is None:
                    if time is not None:
                        flags |= line_flags.BAD_TIME
                    timestamp = now_ms()
            record = None
            if mode != "off" and message[:1] == "{":
                try:
                    parsed = loads(message)
                except JSONDecodeError as error:
                    parsed = None
                    if "depth" in str(error):  # orjson's own limit (1024 levels)
                        flags |= JSON_TOO_DEEP
                # A cap could only be exceeded with more than max_depth of '{'/'[', or (a key takes
                # at least 4 characters) a message over 4 * max_fields long: only then walk.
                if type(parsed) is dict and (
                    (
                        len(content) - len(content.translate(None, b"{["))  # one C pass over the bytes
                        if type(content) is bytes
                        else message.count("{") + message.count("[")
                    ) > max_depth
                    or len(message) > max_fields_chars
                ):
                    limit = walk(parsed, max_depth, max_fields)
                    if limit == TOO_DEEP:
                        flags |= JSON_TOO_DEEP
                        parsed = None
                    elif limit:
                        flags |= JSON_TOO_MANY_FIELDS
                        parsed = None
                if type(parsed) is dict:
                    merged += 1
                    if maybe_kubearmor and "HostName" in parsed and kubearmor.is_kubearmor(parsed):
                        kubearmor_events += 1
                        if kubearmor.normalise(parsed):
                            flags |= KUBEARMOR_BAD_SEVERITY
                        if event_time:
                            timestamp = kubearmor.event_time_ms(parsed) or timestamp
                    elif maybe_falco and "output_fields" in parsed and falco.is_falco(parsed):
                        falco_events += 1
                        falco.normalise(parsed)
                        if event_time:
                            timestamp = falco.event_time_ms(parsed) or timestamp
                    if mode == "top" and parsed.keys().isdisjoint(reserved):
                        # The parsed object becomes the record (see the module's docstring).
                        record = parsed
                        record["@timestamp"] = timestamp
                        record["@timestamp_nanos"] = time
                        record["stream"] = stream
                        if keep_raw:
                            record["log"] = message
                    else:
                        record = {"@timestamp": timestamp, "@timestamp_nanos": time, "stream": stream}
                        if keep_raw:
                            record["log"] = message
                        if mode == "key":
                            record[json_key] = parsed
                        else:
                            conflicts += _merge_renaming(record, parsed)
            if record is None:
                record = {"@timestamp": timestamp, "@timestamp_nanos": time, "stream": stream, "log": message,
                          "kubernetes": kubernetes}
            else:
                record["kubernetes"] = kubernetes
            if flags:
                names = flag_names(flags)
                record["shipper"] = {"flags": names}
                for name in names:
                    flagged[name] = flagged.get(name, 0) + 1
            append(record)
        offsets.extend(map(itemgetter(0), lines))  # one record per line, in order
        return BuildCounts(flagged, merged, conflicts, kubearmor_events, falco_events)


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
