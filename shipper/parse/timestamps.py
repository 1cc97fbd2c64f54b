"""Runtime timestamps (RFC3339Nano, any offset) to Elasticsearch's ``@timestamp`` form.

``@timestamp`` is written as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, what Fluent Bit's
Logstash_Format writes, so existing ``logstash-*`` index patterns and dashboards work.
containerd writes UTC with ``Z`` and trimmed trailing zeros: that common case is string
slicing. Other offsets (CRI-O writes ``+00:00`` or the host's local offset) go through
datetime, cached per second.
"""

from datetime import datetime, timezone
from functools import lru_cache


def to_timestamp_ms(time: str) -> str | None:
    """``time`` in UTC with millisecond precision, or None when it is not a valid timestamp."""
    if time[-1:] == "Z" and len(time) >= 20 and time[19:20] in (".", "Z"):
        return time[:19] + "." + (time[20:-1] + "000")[:3] + "Z"
    return _with_offset(time)


def _with_offset(time: str) -> str | None:
    # Split 'YYYY-MM-DDTHH:MM:SS[.fraction]<offset>' into the second, the fraction and the offset.
    second, fraction, zone = time[:19], "", time[19:]
    if zone[:1] == ".":
        digits = len(zone) - len(zone[1:].lstrip("0123456789")) - 1
        fraction, zone = zone[1 : 1 + digits], zone[1 + digits :]
    utc_second = _utc_second(second, zone)
    if utc_second is None:
        return None
    return utc_second + "." + (fraction + "000")[:3] + "Z"


@lru_cache(maxsize=4096)
def _utc_second(second: str, zone: str) -> str | None:
    try:
        parsed = datetime.fromisoformat(second + zone)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # no zone written: the kubelet's node clock is taken as UTC
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def now_ms() -> str:
    """The current time in the ``@timestamp`` form, for lines without a usable time."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
