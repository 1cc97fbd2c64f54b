"""The dashboards in deploy/dashboards: what the script generates now, and they show something: the
fields the Kibana objects use exist with a usable type in what the elasticsearch overlay ships from
the sample logs, and the Grafana queries parse and answer over what the loki overlay ships."""

import asyncio
import fnmatch
import importlib.util
import json
import os
import re
from collections import Counter, defaultdict
from datetime import datetime

import pytest

from shipper.cli import build_sinks, read_pod_list, sample_pods_path, samples_glob
from shipper.kube.pod_metadata import PodMetadataCache
from shipper.metrics import Metrics
from shipper.pipeline import Input, Pipeline
from tests.deploy_manifests import REPO, on_local_files, overlay_config
from tests.receivers.elasticsearch import BasicAuth, ElasticsearchReceiver
from tests.receivers.logql import LogQuery, evaluate, parse, select
from tests.receivers.loki import LokiLimits, LokiReceiver

DASHBOARDS = os.path.join(REPO, "deploy", "dashboards")
KIBANA_FILES = ("kibana-kubearmor.ndjson", "kibana-falco.ndjson")
NANOS = 10**9


def generator():
    spec = importlib.util.spec_from_file_location("generate_dashboards", os.path.join(DASHBOARDS, "generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def saved_objects(name: str) -> list[dict]:
    with open(os.path.join(DASHBOARDS, name), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def grafana_queries() -> list[str]:
    with open(os.path.join(DASHBOARDS, "grafana-loki.json"), encoding="utf-8") as handle:
        return [target["expr"] for panel in json.load(handle)["panels"] for target in panel["targets"]]


def ship_samples(config, tmp_path) -> Metrics:
    """The configuration over the bundled sample logs, enriched from the samples' pods, once."""
    config = on_local_files(config, (samples_glob(),), str(tmp_path))
    pods = PodMetadataCache(config.kube.metadata)
    pods.replace_pods(read_pod_list(sample_pods_path()))
    metrics = Metrics()
    sinks = build_sinks(config, metrics)
    inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
    asyncio.run(Pipeline(config, inputs, metrics, one_shot=True, persist_positions=False, pod_metadata=pods).run())
    assert not list(tmp_path.glob("dead-letter-*")), "the sample records must all be accepted"
    return metrics


def sample_messages(prefix: str) -> list[tuple[int, str, str]]:
    """(CRI time in ns, stream, message) of each line of the sample file named with ``prefix``."""
    directory = os.path.dirname(samples_glob())
    (name,) = [name for name in os.listdir(directory) if name.startswith(prefix)]
    with open(os.path.join(directory, name), encoding="utf-8") as handle:
        return [(iso_ns(time), stream, message)
                for time, stream, _, message in (line.rstrip("\n").split(" ", 3) for line in handle)]


def sample_json_lines(prefix: str) -> list[tuple[int, dict]]:
    """(CRI time in ns, JSON object) of a sample file's stdout lines that are JSON objects."""
    return [(ts, json.loads(message)) for ts, stream, message in sample_messages(prefix)
            if stream == "stdout" and message.startswith("{")]


def iso_ns(text: str) -> int:
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole + "+00:00").timestamp())
    return seconds * NANOS + int(fraction.ljust(9, "0"))


def test_the_committed_dashboards_are_what_the_script_generates_now():
    for name, content in generator().render().items():
        with open(os.path.join(DASHBOARDS, name), encoding="utf-8") as handle:
            assert handle.read() == content, f"{name} is stale: run python deploy/dashboards/generate.py"


# ---- Kibana ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logstash(tmp_path_factory) -> dict[str, tuple[dict[str, str], list[dict]]]:
    """Index -> (its dynamic mapping, its documents) in the fake Elasticsearch, for every index
    of logstash-* after the elasticsearch overlay shipped the samples."""
    tmp_path = tmp_path_factory.mktemp("elasticsearch")
    auth = overlay_config("elasticsearch").sinks["elasticsearch"].options.delivery.auth
    with ElasticsearchReceiver(version="8.19.0", auth=BasicAuth(auth.user, auth.password)) as es:
        ship_samples(overlay_config("elasticsearch", ES_URL=es.url), tmp_path)
        return {index: (es.mapping(index), es.documents(index))
                for index in es.indices() if fnmatch.fnmatch(index, "logstash-*")}


@pytest.fixture(scope="module")
def logstash_fields(logstash) -> dict[str, set[str]]:
    """Field -> the types the dynamic mapping gave it across logstash-* (two: a Kibana conflict)."""
    fields = defaultdict(set)
    for mapping, _ in logstash.values():
        for field, kind in mapping.items():
            fields[field].add(kind)
    return dict(fields)


def kql_matches(query: str, document: dict) -> bool:
    """The KQL the saved objects use: clauses ``field : *`` (exists) or ``field : "value"``
    joined by ``and``; anything else fails the test rather than be guessed."""
    for clause in query.split(" and "):
        field, separator, value = clause.partition(" : ")
        if not separator or not re.fullmatch(r'\*|"[^"]*"', value.strip()):
            raise AssertionError(f"KQL beyond this test's subset: {clause!r}")
        actual = document
        for part in field.strip().split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if actual is None or (value.strip() != "*" and actual != json.loads(value)):
            return False
    return True


def kibana_fields(objects: list[dict]) -> dict[str, list[str]]:
    """How the saved objects use fields: aggregated, shown as a column, or queried in KQL."""
    used = defaultdict(list)
    for saved in objects:
        attributes = saved["attributes"]
        if "visState" in attributes:
            for agg in json.loads(attributes["visState"])["aggs"]:
                if "field" in agg["params"]:
                    used["aggregated"].append(agg["params"]["field"])
        used["column"] += attributes.get("columns", [])
        source = attributes.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        if source:
            used["queried"] += re.findall(r"([A-Za-z_@][\w.@]*)\s*:", json.loads(source)["query"]["query"])
    return used


@pytest.mark.parametrize("name", KIBANA_FILES)
def test_every_field_a_kibana_object_uses_exists_with_one_usable_type(name, logstash_fields):
    used = kibana_fields(saved_objects(name))
    assert used["aggregated"] and used["column"] and used["queried"]
    for field in used["aggregated"]:
        if field.endswith(".keyword"):  # the keyword multi-field of a dynamically mapped string
            assert logstash_fields.get(field.removesuffix(".keyword")) == {"text"}, field
        else:  # a text field cannot be aggregated; two types make Kibana's field a conflict
            assert len(logstash_fields.get(field, ())) == 1 and logstash_fields[field] != {"text"}, field
    for field in used["column"] + used["queried"]:
        assert len(logstash_fields.get(field, ())) == 1, f"{field}: {logstash_fields.get(field)}"


@pytest.mark.parametrize(("name", "prefix", "search_field", "search_value"), [
    ("kibana-kubearmor.ndjson", "kubearmor-relay-", "Action", "Block"),
    ("kibana-falco.ndjson", "falco-", None, None),
])
def test_the_charts_count_the_sample_events_and_nothing_else(logstash, name, prefix, search_field, search_value):
    documents = [document for _, stored in logstash.values() for document in stored]
    events = [event for _, event in sample_json_lines(prefix)]
    for saved in saved_objects(name):
        source = saved["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        query = json.loads(source)["query"]["query"] if source else ""
        if saved["type"] == "visualization":  # the relay's or Falco's own diagnostics are not events
            assert sum(kql_matches(query, document) for document in documents) == len(events), saved["id"]
        if saved["type"] == "search" and search_field:
            found = [document for document in documents if kql_matches(query, document)]
            assert len(found) == sum(event.get(search_field) == search_value for event in events) > 0
            assert all(document[search_field] == search_value for document in found)


def test_kubearmor_fields_have_the_types_their_charts_need(logstash_fields):
    aggregated = kibana_fields(saved_objects("kibana-kubearmor.ndjson"))["aggregated"]
    assert logstash_fields["Severity"] == {"long"} and "Severity" in aggregated  # a number: ranges, sorting
    for field in ("Type", "Operation", "Action", "PolicyName", "PodName"):
        assert logstash_fields[field] == {"text"} and f"{field}.keyword" in aggregated
    falco = kibana_fields(saved_objects("kibana-falco.ndjson"))["aggregated"]
    assert sorted(falco) == ["level.keyword", "priority.keyword", "rule.keyword"]


@pytest.mark.parametrize("name", KIBANA_FILES)
def test_every_reference_resolves_within_the_file_and_the_pattern_matches_the_overlays_indices(name):
    objects = saved_objects(name)
    ids = {(saved["type"], saved["id"]) for saved in objects}
    for saved in objects:
        for reference in saved["references"]:
            assert (reference["type"], reference["id"]) in ids, f"{saved['id']} -> {reference}"
    (pattern,) = [saved for saved in objects if saved["type"] == "index-pattern"]
    index = overlay_config("elasticsearch").sinks["elasticsearch"].options.index
    assert fnmatch.fnmatch(index.replace("{kubernetes.namespace_name}", "kubearmor"), pattern["attributes"]["title"])
    (board,) = [saved for saved in objects if saved["type"] == "dashboard"]
    panels = json.loads(board["attributes"]["panelsJSON"])
    assert sorted(p["panelRefName"] for p in panels) == sorted(r["name"] for r in board["references"])
    assert len(panels) == len(objects) - 2  # every visualization and the saved search


# ---- Grafana / Loki ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loki_entries(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("loki")
    with LokiReceiver(limits=LokiLimits(reject_old_samples=False)) as loki:  # the samples are from 2026-11-20
        metrics = ship_samples(overlay_config("loki", LOKI_URL=loki.url), tmp_path)
        assert loki.stats.entries_stored == metrics.value("shipper_records_total")
        yield loki


def test_every_grafana_query_parses():
    queries = grafana_queries()
    assert 'sum by (namespace) (count_over_time({namespace=~".+"}[1m]))' in queries
    for query in queries:
        parse(query)


def test_the_etcd_compaction_panel_shows_the_etcd_compaction_lines(loki_entries):
    (query,) = [q for q in grafana_queries() if 'container="etcd"' in q]
    expected = [message for _, _, message in sample_messages("etcd-") if "compaction" in message]
    compaction = [line for _, _, line in loki_entries.query("fake", query)]
    assert compaction == expected and len(expected) == 3
    assert [line for _, _, line in select(parse(query), loki_entries.entries())] == compaction


def at_end_of(events: list[tuple[int, dict]]) -> int:
    return max(ts for ts, _ in events)


def in_window(events: list[tuple[int, dict]], at_ns: int, range_ns: int) -> list[dict]:
    return [event for ts, event in events if at_ns - range_ns < ts <= at_ns]


@pytest.mark.parametrize(("prefix", "field", "label"), [("falco-", "priority", "priority"),
                                                         ("kubearmor-relay-", "Action", "Action")])
def test_the_security_panels_count_the_sample_events(loki_entries, prefix, field, label):
    (query,) = [q for q in grafana_queries() if q.startswith(f"sum by ({label})")]
    parsed = parse(query)
    events = [(ts, event) for ts, event in sample_json_lines(prefix) if field in event]
    at_ns = at_end_of(events)
    expected = Counter(event[field] for event in in_window(events, at_ns, parsed.inner.range_ns))
    assert len(expected) >= 2
    counted = evaluate(parsed, loki_entries.entries(), at_ns)
    assert counted == {((label, value),): float(count) for value, count in expected.items()}


def test_the_falco_critical_panel_lists_only_critical_and_above(loki_entries):
    (query,) = [q for q in grafana_queries() if "Critical|Alert|Emergency" in q]
    parsed = parse(query)
    assert isinstance(parsed, LogQuery)
    shown = [json.loads(line)["priority"] for _, _, line in select(parsed, loki_entries.entries())]
    sample = [event["priority"] for _, event in sample_json_lines("falco-") if "priority" in event]
    assert shown == [p for p in sample if p in ("Critical", "Alert", "Emergency")] and shown
