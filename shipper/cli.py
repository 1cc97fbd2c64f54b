"""Command line: ``shipper run``, ``shipper --dry-run``, ``shipper check-config``."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from importlib import resources

from shipper.config import Config, ConfigError, InputConfig, SinkConfig, load_config
from shipper.metrics import HealthState, Metrics, serve_metrics
from shipper.pipeline import Input, Pipeline
from shipper.sinks import Sink
from shipper.sinks.json_lines import JsonLinesSink
from shipper.tail.positions import PositionsError

log = logging.getLogger("shipper")

EXIT_CONFIG = 2


def samples_glob() -> str:
    """The sample logs bundled in the package, wherever it is installed."""
    return os.path.join(str(resources.files("shipper") / "samples" / "containers"), "*.log")


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
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="follow the configured files and ship them")
    run.add_argument("--config", metavar="FILE", required=True, dest="run_config")
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("warning" if args.dry_run else "info")
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            print(f"{args.file}: ok ({len(config.inputs)} inputs, {len(config.sinks)} sinks)")
            return 0
        if args.command == "run":
            return run(load_config(args.run_config))
        if args.dry_run:
            return dry_run(load_config(args.config) if args.config else None, args.path)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except PositionsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def dry_run(config: Config | None, paths: list[str] | None) -> int:
    """Every input feeds one stdout sink; files are read from their head, nothing persists."""
    if paths or config is None:
        inputs = (InputConfig(name="dry-run", paths=tuple(paths or [samples_glob()]), sinks=("stdout",)),)
        config = replace(config, inputs=inputs) if config else Config(source="(defaults)", inputs=inputs, sinks={})
    config = replace(config, sinks={"stdout": SinkConfig(name="stdout", type="stdout")})
    metrics = Metrics()
    stdout = JsonLinesSink("stdout", metrics)
    inputs = [Input.from_config(inp, [stdout]) for inp in config.inputs]
    pipeline = Pipeline(config, inputs, metrics, one_shot=True, persist_positions=False)
    asyncio.run(pipeline.run())
    print(summary(metrics, files=len(pipeline.files)), file=sys.stderr)
    return 0


def summary(metrics: Metrics, files: int) -> str:
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
    ])


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
    pipeline = Pipeline(config, inputs, metrics, health=health)
    asyncio.run(_run_until_signalled(pipeline))
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
