"""Caps on app JSON so one pod cannot blow an Elasticsearch mapping or the parser.

An object nested deeper than ``max_depth`` (the message object itself is depth 1; objects
and arrays both count) or holding more than ``max_fields`` keys in total (nested keys
counted) is not merged: the message ships as plain text, flagged ``json_too_deep`` or
``json_too_many_fields``.

Cost: ``RecordBuilder`` calls ``walk`` only when a cap *could* be exceeded: nesting depth ``d``
needs at least ``d`` of ``{``/``[`` in the text (one C pass counts them; characters inside
strings only over-count), and ``n`` keys need at least ``4 * n`` characters (``"":0``). So
ordinary messages pay one C pass and never walk.
"""

TOO_DEEP = 1
TOO_MANY_FIELDS = 2


def walk(root, max_depth: int, max_fields: int) -> int:
    """0 when ``root`` is within both caps, else TOO_DEEP or TOO_MANY_FIELDS (the first found)."""
    # Iterative, so a deep object cannot hit Python's recursion limit.
    fields = 0
    stack = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if depth > max_depth:
            return TOO_DEEP
        if type(value) is dict:
            fields += len(value)
            if fields > max_fields:
                return TOO_MANY_FIELDS
            children = value.values()
        else:
            children = value
        for child in children:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))
    return 0
