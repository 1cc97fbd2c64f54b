"""Test doubles for the pipeline's edges: a sink that records what it got and acks on demand."""

import asyncio
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
