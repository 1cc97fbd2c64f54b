"""kill -9 in the middle of shipping to Elasticsearch, then a restart: every line is one
document, none twice, because ids come from file identity and offset and actions are create."""

import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import cri
from tests.receivers.elasticsearch import Delay, ElasticsearchReceiver

LINES = 40_000


def start_shipper(config) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_mid_shipping_and_restart_gives_every_line_exactly_once(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(cri("2026-11-20T10:00:00.5Z", "stdout", "F", f"line {i}") for i in range(LINES)))
    with ElasticsearchReceiver(count_only=True) as es:
        # A slow node, so the kill lands mid-way however fast or loaded this machine is.
        es.inject(*[Delay(0.1)] * (LINES // 500))
        config = tmp_path / "shipper.yaml"
        config.write_text(
            f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 2}}\n"
            "metrics: {listen: null}\n"
            f"inputs: {{app: {{paths: ['{log}'], sinks: [es]}}}}\n"
            f"sinks: {{es: {{type: elasticsearch, endpoints: ['{es.url}'], batch: {{max_records: 500}}}}}}\n"
        )
        first = start_shipper(config)
        try:
            wait_until(lambda: es.count() >= LINES // 3, timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        at_kill = es.count()
        assert at_kill < LINES, "the kill came too late to test anything"
        second = start_shipper(config)
        try:
            wait_until(lambda: es.count() == LINES, timeout=120)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, second.stderr.read().decode()
        finally:
            second.kill()
        line_starts = {0} | {i + 1 for i, byte in enumerate(log.read_bytes()[:-1]) if byte == ord("\n")}
        index = es.indices()[0]
        assert {int(doc_id.rsplit("-", 1)[1], 16) for doc_id in es.ids(index)} == line_starts
        assert es.count() == LINES
        replayed = es.stats.bulk_items - LINES  # items answered 409: stored before the kill
        assert replayed > 0, "the restart re-sent nothing: the 409 path was not exercised"
        print(f"kill -9 after {at_kill} documents; the restart re-sent {replayed} already stored (409)")
