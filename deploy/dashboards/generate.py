"""Writes the dashboards next to this script; run it after changing it and commit its output.

    python deploy/dashboards/generate.py

- kibana-kubearmor.ndjson, kibana-falco.ndjson: Kibana 8 saved objects (Stack Management >
  Saved objects > Import): the logstash-* index pattern, one bar chart per field, a table of the
  latest events and a dashboard holding them, for the records the elasticsearch overlay writes.
- grafana-loki.json: a Grafana dashboard (Dashboards > Import) for the loki overlay's streams,
  which carry Promtail's labels: log volume by namespace, etcd compaction, Falco and KubeArmor.

Field names are the shipper's record fields (README, "Hostile JSON, KubeArmor and Falco"). Strings
are aggregated on their `.keyword` multi-field, which Elasticsearch's dynamic mapping adds to every
string; `Severity` is a number (the shipper turns KubeArmor's "5" into 5), aggregated as itself.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
INDEX_PATTERN_ID = "shipper-logstash"
INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
# What a Kibana 8.x export writes; an import into a later 8.x or 9.x migrates from it.
CORE_MIGRATION_VERSION = "8.8.0"

KUBEARMOR = {
    "name": "kubearmor",
    "title": "KubeArmor",
    # The shipper recognises KubeArmor events by these fields; the relay's own diagnostics lack them.
    "query": "HostName : * and Operation : *",
    "charts": [("Severity", "Severity"), ("Type", "Type.keyword"), ("Operation", "Operation.keyword"),
               ("Action", "Action.keyword"), ("PolicyName", "PolicyName.keyword"), ("PodName", "PodName.keyword")],
    "search": {
        "title": "KubeArmor: latest blocks",
        "query": 'HostName : * and Operation : * and Action : "Block"',
        "columns": ["Severity", "PolicyName", "NamespaceName", "PodName", "Operation", "Resource", "Result"],
    },
}

FALCO = {
    "name": "falco",
    "title": "Falco",
    "query": "rule : * and priority : *",
    "charts": [("priority", "priority.keyword"), ("rule", "rule.keyword"), ("level", "level.keyword")],
    "search": {
        "title": "Falco: latest events",
        "query": "rule : * and priority : *",
        "columns": ["priority", "rule", "hostname", "output_fields.k8s_ns_name", "output_fields.k8s_pod_name",
                    "output"],
    },
}

# Loki queries, on Promtail's labels (namespace, container, ...), which the loki overlay's streams carry.
LOKI_PANELS = [
    ("timeseries", "Log lines per minute by namespace", "{{namespace}}",
     'sum by (namespace) (count_over_time({namespace=~".+"}[1m]))'),
    ("logs", "etcd compaction", "",
     '{container="etcd"} |= "compaction"'),
    ("timeseries", "Falco events by priority (5m)", "{{priority}}",
     'sum by (priority) (count_over_time({namespace="falco", container="falco"} | json | __error__="" '
     '| priority != "" [5m]))'),
    ("logs", "Falco: Critical and above", "",
     '{namespace="falco", container="falco"} | json | priority =~ "Critical|Alert|Emergency"'),
    ("timeseries", "KubeArmor alerts by action (5m)", "{{Action}}",
     'sum by (Action) (count_over_time({container="kubearmor-relay"} | json | __error__="" '
     '| Action != "" [5m]))'),
    ("timeseries", "Lines saying error, per second by namespace", "{{namespace}}",
     'sum by (namespace) (rate({namespace=~".+"} |~ "(?i)error" [5m]))'),
]


def saved_object(kind: str, object_id: str, attributes: dict, references: list[dict]) -> dict:
    return {"type": kind, "id": object_id, "attributes": attributes, "references": references,
            "coreMigrationVersion": CORE_MIGRATION_VERSION, "managed": False}


def search_source(query: str) -> dict:
    return {"searchSourceJSON": json.dumps({"query": {"query": query, "language": "kuery"}, "filter": [],
                                            "indexRefName": INDEX_REF})}


def index_pattern() -> dict:
    return saved_object("index-pattern", INDEX_PATTERN_ID,
                        {"title": "logstash-*", "name": "logstash-*", "timeFieldName": "@timestamp"}, [])


def bar_chart(source: dict, label: str, field: str) -> dict:
    title = f"{source['title']}: by {label}"
    vis_state = {
        "title": title,
        "type": "histogram",
        "params": {"type": "histogram", "addLegend": True, "addTooltip": True, "legendPosition": "right"},
        "aggs": [
            {"id": "1", "enabled": True, "type": "count", "schema": "metric", "params": {}},
            {"id": "2", "enabled": True, "type": "terms", "schema": "segment",
             "params": {"field": field, "size": 20, "order": "desc", "orderBy": "1",
                        "otherBucket": True, "missingBucket": False}},
        ],
    }
    attributes = {"title": title, "description": "", "version": 1, "uiStateJSON": "{}",
                  "visState": json.dumps(vis_state), "kibanaSavedObjectMeta": search_source(source["query"])}
    object_id = f"shipper-{source['name']}-by-{label.lower()}"
    return saved_object("visualization", object_id, attributes,
                        [{"name": INDEX_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}])


def latest_events(source: dict) -> dict:
    search = source["search"]
    attributes = {"title": search["title"], "description": "", "columns": search["columns"],
                  "sort": [["@timestamp", "desc"]], "kibanaSavedObjectMeta": search_source(search["query"])}
    return saved_object("search", f"shipper-{source['name']}-latest", attributes,
                        [{"name": INDEX_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}])


def dashboard(source: dict, panels: list[dict]) -> dict:
    layout = []
    for index, panel in enumerate(panels):
        wide = panel["type"] == "search"
        layout.append({"panelIndex": str(index + 1), "panelRefName": f"panel_{index}", "embeddableConfig": {},
                       "type": panel["type"], "version": CORE_MIGRATION_VERSION,
                       "gridData": {"i": str(index + 1), "x": 0 if wide else 24 * (index % 2),
                                    "y": 15 * (index // 2), "w": 48 if wide else 24, "h": 15}})
    attributes = {"title": f"{source['title']} (shipper)", "description": "", "timeRestore": False,
                  "panelsJSON": json.dumps(layout), "optionsJSON": json.dumps({"useMargins": True}),
                  "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"},
                                                                            "filter": []})}}
    references = [{"name": f"panel_{index}", "type": panel["type"], "id": panel["id"]}
                  for index, panel in enumerate(panels)]
    return saved_object("dashboard", f"shipper-{source['name']}", attributes, references)


def kibana(source: dict) -> list[dict]:
    panels = [bar_chart(source, label, field) for label, field in source["charts"]] + [latest_events(source)]
    return [index_pattern(), *panels, dashboard(source, panels)]


def grafana_loki() -> dict:
    panels = []
    for index, (kind, title, legend, expr) in enumerate(LOKI_PANELS):
        target = {"refId": "A", "expr": expr, "datasource": {"type": "loki", "uid": "${datasource}"}}
        if legend:
            target["legendFormat"] = legend
        panels.append({"id": index + 1, "type": kind, "title": title,
                       "datasource": {"type": "loki", "uid": "${datasource}"},
                       "gridPos": {"x": 12 * (index % 2), "y": 8 * (index // 2), "w": 12, "h": 8},
                       "targets": [target]})
    return {
        "uid": "shipper-loki", "title": "Kubernetes logs (shipper, Loki)", "tags": ["shipper", "loki"],
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Loki", "type": "datasource", "query": "loki"}]},
        "panels": panels,
    }


def render() -> dict[str, str]:
    """File name -> content, exactly as committed."""
    return {
        "kibana-kubearmor.ndjson": "".join(json.dumps(o, sort_keys=True) + "\n" for o in kibana(KUBEARMOR)),
        "kibana-falco.ndjson": "".join(json.dumps(o, sort_keys=True) + "\n" for o in kibana(FALCO)),
        "grafana-loki.json": json.dumps(grafana_loki(), indent=2, sort_keys=True) + "\n",
    }


def main() -> None:
    for name, content in render().items():
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as handle:
            handle.write(content)
        print(f"wrote {os.path.join(HERE, name)}")


if __name__ == "__main__":
    main()
