"""Shutdown on signals: SIGINT does what SIGTERM does (drain, write positions, exit 0)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from shipper.tail.positions import load_positions

T = "2026-11-20T10:00:00.5Z"


def start_shipper(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes("".join(f"{T} stdout F line {i}\n" for i in range(1000)).encode())
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 60}}\n"
        "read: {poll_interval_secs: 0.05}\n"
        "metrics: {listen: null}\n"
        f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [out]}}}}\n"
        f"sinks: {{out: {{type: file, path: {tmp_path}/out.ndjson}}}}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = tmp_path / "out.ndjson"
    deadline = time.monotonic() + 20
    while b"line 999" not in (out.read_bytes() if out.exists() else b""):  # all read and acknowledged
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the shipper shipped nothing")
        time.sleep(0.02)
    return process, log


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_drains_writes_positions_and_exits_0(tmp_path, signum):
    process, log = start_shipper(tmp_path)
    try:
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    (entry,) = load_positions(str(tmp_path / "positions.json")).values()
    assert entry["offset"] == os.path.getsize(log)
    assert f"{signal.Signals(signum).name}: stopping" in process.stderr.read().decode()


@pytest.mark.slow
def test_a_second_signal_during_the_drain_exits_at_once_with_positions_consistent(tmp_path):
    """Elasticsearch unreachable: the drain would wait out the 60 s grace; the second signal
    does not. The positions file is only ever replaced atomically, so it loads."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "app.log").write_bytes(f"{T} stdout F line 0\n".encode())
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 0.05}}\n"
        "shutdown: {grace_secs: 60}\n"
        "metrics: {listen: null}\n"
        f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [es]}}}}\n"
        f"sinks: {{es: {{type: elasticsearch, endpoints: ['http://127.0.0.1:{port}']}}}}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True).start()

    def wait_for_log(text: str) -> None:
        deadline = time.monotonic() + 20
        while not any(text in line for line in stderr):
            assert process.poll() is None and time.monotonic() < deadline, "".join(stderr)
            time.sleep(0.02)

    try:
        wait_for_log("following")
        process.send_signal(signal.SIGTERM)
        wait_for_log("stopping; draining sinks")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
    assert any("second SIGINT: exiting at once" in line for line in stderr)
    load_positions(str(tmp_path / "positions.json"))  # whole, or absent: never torn
