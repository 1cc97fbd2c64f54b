"""The test LogQL parser and evaluator: it takes what the dashboards need, refuses malformed
queries with the place of the mistake, and evaluates as Loki does."""

from typing import NamedTuple

import pytest

from tests.receivers.logql import LogQLError, LogQuery, RangeAggregation, VectorAggregation, evaluate, parse, select

S = 10**9


class Entry(NamedTuple):
    labels: dict
    ts_ns: int
    line: str


@pytest.mark.parametrize("query", [
    '{container="etcd"} |= "compaction"',
    '{namespace=~".+", pod!="x", app!~"a|b"} != "debug" |~ "(?i)error" !~ `^\\s`',
    '{app="a"} | logfmt | level = "error" | duration >= 0.5',
    'sum by (namespace) (count_over_time({namespace=~".+"}[1m]))',
    'sum(rate({app="a"} | json | __error__="" [5m])) by (level)',
    'count_over_time({app="a"}[1h30m] | json | status == 500)',
    'max without (pod) (bytes_rate({app="a"}[10s]))',
    'sum by () (bytes_over_time({app="a"}[1m]))',
])
def test_the_supported_subset_parses(query):
    assert isinstance(parse(query), LogQuery | RangeAggregation | VectorAggregation)


@pytest.mark.parametrize(("query", "error"), [
    ('{container="etcd"', "col 18: unexpected end of query, expecting , or }"),
    ("{}", "col 2: unexpected '}', expecting identifier"),
    ('{app=~".*"}', "empty-compatible value"),
    ('{app="a"} |= compaction', "col 14: unexpected 'compaction', expecting string"),
    ('{app="a"} |= "open', "col 14: unterminated string"),
    ('{app="a"} |~ "("', "invalid regex"),
    ('{app="a"} |= "\\q"', "invalid escape \\q"),
    ('{app="a"} | json |', "expecting identifier"),
    ('{app="a"} | level > "x"', "> compares numbers"),
    ('{app="a"} | status =~ 5', "=~ compares strings"),
    ('count_over_time({app="a"})', "expecting ["),
    ('count_over_time({app="a"}[5x])', "expecting duration"),
    ('rate({app="a"}[1m5h])', "invalid duration '1m5h'"),
    ('rate({app="a"}[0s])', "a range must be positive"),
    ('sum by (namespace) count_over_time({a="b"}[1m])', "expecting ("),
    ('sum by (a) (count_over_time({a="b"}[1m])) by (a)', "grouping given twice"),
    ('sum({app="a"})', "expecting identifier"),
    ('avg_over_time({app="a"}[1m])', "unexpected 'avg_over_time'"),
    ('{app="a"} extra', "unexpected 'extra', expecting end of query"),
    ('{app="a"} | line_format "{{.x}}"', "unexpected '\"{{.x}}\"'"),
])
def test_malformed_queries_are_refused_with_where_and_why(query, error):
    with pytest.raises(LogQLError) as refused:
        parse(query)
    assert error in str(refused.value)


ENTRIES = [
    Entry({"app": "a", "pod": "a-1"}, 10 * S, '{"level":"error","http":{"status":500},"tags":["x"]}'),
    Entry({"app": "a", "pod": "a-2"}, 20 * S, '{"level":"info","http":{"status":200},"app":"shadow"}'),
    Entry({"app": "a", "pod": "a-2"}, 30 * S, "plain text, not JSON"),
    Entry({"app": "b", "pod": "b-1"}, 40 * S, "level=warn msg=\"slow request\" took=1.5"),
]


def test_json_flattens_objects_and_keeps_stream_labels():
    kept = select(parse('{app="a"} | json | __error__=""'), ENTRIES)
    assert [labels for labels, _, _ in kept] == [
        {"app": "a", "pod": "a-1", "level": "error", "http_status": "500"},
        {"app": "a", "pod": "a-2", "level": "info", "http_status": "200", "app_extracted": "shadow"},
    ]
    (labels, _, line), = select(parse('{app="a"} | json | __error__!=""'), ENTRIES)
    assert labels["__error__"] == "JSONParserErr" and line == "plain text, not JSON"


def test_label_filters_compare_strings_and_numbers():
    assert [e[2] for e in select(parse('{app=~"a|b"} | json | http_status >= 500'), ENTRIES)] == [ENTRIES[0].line]
    assert [e[0]["msg"] for e in select(parse('{app="b"} | logfmt | took > 1 | level=~"w.*"'), ENTRIES)] == [
        "slow request"]


def test_metric_queries_count_the_window_and_group():
    query = parse('sum by (app) (count_over_time({app=~".+"}[30s]))')
    assert evaluate(query, ENTRIES, at_ns=40 * S) == {(("app", "a"),): 2.0, (("app", "b"),): 1.0}
    assert evaluate(parse('sum(rate({app="a"}[20s]))'), ENTRIES, at_ns=30 * S) == {(): 0.1}


def test_a_metric_over_lines_a_parser_failed_on_is_a_pipeline_error_as_in_loki():
    with pytest.raises(LogQLError, match="pipeline error: 'JSONParserErr'"):
        evaluate(parse('sum by (level) (count_over_time({app="a"} | json [1m]))'), ENTRIES, at_ns=30 * S)
    counted = evaluate(parse('sum by (level) (count_over_time({app="a"} | json | __error__="" [1m]))'),
                       ENTRIES, at_ns=30 * S)
    assert counted == {(("level", "error"),): 1.0, (("level", "info"),): 1.0}
