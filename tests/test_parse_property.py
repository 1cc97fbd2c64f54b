"""Property: whatever a container writes, decode + parse never raise and lose no line.

Arbitrary bytes go through CriDecoder / DockerDecoder and RecordBuilder; every record must
encode with orjson (as a sink does). A line yields one record, or is a split-line part held
until its final part or flush() (and then belongs to exactly one record).
"""

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.decode.cri import CriDecoder
from shipper.decode.docker import DockerDecoder
from shipper.parse.records import JsonOptions, RecordBuilder

KUBE = orjson.Fragment(b'{"pod_name":"p"}')
T = b"2026-11-20T10:00:00.123456789Z"

# Bytes with a bias towards what matters: JSON punctuation, CRI framing, bad UTF-8.
messages = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"a"', b":", b",", b"1", b"NaN", b"\xff", b"\xc3",
                              b"1e400", b"123456789012345678901234", b'"@timestamp"', b'"HostName"',
                              b'"Timestamp"', b'"Operation"', b'"output_fields"', b'"rule"', b'"priority"',
                              b"stdout", b"F ", b"P ", b" "]), max_size=60).map(b"".join),
).map(lambda m: m.replace(b"\n", b""))


def run(decoder, lines: list[bytes], json: JsonOptions) -> tuple[list, list]:
    decoded: list = []
    decoder.decode(lines, 0, decoded)
    decoded += decoder.partials.flush()
    records, offsets = [], []
    RecordBuilder(json).build(decoded, KUBE, records, offsets)
    assert len(records) == len(offsets) == len(decoded)
    for record in records:
        orjson.dumps(record)
    return records, offsets


def line_offsets(lines: list[bytes]) -> list[int]:
    result, offset = [], 0
    for line in lines:
        result.append(offset)
        offset += len(line) + 1
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=20), st.sampled_from([JsonOptions(), JsonOptions(mode="key"), JsonOptions(max_depth=2, max_fields=3)]))
def test_cri_arbitrary_lines(lines, json):
    _, offsets = run(CriDecoder(1 << 20), lines, json)
    starts = line_offsets(lines)
    assert set(offsets) <= set(starts)
    assert len(offsets) == len(set(offsets))  # each line in at most one record
    assert (len(offsets) >= 1) == (len(lines) >= 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"stdout", b"stderr"]), st.sampled_from([b"F", b"P"]), messages), max_size=20))
def test_cri_framed_lines_one_record_each(items):
    lines = [T + b" " + stream + b" " + tag + b" " + message for stream, tag, message in items]
    _, offsets = run(CriDecoder(1 << 20), lines, JsonOptions())
    starts = line_offsets(lines)
    # Every F line and every first P of a run (per stream) starts a record; nothing else does.
    expected, open_streams = [], set()
    for start, (stream, tag, _) in zip(starts, items):
        if stream not in open_streams:
            expected.append(start)
        if tag == b"P":
            open_streams.add(stream)
        else:
            open_streams.discard(stream)
    assert sorted(offsets) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=20))
def test_docker_arbitrary_lines(lines):
    _, offsets = run(DockerDecoder(1 << 20), lines, JsonOptions())
    assert set(offsets) <= set(line_offsets(lines))
    assert len(offsets) == len(set(offsets))


# A docker line's "time" is whatever JSON the file holds: usually the runtime's string.
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
times = st.one_of(st.just(T.decode()), st.none(), int64, st.floats(), st.booleans(), st.text(max_size=40),
                  st.lists(int64, max_size=2), st.dictionaries(st.text(max_size=3), int64, max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(messages, times), max_size=20))
def test_docker_framed_lines_one_record_each(items):
    lines = [orjson.dumps({"log": body.decode("utf-8", "replace") + "\n", "stream": "stdout", "time": time})
             for body, time in items]
    records, offsets = run(DockerDecoder(1 << 20), lines, JsonOptions())
    assert offsets == line_offsets(lines)
