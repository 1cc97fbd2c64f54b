"""Container runtime log formats: CRI and docker json-file, with partial-line reassembly.

A decoder turns one chunk of a file (whole lines only) into decoded lines: plain tuples
``(offset, time, stream, content, flags)`` where ``offset`` is the byte offset of the line's
first byte in the file, ``time`` the runtime's timestamp string (``None`` if the line had
none), ``stream`` ``"stdout"``/``"stderr"`` (``None`` if unknown), ``content`` the message
(bytes for CRI, str for docker) and ``flags`` a bit set of :mod:`shipper.decode.flags`.
Tuples, not objects: this runs once per line on every node.
"""
