"""KubeArmor relay alerts and logs (PROTOCOLS.md section 4): stable types for dashboards.

A parsed message object is KubeArmor's when it has ``HostName``, ``Timestamp`` or
``UpdatedTime``, and ``Operation`` or ``Type`` (and, when the container name is known, the
container matches the KubeArmor patterns). KubeArmor's own field names stay as they are (what
the Fluentd parser gives today); only the types of the fields dashboards aggregate on are
fixed, in place:

- ``Severity``: an integer. KubeArmor writes a string ``"1"``..``"10"``; a value that is not an
  integer moves to ``Severity_raw`` (as a string) and the record is flagged
  ``kubearmor_bad_severity``, so the integer mapping never sees a string.
- ``Type``, ``Operation``, ``Action``, ``Result``: strings
  (a non-string is written as its JSON text).
- ``Timestamp``: an integer (Unix seconds); a value that is not moves to ``Timestamp_raw``.
"""

from datetime import datetime, timezone

import orjson

from shipper.parse.event_time import rfc3339_to_ms

BAD_SEVERITY = 1
_KEYWORDS = ("Type", "Operation", "Action", "Result")
_SEVERITIES = {str(level): level for level in range(11)}  # what KubeArmor writes, as integers


def is_kubearmor(parsed: dict) -> bool:
    return (
        "HostName" in parsed
        and ("Timestamp" in parsed or "UpdatedTime" in parsed)
        and ("Operation" in parsed or "Type" in parsed)
    )


def normalise(parsed: dict) -> int:
    """Fix the types in place; returns BAD_SEVERITY or 0."""
    problems = 0
    get = parsed.get
    severity = get("Severity")
    value = _SEVERITIES.get(severity) if type(severity) is str else None
    if value is not None:  # "1".."10": the common case
        parsed["Severity"] = value
    elif severity is not None and type(severity) is not int:
        value = _as_int(severity)
        if value is None:
            del parsed["Severity"]
            parsed["Severity_raw"] = severity if type(severity) is str else orjson.dumps(severity).decode()
            problems = BAD_SEVERITY
        else:
            parsed["Severity"] = value
    # The common case (every keyword a string or absent) in one expression.
    if not (
        type(get("Type", "")) is str and type(get("Operation", "")) is str and type(get("Action", "")) is str
        and type(get("Result", "")) is str
    ):
        for key in _KEYWORDS:
            value = get(key)
            if value is not None and type(value) is not str:
                parsed[key] = orjson.dumps(value).decode()
    stamp = get("Timestamp")
    if type(stamp) is not int and stamp is not None:
        value = _as_int(stamp)
        if value is None:
            del parsed["Timestamp"]
            parsed["Timestamp_raw"] = stamp if type(stamp) is str else orjson.dumps(stamp).decode()
        else:
            parsed["Timestamp"] = value
    return problems


def event_time_ms(parsed: dict) -> str | None:
    """The event's own time in the ``@timestamp`` form: ``UpdatedTime``, else ``Timestamp`` seconds."""
    timestamp = rfc3339_to_ms(parsed.get("UpdatedTime"))
    if timestamp is not None:
        return timestamp
    seconds = parsed.get("Timestamp")
    if type(seconds) is int and 0 <= seconds < 253402300800:  # before year 10000
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return None


def _as_int(value) -> int | None:
    if type(value) is str:
        if 0 < len(value) <= 18 and value.isascii():
            try:
                return int(value)  # accepts surrounding spaces, a sign and '_' separators
            except ValueError:
                return None
        return None
    if type(value) is float and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return None
