"""The whole shipper process into Elasticsearch: ``shipper run`` as a subprocess tails a
generated corpus (the bench_pipeline mix) and ships it to the strict receiver in count-only
mode until every record is indexed, then gets SIGTERM.

Reports lines/s, CPU microseconds per line for the whole process (tail, decode, parse,
enrich, encode, send, checkpoint, and its start-up) from the child's rusage, and peak RSS.
Exits 1 above the targets (8 us/line, 80 MB), so it can gate a change.

    python benchmarks/bench_es.py [--lines 200000] [--files 20] [--repeat 3] [--gzip]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from bench_pipeline import write_corpus  # noqa: E402

from tests.receivers.elasticsearch import ElasticsearchReceiver  # noqa: E402


def run_once(directory: str, lines: int, compression: str, in_flight: int | None) -> dict:
    with ElasticsearchReceiver(count_only=True) as es:
        config = os.path.join(directory, "shipper.yaml")
        positions = os.path.join(directory, "positions.json")
        if os.path.exists(positions):
            os.unlink(positions)
        with open(config, "w") as handle:
            handle.write(
                f"positions: {{path: {positions}}}\n"
                "metrics: {listen: null}\n"
                + (f"buffer: {{max_in_flight_bytes: {in_flight}}}\n" if in_flight else "") +
                f"inputs: {{all: {{paths: ['{directory}/*.log'], sinks: [es]}}}}\n"
                f"sinks: {{es: {{type: elasticsearch, endpoints: ['{es.url}'], compression: {compression},"
                f" dead_letter_path: {directory}/dead-letter.ndjson}}}}\n"
            )
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", config],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while es.count() < lines:
            if child.poll() is not None:
                raise SystemExit(f"shipper exited early:\n{child.stderr.read().decode()}")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        child.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise SystemExit(f"shipper exited with {status}:\n{child.stderr.read().decode()}")
        return {
            "lines_per_s": lines / elapsed,
            "cpu_us_per_line": (usage.ru_utime + usage.ru_stime) / lines * 1e6,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "documents": es.count(),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gzip", action="store_true", help="compress request bodies")
    parser.add_argument("--max-in-flight-bytes", type=int, help="buffer.max_in_flight_bytes (default: shipper's)")
    parser.add_argument("--target-us", type=float, default=8.0)
    parser.add_argument("--target-rss-mb", type=float, default=80.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        write_corpus(directory, args.lines, args.files)
        runs = [run_once(directory, args.lines, "gzip" if args.gzip else "none", args.max_in_flight_bytes) for _ in range(args.repeat)]
    for number, run in enumerate(runs, 1):
        print(f"run {number}: {run['lines_per_s']:,.0f} lines/s, {run['cpu_us_per_line']:.2f} CPU us/line, "
              f"peak RSS {run['peak_rss_mb']:.1f} MB, {run['documents']} documents")
    cpu = statistics.median(run["cpu_us_per_line"] for run in runs)
    rss = max(run["peak_rss_mb"] for run in runs)
    verdict = cpu <= args.target_us and rss <= args.target_rss_mb
    print(f"median {cpu:.2f} CPU us/line (target {args.target_us}), peak RSS {rss:.1f} MB "
          f"(target {args.target_rss_mb}): {'PASS' if verdict else 'FAIL'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
