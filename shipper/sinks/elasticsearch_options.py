"""The ``type: elasticsearch`` sink's options, and Elasticsearch's index-name rules.

``index`` is a template with strftime date fields filled from each record's own UTC time,
as Fluent Bit's ``Logstash_Format`` and fluentd's ``utc_index`` do, so a replay of old lines
lands in the day it belongs to: ``logstash-%Y.%m.%d`` (the default), or a fixed name with no
``%`` at all. ``data_stream`` writes to a data stream instead (its documents need
``create``, which the sink always uses).

``{kubernetes.namespace_name}`` (and ``pod_name``, ``container_name``, ``host``) in the
template put each file's records in their own index, like Fluent Bit's
``Logstash_Prefix_Key`` and Vector's ``{{ field }}``: apps in different namespaces often log
the same field with different types (etcd's ``ts`` is a string, a zap app's a float), and
in one shared index the second type is a mapping conflict.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from shipper.config_reader import ConfigReader
from shipper.sinks.options import DELIVERY_KEYS, DeliveryOptions, read_delivery

DEFAULT_INDEX = "logstash-%Y.%m.%d"
# Only fields a record's date and hour decide: a per-minute index would be an outage.
_DATE_FIELDS = re.compile(r"%[YmdHjy]")
_FORBIDDEN_CHARACTERS = set('\\/*?"<>| ,#:')
FILE_FIELDS = ("namespace_name", "pod_name", "container_name", "host")
_FILE_FIELD = re.compile(r"\{kubernetes\.(\w+)\}")
_SAMPLE_FILE = {"namespace_name": "kube-system", "pod_name": "etcd-node-1", "container_name": "etcd", "host": "node-1"}


@dataclass(frozen=True)
class ElasticsearchOptions:
    delivery: DeliveryOptions
    index: str = DEFAULT_INDEX  # template; unused when data_stream is set
    data_stream: str = ""


def read_elasticsearch_options(reader: ConfigReader, spec: dict, path: str, default_dead_letter_path: str):
    spec = reader.mapping(spec, path, ("type", "index", "data_stream", *DELIVERY_KEYS))
    delivery = read_delivery(reader, spec, path, default_dead_letter_path)
    if "index" in spec and "data_stream" in spec:
        raise reader.fail(f"{path}.data_stream", "give index or data_stream, not both")
    if "data_stream" in spec:
        name = reader.string(spec["data_stream"], f"{path}.data_stream")
        problem = index_name_problem(name)
        if problem:
            raise reader.fail(f"{path}.data_stream", f"'{name}' {problem}")
        return ElasticsearchOptions(delivery=delivery, data_stream=name)
    template = reader.string(spec.get("index", DEFAULT_INDEX), f"{path}.index")
    leftover = _DATE_FIELDS.sub("", template)
    if "%" in leftover.replace("%%", ""):
        raise reader.fail(f"{path}.index", f"'{template}' may only use the date fields %Y %y %m %d %j %H")
    for field in _FILE_FIELD.findall(template):
        if field not in FILE_FIELDS:
            known = ", ".join("{kubernetes.%s}" % f for f in FILE_FIELDS)
            raise reader.fail(f"{path}.index", f"'{{kubernetes.{field}}}' is not a file field (known: {known})")
    if "{" in _FILE_FIELD.sub("", template) or "}" in _FILE_FIELD.sub("", template):
        raise reader.fail(f"{path}.index", f"'{template}' has a brace that is not a {{kubernetes.<field>}}")
    sample = render_index(file_index_template(template, _SAMPLE_FILE), "2026-01-31T23:00:00.000Z")
    problem = index_name_problem(sample)
    if problem:
        raise reader.fail(f"{path}.index", f"'{template}' gives index names like '{sample}', which {problem}")
    return ElasticsearchOptions(delivery=delivery, index=template)


def file_index_template(template: str, kubernetes: dict) -> str:
    """``template`` with the file's ``{kubernetes.<field>}`` filled in (``unknown`` when the
    file name did not say), made safe as an index name part."""
    def value(match: re.Match) -> str:
        text = str(kubernetes.get(match.group(1)) or "unknown").lower()
        return "".join("_" if c in _FORBIDDEN_CHARACTERS or c == "%" else c for c in text)

    return _FILE_FIELD.sub(value, template)


def render_index(template: str, timestamp: str) -> str:
    """The index for a record whose ``@timestamp`` (UTC, ``YYYY-MM-DDTHH:...``) is ``timestamp``."""
    if "%" not in template:
        return template
    moment = datetime(int(timestamp[0:4]), int(timestamp[5:7]), int(timestamp[8:10]), int(timestamp[11:13]),
                      tzinfo=timezone.utc)
    return moment.strftime(template)


def index_name_problem(name: str) -> str:
    """Why Elasticsearch would refuse ``name`` as an index (MetadataCreateIndexService), or ''."""
    if not name:
        return "is empty"
    bad = sorted(_FORBIDDEN_CHARACTERS.intersection(name))
    if bad:
        return f"must not contain {' '.join(repr(c) for c in bad)}"
    if name[0] in "_-+":
        return "must not start with '_', '-' or '+'"
    if len(name.encode()) > 255:
        return "is longer than 255 bytes"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if name != name.lower():
        return "must be lowercase"
    return ""
