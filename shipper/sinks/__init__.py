"""Destinations. Each sink encodes records into its own batches and acks byte ranges.

The contract every sink keeps (``Sink``): ``accept`` is synchronous and cheap (encode and
enqueue, no I/O wait), and a sink calls ``ack_range.ack()`` only once every record it was
given with that range is durably delivered. ``drain`` delivers everything accepted so far.
"""

from typing import Protocol

from shipper.acks import AckRange


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    def accept(self, records: list[dict], offsets: list[int], file_key: str, ack_range: AckRange) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...
