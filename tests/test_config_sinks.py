"""Sink options: defaults, secrets from files kept out of reprs, and errors naming the key."""

import pytest

from shipper.config import ConfigError, parse_config

ES = """
positions: {{path: /var/lib/shipper/positions.json}}
inputs:
  app: {{paths: [/var/log/containers/*.log], sinks: [es]}}
sinks:
  es: {{type: elasticsearch, endpoints: [http://es:9200]{extra}}}
"""


def es_options(extra: str = ""):
    return parse_config(ES.format(extra=extra), "c.yaml").sinks["es"].options


def test_elasticsearch_defaults():
    options = es_options()
    assert options.index == "logstash-%Y.%m.%d" and options.data_stream == ""
    delivery = options.delivery
    assert delivery.endpoints == ("http://es:9200",) and delivery.tls.verify
    assert delivery.dead_letter_path == "/var/lib/shipper/dead-letter-es.ndjson"
    assert delivery.compression == "none" and delivery.max_in_flight_requests == 4


def test_secrets_come_from_files_and_never_appear_in_reprs(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("c2VjcmV0LWtleQ==\n")
    options = es_options(f", auth: {{api_key_file: {key_file}}}")
    assert options.delivery.auth.api_key == "c2VjcmV0LWtleQ=="
    assert "c2VjcmV0" not in repr(options)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (", index: Logs-%Y", "c.yaml: sinks.es.index: 'Logs-%Y' gives index names like 'Logs-2026', which must be lowercase"),
        (", index: 'logs-%M'", "c.yaml: sinks.es.index: 'logs-%M' may only use the date fields %Y %y %m %d %j %H"),
        (", index: '_logs'", "c.yaml: sinks.es.index: '_logs' gives index names like '_logs', which must not start with"),
        (", index: 'a b'", "c.yaml: sinks.es.index: 'a b' gives index names like 'a b', which must not contain ' '"),
        (", index: a, data_stream: b", "c.yaml: sinks.es.data_stream: give index or data_stream, not both"),
        (", data_stream: 'logs#x'", "c.yaml: sinks.es.data_stream: 'logs#x' must not contain '#'"),
        (", endpoints: [es:9200]", "c.yaml: sinks.es.endpoints[0]: must be an http:// or https:// URL, got 'es:9200'"),
        (", auth: {user: u}", "c.yaml: sinks.es.auth: basic auth needs both user and password"),
        (", auth: {api_key: k, bearer_token: t}", "c.yaml: sinks.es.auth: choose one of basic (user/password), api_key or bearer_token"),
        (", auth: {password_file: /nonexistent/pw, user: u}", "c.yaml: sinks.es.auth.password_file: cannot read /nonexistent/pw"),
        (", tls: {ca_file: /nonexistent/ca.pem}", "c.yaml: sinks.es.tls.ca_file: no such file: /nonexistent/ca.pem"),
        (", compression: zstd", "c.yaml: sinks.es.compression: must be one of none, gzip, got 'zstd'"),
        (", batch: {max_record: 5}", "c.yaml: sinks.es.batch.max_record: unknown key (did you mean 'max_records'?)"),
        (", retry: {initial_backoff_secs: 5, max_backoff_secs: 1}", "c.yaml: sinks.es.retry.max_backoff_secs: must not be below"),
        (", indexes: x", "c.yaml: sinks.es.indexes: unknown key (did you mean 'index'?)"),
    ],
)
def test_elasticsearch_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError) as error:
        es_options(extra)
    assert str(error.value).startswith(message)


def test_index_templates_may_name_file_fields():
    assert es_options(", index: 'logs-{kubernetes.namespace_name}-%Y.%m'").index == "logs-{kubernetes.namespace_name}-%Y.%m"
    with pytest.raises(ConfigError, match=r"sinks.es.index: '\{kubernetes.labels\}' is not a file field"):
        es_options(", index: 'logs-{kubernetes.labels}'")
    with pytest.raises(ConfigError, match="sinks.es.index: 'logs-{ns}' has a brace"):
        es_options(", index: 'logs-{ns}'")
