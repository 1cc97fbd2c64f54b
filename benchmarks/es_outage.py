"""A 429 storm: Elasticsearch refuses every ``_bulk`` for ``--storm-secs`` (default 120) while
containers keep logging, then recovers. Checks that nothing is lost or duplicated and that
the shipper's RSS stays flat while it waits (the log files are the buffer, reading pauses at
``buffer.max_in_flight_bytes``).

``shipper run`` runs as a subprocess against the strict receiver (count-only); a writer
appends numbered CRI lines to 20 files at ``--rate`` lines/s for the storm and a little after.
Prints the figures and exits 1 when a line is missing or doubled, or RSS passed the bound.

    python benchmarks/es_outage.py [--storm-secs 120] [--rate 2000] [--rss-bound-mb 100]
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.receivers.elasticsearch import ElasticsearchReceiver, RejectRequest  # noqa: E402

FILES = 20


def write_lines(directory: str, rate: int, seconds: float, written: list[int]) -> None:
    """Append numbered lines round-robin to the files, ``rate`` per second, for ``seconds``."""
    handles = [open(os.path.join(directory, f"pod-{n}_ns_app-{n:064x}.log"), "ab") for n in range(FILES)]
    started = time.monotonic()
    number = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while number < due:
            handles[number % FILES].write(b"2026-11-20T10:00:00.000000001Z stdout F line %d\n" % number)
            number += 1
        for handle in handles:
            handle.flush()
        written[0] = number
        time.sleep(0.05)
    for handle in handles:
        handle.close()


def line_starts(directory: str) -> list[list[int]]:
    """Per log file, the offsets its lines start at; sorted, to compare without file names."""
    starts = []
    for name in os.listdir(directory):
        if name.endswith(".log"):
            with open(os.path.join(directory, name), "rb") as handle:
                data = handle.read()
            starts.append([0] + [i + 1 for i, byte in enumerate(data[:-1]) if byte == 10])
    return sorted(starts)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storm-secs", type=float, default=120)
    parser.add_argument("--rate", type=int, default=2000, help="lines written per second")
    parser.add_argument("--rss-bound-mb", type=float, default=100)
    args = parser.parse_args()
    metrics_port = 20220
    with tempfile.TemporaryDirectory() as directory, ElasticsearchReceiver(count_only=True) as es:
        es.inject(*[RejectRequest(429)] * 1_000_000)
        config = os.path.join(directory, "shipper.yaml")
        with open(config, "w") as handle:
            handle.write(
                f"positions: {{path: {directory}/positions.json}}\n"
                f"metrics: {{listen: '127.0.0.1:{metrics_port}'}}\n"
                f"inputs: {{all: {{paths: ['{directory}/*.log'], sinks: [es]}}}}\n"
                f"sinks: {{es: {{type: elasticsearch, endpoints: ['{es.url}'], retry: {{max_backoff_secs: 5}},"
                f" dead_letter_path: {directory}/dead-letter.ndjson}}}}\n"
            )
        written = [0]
        writer = threading.Thread(target=write_lines, args=(directory, args.rate, args.storm_secs + 10, written))
        writer.start()
        child = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", config],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        storm_rss = []
        while time.monotonic() - started < args.storm_secs:
            storm_rss.append(rss_mb(child.pid))
            time.sleep(0.5)
        retries = metric(metrics_port, "shipper_sink_retries_total")
        held = es.count()
        es.clear_faults()
        writer.join()
        deadline = time.monotonic() + 300
        recovery_rss = []
        while es.count() < written[0] and time.monotonic() < deadline:
            recovery_rss.append(rss_mb(child.pid))
            time.sleep(0.5)
        recovered_after = time.monotonic() - started - args.storm_secs
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
        documents, lines = es.count(), written[0]
        # Ids are <file>-<offset>: per file, one document per line start and nothing else.
        stored: dict[str, list[int]] = {}
        for index in es.indices():
            for doc_id in es.ids(index):
                file_id, offset = doc_id.rsplit("-", 1)
                stored.setdefault(file_id, []).append(int(offset, 16))
        exact = documents == lines and sorted(sorted(o) for o in stored.values()) == line_starts(directory)
    peak = max(storm_rss + recovery_rss)
    print(f"storm: {args.storm_secs:.0f}s of 429, {retries:.0f} retried requests, {held} documents indexed during it")
    print(f"lines written {lines}, documents {documents}, one per line start of every file: {exact}")
    print(f"RSS during the storm: first {storm_rss[1]:.1f} MB, max {max(storm_rss):.1f} MB; "
          f"peak overall {peak:.1f} MB (bound {args.rss_bound_mb:.0f} MB); caught up {recovered_after:.1f}s after "
          "the storm (the writer goes on 10 s past it)")
    ok = exact and peak <= args.rss_bound_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
