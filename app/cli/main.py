"""The `leadscore` command: the composition root that starts the API, the consumer and the tools.

Modules are imported inside the commands that need them (numpy, LightGBM, FastAPI, aiokafka and redis
take seconds to import), so `leadscore --help` answers at once. A failure a user can fix is reported as
one or two lines naming the problem and what to do, with a non-zero exit code; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import Settings

# Exit codes: what the user gave was wrong (2), something the command needs cannot be reached (3).
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a Unix tool killed by SIGPIPE: the reader (`| head`) went away


def _settings(args: argparse.Namespace) -> Settings:
    """The validated settings, the YAML config included: a mistake in either stops the command here."""
    from app.settings import load_settings

    settings = load_settings()
    _ = settings.service_config  # validated at start-up, not at the first event
    args.settings = settings
    return settings


def _configure_logging(level: str, log_format: str = "text") -> None:
    from app.logs import configure

    configure(level, log_format)


def _print_json(document: Any) -> None:
    import orjson

    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.app import create_app
    from app.eventloop import run_async
    from app.model_registry import active_scorer
    from app.ports import ensure_port_free
    from app.storage.leads import open_store
    from consumers.ingest import EventIngest

    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    ensure_port_free(args.host, args.port, what="the API", option="--port")

    async def preflight() -> None:
        # The app checks the model again at start-up; here a refusal is one line, not a traceback.
        store = open_store(settings)
        try:
            await active_scorer(settings, store)
        finally:
            await store.close()

    run_async(preflight())
    app = create_app(settings, EventIngest(settings))
    # log_config=None: uvicorn's loggers go through the root handler, in the configured format
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from app.cli.runtime import run_consumer
    from app.eventloop import run_async

    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    run_async(run_consumer(settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host))
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from app.cli.runtime import run_webhooks
    from app.eventloop import run_async

    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    run_async(run_webhooks(settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from devtools.simulator import SimulationSpec, live_events, simulate_history, write_history

    spec = SimulationSpec(leads=args.leads, days=args.days, seed=args.seed)
    if args.out is not None:
        count = write_history(spec, args.out)
        print(f"wrote {count} events for {args.leads} leads over {args.days:g} days to {args.out}")
        return 0
    from app.eventloop import run_async
    from consumers.producer import EventProducer
    from consumers.topics import ensure_topics

    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    events = simulate_history(spec) if args.history else live_events(spec)

    async def produce() -> int:
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.events_topic],
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        async with EventProducer(
            settings.kafka_bootstrap_servers,
            settings.events_topic,
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=args.linger_ms,
        ) as producer:
            return await producer.send_paced(events, rate=args.rate, limit=args.limit)

    sent = run_async(produce())
    print(f"produced {sent} events to {settings.events_topic}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from app.settings import ServiceConfig
    from models.training import TrainingOptions, train_model
    from models.training_spec import parse_instant

    _configure_logging("WARNING")  # the config's warnings (a misspelt conversion type, ...) show before training
    config = ServiceConfig.load(args.config)
    # The config's training section, then each flag that was given on top of it (TrainingOptions field names).
    flags = (
        *("horizon_days", "snapshot_every_days", "max_snapshots_per_lead", "split"),
        *("valid_fraction", "test_fraction", "min_positives", "calibration"),
    )
    overrides = {name: value for name in flags if (value := getattr(args, name)) is not None}
    for flag in ("window_start", "window_end"):
        if (value := getattr(args, flag)) is not None:
            overrides[f"{flag}_ms"] = int(parse_instant(value).timestamp() * 1000)
    options = TrainingOptions.from_spec(config.training, seed=args.seed, version=args.version, **overrides)
    metadata = train_model(args.events, config.features, args.out, options, progress=not args.quiet)
    if args.json:
        _print_json(metadata.model_dump(mode="json", exclude={"calibration"}))
        return 0

    def auc(metrics: dict[str, float]) -> str:
        value, low, high = (metrics.get(f"roc_auc{suffix}") for suffix in ("", "_ci_low", "_ci_high"))
        if value is None:
            return "n/a"
        return f"{value:.3f} [{low:.3f}-{high:.3f}]" if low is not None and high is not None else f"{value:.3f}"

    rows, positives, selection = metadata.rows, metadata.positives, metadata.calibration_selection
    lines = [
        f"trained model {metadata.version}",
        f"  rows       {sum(rows.values()):,} snapshots ({', '.join(f'{k} {v:,}' for k, v in rows.items())}),"
        f" horizon {metadata.horizon_days:g} days, split by {options.split}",
        f"  positives  {', '.join(f'{k} {v:,}' for k, v in positives.items())}",
        f"  quality    test ROC-AUC {auc(metadata.metrics)} vs {auc(metadata.baseline_metrics)} for the points"
        f" baseline and {auc(metadata.logistic_baseline_metrics)} for a logistic regression (95% intervals)",
    ]
    if selection is not None:
        lines.append(
            f"  calibrated {selection.method} (validation ROC-AUC {selection.valid_roc_auc_uncalibrated:.3f} before,"
            f" {selection.valid_roc_auc:.3f} after)"
        )
    if metadata.warnings:
        lines.append(f"  warnings   {'; '.join(warning.title for warning in metadata.warnings)} (see the report)")
    lines += [
        f"  report     {args.out / 'report.md'} (plots beside it; --json prints the metadata)",
        f"  next       leadscore models register {args.out} && leadscore models activate {metadata.version}",
    ]
    print("\n".join(lines))
    return 0


def cmd_lead(args: argparse.Namespace) -> int:
    from app.api.documents import lead_view
    from app.eventloop import run_async
    from app.storage.leads import open_store

    settings = _settings(args)

    async def fetch() -> dict[str, object] | None:
        store = open_store(settings)
        try:
            record = await store.get(args.lead_id)
        finally:
            await store.close()
        if record is None:
            return None
        view = lead_view(record, settings.service_config).model_dump(mode="json")
        view["stored_offset"] = {"partition": record.partition, "offset": record.offset}
        return view

    view = run_async(fetch())
    if view is None:
        print(f"no lead {args.lead_id!r} in {settings.redis_url}", file=sys.stderr)
        return 1
    _print_json(view)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from app.eventloop import run_async
    from app.model_registry import activate, register_artifact
    from app.storage.leads import open_store
    from schemas.model import ModelMetadata

    settings = _settings(args)
    spec = settings.service_config.features
    if args.action != "list" and not args.target:
        what = "an artifact DIR" if args.action == "register" else "a VERSION"
        print(f"leadscore models {args.action}: name {what}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        store = open_store(settings)
        models = store.models
        try:
            if args.action == "register":
                scorer = await register_artifact(models, Path(args.target), spec)
                print(f"registered {scorer.version}; activate it with: leadscore models activate {scorer.version}")
            elif args.action == "activate":
                scorer = await activate(models, args.target, spec, by=f"leadscore models activate ({_who()})")
                print(f"{scorer.version} is active; running API and consumer processes switch within seconds")
            elif args.action == "show":
                metadata = await models.metadata(args.target)
                if metadata is None:
                    hint = "`leadscore models list` shows what is registered"
                    print(f"no model {args.target!r}; {hint}", file=sys.stderr)
                    return 1
                shown = ModelMetadata.model_validate_json(metadata)
                _print_json(shown.model_dump(mode="json", exclude={"calibration"}))
            else:
                active = await models.active()
                for version in await models.versions():
                    meta = ModelMetadata.model_validate_json(await models.metadata(version) or b"{}")
                    mark = "*" if version == active else " "
                    auc = meta.metrics.get("roc_auc", float("nan"))
                    print(f"{mark} {version}  trained {meta.trained_at:%Y-%m-%d %H:%M}  ROC-AUC {auc:.3f}")
                if active is None:
                    print(
                        f"(no active model in the registry: processes serve {settings.model_path} and register it"
                        " when they start)"
                    )
        finally:
            await store.close()
        return 0

    result: int = run_async(run())
    return result


def cmd_dlq(args: argparse.Namespace) -> int:
    from collections import Counter

    from app.eventloop import run_async
    from consumers.dlq import read_dead_letters, replay

    settings = _settings(args)
    topic = args.topic or settings.dlq_topic
    if args.action == "replay" and topic != settings.dlq_topic:
        print(
            f"replay sends dead letters back to the events topic: only {settings.dlq_topic}'s; a webhook dead letter"
            " is a segment change (README, Webhooks: how to deliver one again)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    letters = run_async(read_dead_letters(settings, topic=topic))
    if args.reason:
        letters = [letter for letter in letters if letter.reason == args.reason]
    if args.action == "show":
        shown = letters[-args.limit :] if args.limit else letters
        if args.json:
            _print_json([letter.as_json() for letter in shown])
            return 0
        for letter in shown:
            value = (letter.value or b"").decode("utf-8", "replace")
            print(f"{letter.partition}/{letter.offset}  {letter.reason}  from {letter.source}: {letter.error}")
            print(f"    key={letter.key!r} value={value[:200]}")
        reasons = Counter(letter.reason for letter in letters)
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common()) or "none"
        print(f"{len(letters)} dead letters on {topic} ({summary}); showing the last {len(shown)}")
        return 0
    if not letters:
        print(f"nothing to replay on {settings.dlq_topic}")
        return 0
    if not args.yes:
        print(
            f"{len(letters)} dead letters would go back to {settings.events_topic}; fix their cause first"
            " (they are checked again), then run again with --yes",
            file=sys.stderr,
        )
        return EXIT_USAGE
    sent = run_async(replay(settings, letters))
    print(f"sent {sent} dead letters back to {settings.events_topic} with their original keys")
    return 0


def _who() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def cmd_rescore(args: argparse.Namespace) -> int:
    from app.cli.runtime import run_rescore
    from app.eventloop import run_async

    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    rescored, changes = run_async(run_rescore(settings, batch=args.batch, progress=not args.quiet))
    print(f"rescored {rescored} leads; {changes} segment changes published")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from devtools.devstack import DevOptions, run_dev_stack

    _settings(args)  # the environment's settings and config are checked before anything starts
    _configure_logging("INFO")
    options = DevOptions(
        api_port=args.port,
        rate=args.rate,
        leads=args.leads,
        workdir=args.workdir,
        env_file=args.env_file,
        linger_ms=args.linger_ms,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    return run_dev_stack(options)


def cmd_config(args: argparse.Namespace) -> int:
    from app.settings import ServiceConfig, load_settings
    from models.spec import DEFAULT_CONFIG_PATH, Severity

    # Without FILE: the config the services would load.
    path: Path = args.file or load_settings().config_path or DEFAULT_CONFIG_PATH
    problems = ServiceConfig.check(path)
    for problem in problems:
        print(problem)
    errors = sum(problem.severity is Severity.ERROR for problem in problems)
    warnings = len(problems) - errors
    counted = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if errors:
        print(f"{path}: {counted}; the services refuse this config")
    elif warnings:
        verdict = "--strict fails on warnings" if args.strict else "the services accept it and log the warnings"
        print(f"{path}: {counted}; {verdict}")
    else:
        print(f"{path}: no problems")
    return 1 if errors or (args.strict and warnings) else 0


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless the help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadscore",
        description="Real-time lead scoring and segmentation. Settings come from LEADSCORE_* environment variables"
        " (see the README; `leadscore dev` writes the dev stack's to .leadscore/dev.env).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback when a command fails")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve", "run the REST API", cmd_serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")

    consume = _command(commands, "consume", "run a consumer worker (Kafka -> Redis)", cmd_consume)
    consume.add_argument(
        "--metrics-port", type=int, default=9100, help="port for /metrics, /healthz and /readyz (0 = none)"
    )
    consume.add_argument("--metrics-host", default="127.0.0.1", help="address of that port")

    webhooks = _command(
        commands, "webhooks", "deliver segment changes to the LEADSCORE_WEBHOOKS subscriptions", cmd_webhooks
    )
    webhooks.add_argument(
        "--metrics-port", type=int, default=9101, help="port for /metrics, /healthz and /readyz (0 = none)"
    )
    webhooks.add_argument("--metrics-host", default="127.0.0.1", help="address of that port")

    simulate = _command(
        commands, "simulate", "synthetic leads: a JSON-lines history or a live Kafka feed", cmd_simulate
    )
    simulate.add_argument("--leads", type=int, default=1000, help="leads in the population (a new cohort repeats)")
    simulate.add_argument("--days", type=float, default=90.0, help="days of history the population spans")
    simulate.add_argument("--seed", type=int, default=11, help="random seed: the same seed gives the same events")
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write a history file (.jsonl or .jsonl.gz)")
    target.add_argument("--kafka", action="store_true", help="produce to the events topic")
    simulate.add_argument("--rate", type=float, default=100.0, help="events/s with --kafka (0 = unpaced)")
    simulate.add_argument("--limit", type=int, default=None, help="stop after this many events (default: endless)")
    simulate.add_argument(
        "--history", action="store_true", help="with --kafka: send the history (past timestamps), not live events"
    )
    simulate.add_argument(
        "--linger-ms",
        type=float,
        default=5.0,
        help="with --kafka: how long the producer gathers events into one record batch per partition",
    )

    train = _command(commands, "train", "train a model on an event history", cmd_train)
    train.add_argument("--events", type=Path, required=True, help="JSON-lines history (optionally .gz)")
    train.add_argument("--out", type=Path, required=True, help="directory for the model artifact")
    train.add_argument("--config", type=Path, default=None, help="feature/segment YAML (default: the shipped one)")
    # Defaults None: a flag that is not given leaves the config's `training:` section (or its default) in force.
    train.add_argument(
        "--horizon-days",
        type=float,
        default=None,
        help="predict a conversion within this many days (default: training.horizon in the config, else 30)",
    )
    train.add_argument(
        "--snapshot-every-days",
        type=float,
        default=None,
        help="spacing of a lead's candidate snapshot times (default: training.snapshot_every, else 7)",
    )
    train.add_argument(
        "--max-snapshots-per-lead",
        type=int,
        default=None,
        help="snapshots sampled per lead at most (default: training.max_snapshots_per_lead, else 6)",
    )
    train.add_argument(
        "--window-start",
        default=None,
        metavar="TIME",
        help="no snapshot before this date or RFC 3339 time (default: training.window_start, else none)",
    )
    train.add_argument(
        "--window-end",
        default=None,
        metavar="TIME",
        help="no snapshot at or after this date or RFC 3339 time (default: training.window_end, else none)",
    )
    train.add_argument(
        "--split",
        choices=["time", "lead"],
        default=None,
        help="time: test on the latest snapshots; lead: by a hash of the lead id, a lead's rows in one split"
        " (default: training.split, else time)",
    )
    train.add_argument(
        "--valid-fraction",
        type=float,
        default=None,
        help="share of rows for validation (default: training.valid_fraction, else 0.15)",
    )
    train.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share of rows for test (default: training.test_fraction, else 0.15)",
    )
    train.add_argument(
        "--min-positives",
        type=int,
        default=None,
        help="refuse to train when a split has fewer converting snapshots (default: training.min_positives, else 10)",
    )
    train.add_argument(
        "--calibration",
        choices=["auto", "isotonic", "sigmoid", "none"],
        default=None,
        help="auto: the better calibrated of isotonic and sigmoid among those that keep the ranking"
        " (default: training.calibration, else auto)",
    )
    train.add_argument("--seed", type=int, default=7, help="random seed of sampling and training")
    train.add_argument("--version", default=None, help="version name (default: m<UTC time>-<config hash>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print the model's metadata as JSON, not a summary")

    lead = _command(commands, "lead", "print one lead's decoded record from Redis", cmd_lead)
    lead.add_argument("lead_id", help="the lead's id")

    models = _command(commands, "models", "the model registry: list, show, register, activate", cmd_models)
    models.add_argument("action", choices=["list", "show", "register", "activate"], help="what to do")
    models.add_argument("target", nargs="?", type=str, help="VERSION (show, activate) or artifact DIR (register)")

    dlq = _command(commands, "dlq", "the dead-letter topic: show what was refused, replay it after a fix", cmd_dlq)
    dlq.add_argument("action", choices=["show", "replay"], help="what to do")
    dlq.add_argument(
        "--reason",
        help="only dead letters of this reason (e.g. ts_out_of_range, invalid_event; webhooks: refused, failed)",
    )
    dlq.add_argument("--limit", type=int, default=20, help="show: the last N (0: all; default 20)")
    dlq.add_argument("--json", action="store_true", help="show: as a JSON list")
    dlq.add_argument("--yes", action="store_true", help="replay: really send them (without it, only says how many)")
    dlq.add_argument(
        "--topic",
        default=None,
        help="show: another dead-letter topic, e.g. the webhooks' (default: LEADSCORE_DLQ_TOPIC)",
    )

    rescore = _command(commands, "rescore", "rescore every stored lead with the active model", cmd_rescore)
    rescore.add_argument("--batch", type=int, default=1000, help="leads per Redis round trip")
    rescore.add_argument("--quiet", action="store_true", help="no progress bar")

    config = _command(commands, "config", "the feature and segment YAML config: check it", cmd_config)
    config_actions = config.add_subparsers(
        dest="config_action", required=True, metavar="ACTION", help="what to do with the config"
    )
    check_summary = "report every error and warning of a config as FILE:LINE: error|warning: message"
    check = config_actions.add_parser(
        "check", help=check_summary, description=check_summary, formatter_class=_HelpFormatter
    )
    check.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        type=Path,
        default=None,
        help="the YAML config to check (default: LEADSCORE_CONFIG_PATH, else the shipped one)",
    )
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too (errors always exit 1; no problems exit 0)"
    )

    dev = _command(commands, "dev", "the whole stack locally: Redis, broker, consumer, API, simulated traffic", cmd_dev)
    dev.add_argument("--port", type=int, default=8000, help="API port")
    dev.add_argument("--rate", type=float, default=50.0, help="simulated events/s")
    dev.add_argument("--leads", type=int, default=500, help="simulated leads")
    dev.add_argument("--workdir", type=Path, default=None, help="where logs go (default: a temporary directory)")
    dev.add_argument(
        "--env-file",
        type=Path,
        default=Path(".leadscore/dev.env"),
        help="where the stack's settings are written, for other leadscore commands to `source`",
    )
    dev.add_argument(
        "--linger-ms",
        type=float,
        default=1000.0,
        help="the simulator sends one record batch per partition this often (the dev broker lists every stored"
        " batch on each fetch: fewer, larger batches keep it fast for hours; see the README)",
    )
    dev.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=100,
        help="the consumer's LEADSCORE_FETCH_MAX_WAIT_MS: the dev broker's time budget for a fetch",
    )
    return parser


def _failure(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """What to tell the user about an exception that ended a command, and the exit code."""
    from app.storage.errors import StoreError
    from consumers.errors import BrokerError

    settings: Settings | None = getattr(args, "settings", None)
    if isinstance(exc, StoreError):
        url = settings.redis_url if settings else os.environ.get("LEADSCORE_REDIS_URL", "redis://localhost:6379/0")
        return (
            f"cannot reach Redis at {url} ({exc}): start it, or point LEADSCORE_REDIS_URL at yours"
            " (with `leadscore dev` running: source .leadscore/dev.env)",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, BrokerError):
        servers = (
            settings.kafka_bootstrap_servers
            if settings
            else os.environ.get("LEADSCORE_KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
        )
        return (
            f"cannot reach Kafka at {servers} ({exc}): start it, or point LEADSCORE_KAFKA_BOOTSTRAP_SERVERS at yours"
            " (with `leadscore dev` running: source .leadscore/dev.env)",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file or directory", EXIT_USAGE
    # Our own errors (settings, config, a refused model, a busy port, a missing program) say what to do.
    if isinstance(exc, ValueError | OSError | RuntimeError):
        return str(exc), EXIT_USAGE if isinstance(exc, ValueError) else EXIT_UNREACHABLE
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", EXIT_UNEXPECTED


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    # SIGTERM stops a command the way Ctrl-C does (the services install their own handlers once running), and so
    # does SIGINT when it was inherited ignored: a shell without job control starts its background commands so,
    # and `leadscore dev &` in a script must still stop on `kill -INT`.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.default_int_handler)
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        code = run(args)
        sys.stdout.flush()  # here, so a reader that went away (`| head`) is handled below, not at exit
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            raise
        message, code = _failure(exc, args)
        lines = message.splitlines() or [""]
        print(f"leadscore {args.command}: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
