"""Falco JSON alerts (PROTOCOLS.md section 5): safe ``output_fields`` and a normalised level.

A parsed message object is Falco's when it has ``output_fields``, ``rule`` and ``priority``
(and, when the container name is known, the container matches the Falco patterns). ``rule``,
``priority``, ``output``, ``tags``, ``source``, ``hostname`` and ``time`` stay as Falco wrote
them. Two changes, in place:

- ``output_fields`` keys are **de-dotted** (``.`` -> ``_``): ``container.image`` and
  ``container.image.repository`` would be a value and an object at the same Elasticsearch
  path (a mapping error for the whole document). Nesting cannot fix that; de-dotting can, and
  gives the names Falco itself prints in ``output`` (``container_image_repository=...``).
  Should two keys de-dot to the same name, the later one gets a ``_`` prefix.
- ``level``: the priority mapped to ``critical`` (Emergency, Alert, Critical), ``error``,
  ``warning``, ``info`` (Notice, Informational) or ``debug``, case-insensitively; an unknown
  priority gives no ``level``. A ``level`` Falco already wrote is left alone.
"""

from shipper.parse.event_time import rfc3339_to_ms

LEVELS = {
    "emergency": "critical", "alert": "critical", "critical": "critical",
    "error": "error", "warning": "warning",
    "notice": "info", "informational": "info", "info": "info",
    "debug": "debug",
}

_DEDOTTED: dict = {}  # output_fields key tuple -> de-dotted names


def is_falco(parsed: dict) -> bool:
    return "output_fields" in parsed and "rule" in parsed and "priority" in parsed


def normalise(parsed: dict) -> None:
    fields = parsed["output_fields"]
    if type(fields) is dict:
        keys = tuple(fields)
        names = _DEDOTTED.get(keys)  # a rule writes the same keys every time
        if names is None:
            names = tuple(key.replace(".", "_") for key in keys)
            if len(_DEDOTTED) < 4096:
                _DEDOTTED[keys] = names
        dedotted = dict(zip(names, fields.values()))
        if len(dedotted) != len(fields):  # two keys met: redo keeping both
            dedotted = {}
            for key, value in fields.items():
                key = key.replace(".", "_")
                while key in dedotted:
                    key = "_" + key
                dedotted[key] = value
        parsed["output_fields"] = dedotted
    if "level" not in parsed:
        priority = parsed["priority"]
        if type(priority) is str:
            level = LEVELS.get(priority.lower())
            if level is not None:
                parsed["level"] = level


def event_time_ms(parsed: dict) -> str | None:
    return rfc3339_to_ms(parsed.get("time"))
