"""Test doubles for the pipeline's edges: a sink that records what it got and acks on demand."""

import asyncio
import os
import threading
import time
from collections.abc import Callable

from shipper.acks import AckRange
from shipper.config import Config, InputConfig, SinkConfig
from shipper.metrics import Metrics
from shipper.pipeline import Input, Pipeline


class CollectingSink:
    """Keeps every record it is given; acks at once, or only when told (``auto_ack=False``)."""

    buffered_bytes = 0

    def __init__(self, name: str = "collect", auto_ack: bool = True) -> None:
        self.name = name
        self.auto_ack = auto_ack
        self.records: list[dict] = []
        self.offsets: list[int] = []
        self.unacked: list[AckRange] = []

    async def start(self) -> None:
        pass

    def accept(self, records, offsets, source, ack_range) -> None:
        self.records.extend(records)
        self.offsets.extend(offsets)
        if self.auto_ack:
            ack_range.ack()
        else:
            self.unacked.append(ack_range)

    def ack_first(self, count: int) -> None:
        for ack_range in self.unacked[:count]:
            ack_range.ack()
        del self.unacked[:count]

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def messages(self) -> list[str]:
        return [record.get("log") for record in self.records]


def make_config(tmp_path, paths, **settings) -> Config:
    inputs = (InputConfig(name=settings.pop("input_name", "test"), paths=tuple(paths), sinks=("collect",),
                          **settings.pop("input_settings", {})),)
    return Config(
        source="test",
        inputs=inputs,
        sinks={"collect": SinkConfig(name="collect", type="stdout")},
        positions_path=str(tmp_path / "positions.json"),
        metrics_listen=None,
        **settings,
    )


def make_pipeline(config: Config, sinks: list, **options) -> tuple[Pipeline, Metrics]:
    metrics = Metrics()
    inputs = [Input.from_config(inp, sinks) for inp in config.inputs]
    return Pipeline(config, inputs, metrics, **options), metrics


async def run_until(pipeline: Pipeline, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run a following pipeline until ``condition()`` holds, then stop it and wait for it."""
    task = asyncio.create_task(pipeline.run())
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if task.done():
                task.result()
                raise AssertionError("pipeline ended before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.01)
    finally:
        pipeline.stop()
        await task


async def ship(pipeline: Pipeline, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run a following pipeline until ``condition()`` holds (or it ends), then stop it."""
    task = asyncio.create_task(pipeline.run())
    try:
        await wait_for(lambda: condition() or task.done(), timeout)
        if task.done():
            task.result()
    finally:
        pipeline.stop()
        await task


def acknowledged(pipeline: Pipeline, path) -> bool:
    """Every byte of the file at ``path`` is acknowledged by every sink."""
    size = os.path.getsize(path)
    return any(t.path == str(path) and t.acks.checkpoint == size for t in pipeline.files.values())


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` from inside a running scenario until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def cri(time: str, stream: str, tag: str, content: str | bytes) -> bytes:
    content = content.encode() if isinstance(content, str) else content
    return f"{time} {stream} {tag} ".encode() + content + b"\n"


# ---- continuous writers for rotation scenarios ----------------------------------------------

WRITER_TIME = "2026-11-20T10:00:00.000000001Z"


def numbered_line(number: int, name: str = "line") -> bytes:
    """One CRI line, message ``<name> <number>``; every file's first line is unique."""
    return cri(WRITER_TIME, "stdout", "F", f"{name} {number:07d}")


def line_numbers(messages: list[str]) -> list[int]:
    return [int(message.split()[1]) for message in messages]


def received_line(sink: "CollectingSink") -> Callable[[int], bool]:
    """``seen`` for a ``LogWriter``: whether ``sink`` got line ``number`` or a later one yet."""
    def seen(number: int) -> bool:
        return bool(sink.records) and int(sink.records[-1]["log"].split()[1]) >= number
    return seen


class LogWriter(threading.Thread):
    """Appends lines numbered ``start``..``total``-1 to ``path`` from a thread while the pipeline runs,
    the way a container runtime does (one unbuffered write per line, a short pause every
    ``pause_every`` lines). Every ``rotate_every`` lines it calls ``rotate(writer, number)``,
    which renames, copies, truncates, deletes or retargets, sets ``writer.handle`` to where
    the next lines go, and returns the next number to write (it may write some lines itself).

    ``seen(number)`` tells whether the shipper has received line ``number``: a rotation waits
    until the shipper saw the first line of the current file. A file created, rotated and
    deleted before any reader looked is out of every reader's reach (kubelet rotates at 10 MiB,
    not every 50 ms); this keeps the scenario about rotation, not about discovery latency,
    while the shipper is still mid-file when the rotation happens."""

    def __init__(self, path, total: int, rotate_every: int, rotate: Callable[["LogWriter", int], int],
                 seen: Callable[[int], bool], pause_every: int = 100, start: int = 0, name: str = "line") -> None:
        super().__init__(daemon=True)
        self.path = str(path)
        self.total = total
        self.rotate_every = rotate_every
        self.rotate = rotate
        self.seen = seen
        self.pause_every = pause_every
        self.start_number = start
        self.name = name
        self.rotations = 0
        self.error: BaseException | None = None
        self.handle = open(self.path, "ab", buffering=0)

    def run(self) -> None:
        try:
            number = file_start = self.start_number
            next_rotation = number + self.rotate_every
            while number < self.total:
                if number >= next_rotation:
                    deadline = time.monotonic() + 10
                    while not self.seen(file_start) and time.monotonic() < deadline:
                        time.sleep(0.002)
                    number = file_start = self.rotate(self, number)
                    self.rotations += 1
                    next_rotation += self.rotate_every
                    continue
                self.handle.write(numbered_line(number, self.name))
                if number % self.pause_every == 0:
                    time.sleep(0.001)
                number += 1
            self.handle.close()
        except BaseException as error:  # surfaced by finished()
            self.error = error

    def finished(self) -> bool:
        if self.error is not None:
            raise AssertionError("writer failed") from self.error
        return not self.is_alive()


async def follow_while_writing(pipeline: Pipeline, writers: list, done: Callable[[], bool],
                               timeout: float = 60.0) -> None:
    """Run ``pipeline`` while ``writers`` write, until they finished and ``done()`` holds (or
    ``timeout``: the caller's assertions on what arrived then say what is missing)."""
    task = asyncio.create_task(pipeline.run())
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + timeout
    try:
        while not (all(writer.finished() for writer in writers) and done()) and time.monotonic() < deadline:
            if task.done():
                task.result()
                raise AssertionError("pipeline ended while following")
            await asyncio.sleep(0.02)
        # a few more rounds: duplicates, if any, would arrive now
        await asyncio.sleep(0.2)
    finally:
        pipeline.stop()
        await task


def held_until_dead_letters_can_be_written(pipeline: Pipeline, log, blocker, delivered: Callable[[], bool]) -> None:
    """Run ``pipeline`` while ``blocker`` (a file where the dead-letter directory should be)
    keeps the dead-letter file from being written: once the accepted records are ``delivered``
    the refused one holds ``log``'s position; removing ``blocker`` lets it be written and acked."""

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(delivered)
        await asyncio.sleep(0.5)
        assert not acknowledged(pipeline, log)  # the refused line holds the position
        os.unlink(blocker)  # the operator frees the path
        await wait_for(lambda: acknowledged(pipeline, log))
        pipeline.stop()
        await task

    asyncio.run(scenario())
