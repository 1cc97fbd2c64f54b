"""An event's own time (KubeArmor ``UpdatedTime``, Falco ``time``) as ``@timestamp``, validated."""

import re

from shipper.parse.timestamps import to_timestamp_ms

_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def rfc3339_to_ms(time) -> str | None:
    """``time`` (RFC 3339, any offset) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, or None when it is not a time."""
    if type(time) is not str or len(time) < 20 or time[10:11] != "T":
        return None
    timestamp = to_timestamp_ms(time)
    if timestamp is None or _MS.fullmatch(timestamp) is None:
        return None
    return timestamp
