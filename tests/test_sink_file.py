"""The file sink: every record once, as a JSON line, acknowledged after the write."""

import asyncio

import orjson

from shipper.metrics import Metrics
from shipper.sinks.json_lines import JsonLinesSink
from tests.helpers import cri, make_config, make_pipeline, run_until

T = "2026-11-20T10:00:00.5Z"


def test_records_are_appended_as_json_lines_and_acknowledged(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(cri(T, "stdout", "F", f"line {i}") for i in range(50)))
    out = tmp_path / "out.ndjson"
    out.write_bytes(orjson.dumps({"log": "from an earlier run"}) + b"\n")
    config = make_config(tmp_path, [str(tmp_path / "*.log")])
    sink = JsonLinesSink("collect", Metrics(), path=str(out))
    pipeline, _ = make_pipeline(config, [sink])

    def all_acknowledged() -> bool:
        return any(tailed.acks.checkpoint == log.stat().st_size for tailed in pipeline.files.values())

    asyncio.run(run_until(pipeline, all_acknowledged))
    lines = [orjson.loads(line)["log"] for line in out.read_bytes().splitlines()]
    assert lines == ["from an earlier run"] + [f"line {i}" for i in range(50)]
