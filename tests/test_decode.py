"""CRI and docker json-file decoding, one case per line shape the runtimes write."""

import pytest

from shipper.decode import flags
from shipper.decode.cri import CriDecoder
from shipper.decode.docker import DockerDecoder

T = "2026-11-20T10:00:00.123456789Z"


def decode(decoder, data: bytes, offset: int = 0) -> list[tuple]:
    out: list[tuple] = []
    assert data.endswith(b"\n")
    decoder.decode(data[:-1].split(b"\n"), offset, out)
    return out


@pytest.mark.parametrize(
    "line, expected",
    [
        (f"{T} stdout F hello world", (0, T, "stdout", b"hello world", 0)),
        (f"{T} stderr F  two leading spaces kept", (0, T, "stderr", b" two leading spaces kept", 0)),
        (f"{T} stdout F ", (0, T, "stdout", b"", 0)),  # empty message, as containerd writes it
        (f"{T} stdout F", (0, T, "stdout", b"", 0)),  # no space after the tag at all
        (f"{T} stdout X:unknown anything not P is a full line", (0, T, "stdout", b"anything not P is a full line", 0)),
        ("2024-05-01T10:00:00.123456789+02:00 stdout F cri-o", (0, "2024-05-01T10:00:00.123456789+02:00", "stdout", b"cri-o", 0)),
        ("Segmentation fault", (0, None, None, b"Segmentation fault", flags.MALFORMED)),
        ("not-a-time stdout F hello", (0, None, None, b"not-a-time stdout F hello", flags.MALFORMED)),
        (f"{T} stdin F wrong stream", (0, None, None, f"{T} stdin F wrong stream".encode(), flags.MALFORMED)),
        ("", (0, None, None, b"", flags.MALFORMED)),
    ],
)
def test_cri_line(line, expected):
    assert decode(CriDecoder(1 << 20), line.encode() + b"\n") == [expected]


def test_cri_offsets_are_line_starts():
    data = f"{T} stdout F a\n{T} stdout F bb\n{T} stdout F ccc\n".encode()
    first = len(f"{T} stdout F a\n")
    second = first + len(f"{T} stdout F bb\n")
    assert [line[0] for line in decode(CriDecoder(1 << 20), data, offset=100)] == [100, 100 + first, 100 + second]


def test_cri_partials_join_with_first_offset_and_time():
    data = f"{T} stdout P aaa\n2026-11-20T10:00:01Z stdout P:more bbb\n2026-11-20T10:00:02Z stdout F ccc\n".encode()
    assert decode(CriDecoder(1 << 20), data) == [(0, T, "stdout", b"aaabbbccc", 0)]


def test_cri_partials_join_per_stream_when_streams_interleave():
    data = (
        f"{T} stdout P out-1 \n{T} stderr F err whole\n{T} stderr P err-1 \n"
        f"{T} stdout F out-2\n{T} stderr F err-2\n"
    ).encode()
    lines = decode(CriDecoder(1 << 20), data)
    assert [(line[2], line[3]) for line in lines] == [
        ("stderr", b"err whole"),
        ("stdout", b"out-1 out-2"),
        ("stderr", b"err-1 err-2"),
    ]
    assert lines[1][0] == 0  # the joined stdout line starts where its first part does


def test_cri_partial_waits_across_chunks_and_reports_its_offset():
    decoder = CriDecoder(1 << 20)
    first = f"{T} stdout F before\n{T} stdout P part-one \n".encode()
    assert decode(decoder, first) == [(0, T, "stdout", b"before", 0)]
    waiting_at = len(f"{T} stdout F before\n")
    assert decoder.partials.oldest_offset() == waiting_at
    second = f"{T} stdout F part-two\n".encode()
    assert decode(decoder, second, offset=len(first)) == [(waiting_at, T, "stdout", b"part-one part-two", 0)]
    assert decoder.partials.oldest_offset() is None


def test_cri_joined_line_over_the_cap_is_truncated_and_flagged():
    decoder = CriDecoder(max_record_bytes=10)
    data = f"{T} stdout P 123456\n{T} stdout P 789012\n{T} stdout F 345\n{T} stdout F next\n".encode()
    lines = decode(decoder, data)
    assert lines[0][3] == b"1234567890" and lines[0][4] == flags.TRUNCATED
    assert lines[1][3] == b"next" and lines[1][4] == 0


def test_cri_flush_hands_out_unfinished_partials_flagged():
    decoder = CriDecoder(1 << 20)
    decode(decoder, f"{T} stdout P never finished\n".encode())
    assert decoder.partials.flush() == [(0, T, "stdout", b"never finished", flags.UNFINISHED_PARTIAL)]
    assert decoder.partials.oldest_offset() is None


@pytest.mark.parametrize(
    "line, expected",
    [
        (b'{"log":"hello\\n","stream":"stdout","time":"2026-11-20T10:00:00.1Z"}',
         (0, "2026-11-20T10:00:00.1Z", "stdout", "hello", 0)),
        (b'{"log":"\\u003chtml\\u003e \\u0026\\n","stream":"stderr","attrs":{"tag":"x"},"time":"2026-11-20T10:00:00Z"}',
         (0, "2026-11-20T10:00:00Z", "stderr", "<html> &", 0)),
        (b'{"log":"no stream\\n","time":"2026-11-20T10:00:00Z"}',
         (0, None, None, b'{"log":"no stream\\n","time":"2026-11-20T10:00:00Z"}', flags.MALFORMED)),
        (b'{"log":1,"stream":"stdout"}', (0, None, None, b'{"log":1,"stream":"stdout"}', flags.MALFORMED)),
        (b'{"log":"cut', (0, None, None, b'{"log":"cut', flags.MALFORMED)),
        (b'[1,2]', (0, None, None, b'[1,2]', flags.MALFORMED)),
        (b'{"log":"x\\n","stream":"stdout","time":5}', (0, "5", "stdout", "x", 0)),  # a time not a string
    ],
)
def test_docker_line(line, expected):
    assert decode(DockerDecoder(1 << 20), line + b"\n") == [expected]


def test_docker_split_message_is_joined_per_stream():
    first = b'{"log":"aaaa","stream":"stdout","time":"2026-11-20T10:00:00.1Z"}\n'
    data = (
        first + b'{"log":"err\\n","stream":"stderr","time":"2026-11-20T10:00:00.2Z"}\n'
        b'{"log":"bbbb\\n","stream":"stdout","time":"2026-11-20T10:00:00.3Z"}\n'
    )
    lines = decode(DockerDecoder(1 << 20), data)
    assert [(line[0], line[1], line[3]) for line in lines] == [
        (len(first), "2026-11-20T10:00:00.2Z", "err"),
        (0, "2026-11-20T10:00:00.1Z", "aaaabbbb"),
    ]
