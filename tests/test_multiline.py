"""Multiline grouping: stack traces, tracebacks and panics become one record per container
stream, only where a rule names the container, with nothing lost at limits or restarts."""

import asyncio
import glob

import pytest

from shipper.cli import samples_glob
from shipper.config import ConfigError, parse_config
from shipper.decode.cri import CriDecoder
from shipper.decode.flags import MULTILINE_SPLIT
from shipper.decode.multiline import PRESETS, MultilineDecoder, MultilineRule
from tests.helpers import CollectingSink, cri, make_config, make_pipeline, run_until

T = "2026-11-20T10:00:00.5Z"


def group(lines: list[tuple[str, str]], rule: MultilineRule) -> list[tuple[str, str, int]]:
    """(stream, message) lines -> (stream, joined message, flags) records, flushed at the end."""
    decoder = MultilineDecoder(CriDecoder(1 << 20), rule)
    raw = [cri(T, stream, "F", message)[:-1] for stream, message in lines]
    out: list = []
    decoder.decode(raw, 0, out)
    out.extend(decoder.partials.flush())
    return [(stream, content.decode(), flags) for _offset, _time, stream, content, flags in out]


def preset(name: str, **limits) -> MultilineRule:
    return MultilineRule(("*",), PRESETS[name], starts=False, **limits)


PYTHON = [
    "ERROR:root:payment failed",
    "Traceback (most recent call last):",
    '  File "/app/pay.py", line 12, in charge',
    "    gateway.charge(card)",
    "ValueError: card declined",
    "INFO:root:next request",
]
GO = [
    "panic: runtime error: index out of range [5] with length 3",
    "",
    "goroutine 1 [running]:",
    "main.lookup(...)",
    "\t/src/main.go:12",
    "main.main()",
    "\t/src/main.go:20 +0x1d",
    "exit status 2",
]


@pytest.mark.parametrize(
    ("rule", "messages", "expected"),
    [
        (preset("python"), PYTHON, ["\n".join(PYTHON[:5]), "INFO:root:next request"]),
        (preset("go"), GO, ["\n".join(GO[:7]), "exit status 2"]),
        # A start pattern instead: every line not starting with a date continues the record.
        (MultilineRule(("*",), r"^\d{4}-\d{2}-\d{2}", starts=True),
         ["2026-11-20 ERROR boom", "detail one", "detail two", "2026-11-20 INFO ok"],
         ["2026-11-20 ERROR boom\ndetail one\ndetail two", "2026-11-20 INFO ok"]),
    ],
    ids=["python-traceback", "go-panic", "start-pattern"],
)
def test_continuation_lines_join_the_record_they_belong_to(rule, messages, expected):
    assert [m for _, m, _ in group([("stderr", m) for m in messages], rule)] == expected


def test_stdout_and_stderr_are_grouped_separately():
    lines = [("stderr", "java.lang.RuntimeException: x"), ("stdout", "GET /health 200"),
             ("stderr", "\tat A.b(A.java:1)"), ("stdout", "\tindented stdout line")]
    records = group(lines, preset("java"))
    assert sorted(records) == [("stderr", "java.lang.RuntimeException: x\n\tat A.b(A.java:1)", 0),
                               ("stdout", "GET /health 200\n\tindented stdout line", 0)]


def test_a_group_at_its_line_limit_is_cut_and_flagged_and_nothing_is_lost():
    lines = [("stderr", "Exception: boom")] + [("stderr", f"\tat f{i}()") for i in range(7)]
    records = group(lines, preset("java", max_lines=3))
    assert [m for _, m, _ in records] == ["Exception: boom\n\tat f0()\n\tat f1()", "\tat f2()\n\tat f3()\n\tat f4()",
                                          "\tat f5()\n\tat f6()"]
    assert [bool(f & MULTILINE_SPLIT) for _, _, f in records] == [True, True, False]


def sample_orders_api(tmp_path) -> tuple[list, int]:
    (path,) = glob.glob(samples_glob().replace("*.log", "orders-api-*.log"))
    rule = MultilineRule(("orders-api",), PRESETS["java"], starts=False)
    config = make_config(tmp_path, [path], input_settings={"multiline": (rule,)})
    sink = CollectingSink()
    pipeline, _ = make_pipeline(config, [sink], one_shot=True, persist_positions=False)
    asyncio.run(pipeline.run())
    return sink.records, sum(1 for _ in open(path, "rb"))


def test_the_sample_spring_stack_trace_is_one_record(tmp_path):
    records, lines = sample_orders_api(tmp_path)
    assert lines == 21 and len(records) == 5
    error = records[2]["log"].split("\n")
    assert error[0].split()[1] == "ERROR" and error[1].startswith("java.lang.IllegalStateException")
    assert error[-1] == "\t... 12 more" and len(error) == 17
    assert [r["log"].split()[1] for r in records] == ["INFO", "INFO", "ERROR", "WARN", "INFO"]


def test_containers_no_rule_names_are_left_alone(tmp_path):
    log = tmp_path / f"pod_ns_web-{'a' * 64}.log"
    log.write_bytes(cri(T, "stderr", "F", "Exception: x") + cri(T, "stderr", "F", "\tat A.b()"))
    rule = MultilineRule(("orders-*",), PRESETS["java"], starts=False)
    config = make_config(tmp_path, [str(log)], input_settings={"multiline": (rule,)})
    sink = CollectingSink()
    pipeline, _ = make_pipeline(config, [sink], one_shot=True, persist_positions=False)
    asyncio.run(pipeline.run())
    assert sink.messages == ["Exception: x", "\tat A.b()"]


def test_an_open_group_holds_the_checkpoint_ships_when_idle_and_replays_the_same_after_restart(tmp_path):
    log = tmp_path / f"pod_ns_app-{'a' * 64}.log"
    first = cri(T, "stderr", "F", "2026-11-20 INFO start")
    log.write_bytes(first + cri(T, "stderr", "F", "2026-11-20 ERROR boom") + cri(T, "stderr", "F", "\tat A.b()"))
    rule = MultilineRule(("app",), r"^\d{4}-", starts=True)
    config = make_config(tmp_path, [str(log)], input_settings={"multiline": (rule,)}, partial_flush_secs=60)
    sink = CollectingSink()
    pipeline, _ = make_pipeline(config, [sink])
    # The trace may go on: only the first record is shipped, the checkpoint stops before the trace.
    asyncio.run(run_until(pipeline, lambda: sink.messages == ["2026-11-20 INFO start"]))
    assert next(iter(pipeline.files.values())).acks.checkpoint == len(first)

    config = make_config(tmp_path, [str(log)], input_settings={"multiline": (rule,)}, partial_flush_secs=0.05)
    sink = CollectingSink()
    pipeline, _ = make_pipeline(config, [sink])
    asyncio.run(run_until(pipeline, lambda: len(sink.messages) == 1))
    assert sink.messages == ["2026-11-20 ERROR boom\n\tat A.b()"] and sink.offsets == [len(first)]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{preset: kotlin, containers: [a]}", "multiline[0].preset: must be one of java, python, go, got 'kotlin'"),
        ("{start: '^x', continue: '^y', containers: [a]}", "multiline[0]: needs exactly one of preset, start or continue"),
        ("{start: '(', containers: [a]}", "multiline[0].start: invalid regular expression"),
        ("{preset: java}", "multiline[0].containers: is required"),
    ],
)
def test_multiline_config_errors_name_the_key(rule, message):
    text = f"inputs: {{app: {{paths: [/x], sinks: [out], multiline: [{rule}]}}}}\nsinks: {{out: {{type: stdout}}}}\n"
    with pytest.raises(ConfigError, match=f"c.yaml: inputs.app.{message}".replace("[", r"\[").replace("(", r"\(")):
        parse_config(text, "c.yaml")
