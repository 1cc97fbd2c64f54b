"""The command line as a user runs it: dry run on the bundled samples, run + SIGTERM."""

import glob
import os
import signal
import subprocess
import sys

import orjson
import pytest

from shipper.cli import samples_glob

T = "2026-11-20T10:00:00.5Z"


def shipper(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipper", *args], capture_output=True, timeout=60, **kwargs)


def expected_records(path: str) -> int:
    """Physical lines, minus the parts that join into the line after them."""
    data = open(path, "rb").read()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if data.startswith(b"{"):
        joined = sum(1 for line in lines if not orjson.loads(line)["log"].endswith("\n"))
    else:
        joined = sum(1 for line in lines if len(line.split(b" ")) > 2 and line.split(b" ")[2] in (b"P", b"P:more"))
    return len(lines) - joined


def test_dry_run_prints_a_record_for_every_sample_line_from_any_directory(tmp_path):
    result = shipper("--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    sample_files = glob.glob(samples_glob())
    assert len(sample_files) >= 9
    assert len(records) == sum(expected_records(path) for path in sample_files)
    by_container = {}
    for record in records:
        by_container.setdefault(record["kubernetes"]["container_name"], []).append(record)
    # The KubeArmor relay's JSON alerts arrive with their own field names at the top level.
    alerts = [r for r in by_container["kubearmor-relay"] if r.get("Type") == "MatchedPolicy"]
    assert alerts and all(r["Action"] and r["Operation"] for r in alerts)
    assert any(r.get("rule") == "Terminal shell in container" for r in by_container["falco"])
    assert any("compaction" in r["log"] for r in by_container["etcd"])
    long_line = max((r["log"] for r in records), key=len)
    assert len(long_line) > 32768  # the P parts were joined into one record
    # The stack trace is still one record per line (multiline joining is its own feature).
    assert sum(1 for r in by_container["orders-api"] if r["log"].startswith("\tat ")) > 3
    flagged = [flag for r in records for flag in r.get("shipper", {}).get("flags", [])]
    assert {"malformed", "invalid_utf8", "no_newline"} <= set(flagged)
    summary = result.stderr.decode()
    assert f"-> {len(records)} records, {len(records)} printed" in summary
    for reason in ("malformed", "invalid_utf8", "no_newline"):
        assert f"{reason}={flagged.count(reason)}" in summary


def test_dry_run_with_a_path_reads_those_files(tmp_path):
    (tmp_path / "a.log").write_bytes(f"{T} stdout F one\n{T} stderr F two\n".encode())
    result = shipper("--dry-run", "--path", str(tmp_path / "*.log"))
    assert result.returncode == 0
    assert [orjson.loads(line)["log"] for line in result.stdout.splitlines()] == ["one", "two"]
    assert "dry run: 1 files, 2 lines" in result.stderr.decode()


def dry_run_alerts(tmp_path, security: str) -> list[dict]:
    config = tmp_path / "shipper.yaml"
    config.write_text(f"inputs: {{relay: {{paths: ['{samples_glob()}'], sinks: [out], security: {security}}}}}\n"
                      "sinks: {out: {type: stdout}}\n")
    result = shipper("--dry-run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    return [r for r in records if r["kubernetes"]["container_name"] == "kubearmor-relay" and "Severity" in r]


def test_security_options_from_the_config_reach_the_records(tmp_path):
    alerts = dry_run_alerts(tmp_path, "{event_time: true}")
    assert alerts and all(type(r["Severity"]) is int for r in alerts)
    # @timestamp is the alert's own UpdatedTime (to the millisecond), not the runtime's time
    assert all(r["@timestamp"] == r["UpdatedTime"][:23] + "Z" for r in alerts)
    # The relay's container no longer matches: its alerts are plain app JSON, Severity as written
    alerts = dry_run_alerts(tmp_path, "{kubearmor_containers: ['my-relay*']}")
    assert alerts and all(type(r["Severity"]) is str for r in alerts)


def test_dry_run_with_a_bad_config_exits_2_without_a_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("inputs: {a: {paths: [x], sinks: [out], formt: cri}}\nsinks: {out: {type: stdout}}\n")
    result = shipper("--dry-run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.decode() == f"config error: {config}: inputs.a.formt: unknown key (did you mean 'format'?)\n"


@pytest.mark.slow
def test_run_follows_files_and_saves_positions_on_sigterm(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(f"{T} stdout F first\n".encode())
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 60}}\n"
        "read: {poll_interval_secs: 0.05}\n"
        "metrics: {listen: null}\n"
        f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [out]}}}}\n"
        "sinks: {out: {type: stdout}}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert orjson.loads(process.stdout.readline())["log"] == "first"
        with open(log, "ab") as handle:
            handle.write(f"{T} stdout F second\n".encode())
        assert orjson.loads(process.stdout.readline())["log"] == "second"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    (entry,) = orjson.loads((tmp_path / "positions.json").read_bytes())["files"]
    assert entry["offset"] == os.path.getsize(log)
