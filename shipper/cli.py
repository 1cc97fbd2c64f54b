"""Command line: ``shipper run``, ``shipper --dry-run``, ``shipper check-config``,
``shipper replay-dead-letter``."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from importlib import resources

import orjson

from shipper.config import Config, ConfigError, InputConfig, SinkConfig, load_config
from shipper.kube.pod_metadata import PodMetadataCache
from shipper.malloc_tuning import tune_malloc
from shipper.metrics import HealthState, Metrics, serve_metrics
from shipper.pipeline import Input, Pipeline
from shipper.replay import replay_dead_letter
from shipper.sinks import Sink
from shipper.sinks.json_lines import JsonLinesSink
from shipper.tail.positions import PositionsError

log = logging.getLogger("shipper")

EXIT_CONFIG = 2


def samples_glob() -> str:
    """The sample logs bundled in the package, wherever it is installed."""
    return os.path.join(str(resources.files("shipper") / "samples" / "containers"), "*.log")


# `--kube-pods` without a file: the bundled samples' pods, resolved when used.
SAMPLE_PODS = "(samples)"


def sample_pods_path() -> str:
    return str(resources.files("shipper") / "samples" / "pods.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper",
        description="Kubernetes node log shipper.",
        epilog="With --dry-run and no --config or --path, reads the sample logs bundled with shipper.",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="read files from their head once, print records as JSON lines, persist nothing")
    parser.add_argument("--config", metavar="FILE", help="configuration file (YAML)")
    parser.add_argument("--path", metavar="GLOB", action="append",
                        help="with --dry-run: read these files instead of the configured inputs (repeatable)")
    parser.add_argument("--kube-pods", metavar="FILE", nargs="?", const=SAMPLE_PODS,
                        help="with --dry-run: enrich records from a saved `kubectl get pods -o json` list "
                             "(without FILE: the pods of the bundled samples)")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="follow the configured files and ship them")
    run.add_argument("--config", metavar="FILE", required=True, dest="run_config")
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE")
    replay = commands.add_parser("replay-dead-letter",
                                 help="send a sink's dead letters again, once their cause is fixed")
    replay.add_argument("--config", metavar="FILE", required=True, dest="replay_config")
    replay.add_argument("--sink", metavar="NAME", required=True, help="the sink whose dead letters to send")
    replay.add_argument("--file", metavar="PATH", dest="dead_letter_file",
                        help="the dead-letter file to read (default: the sink's dead_letter_path)")
    replay.add_argument("--dry-run", action="store_true", dest="replay_dry_run",
                        help="print what would be sent (per index or stream, and reason); send nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("warning" if args.dry_run else "info")
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    tune_malloc()
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            print(f"{args.file}: ok ({len(config.inputs)} inputs, {len(config.sinks)} sinks)")
            return 0
        if args.command == "replay-dead-letter":
            return replay_dead_letter(load_config(args.replay_config), args.sink, args.dead_letter_file,
                                      args.replay_dry_run)
        if args.command == "run":
            return run(load_config(args.run_config))
        if args.dry_run:
            return dry_run(load_config(args.config) if args.config else None, args.path, args.kube_pods)
        if args.kube_pods:
            parser.error("--kube-pods needs --dry-run")
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except PositionsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def dry_run(config: Config | None, paths: list[str] | None, kube_pods: str | None = None) -> int:
    """Every input feeds one stdout sink; files are read from their head, nothing persists.
    ``kube_pods``: a saved pod list stands in for the API's metadata."""
    if paths or config is None:
        inputs = (InputConfig(name="dry-run", paths=tuple(paths or [samples_glob()]), sinks=("stdout",)),)
        config = replace(config, inputs=inputs) if config else Config(source="(defaults)", inputs=inputs, sinks={})
    config = replace(config, sinks={"stdout": SinkConfig(name="stdout", type="stdout")})
    pod_metadata = None
    if kube_pods is not None:
        pod_metadata = PodMetadataCache(config.kube.metadata)
        try:
            pod_metadata.replace_pods(read_pod_list(sample_pods_path() if kube_pods == SAMPLE_PODS else kube_pods))
        except ValueError as error:
            print(f"error: --kube-pods {kube_pods}: {error}", file=sys.stderr)
            return EXIT_CONFIG
    metrics = Metrics()
    stdout = JsonLinesSink("stdout", metrics)
    inputs = [Input.from_config(inp, [stdout]) for inp in config.inputs]
    pipeline = Pipeline(config, inputs, metrics, one_shot=True, persist_positions=False, pod_metadata=pod_metadata)
    asyncio.run(pipeline.run())
    print(summary(metrics, files=len(pipeline.files), pod_metadata=pod_metadata), file=sys.stderr)
    return 0


def read_pod_list(path: str) -> list:
    """The pods of a ``kubectl get pods -o json`` file (a List, PodList or a single Pod)."""
    try:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
    except OSError as error:
        raise ValueError(f"cannot read: {error.strerror}") from None
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    if isinstance(data, dict) and data.get("kind") == "Pod":
        return [data]
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ValueError("not a pod list: expected an object with items, as `kubectl get pods -o json` writes")
    return data["items"]


def summary(metrics: Metrics, files: int, pod_metadata: PodMetadataCache | None = None) -> str:
    def listing(totals: dict[str, float]) -> str:
        return ", ".join(f"{key}={int(value)}" for key, value in sorted(totals.items())) or "none"

    return "\n".join([
        f"dry run: {files} files, {int(metrics.value('shipper_lines_total'))} lines "
        f"({int(metrics.value('shipper_read_bytes_total'))} bytes) -> "
        f"{int(metrics.value('shipper_records_total'))} records, "
        f"{int(metrics.value('shipper_sink_records_total'))} printed",
        f"  flagged (shipped with shipper.flags): {listing(metrics.by_label('shipper_records_flagged_total', 'reason'))}",
        f"  dropped by filters: {listing(metrics.by_label('shipper_records_dropped_total', 'filter'))}",
        f"  files skipped: {listing(metrics.by_label('shipper_files_skipped_total', 'reason'))}",
    ] + ([] if pod_metadata is None else [
        f"  pod metadata: {len(pod_metadata)} pods ({pod_metadata.counts.bad_objects} unreadable, skipped); "
        f"records without it: {int(metrics.value('shipper_kube_records_without_metadata_total'))}, "
        f"excluded by annotation: {int(metrics.value('shipper_kube_records_excluded_total'))}",
    ]))


def build_sinks(config: Config, metrics: Metrics) -> dict[str, Sink]:
    sinks: dict[str, Sink] = {}
    for name, sink_config in config.sinks.items():
        if sink_config.type == "stdout":
            sinks[name] = JsonLinesSink(name, metrics)
        elif sink_config.type == "file":
            sinks[name] = JsonLinesSink(name, metrics, path=sink_config.options.path)
        elif sink_config.type == "elasticsearch":
            # Imported only when configured: the client costs ~0.3 s of CPU and 25 MB to load.
            from shipper.sinks.elasticsearch import ElasticsearchSink

            sinks[name] = ElasticsearchSink(name, sink_config.options, metrics, config.node_name)
        elif sink_config.type == "loki":
            # Imported only when configured, like Elasticsearch's (httpx, protobuf: ~0.09 s of CPU).
            from shipper.sinks.loki import LokiSink

            sinks[name] = LokiSink(name, sink_config.options, metrics)
    return sinks


def run(config: Config) -> int:
    metrics = Metrics()
    health = HealthState()
    if config.metrics_listen:
        host, _, port = config.metrics_listen.rpartition(":")
        serve_metrics(metrics, health, host, int(port))
    sinks = build_sinks(config, metrics)
    inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
    pod_metadata = watch = None
    if config.kube.enabled:
        # Imported only when configured, like the Elasticsearch client.
        from shipper.kube.watch import NodeMetadataWatch, api_client

        pod_metadata = PodMetadataCache(config.kube.metadata)
        try:
            client = api_client(config.kube.kubeconfig)
        except Exception as error:  # the client raises its own ConfigException, or OSError for files
            raise ConfigError(config.source, "kube", f"cannot set up the API client: {error}") from None
        watch = NodeMetadataWatch(client, config.node_name, pod_metadata, metrics)
        watch.start()  # records do not wait for it: a pod not yet cached ships with its file name's fields
    pipeline = Pipeline(config, inputs, metrics, health=health, pod_metadata=pod_metadata)
    try:
        asyncio.run(_run_until_signalled(pipeline))
    finally:
        if watch is not None:
            watch.stop()
    return 0


async def _run_until_signalled(pipeline: Pipeline) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            # The positions file is only ever replaced atomically, so it is consistent now.
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(0)
        log.info("%s: stopping; draining sinks", signal.Signals(signum).name)
        pipeline.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await pipeline.run()


if __name__ == "__main__":
    sys.exit(main())
