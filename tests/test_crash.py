"""kill -9 at random moments while a container writes and kubelet rotates: nothing is lost, and
what is shipped twice is only what was not yet checkpointed at the kill.

A writer thread appends 200k numbered lines to ``0.log`` and renames it to
``0.log.<timestamp>`` every 10k lines, as kubelet does. The shipper runs as a subprocess with
the acking file sink and is killed with SIGKILL 10 times at random moments, each time
restarted at once. Afterwards every line number is in the output. Duplicates are counted per
restart: a restart re-reads at most what was read but not yet durably checkpointed at the
kill, which the pipeline keeps under ``buffer.max_in_flight_bytes`` (plus the one chunk a
read may take past it), so each restart's duplicates must fit in that many bytes of lines.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from tests.helpers import numbered_line

TOTAL_LINES = 200_000
ROTATE_EVERY = 10_000
KILLS = 10
MAX_IN_FLIGHT_BYTES = 256 * 1024
CHUNK_BYTES = 64 * 1024
LINE_BYTES = len(numbered_line(0))


def write_and_rotate(log, stop: threading.Event) -> None:
    """~8k lines/s, so 200k lines take about 25 s: long enough for 10 kills and restarts."""
    handle = open(log, "ab", buffering=0)
    for number in range(TOTAL_LINES):
        if number and number % ROTATE_EVERY == 0:
            handle.close()
            os.rename(log, f"{log}.20261120-{number // ROTATE_EVERY:06d}")
            handle = open(log, "ab", buffering=0)
        handle.write(numbered_line(number))
        if number % 80 == 0:
            time.sleep(0.01)
        if stop.is_set():
            break
    handle.close()


def start_shipper(config) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shipped_numbers(out) -> tuple[list[int], int]:
    """Line numbers in output order, and how many output lines were torn by a kill mid-write
    (the part after a torn line, the restart's first record, is still read)."""
    numbers, torn = [], 0
    for line in out.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            torn += 1
            start = line.rfind(b'{"@timestamp"')
            if start <= 0:
                continue
            record = orjson.loads(line[start:])
        numbers.append(int(record["log"].split()[1]))
    return numbers, torn


@pytest.mark.slow
def test_kill_9_ten_times_while_writing_and_rotating_loses_nothing(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log, out = logs / "0.log", tmp_path / "out.ndjson"
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 0.5}}\n"
        f"read: {{chunk_bytes: {CHUNK_BYTES}, rescan_interval_secs: 0.2, rotate_wait_secs: 1}}\n"
        f"buffer: {{max_in_flight_bytes: {MAX_IN_FLIGHT_BYTES}}}\n"
        "metrics: {listen: null}\n"
        f"inputs: {{app: {{paths: ['{logs}/*.log'], sinks: [out]}}}}\n"
        f"sinks: {{out: {{type: file, path: {out}}}}}\n"
    )
    seed = int(os.environ.get("CRASH_SEED", time.time()))
    moments = random.Random(seed)
    stop_writing = threading.Event()
    writer = threading.Thread(target=write_and_rotate, args=(log, stop_writing))
    output_at_kill = []  # output size when each killed process was gone
    shipper = start_shipper(config)
    writer.start()
    try:
        for _ in range(KILLS):
            time.sleep(moments.uniform(0.5, 2.0))  # startup takes ~0.4 s: some kills land while resuming
            shipper.send_signal(signal.SIGKILL)
            shipper.wait()
            output_at_kill.append(out.stat().st_size if out.exists() else 0)
            shipper = start_shipper(config)
        writer.join(timeout=120)
        deadline = time.monotonic() + 120
        while len(set(shipped_numbers(out)[0])) < TOTAL_LINES and time.monotonic() < deadline:
            time.sleep(0.2)
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(timeout=30) == 0
    finally:
        stop_writing.set()
        shipper.kill()

    numbers, torn = shipped_numbers(out)
    missing = set(range(TOTAL_LINES)) - set(numbers)
    duplicates = len(numbers) - len(set(numbers))
    # Duplicates per restart: lines a restart shipped that an earlier run had shipped already.
    seen: set[int] = set()
    per_restart = []
    body = out.read_bytes()
    boundaries = [body.count(b"\n", 0, size) for size in output_at_kill] + [len(numbers)]
    previous = 0
    for boundary in boundaries:
        segment = numbers[previous:boundary]
        per_restart.append(sum(number in seen for number in segment))
        seen.update(segment)
        previous = boundary
    max_reread_bytes = max(per_restart) * LINE_BYTES
    first_seen_order = list(dict.fromkeys(numbers))
    print(f"\ncrash test (seed {seed}): {KILLS} kills, {TOTAL_LINES} lines in {TOTAL_LINES // ROTATE_EVERY} "
          f"files, {len(numbers)} shipped, {duplicates} duplicates, {len(missing)} missing, {torn} torn output "
          f"lines; duplicates per restart {per_restart[1:]}; max re-read {max_reread_bytes} bytes "
          f"(bound {MAX_IN_FLIGHT_BYTES + CHUNK_BYTES})")
    assert not missing, f"{len(missing)} lines lost, first {sorted(missing)[:10]}"
    assert first_seen_order == sorted(first_seen_order), "lines out of order"
    assert max_reread_bytes <= MAX_IN_FLIGHT_BYTES + CHUNK_BYTES
