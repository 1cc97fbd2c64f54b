"""The fake Elasticsearch is faithful: the official client works against it unchanged, and every
refusal carries the status and body a real 8.x/9.x node sends (PROTOCOLS.md §1)."""

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import TlsError
from elasticsearch import ApiError, AuthenticationException, BadRequestError, Elasticsearch, NotFoundError, helpers
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.receivers.elasticsearch import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    Delay,
    DropConnection,
    ElasticsearchReceiver,
    FailItems,
    ItemFault,
    RejectRequest,
    RequestRejected,
    json_tokens,
    parse_bulk_body,
)

REPO = Path(__file__).resolve().parents[1]
NDJSON = {"Content-Type": "application/x-ndjson"}
COMPAT_8 = {
    "Accept": "application/vnd.elasticsearch+json; compatible-with=8",
    "Content-Type": "application/vnd.elasticsearch+x-ndjson; compatible-with=8",
}


@pytest.fixture(scope="module")
def es():
    with ElasticsearchReceiver(version="9.1.0") as receiver:
        yield receiver


@pytest.fixture(scope="module")
def es8():
    with ElasticsearchReceiver(version="8.19.0") as receiver:
        yield receiver


@pytest.fixture
def index(request):
    """An index name of this test's own, so tests can share a receiver."""
    return request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")


@pytest.fixture(autouse=True)
def no_leftover_faults(request):
    yield
    for name in ("es", "es8"):
        if name in request.fixturenames:
            assert request.getfixturevalue(name).pending_faults == []


def ndjson(*lines):
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


def post_bulk(receiver, body, *, headers=NDJSON, path="/_bulk", **options):
    return httpx.post(receiver.url + path, content=body, headers=headers, **options)


def whole_error(status, error_type, reason, **extra):
    error = {"type": error_type, "reason": reason, **extra}
    return {"error": {"root_cause": [error], **error}, "status": status}


# The official client, unchanged ---------------------------------------------------------------


def test_info_from_the_official_client(es):
    info = Elasticsearch(es.url).info()
    assert info["version"]["number"] == "9.1.0"
    assert info["version"]["build_flavor"] == "default"
    assert info["version"]["minimum_wire_compatibility_version"] == "8.19.0"
    assert info["tagline"] == "You Know, for Search"
    assert set(info) == {"name", "cluster_name", "cluster_uuid", "version", "tagline"}


def test_ping_uses_head(es):
    assert Elasticsearch(es.url).ping() is True
    head = httpx.head(es.url + "/")
    assert head.status_code == 200 and head.content == b""


def test_client_bulk_creates_then_a_replay_conflicts(es, index):
    client = Elasticsearch(es.url)
    operations = [{"create": {"_index": index, "_id": "a"}}, {"message": "one"}]
    first = client.bulk(operations=operations).body
    assert first == {
        "errors": False,
        "took": first["took"],
        "items": [
            {
                "create": {
                    "_index": index,
                    "_id": "a",
                    "_version": 1,
                    "result": "created",
                    "_shards": {"total": 2, "successful": 1, "failed": 0},
                    "_seq_no": 0,
                    "_primary_term": 1,
                    "status": 201,
                }
            }
        ],
    }
    assert list(first) == ["errors", "took", "items"]
    assert list(first["items"][0]["create"]) == [
        "_index",
        "_id",
        "_version",
        "result",
        "_shards",
        "_seq_no",
        "_primary_term",
        "status",
    ]
    replay = client.bulk(operations=operations).body
    error = replay["items"][0]["create"]["error"]
    assert replay["errors"] is True
    assert replay["items"][0]["create"]["status"] == 409
    assert error == {
        "type": "version_conflict_engine_exception",
        "reason": "[a]: version conflict, document already exists (current version [1])",
        "index_uuid": error["index_uuid"],
        "shard": "0",
        "index": index,
    }
    assert es.documents(index) == [{"message": "one"}]


def test_helpers_bulk_and_streaming_bulk_store_each_document_once(es, index):
    client = Elasticsearch(es.url)
    actions = [{"_op_type": "create", "_index": index, "_id": str(n), "n": n} for n in range(10)]
    assert helpers.bulk(client, actions[:5]) == (5, [])
    results = list(helpers.streaming_bulk(client, actions[5:], chunk_size=2))
    assert [ok for ok, _ in results] == [True] * 5
    assert es.documents(index) == [{"n": n} for n in range(10)]
    assert es.ids(index) == [str(n) for n in range(10)]


def test_streaming_bulk_retries_only_the_items_rejected_with_429(es, index):
    client = Elasticsearch(es.url)
    es.inject(FailItems({1: ItemFault.REJECTED}))
    actions = [{"_op_type": "create", "_index": index, "_id": str(n), "n": n} for n in range(3)]
    # raise_on_error=False: otherwise the helper raises on the 429 before it can retry it.
    results = list(helpers.streaming_bulk(client, actions, max_retries=2, initial_backoff=0, raise_on_error=False))
    assert all(ok for ok, _ in results)
    assert sorted(es.ids(index)) == ["0", "1", "2"]
    assert [exchange.item_statuses for exchange in es.exchanges[-2:]] == [(201, 429, 201), (201,)]


def test_the_transport_retries_a_whole_request_429(es, index):
    es.inject(RejectRequest(429))
    response = Elasticsearch(es.url).bulk(operations=[{"create": {"_index": index, "_id": "1"}}, {"m": 1}])
    assert response["errors"] is False
    assert [exchange.status for exchange in es.exchanges[-2:]] == [429, 200]
    assert es.documents(index) == [{"m": 1}]


def test_the_9x_client_fails_against_the_8x_node(es8):
    client = Elasticsearch(es8.url)
    with pytest.raises(BadRequestError) as refused:
        client.info()
    assert refused.value.body == {
        "error": {
            "root_cause": [
                {
                    "type": "media_type_header_exception",
                    "reason": "Invalid media-type value on headers [Accept, Content-Type]",
                }
            ],
            "type": "media_type_header_exception",
            "reason": "Invalid media-type value on headers [Accept, Content-Type]",
            "caused_by": {
                "type": "status_exception",
                "reason": "Accept version must be either version 8 or 7, but found 9. "
                "Accept=application/vnd.elasticsearch+json; compatible-with=9",
            },
        },
        "status": 400,
    }
    with pytest.raises(BadRequestError, match="media_type_header_exception"):
        client.bulk(operations=[{"create": {"_index": "x", "_id": "1"}}, {"m": 1}])
    assert client.ping() is False
    assert es8.count() == 0


def test_8x_headers_work_against_8x_and_9x(es, es8, index):
    body = ndjson({"create": {"_index": index, "_id": "1"}}, {"m": 1})
    for receiver in (es8, es):
        response = post_bulk(receiver, body, headers=COMPAT_8)
        assert response.status_code == 200
        assert response.json()["items"][0]["create"]["status"] == 201
        assert response.headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=8"


def test_the_product_header_is_on_every_answer_but_401(es, index):
    answers = [
        httpx.get(es.url + "/"),
        post_bulk(es, ndjson({"index": {"_index": index}}, {"a": 1})),
        post_bulk(es, b"{}"),
        post_bulk(es, b"{}\n", headers={"Content-Type": "text/plain"}),
        httpx.get(es.url + "/_bulk"),
        httpx.get(es.url + "/_nope"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 400, 406, 405, 400]
    assert all(answer.headers["x-elastic-product"] == "Elasticsearch" for answer in answers)
    with ElasticsearchReceiver(auth=BasicAuth("elastic", "secret")) as secured:
        assert "x-elastic-product" not in httpx.get(secured.url + "/").headers


def test_keep_alive_reuses_one_connection():
    with ElasticsearchReceiver() as receiver, httpx.Client(base_url=receiver.url) as client:
        for n in range(3):
            assert (
                client.post("/_bulk", content=ndjson({"index": {"_index": "k"}}, {"n": n}), headers=NDJSON).status_code
                == 200
            )
        assert receiver.stats.connections == 1
        assert receiver.stats.requests == 3
        assert receiver.count("k") == 3


# Whole-request refusals --------------------------------------------------------------------------


def test_a_body_without_a_final_newline_is_refused(es, index):
    body = ndjson({"create": {"_index": index}}, {"m": 1})[:-1]
    response = post_bulk(es, body)
    assert response.status_code == 400
    assert response.json() == whole_error(
        400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]"
    )
    assert es.count(index) == 0


def test_an_unknown_metadata_key_names_its_line(es, index):
    body = ndjson({"create": {"_index": index}}, {"m": 1}, {"create": {"_index": index, "colour": "red"}}, {"m": 2})
    response = post_bulk(es, body)
    assert response.status_code == 400
    assert response.json() == whole_error(
        400, "illegal_argument_exception", "Action/metadata line [3] contains an unknown parameter [colour]"
    )
    assert es.count(index) == 0


def test_type_is_refused_in_8x_and_9x(es, es8, index):
    body = ndjson({"index": {"_index": index, "_type": "_doc"}}, {"m": 1})
    for receiver, headers in ((es, NDJSON), (es8, COMPAT_8)):
        response = post_bulk(receiver, body, headers=headers)
        assert response.json()["error"]["reason"] == "Action/metadata line [1] contains an unknown parameter [_type]"


def test_a_null_metadata_value_is_ignored_even_for_an_unknown_key(es, index):
    response = post_bulk(es, ndjson({"create": {"_index": index, "colour": None}}, {"m": 1}))
    assert response.json()["items"][0]["create"]["status"] == 201


def test_an_action_line_that_is_not_json_is_an_x_content_parse_exception(es):
    response = post_bulk(es, b'{"create": nope}\n{}\n')
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["type"] == "x_content_parse_exception"
    assert error["reason"].startswith("[1:12] Unrecognized token 'nope': was expecting (JSON String, Number")
    assert error["caused_by"]["type"] == "json_parse_exception"
    assert error["reason"] == "[1:12] " + error["caused_by"]["reason"]


def test_a_duplicate_key_in_an_action_line_is_refused(es, index):
    response = post_bulk(es, b'{"create":{"_index":"%s","_id":"a","_id":"b"}}\n{}\n' % index.encode())
    error = response.json()["error"]
    assert error["type"] == "x_content_parse_exception"
    assert error["caused_by"]["reason"].startswith("Duplicate field '_id'\n at [Source: ")


def test_a_malformed_action_line_says_what_token_it_found(es):
    cases = {
        b'"create"\n': "expected START_OBJECT but found [VALUE_STRING]",
        b"{}\n": "expected FIELD_NAME but found [END_OBJECT]",
        b'{"create":"x"}\n{}\n': "expected START_OBJECT or END_OBJECT but found [VALUE_STRING]",
        b'{"create":{"_id":["a"]}}\n{}\n': "expected a simple value for field [_id] but found [START_ARRAY]",
    }
    for body, detail in cases.items():
        response = post_bulk(es, body)
        assert response.json()["error"]["reason"] == f"Malformed action/metadata line [1], {detail}", body


def test_unknown_actions_are_refused_by_9x_and_skipped_by_8x(es, es8, index):
    body = ndjson({"upsert": {"_index": index}}, {"m": 0}, {"create": {"_index": index, "_id": "1"}}, {"m": 1})
    refused = post_bulk(es, body)
    assert refused.json()["error"]["reason"] == (
        "Malformed action/metadata line [1], expected field [create], [delete], [index] or [update] but found [upsert]"
    )
    skipped = post_bulk(es8, body, headers=COMPAT_8)
    assert [list(item) for item in skipped.json()["items"]] == [["create"]]
    assert es8.documents(index) == [{"m": 1}]


def test_extra_keys_and_trailing_data_pass_in_rest_api_8_and_fail_in_9(es, es8, index):
    extra_key = b'{"create":{"_index":"%s"},"junk":1}\n{}\n' % index.encode()
    trailing = b'{"create":{"_index":"%s"}} {}\n{}\n' % index.encode()
    unclosed = b'{"create":{"_index":"%s"}\n{}\n' % index.encode()
    for receiver in (es8, es):  # a 9.x node keeps the leniency for compatible-with=8 requests
        for body in (extra_key, trailing, unclosed):
            assert post_bulk(receiver, body, headers=COMPAT_8).json()["errors"] is False, body
    assert post_bulk(es, extra_key).json()["error"]["reason"] == (
        "Malformed action/metadata line [1], expected END_OBJECT but found [FIELD_NAME]"
    )
    assert post_bulk(es, trailing).json()["error"]["reason"] == (
        "Malformed action/metadata line [1], unexpected data after the closing brace"
    )
    assert post_bulk(es, unclosed).json()["error"]["type"] == "x_content_e_o_f_exception"


def test_an_empty_body_and_a_body_without_actions(es):
    empty = post_bulk(es, b"")
    assert empty.status_code == 400
    assert empty.json() == whole_error(400, "parse_exception", "request body is required")
    blank_lines = post_bulk(es, b"\n\r\n  \n")
    assert blank_lines.json() == whole_error(
        400, "action_request_validation_exception", "Validation Failed: 1: no requests added;"
    )


def test_validation_failures_are_numbered_across_items(es):
    body = ndjson({"index": {}}, {"m": 1}, {"delete": {"_index": "x"}})
    assert post_bulk(es, body).json() == whole_error(
        400, "action_request_validation_exception", "Validation Failed: 1: index is missing;2: id is missing;"
    )


def test_a_last_action_without_its_document_is_dropped(es, index):
    body = ndjson({"create": {"_index": index, "_id": "1"}}, {"m": 1}, {"create": {"_index": index, "_id": "2"}})
    response = post_bulk(es, body)
    assert len(response.json()["items"]) == 1
    assert es.ids(index) == ["1"]


def test_carriage_returns_are_trimmed(es, index):
    body = b'{"create":{"_index":"%s","_id":"1"}}\r\n{"m":"x"}\r\n' % index.encode()
    assert post_bulk(es, body).json()["items"][0]["create"]["status"] == 201
    assert es.documents(index) == [{"m": "x"}]


def test_unrecognized_query_parameters_are_refused(es, index):
    response = post_bulk(es, ndjson({"create": {"_index": index}}, {}), path="/_bulk?refresh=true&colour=red")
    assert response.json() == whole_error(
        400, "illegal_argument_exception", "request [/_bulk] contains unrecognized parameter: [colour]"
    )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Content-Type header is missing"),
        ({"Content-Type": ""}, "Content-Type header [] is not supported"),
        ({"Content-Type": "text/plain"}, "Content-Type header [text/plain] is not supported"),
    ],
)
def test_a_missing_or_foreign_content_type_gets_406_with_a_string_error(es, headers, message):
    response = post_bulk(es, b'{"index":{"_index":"x"}}\n{}\n', headers=headers)
    assert response.status_code == 406
    assert response.json() == {"error": message, "status": 406}


def test_json_and_vendor_content_types_are_accepted(es, index):
    for content_type in ("application/json", "application/json; charset=UTF-8", "application/x-ndjson"):
        response = post_bulk(es, ndjson({"index": {"_index": index}}, {}), headers={"Content-Type": content_type})
        assert response.status_code == 200, content_type
    vendor = {
        "Accept": "application/vnd.elasticsearch+json; compatible-with=9",
        "Content-Type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
    }
    assert post_bulk(es, ndjson({"index": {"_index": index}}, {}), headers=vendor).status_code == 200
    assert es.count(index) == 4


def test_rest_compatibility_versions_must_be_servable_and_match(es, es8):
    too_new = post_bulk(
        es8,
        b'{"index":{"_index":"x"}}\n{}\n',
        headers={
            "Accept": "application/vnd.elasticsearch+json; compatible-with=9",
            "Content-Type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
        },
    )
    assert too_new.status_code == 400
    assert too_new.json()["error"]["type"] == "media_type_header_exception"
    too_old = httpx.get(es.url + "/", headers={"Accept": "application/vnd.elasticsearch+json; compatible-with=7"})
    assert too_old.json()["error"]["caused_by"]["reason"] == (
        "Accept version must be either version 9 or 8, but found 7. "
        "Accept=application/vnd.elasticsearch+json; compatible-with=7"
    )
    half = post_bulk(
        es,
        b'{"index":{"_index":"x"}}\n{}\n',
        headers={
            "Accept": "application/vnd.elasticsearch+json; compatible-with=9",
            "Content-Type": "application/x-ndjson",
        },
    )
    assert half.json()["error"]["caused_by"]["reason"] == (
        "A compatible version is required on both Content-Type and Accept headers if either one has requested a "
        "compatible version. Accept=application/vnd.elasticsearch+json; compatible-with=9, "
        "Content-Type=application/x-ndjson"
    )


def test_gzip_bodies_are_accepted(es, index):
    body = gzip.compress(ndjson({"create": {"_index": index, "_id": "z"}}, {"zipped": True}))
    response = post_bulk(es, body, headers={**NDJSON, "Content-Encoding": "gzip"})
    assert response.json()["items"][0]["create"]["status"] == 201
    assert es.documents(index) == [{"zipped": True}]
    assert es.exchanges[-1].content_encoding == "gzip"


def test_chunked_bodies_are_accepted(es, index):
    chunks = iter([b'{"create":{"_index":"%s","_id":"1"}}\n' % index.encode(), b'{"chunked":', b"true}\n"])
    response = httpx.post(es.url + "/_bulk", content=chunks, headers=NDJSON)
    assert response.json()["items"][0]["create"]["status"] == 201
    assert es.documents(index) == [{"chunked": True}]


def test_the_content_length_limit_counts_decompressed_bytes():
    with ElasticsearchReceiver(max_content_length=1000) as receiver:
        small = ndjson({"index": {"_index": "x"}}, {"pad": "a" * 900})
        large = ndjson({"index": {"_index": "x"}}, {"pad": "a" * 1000})
        assert post_bulk(receiver, small).status_code == 200
        for body, headers in ((large, NDJSON), (gzip.compress(large), {**NDJSON, "Content-Encoding": "gzip"})):
            assert len(body) < 1000 or headers is NDJSON
            response = post_bulk(receiver, body, headers=headers)
            assert response.status_code == 413
            assert response.content == b""
            assert response.headers["connection"] == "close"
            assert "x-elastic-product" not in response.headers
        assert receiver.count("x") == 1


def test_expect_100_continue_over_the_limit_gets_417():
    with ElasticsearchReceiver(max_content_length=10) as receiver:
        port = int(receiver.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.sendall(
                b"POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            status_line = connection.recv(4096).split(b"\r\n")[0]
        assert status_line == b"HTTP/1.1 417 Expectation Failed"


# Per-item results ---------------------------------------------------------------------------------


def test_an_index_without_id_gets_a_20_character_id_and_index_overwrites(es, index):
    generated = post_bulk(es, ndjson({"index": {"_index": index}}, {"v": 1})).json()["items"][0]["index"]
    assert len(generated["_id"]) == 20 and generated["result"] == "created"
    again = post_bulk(es, ndjson({"index": {"_index": index, "_id": generated["_id"]}}, {"v": 2})).json()
    item = again["items"][0]["index"]
    assert (item["result"], item["status"], item["_version"], item["_seq_no"]) == ("updated", 200, 2, 1)
    assert es.documents(index) == [{"v": 2}]


def test_index_with_op_type_create_answers_as_create(es, index):
    body = ndjson({"index": {"_index": index, "_id": "1", "op_type": "create"}}, {})
    assert list(post_bulk(es, body).json()["items"][0]) == ["create"]
    assert post_bulk(es, body).json()["items"][0]["create"]["status"] == 409


@pytest.mark.parametrize(
    ("name", "description"),
    [
        ("a b", "must not contain the following characters [' ','\"','*',',','/','<','>','?','\\','|']"),
        ("#a", "must not contain '#'"),
        ("a:b", "must not contain ':'"),
        ("_a", "must not start with '_', '-', or '+'"),
        ("-a", "must not start with '_', '-', or '+'"),
        ("é" * 128, "index name is too long, (256 > 255)"),
        ("..", "must not be '.' or '..'"),
        ("Logs", "must be lowercase"),
        # Checked in order: the first rule broken is the one reported.
        ("_Logs:#", "must not contain '#'"),
    ],
)
def test_invalid_index_names_fail_the_item(es, name, description):
    response = post_bulk(es, ndjson({"create": {"_index": name}}, {}, {"create": {"_index": "fine-name"}}, {}))
    first, second = response.json()["items"]
    assert first == {
        "create": {
            "_index": name,
            "_id": None,
            "status": 400,
            "error": {
                "type": "invalid_index_name_exception",
                "reason": f"Invalid index name [{name}], {description}",
                "index_uuid": "_na_",
                "index": name,
            },
        }
    }
    assert second["create"]["status"] == 201


def test_a_document_that_is_not_json_fails_its_item(es, index):
    body = b'{"create":{"_index":"%s","_id":"1"}}\n{"m": oops}\n{"create":{"_index":"%s","_id":"2"}}\n[1]\n' % (
        index.encode(),
        index.encode(),
    )
    first, second = post_bulk(es, body).json()["items"]
    error = first["create"]["error"]
    assert first["create"]["status"] == 400
    assert error["type"] == "document_parsing_exception"
    assert error["reason"].startswith("[1:2] failed to parse: [1:7] Unrecognized token 'oops'")
    assert error["caused_by"]["type"] == "x_content_parse_exception"
    assert second["create"]["error"] == {
        "type": "document_parsing_exception",
        "reason": "Malformed content, must start with an object",
    }
    assert es.count(index) == 0


def test_a_duplicate_key_in_a_document_fails_its_item(es, index):
    body = b'{"create":{"_index":"%s","_id":"1"}}\n{"a":1,"a":2}\n' % index.encode()
    item = post_bulk(es, body).json()["items"][0]["create"]
    assert item["status"] == 400
    assert item["error"]["type"] == "document_parsing_exception"
    assert item["error"]["reason"].startswith("[1:6] failed to parse: [1:11] Duplicate field 'a'\n at [Source: ")


def test_a_value_of_the_wrong_type_fails_like_the_mapper(es, index):
    first = ndjson({"create": {"_index": index, "_id": "1"}}, {"count": 1, "at": "2024-05-01T10:00:00Z"})
    assert post_bulk(es, first).json()["errors"] is False
    assert es.mapping(index) == {"count": "long", "at": "date"}
    body = ndjson(
        {"create": {"_index": index, "_id": "x"}},
        {"count": "abc"},
        {"create": {"_index": index, "_id": "y"}},
        {"count": "42"},
        {"create": {"_index": index, "_id": "z"}},
        {"at": "yesterday"},
    )
    text_count, numeric_string, bad_date = (item["create"] for item in post_bulk(es, body).json()["items"])
    assert text_count["error"] == {
        "type": "document_parsing_exception",
        "reason": "[1:10] failed to parse field [count] of type [long] in document with id 'x'. "
        "Preview of field's value: 'abc'",
        "caused_by": {"type": "illegal_argument_exception", "reason": 'For input string: "abc"'},
    }
    assert numeric_string["status"] == 201  # numbers coerce from strings
    assert bad_date["error"]["caused_by"]["reason"] == (
        "failed to parse date field [yesterday] with format [strict_date_optional_time||epoch_millis]"
    )


def test_objects_and_values_cannot_trade_places(es, index):
    post_bulk(es, ndjson({"create": {"_index": index, "_id": "1"}}, {"user": {"name": "a"}, "level": 3}))
    body = ndjson(
        {"create": {"_index": index, "_id": "2"}},
        {"user": "a"},
        {"create": {"_index": index, "_id": "3"}},
        {"level": {"value": 3}},
        {"create": {"_index": index, "_id": "4"}},
        {"level.value": 3},
    )
    value_for_object, object_for_value, dotted = (
        item["create"]["error"] for item in post_bulk(es, body).json()["items"]
    )
    assert value_for_object == {
        "type": "document_parsing_exception",
        "reason": "[1:9] object mapping for [user] tried to parse field [user] as object, but found a concrete value",
    }
    assert object_for_value["reason"] == (
        "[1:20] failed to parse field [level] of type [long] in document with id '3'. "
        "Preview of field's value: '{value=3}'"
    )
    assert object_for_value["caused_by"] == {
        "type": "illegal_argument_exception",
        "reason": "Cannot parse object as number",
    }
    assert dotted["reason"].endswith("Preview of field's value: '{value=3}'")


def test_dotted_names_expand_into_objects(es, index):
    body = ndjson({"create": {"_index": index, "_id": "1"}}, {"a": 1, "a.b": 2})
    error = post_bulk(es, body).json()["items"][0]["create"]["error"]
    assert error["reason"].startswith("[1:14] failed to parse field [a] of type [long]")
    post_bulk(es, ndjson({"create": {"_index": index, "_id": "2"}}, {"k8s.pod": "web", "k8s": {"ns": "default"}}))
    assert es.mapping(index) == {"k8s": "object", "k8s.pod": "text", "k8s.ns": "text"}
    assert es.documents(index) == [{"k8s.pod": "web", "k8s": {"ns": "default"}}]


def test_filter_path_keeps_what_beats_asks_for(es, index):
    body = ndjson({"create": {"_index": index, "_id": "1"}}, {}, {"create": {"_index": index, "_id": "1"}}, {})
    with_status = post_bulk(es, body, path="/_bulk?filter_path=errors,items.*.error,items.*.status").json()
    assert with_status["errors"] is True
    assert with_status["items"][0] == {"create": {"status": 201}}
    assert set(with_status["items"][1]["create"]) == {"status", "error"}
    errors_only = post_bulk(es, body, path="/_bulk?filter_path=errors,items.*.error").json()
    assert len(errors_only["items"]) == 2  # both now conflict
    clean = ndjson({"create": {"_index": index, "_id": "2"}}, {})
    assert post_bulk(es, clean, path="/_bulk?filter_path=errors,items.*.error").json() == {"errors": False}
    excluded = post_bulk(es, ndjson({"index": {"_index": index}}, {}), path="/_bulk?filter_path=-took,-items").json()
    assert excluded == {"errors": False}


def test_refresh_true_marks_items_forced_refresh(es, index):
    item = post_bulk(es, ndjson({"index": {"_index": index}}, {}), path="/_bulk?refresh=true").json()["items"][0]
    assert list(item["index"])[:5] == ["_index", "_id", "_version", "result", "forced_refresh"]


def test_delete_and_update(es, index):
    post_bulk(es, ndjson({"create": {"_index": index, "_id": "1"}}, {"a": {"b": 1}}))
    body = ndjson(
        {"update": {"_index": index, "_id": "1"}},
        {"doc": {"a": {"c": 2}}},
        {"update": {"_index": index, "_id": "1"}},
        {"doc": {"a": {"c": 2}}},
        {"update": {"_index": index, "_id": "2"}},
        {"doc": {"x": 1}},
        {"delete": {"_index": index, "_id": "1"}},
        {"delete": {"_index": index, "_id": "1"}},
    )
    results = [
        (item[op]["result"] if "result" in item[op] else item[op]["error"]["type"], item[op]["status"])
        for item in post_bulk(es, body).json()["items"]
        for op in item
    ]
    assert results == [
        ("updated", 200),
        ("noop", 200),
        ("document_missing_exception", 404),
        ("deleted", 200),
        ("not_found", 404),
    ]


# Authentication -----------------------------------------------------------------------------------


def test_basic_auth():
    with ElasticsearchReceiver(auth=BasicAuth("elastic", "changeme")) as receiver:
        assert Elasticsearch(receiver.url, basic_auth=("elastic", "changeme")).info()["tagline"]
        with pytest.raises(AuthenticationException):
            Elasticsearch(receiver.url, basic_auth=("elastic", "wrong")).info()
        missing = post_bulk(receiver, b'{"index":{"_index":"x"}}\n{}\n')
        header = {"WWW-Authenticate": ['Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey"]}
        assert missing.status_code == 401
        assert missing.json() == whole_error(
            401, "security_exception", "missing authentication credentials for REST request [/_bulk]", header=header
        )
        assert missing.headers.get_list("www-authenticate") == header["WWW-Authenticate"]
        assert "x-elastic-product" not in missing.headers
        wrong = httpx.get(receiver.url + "/", auth=("elastic", "nope"))
        assert wrong.json()["error"]["reason"] == "unable to authenticate user [elastic] for REST request [/]"
        assert receiver.count() == 0


def test_api_key_and_bearer_auth():
    with ElasticsearchReceiver(auth=ApiKeyAuth("key-id", "key-secret")) as receiver:
        client = Elasticsearch(receiver.url, api_key=("key-id", "key-secret"))
        assert client.bulk(operations=[{"index": {"_index": "k"}}, {}])["errors"] is False
        with pytest.raises(AuthenticationException):
            Elasticsearch(receiver.url, api_key=("key-id", "other")).info()
    with ElasticsearchReceiver(auth=BearerAuth("token-1")) as receiver:
        assert Elasticsearch(receiver.url, bearer_auth="token-1").info()["tagline"]
        assert httpx.get(receiver.url + "/", headers={"Authorization": "Bearer token-2"}).status_code == 401


# Faults ------------------------------------------------------------------------------------------


def test_whole_request_errors_have_es_bodies(es, index):
    es.inject(
        RejectRequest(503),
        RejectRequest(500),
        RejectRequest(429, "circuit_breaking_exception", "[parent] Data too large"),
    )
    body = ndjson({"index": {"_index": index}}, {})
    unavailable, internal, breaker = (post_bulk(es, body) for _ in range(3))
    assert unavailable.status_code == 503
    assert unavailable.json() == whole_error(
        503, "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];"
    )
    assert internal.status_code == 500 and internal.json()["error"]["type"] == "exception"
    assert breaker.json() == whole_error(429, "circuit_breaking_exception", "[parent] Data too large")
    rejected = Elasticsearch(es.url, max_retries=0)
    es.inject(RejectRequest(429))
    with pytest.raises(Exception, match="es_rejected_execution_exception"):
        rejected.bulk(operations=[{"index": {"_index": index}}, {}])
    assert es.count(index) == 0


def test_per_item_faults(es, index):
    es.inject(FailItems({0: ItemFault.UNAVAILABLE, 2: ItemFault.BLOCKED}))
    body = ndjson(*[line for n in range(3) for line in ({"create": {"_index": index, "_id": str(n)}}, {"n": n})])
    unavailable, stored, blocked = (item["create"] for item in post_bulk(es, body).json()["items"])
    assert unavailable["status"] == 503
    assert unavailable["error"]["type"] == "unavailable_shards_exception"
    assert unavailable["error"]["reason"] == (
        f"[{index}][0] primary shard is not active Timeout: [1m], request: "
        f"[BulkShardRequest [[{index}][0]] containing [3] requests]"
    )
    assert stored["status"] == 201
    assert blocked["status"] == 429 and blocked["error"]["type"] == "cluster_block_exception"
    es.inject(FailItems(every=ItemFault.REJECTED))
    rejected = post_bulk(es, body).json()["items"]
    assert {item["create"]["error"]["type"] for item in rejected} == {"es_rejected_execution_exception"}
    assert es.ids(index) == ["1"]


def test_a_dropped_connection_may_or_may_not_have_stored_the_documents(es, index):
    body = ndjson({"create": {"_index": index, "_id": "1"}}, {"m": 1})
    es.inject(DropConnection(), DropConnection(after_processing=True))
    with pytest.raises(httpx.RemoteProtocolError):
        post_bulk(es, body)
    assert es.count(index) == 0
    with pytest.raises(httpx.RemoteProtocolError):
        post_bulk(es, body)
    assert es.ids(index) == ["1"]
    replay = post_bulk(es, body).json()["items"][0]["create"]
    assert replay["status"] == 409  # the retry of a lost answer is recognisable
    assert [exchange.status for exchange in es.exchanges[-3:]] == [None, None, 200]


def test_a_slow_answer_times_the_client_out_but_still_applies(es, index):
    es.inject(Delay(0.5))
    with pytest.raises(httpx.ReadTimeout):
        post_bulk(es, ndjson({"create": {"_index": index, "_id": "1"}}, {}), timeout=0.1)
    deadline = time.monotonic() + 2
    while es.count(index) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert es.ids(index) == ["1"]


# _count and _search ------------------------------------------------------------------------------


def seed(receiver, index, *documents):
    body = ndjson(*[line for document in documents for line in ({"index": {"_index": index}}, document)])
    assert post_bulk(receiver, body).json()["errors"] is False


LOGS = (
    {"message": "Connection refused by upstream", "level": "error", "code": 502, "ok": False},
    {"message": "GET /health 200", "level": "info", "code": 200, "ok": True},
    {"message": "connection reset, retrying", "level": "warn", "code": 502, "ok": False},
    {"message": "ready", "level": "info", "code": 200, "ok": True, "k8s": {"ns": "kube-system"}},
    {"message": 404, "level": "debug", "code": 404, "ok": False, "k8s": {"ns": ["a", "b"]}},
)


def test_the_client_counts_what_bulk_stored(es, index):
    client = Elasticsearch(es.url)
    assert client.count(index=index + "*")["count"] == 0
    seed(es, index, *LOGS)
    seed(es, index + "-other", {"level": "error"})
    assert client.count(index=index).body == {
        "count": 5,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
    }
    assert client.count(index=index, query={"term": {"level.keyword": "error"}})["count"] == 1
    assert client.count(index=f"{index},{index}-other")["count"] == 6
    both = client.count(index=index + "*", query={"match": {"level": "error"}})
    assert both["count"] == 2 and both["_shards"]["total"] == 2
    assert httpx.get(f"{es.url}/{index}/_count").json()["count"] == 5  # GET without a body: match_all
    assert httpx.get(es.url + "/_count").json()["count"] == es.count()


def test_counting_a_missing_index_is_404_but_an_empty_wildcard_is_zero(es, index):
    seed(es, index, {"a": 1})
    missing = httpx.post(f"{es.url}/{index},{index}-missing/_count", json={"query": {"match_all": {}}})
    assert missing.status_code == 404
    name = f"{index}-missing"
    assert missing.json() == whole_error(
        404,
        "index_not_found_exception",
        f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_", "index": name},
    )
    assert missing.headers["x-elastic-product"] == "Elasticsearch"
    empty = httpx.get(f"{es.url}/{index}-nothing-*/_count")
    assert empty.json() == {"count": 0, "_shards": {"total": 0, "successful": 0, "skipped": 0, "failed": 0}}
    with pytest.raises(NotFoundError):
        Elasticsearch(es.url).search(index=name)


def test_a_count_body_takes_only_a_query(es, index):
    body = b'{"query":{"match_all":{}},\n  "size":1}'
    refused = httpx.post(es.url + "/_count", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400  # located at the key, on the second line
    assert refused.json() == whole_error(400, "parsing_exception", "request does not support [size]", line=2, col=3)
    # Failures other than a parsing_exception are wrapped, unlike in _search.
    empty = httpx.post(es.url + "/_count", json={"query": {}}).json()["error"]
    assert empty == {
        "root_cause": [{"type": "parsing_exception", "reason": "Failed to parse", "line": 1, "col": 11}],
        "type": "parsing_exception",
        "reason": "Failed to parse",
        "line": 1,
        "col": 11,
        "caused_by": {
            "type": "illegal_argument_exception",
            "reason": "query malformed, empty clause found at [1:11]",
        },
    }


def test_search_hits_carry_index_id_score_and_source(es, index):
    seed(es, index, *LOGS)
    client = Elasticsearch(es.url)
    found = client.search(index=index, query={"match": {"message": "CONNECTION"}}).body
    assert set(found) == {"took", "timed_out", "_shards", "hits"}
    assert found["timed_out"] is False
    assert found["_shards"] == {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
    assert found["hits"]["total"] == {"value": 2, "relation": "eq"}
    assert found["hits"]["max_score"] == 1.0
    assert [hit["_source"] for hit in found["hits"]["hits"]] == [LOGS[0], LOGS[2]]
    first = found["hits"]["hits"][0]
    assert set(first) == {"_index", "_id", "_score", "_source"}
    assert first["_index"] == index and first["_id"] in es.ids(index)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"match_all": {}}, [0, 1, 2, 3, 4]),
        ({"match": {"message": "refused retrying"}}, [0, 2]),  # any analysed token
        ({"match": {"message": {"query": "connection refused", "operator": "and"}}}, [0]),
        ({"term": {"level": "info"}}, [1, 3]),  # a token of the text field
        ({"term": {"message": "Connection"}}, []),  # a term is not analysed, tokens are lower case
        ({"term": {"level.keyword": "warn"}}, [2]),
        ({"term": {"message.keyword": "ready"}}, [3]),
        ({"term": {"code": 502}}, [0, 2]),
        ({"term": {"code": "200"}}, [1, 3]),  # the field type parses the value
        ({"term": {"ok": True}}, [1, 3]),
        ({"term": {"k8s.ns.keyword": "kube-system"}}, [3]),
        ({"term": {"k8s.ns.keyword": "b"}}, [4]),  # each value of an array
        ({"match": {"message": "404"}}, [4]),  # a number in a text field is indexed as text
        ({"term": {"unmapped": "x"}}, []),
        ({"bool": {"must": [{"term": {"code": 502}}], "must_not": {"match": {"message": "reset"}}}}, [0]),
        ({"bool": {"filter": {"term": {"ok": True}}, "must_not": [{"term": {"message": "ready"}}]}}, [1]),
        ({"bool": {"should": [{"term": {"level": "warn"}}, {"term": {"level": "error"}}]}}, [0, 2]),
    ],
)
def test_the_query_subset(es, index, query, expected):
    if not es.count(index):
        seed(es, index, *LOGS)
    response = httpx.post(f"{es.url}/{index}/_search", json={"query": query})
    assert response.status_code == 200, response.text
    assert [hit["_source"] for hit in response.json()["hits"]["hits"]] == [LOGS[n] for n in expected]


def test_filter_clauses_do_not_score(es, index):
    seed(es, index, *LOGS)
    scored = httpx.post(f"{es.url}/{index}/_search", json={"query": {"term": {"ok": True}}}).json()["hits"]
    unscored = httpx.post(f"{es.url}/{index}/_search", json={"query": {"bool": {"filter": {"term": {"ok": True}}}}})
    assert [hit["_score"] for hit in scored["hits"]] == [1.0, 1.0]
    assert [hit["_score"] for hit in unscored.json()["hits"]["hits"]] == [0.0, 0.0]
    assert unscored.json()["hits"]["max_score"] == 0.0


def test_size_from_and_total_hits(es, index):
    seed(es, index, *[{"n": n} for n in range(12)])
    url = f"{es.url}/{index}/_search"
    default = httpx.get(url).json()["hits"]
    assert [hit["_source"]["n"] for hit in default["hits"]] == list(range(10))
    assert default["total"] == {"value": 12, "relation": "eq"}
    page = httpx.post(url, json={"size": 3, "from": 10}).json()["hits"]
    assert [hit["_source"]["n"] for hit in page["hits"]] == [10, 11]
    assert httpx.post(url + "?size=1", json={"size": 5}).json()["hits"]["hits"][0]["_source"] == {"n": 0}
    counted_only = httpx.post(url, json={"size": 0}).json()["hits"]
    assert counted_only == {"total": {"value": 12, "relation": "eq"}, "max_score": None, "hits": []}
    assert httpx.post(url, json={"track_total_hits": 5}).json()["hits"]["total"] == {"value": 5, "relation": "gte"}
    assert "total" not in httpx.post(url, json={"track_total_hits": False}).json()["hits"]
    assert httpx.get(url + "?rest_total_hits_as_int=true").json()["hits"]["total"] == 12
    negative = httpx.get(url + "?size=-1")
    assert negative.status_code == 400
    assert negative.json()["error"]["reason"] == "[size] parameter cannot be negative, found [-1]"
    before_start = httpx.post(url, json={"from": -1}).json()["error"]
    assert before_start["reason"] == "[from] parameter cannot be negative but was [-1]"


def test_an_unknown_query_is_a_parsing_exception(es, index):
    unknown = httpx.post(es.url + "/_search", json={"query": {"foo": {}}})
    assert unknown.status_code == 400
    body = unknown.json()
    assert body["error"]["root_cause"] == [
        {"type": "parsing_exception", "reason": "unknown query [foo]", "line": 1, "col": 17}
    ]
    assert body["error"]["caused_by"] == {
        "type": "named_object_not_found_exception",
        "reason": "[1:17] unknown field [foo]",
    }
    with pytest.raises(BadRequestError, match=r"unknown query \[mach\] did you mean \[match\]\?"):
        Elasticsearch(es.url).search(query={"mach": {"message": "x"}})
    malformed = httpx.post(es.url + "/_search", json={"query": {"term": "x"}}).json()["error"]
    assert malformed["reason"] == "[term] query malformed, no start_object after query name"
    empty = httpx.post(es.url + "/_search", json={"query": {}}).json()["error"]
    assert empty["type"] == "illegal_argument_exception"
    assert empty["reason"] == "query malformed, empty clause found at [1:11]"
    in_bool = httpx.post(es.url + "/_search", json={"query": {"bool": {"must": [{}]}}}).json()["error"]
    assert in_bool["type"] == "x_content_parse_exception"
    assert in_bool["reason"].endswith("[bool] failed to parse field [must]")
    assert in_bool["caused_by"]["reason"] == "query malformed, empty clause found at [1:28]"
    unemulated = httpx.post(es.url + "/_search", json={"query": {"range": {"n": {"gte": 1}}}}).json()["error"]
    assert unemulated["reason"] == "query [range] is not emulated by this fake Elasticsearch"
    broken = httpx.post(es.url + "/_search", content=b'{"query":', headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "x_content_e_o_f_exception"
    unknown_key = httpx.post(es.url + "/_search", json={"sise": 1}).json()["error"]
    assert unknown_key["reason"] == "Unknown key for a VALUE_NUMBER in [sise]."


def test_search_endpoints_check_methods_parameters_and_content_types(es):
    put = httpx.put(es.url + "/_count")
    assert put.status_code == 405 and put.headers["allow"] == "GET,POST"
    unknown = httpx.get(es.url + "/_search?nope=1").json()["error"]
    assert unknown["reason"] == "request [/_search] contains unrecognized parameter: [nope]"
    text = httpx.post(es.url + "/_count", content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status_code == 406


def test_the_total_fields_limit_rejects_only_the_document_that_exceeds_it(index):
    with ElasticsearchReceiver(total_fields_limit=8) as receiver:
        # message and level are text with a .keyword multi-field: two fields each.
        seed(receiver, index, {"message": "a", "level": "info", "code": 1})
        assert receiver.mapping(index) == {"message": "text", "level": "text", "code": "long"}
        body = ndjson(
            {"create": {"_index": index, "_id": "fits"}},
            {"message": "b", "code": 2, "ok": True},  # one new field: 6 of 8
            {"create": {"_index": index, "_id": "over"}},
            {"message": "c", "k8s": {"pod": "p", "ns": "n"}},  # the object (7), then k8s.pod (9)
            {"create": {"_index": index, "_id": "after"}},
            {"level": "warn"},
        )
        fits, over, after = (item["create"] for item in post_bulk(receiver, body).json()["items"])
        assert fits["status"] == 201 and after["status"] == 201
        reason = "Limit of total fields [8] has been exceeded while adding new fields [3]"
        assert over["status"] == 400
        assert over["error"] == {
            "type": "document_parsing_exception",
            "reason": f"[1:29] failed to parse: {reason}",  # at the value of k8s.pod
            "caused_by": {"type": "illegal_argument_exception", "reason": reason},
        }
        assert receiver.ids(index)[1:] == ["fits", "after"]
        assert "k8s" not in receiver.mapping(index) and "k8s.pod" not in receiver.mapping(index)
        assert Elasticsearch(receiver.url).count(index=index)["count"] == 3


def test_authentication_compatibility_and_faults_apply_to_count_and_search(es, es8, index):
    seed(es, index, {"a": 1})
    with ElasticsearchReceiver(auth=BasicAuth("elastic", "changeme")) as secured:
        refused = httpx.get(secured.url + "/_count")
        assert refused.status_code == 401 and "x-elastic-product" not in refused.headers
        assert refused.json()["error"]["reason"] == "missing authentication credentials for REST request [/_count]"
        assert Elasticsearch(secured.url, basic_auth=("elastic", "changeme")).count()["count"] == 0
    compatible = httpx.post(es8.url + "/_search", json={}, headers={**COMPAT_8, "Content-Type": COMPAT_8["Accept"]})
    assert compatible.status_code == 200
    assert compatible.headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=8"
    with pytest.raises(BadRequestError, match="media_type_header_exception"):
        Elasticsearch(es8.url).count()
    es.inject(RejectRequest(503), on="_search")
    es.inject(DropConnection(), on="_count")
    assert post_bulk(es, ndjson({"index": {"_index": index}}, {"a": 2})).status_code == 200  # not for _bulk
    unavailable = httpx.post(f"{es.url}/{index}/_search", json={})
    assert unavailable.status_code == 503 and unavailable.json()["error"]["type"] == "cluster_block_exception"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{es.url}/{index}/_count")
    es.inject(RejectRequest(429), on="_count")
    busy = Elasticsearch(es.url, max_retries=1, retry_on_status=(429,))
    assert busy.count(index=index)["count"] == 2  # the transport retried the rejected count
    with pytest.raises(ValueError, match="_bulk request only"):
        es.inject(FailItems(every=ItemFault.REJECTED), on="_search")


def test_count_only_counts_but_does_not_search():
    with ElasticsearchReceiver(count_only=True) as receiver:
        seed(receiver, "c", {"a": 1}, {"a": 2})
        assert Elasticsearch(receiver.url).count(index="c")["count"] == 2
        filtered = httpx.post(receiver.url + "/c/_count", json={"query": {"term": {"a": 1}}})
        assert filtered.status_code == 400
        reason = "a count-only receiver keeps no sources: only match_all can be counted"
        assert filtered.json()["error"]["reason"] == reason
        search = httpx.get(receiver.url + "/c/_search")
        assert search.status_code == 400
        assert search.json()["error"]["reason"] == (
            "a count-only receiver keeps no sources and cannot answer _search; use _count"
        )


# Count-only mode and the program -------------------------------------------------------------------


def test_count_only_counts_without_keeping_sources():
    with ElasticsearchReceiver(count_only=True) as receiver:
        body = ndjson({"create": {"_index": "c", "_id": "1"}}, {"a": 1}, {"index": {"_index": "c"}}, {"a": "x"})
        assert post_bulk(receiver, body).json()["errors"] is False  # no mapping kept, so no conflict
        broken = post_bulk(receiver, b'{"index":{"_index":"c"}}\n{"a":\n').json()["items"][0]["index"]
        assert broken["error"]["type"] == "document_parsing_exception"
        assert post_bulk(receiver, body).json()["items"][0]["create"]["status"] == 409
        assert receiver.count("c") == 3
        with pytest.raises(RuntimeError):
            receiver.documents("c")


def test_the_program_counts_and_reports_on_exit():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.receivers.elasticsearch", "--port", "0", "--version", "8.19.0", "--count-only"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith("listening on http://127.0.0.1:")
        assert banner.rstrip().endswith("(Elasticsearch 8.19.0, count-only)")
        url = banner.split()[2]
        body = ndjson(*[line for n in range(4) for line in ({"create": {"_index": "bench", "_id": str(n)}}, {"n": n})])
        assert httpx.post(url + "/_bulk", content=body, headers=COMPAT_8).json()["errors"] is False
        process.send_signal(signal.SIGINT)
        summary = json.loads(process.stdout.readline())
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
    assert summary["documents"] == 4
    assert summary["indices"] == {"bench": 4}
    assert summary["bulk_requests"] == 1


# The exact parser, against reference behaviour ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def read_tokens(text):
    """The value Jackson-style tokens spell, or the Jackson error."""
    tokens = json_tokens(text)

    def value(token):
        if token.kind == "START_OBJECT":
            result = {}
            while (name := next(tokens)).kind != "END_OBJECT":
                result[name.value] = value(next(tokens))
            return result
        if token.kind == "START_ARRAY":
            items = []
            while (element := next(tokens)).kind != "END_ARRAY":
                items.append(value(element))
            return items
        return token.value

    result = value(next(tokens))
    assert next(tokens, None) is None
    return result


@settings(max_examples=150, deadline=None)
@given(json_values, st.sampled_from([None, 1]), st.booleans())
def test_the_tokenizer_reads_valid_json_as_json_does(value, indent, ascii_only):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    assert read_tokens(text) == json.loads(text)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["create", "index", "delete", "update"]),
    st.dictionaries(
        st.sampled_from(["_index", "_id", "routing", "pipeline", "op_type"]), st.text(max_size=6), max_size=4
    ),
)
def test_the_fast_and_the_exact_action_line_paths_agree(action, metadata):
    compact = json.dumps({action: metadata}, separators=(",", ":")).encode()  # the fast path takes this
    spaced = json.dumps({action: metadata}, indent=1).replace("\n", " ").encode()  # this goes the exact way
    document = b"" if action == "delete" else b'{"doc":{}}\n'

    def outcome(line):
        try:
            return parse_bulk_body(line + b"\n" + document, default_index="d", major=9, rest_major=9)
        except RequestRejected as rejection:
            return rejection.body

    assert outcome(compact) == outcome(spaced)
    if metadata:  # a repeated key is refused, however it is spelled
        key = next(iter(metadata))
        repeated = compact[:-2] + b',"%s":"again"}}' % key.encode()
        assert outcome(repeated)["error"]["caused_by"]["reason"].startswith(f"Duplicate field '{key}'")


# HTTPS and ending fault storms ------------------------------------------------------------------


@pytest.fixture(scope="module")
def es_tls():
    with ElasticsearchReceiver(version="9.1.0", tls=True) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def es_mtls():
    with ElasticsearchReceiver(version="9.1.0", require_client_cert=True) as receiver:
        yield receiver


def test_the_official_client_works_over_https_with_the_ca(es_tls, index):
    assert es_tls.url.startswith("https://127.0.0.1:")
    client = Elasticsearch(es_tls.url, ca_certs=es_tls.ca_file)
    assert client.info()["version"]["number"] == "9.1.0"
    response = client.bulk(operations=[{"create": {"_index": index, "_id": "1"}}, {"m": 1}], refresh=True)
    assert response["errors"] is False
    assert es_tls.documents(index) == [{"m": 1}]
    with pytest.raises(RuntimeError, match="require_client_cert"):
        es_tls.client_cert_file  # noqa: B018


def test_without_the_ca_the_client_fails_verification_and_the_node_carries_on(es_tls, capfd):
    with pytest.raises(TlsError) as refused:
        Elasticsearch(es_tls.url, max_retries=0).info()
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message
    # Plain HTTP on the TLS port is another failed handshake, not a crash.
    with pytest.raises(httpx.HTTPError):
        httpx.get(es_tls.url.replace("https://", "http://") + "/", timeout=2)
    assert Elasticsearch(es_tls.url, ca_certs=es_tls.ca_file).ping() is True
    assert "Traceback" not in capfd.readouterr().err  # failed handshakes are logged quietly


def test_a_client_certificate_is_required_when_asked_for(es_mtls, index):
    assert Path(es_mtls.client_cert_file).is_file() and Path(es_mtls.client_key_file).is_file()
    with pytest.raises(TransportConnectionError):
        Elasticsearch(es_mtls.url, ca_certs=es_mtls.ca_file, max_retries=0).info()
    client = Elasticsearch(
        es_mtls.url,
        ca_certs=es_mtls.ca_file,
        client_cert=es_mtls.client_cert_file,
        client_key=es_mtls.client_key_file,
    )
    assert client.info()["version"]["number"] == "9.1.0"
    assert client.bulk(operations=[{"create": {"_index": index}}, {"m": 1}])["errors"] is False
    assert es_mtls.count(index) == 1


def test_tls_files_exist_only_while_running():
    receiver = ElasticsearchReceiver(tls=True)
    with pytest.raises(RuntimeError, match="tls=True"):
        receiver.ca_file  # noqa: B018
    with receiver:
        ca_file = Path(receiver.ca_file)
        assert ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert not ca_file.parent.exists()
    with ElasticsearchReceiver() as plain:
        assert plain.url.startswith("http://")  # plain HTTP by default


def test_clear_faults_ends_a_429_storm(es, index):
    client = Elasticsearch(es.url, max_retries=0)
    operations = [{"create": {"_index": index}}, {"m": 1}]
    es.inject(*[RejectRequest(429)] * 1000)
    es.inject(RejectRequest(503), on="_search")
    for _ in range(3):
        with pytest.raises(ApiError) as refused:
            client.bulk(operations=operations)
        assert refused.value.meta.status == 429
    dropped = es.clear_faults(on="_bulk")
    assert dropped == [RejectRequest(429)] * 997
    assert es.pending_faults == [RejectRequest(503)]  # other endpoints keep theirs
    assert client.bulk(operations=operations)["errors"] is False
    assert es.count(index) == 1
    assert es.clear_faults() == [RejectRequest(503)]
    assert es.pending_faults == []
    with pytest.raises(ValueError, match="not _flush"):
        es.clear_faults(on="_flush")
