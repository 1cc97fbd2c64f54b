"""Tail + decode + records + Loki push (protobuf + snappy) into the strict receiver.

The corpus is bench_pipeline's (200k lines: half text, 30% app JSON, 10% KubeArmor, 10% Falco)
read with ``json.mode: off``: a Loki line is the original message, so nothing is parsed. The
receiver runs in its own process in count-only mode, without rate limits or the 7-day age limit
(the corpus is dated 2026-11-20), so its CPU is not counted and it does not throttle.

Prints lines/s (wall time until Loki answered every push) and CPU microseconds per line of the
shipper's process (all threads), and beside each run the same pipeline into a sink that acks at
once, so the Loki sink's own share shows even when the machine's speed drifts. Exits 1 when CPU per line is above the target (default 4 us
on one core) or when the receiver did not store every line.

    python benchmarks/bench_loki.py [--lines 200000] [--files 20] [--repeat 3] [--target-us 4] [--encoding json]
"""

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_pipeline import write_corpus  # noqa: E402
from shipper.config import Config, InputConfig, SinkConfig  # noqa: E402
from shipper.malloc_tuning import tune_malloc  # noqa: E402
from shipper.metrics import Metrics  # noqa: E402
from shipper.parse.records import JsonOptions  # noqa: E402
from shipper.pipeline import Input, Pipeline  # noqa: E402
from shipper.sinks.loki import LokiSink  # noqa: E402
from shipper.sinks.loki_options import PROMTAIL_BATCH, LokiOptions  # noqa: E402
from shipper.sinks.options import DeliveryOptions  # noqa: E402


def serve_receiver() -> int:
    """The receiver process: count-only, unthrottled, any date; stats as JSON on SIGTERM."""
    from tests.receivers.loki import LokiLimits, LokiReceiver

    limits = LokiLimits(reject_old_samples=False, ingestion_rate_bytes_per_s=1 << 40,
                        ingestion_burst_size_bytes=1 << 40)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with LokiReceiver(limits=limits, count_only=True) as receiver:
        print(receiver.url, flush=True)
        stopping.wait()
    print(json.dumps(receiver.stats.as_dict()), flush=True)
    return 0


class AckingSink:
    """Acks every chunk at once: the pipeline's own cost, run beside the Loki sink's so the
    sink's share stays readable on a machine whose speed drifts."""

    name = "acking"
    buffered_bytes = 0

    async def start(self) -> None:
        pass

    def accept(self, records, offsets, source, ack_range) -> None:
        ack_range.ack()

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


def run_once(directory: str, url: str | None, encoding: str) -> tuple[int, float, float, float]:
    """One pass over the corpus into Loki at ``url`` (None: into ``AckingSink``):
    ``(entries delivered, CPU seconds, wall seconds, push bytes before compression)``."""
    options = LokiOptions(
        delivery=DeliveryOptions(endpoints=(url or "http://unused",), batch=PROMTAIL_BATCH,
                                 dead_letter_path=os.path.join(directory, "dead-letter.ndjson")),
        encoding=encoding,
    )
    config = Config(
        source="bench",
        inputs=(InputConfig(name="bench", paths=(os.path.join(directory, "*.log"),), sinks=("loki",),
                            json=JsonOptions(mode="off")),),
        sinks={"loki": SinkConfig(name="loki", type="loki", options=options)},
        metrics_listen=None,
    )
    metrics = Metrics()
    sink = LokiSink("loki", options, metrics) if url else AckingSink()
    pipeline = Pipeline(config, [Input.from_config(config.inputs[0], [sink])], metrics, one_shot=True,
                        persist_positions=False)
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(pipeline.run())  # a one-shot run drains the sink: every push answered
    delivered = metrics.value("shipper_sink_records_total", sink="loki") if url else metrics.value(
        "shipper_records_total")
    return (int(delivered), time.process_time() - cpu, time.perf_counter() - wall,
            metrics.value("shipper_sink_sent_bytes_total", sink="loki"))


def main() -> int:
    tune_malloc()  # as the shipper's process does at start
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target-us", type=float, default=4.0)
    parser.add_argument("--encoding", choices=("protobuf", "json"), default="protobuf")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        return serve_receiver()
    receiver = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-receiver"],
                                stdout=subprocess.PIPE, text=True)
    try:
        url = receiver.stdout.readline().strip()
        with tempfile.TemporaryDirectory(prefix="shipper-bench-") as directory:
            size = write_corpus(directory, args.lines, args.files)
            print(f"corpus: {args.lines} lines in {args.files} files, {size / 1e6:.1f} MB; "
                  f"{args.encoding} pushes to {url}")
            best = None
            for attempt in range(args.repeat):
                delivered, cpu, wall, sent = run_once(directory, url, args.encoding)
                if delivered != args.lines:
                    print(f"FAIL: {delivered} entries delivered for {args.lines} lines", file=sys.stderr)
                    return 1
                us = cpu / delivered * 1e6
                _, pipeline_cpu, _, _ = run_once(directory, None, args.encoding)
                pipeline_us = pipeline_cpu / args.lines * 1e6
                print(f"run {attempt + 1}: {delivered / wall:,.0f} lines/s, {us:.2f} CPU us/line "
                      f"(the pipeline alone {pipeline_us:.2f}, the Loki sink {us - pipeline_us:.2f}), "
                      f"{wall:.2f}s wall, {sent / 1e6:.1f} MB of pushes before compression")
                best = us if best is None else min(best, us)
    finally:
        receiver.send_signal(signal.SIGTERM)
        stats = json.loads(receiver.stdout.readline() or "{}")
        receiver.wait(timeout=30)
    stored = stats.get("entries_stored", 0)
    print(f"receiver: {stats.get('push_requests')} pushes, answers {stats.get('responses')}, "
          f"{stats.get('entries_received')} entries received, {stored} stored")
    if stored != args.lines * args.repeat:
        print(f"FAIL: the receiver stored {stored} entries for {args.lines * args.repeat} lines", file=sys.stderr)
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    verdict = "PASS" if best <= args.target_us else "FAIL"
    print(f"{verdict}: best {best:.2f} CPU us/line (target <= {args.target_us}), peak RSS {peak_mb:.0f} MB")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
