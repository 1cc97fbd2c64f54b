"""``kill -9`` in the middle of pushes, then a restart: no entry missing, and the entries sent
again are identical to the first attempt, so Loki drops them as duplicates."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.helpers import cri
from tests.receivers.loki import Fault, LokiReceiver
from tests.test_sink_loki import fixed_clock, pod_log


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def saved_offset(tmp_path) -> int:
    try:
        (entry,) = orjson.loads((tmp_path / "positions.json").read_bytes())["files"]
    except (FileNotFoundError, ValueError):
        return 0
    return entry["offset"]


@pytest.mark.slow
def test_kill_9_mid_push_and_restart_loses_nothing_and_replays_identical_entries(tmp_path):
    log = pod_log(tmp_path)
    count = 6000
    # Distinct nanosecond times, and a pair of equal times whose lines differ: both must stay.
    times = [f"2026-11-20T10:{i // 6000:02d}:{(i // 100) % 60:02d}.{i:09d}Z" for i in range(count)]
    times[11] = times[10]
    with open(log, "wb") as handle:
        handle.write(b"".join(cri(time, "stdout", "F", f"line {i}") for i, time in enumerate(times)))
    config = tmp_path / "shipper.yaml"
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        config.write_text(
            f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 0.05}}\n"
            "read: {poll_interval_secs: 0.02, chunk_bytes: 16384}\n"
            "metrics: {listen: null}\n"
            f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [loki]}}}}\n"
            f"sinks: {{loki: {{type: loki, endpoints: ['{loki.url}'], max_in_flight_requests: 2,\n"
            f"  batch: {{max_bytes: 16384, flush_secs: 0.05}}, dead_letter_path: {tmp_path}/dead.ndjson}}}}\n"
        )
        # Two pushes answered, then two written by Loki but never answered before the kill.
        loki.inject_fault(Fault.SLOW_RESPONSE, count=2, delay_s=0)
        loki.inject_fault(Fault.SLOW_RESPONSE, count=2, delay_s=120)
        command = [sys.executable, "-m", "shipper", "run", "--config", str(config)]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # Both senders wait for an answer: no fifth push comes.
            wait_until(lambda: loki.stats.push_requests == 4 and saved_offset(tmp_path) > 0)
            time.sleep(0.2)  # a checkpoint that could (wrongly) cover the unanswered pushes would be written by now
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        written_before_kill = loki.stats.entries_stored
        checkpoint = saved_offset(tmp_path)
        assert 0 < checkpoint < os.path.getsize(log)  # only what Loki answered for
        with open(log, "rb") as handle:
            acknowledged_lines = handle.read(checkpoint).count(b"\n")
        assert written_before_kill > acknowledged_lines
        second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: saved_offset(tmp_path) == os.path.getsize(log))
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=20) == 0, second.stderr.read().decode()
        finally:
            second.kill()
        entries = loki.entries()
        stats = loki.stats
    assert [entry.line for entry in entries] == [f"line {i}" for i in range(count)]
    assert entries[10].ts_ns == entries[11].ts_ns
    # The unanswered pushes were sent again, identical: Loki dropped exactly those entries.
    assert stats.entries_deduplicated == written_before_kill - acknowledged_lines
    assert stats.entries_received == stats.entries_stored + stats.entries_deduplicated
    assert not (tmp_path / "dead.ndjson").exists()
