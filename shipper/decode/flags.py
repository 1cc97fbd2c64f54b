"""Bit flags a decoded line or record can carry, and their names in records and metrics."""

MALFORMED = 1  # the runtime framing could not be parsed; the raw line is shipped as the message
TRUNCATED = 2  # the joined message exceeded max_record_bytes and was cut
NO_NEWLINE = 4  # the file ended without a final newline (only in one-shot reads, e.g. --dry-run)
UNFINISHED_PARTIAL = 8  # partial (P) parts flushed without their final part (idle timeout or EOF)
INVALID_UTF8 = 16  # invalid UTF-8 replaced with U+FFFD
BAD_TIME = 32  # the runtime timestamp could not be parsed; @timestamp is the read time
MULTILINE_SPLIT = 64  # a multiline group reached max_lines/max_bytes; its rest is the next record

NAMES = {
    MALFORMED: "malformed",
    TRUNCATED: "truncated",
    NO_NEWLINE: "no_newline",
    UNFINISHED_PARTIAL: "unfinished_partial",
    INVALID_UTF8: "invalid_utf8",
    BAD_TIME: "bad_time",
    MULTILINE_SPLIT: "multiline_split",
}
