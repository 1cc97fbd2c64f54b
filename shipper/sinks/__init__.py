"""Destinations. Each sink encodes records into its own batches and acks byte ranges.

The contract every sink keeps (``Sink``): ``accept`` is synchronous and cheap (encode and
enqueue, no I/O wait), and a sink calls ``ack_range.ack()`` only once every record it was
given with that range is durably delivered (or dead-lettered). ``drain`` delivers everything
accepted so far.

``source`` says which file the records come from: ``source.identity.key`` is the file's
stable identity (the same after a restart, different for a new file at the same path), which
with a record's byte offset names the record for idempotent delivery; ``source.key`` is that
per input (the position key); ``source.path``; and ``source.kubernetes``, the file's
Kubernetes metadata as a dict (labels for Loki streams).
"""

from typing import Protocol

from shipper.acks import AckRange


class FileIdentityKey(Protocol):
    key: str


class Source(Protocol):
    identity: FileIdentityKey
    key: str
    path: str
    kubernetes: dict


class Sink(Protocol):
    name: str
    # Encoded bytes accepted and not yet delivered; the pipeline pauses reading at its budget.
    buffered_bytes: int

    async def start(self) -> None: ...

    def accept(self, records: list[dict], offsets: list[int], source: Source, ack_range: AckRange) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...
