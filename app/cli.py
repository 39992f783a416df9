"""The `leadscore` command: the composition root that starts the API, the consumer and the tools."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from app.eventloop import run_async
from app.settings import Settings


def _settings() -> Settings:
    return Settings()


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api import create_app
    from app.runtime import active_scorer, open_store

    settings = _settings()
    _configure_logging(settings.log_level)

    async def preflight() -> None:
        # The model check again happens in the app's start-up; here it fails with a one-line message.
        store = open_store(settings)
        try:
            await active_scorer(settings, store)
        finally:
            await store.close()

    run_async(preflight())
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from app.runtime import run_consumer

    settings = _settings()
    _configure_logging(settings.log_level)
    run_async(run_consumer(settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from app.simulator import SimulationSpec, live_events, simulate_history, write_history

    spec = SimulationSpec(leads=args.leads, days=args.days, seed=args.seed)
    if args.out is not None:
        count = write_history(spec, args.out)
        print(f"wrote {count} events for {args.leads} leads over {args.days:g} days to {args.out}")
        return 0
    from consumers.producer import EventProducer
    from consumers.topics import ensure_topics

    settings = _settings()
    _configure_logging(settings.log_level)
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
        ) as producer:
            return await producer.send_paced(events, rate=args.rate, limit=args.limit)

    try:
        sent = run_async(produce())
    except KeyboardInterrupt:
        return 0
    print(f"produced {sent} events to {settings.events_topic}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.spec import load_feature_spec
    from models.training import TrainingOptions, train_model

    spec = load_feature_spec(args.config)
    options = TrainingOptions(horizon_days=args.horizon_days, seed=args.seed, version=args.version)
    metadata = train_model(args.events, spec, args.out, options, progress=not args.quiet)
    summary = metadata.model_dump(mode="json", exclude={"calibration"})
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_lead(args: argparse.Namespace) -> int:
    from app.store import LeadStore

    settings = _settings()

    async def fetch() -> dict[str, object] | None:
        store = LeadStore.from_url(str(settings.redis_url))
        try:
            record = await store.get(args.lead_id)
        finally:
            await store.close()
        if record is None:
            return None
        from app.api import lead_view

        view = lead_view(record, settings.service_config).model_dump(mode="json")
        view["stored_offset"] = {"partition": record.partition, "offset": record.offset}
        return view

    view = run_async(fetch())
    if view is None:
        print(f"no lead {args.lead_id!r} in {settings.redis_url}", file=sys.stderr)
        return 1
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from app.model_registry import activate, register_artifact
    from app.store import LeadStore, ModelStore
    from schemas.model import ModelMetadata

    settings = _settings()
    spec = settings.service_config.features
    if args.action != "list" and not args.target:
        print(
            f"leadscore models {args.action}: name a {'DIR' if args.action == 'register' else 'VERSION'}",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        store = LeadStore.from_url(str(settings.redis_url))
        models = ModelStore(store.redis)
        try:
            if args.action == "register":
                scorer = await register_artifact(models, Path(args.target), spec)
                print(f"registered {scorer.version}; activate it with: leadscore models activate {scorer.version}")
            elif args.action == "activate":
                scorer = await activate(models, args.target, spec)
                print(f"{scorer.version} is active; running API and consumer processes switch within seconds")
            elif args.action == "show":
                metadata = await models.metadata(args.target)
                if metadata is None:
                    print(
                        f"no model {args.target!r}; `leadscore models list` shows what is registered", file=sys.stderr
                    )
                    return 1
                shown = ModelMetadata.model_validate_json(metadata).model_dump(mode="json", exclude={"calibration"})
                print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
            else:
                active = await models.active()
                for version in await models.versions():
                    raw = await models.metadata(version)
                    meta = ModelMetadata.model_validate_json(raw or b"{}")
                    mark = "*" if version == active else " "
                    auc = meta.metrics.get("roc_auc", float("nan"))
                    print(f"{mark} {version}  trained {meta.trained_at:%Y-%m-%d %H:%M}  ROC-AUC {auc:.3f}")
                if active is None:
                    print(f"(no active model in the registry: serving {settings.model_path})")
        finally:
            await store.close()
        return 0

    return run_async(run())


def cmd_rescore(args: argparse.Namespace) -> int:
    from app.runtime import run_rescore

    settings = _settings()
    _configure_logging(settings.log_level)
    rescored, changes = run_async(run_rescore(settings, batch=args.batch, progress=not args.quiet))
    print(f"rescored {rescored} leads; {changes} segment changes published")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from app.devstack import run_dev_stack

    _configure_logging("INFO")
    return run_dev_stack(api_port=args.port, rate=args.rate, leads=args.leads, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadscore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the REST API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)

    consume = commands.add_parser("consume", help="run a consumer worker (Kafka -> Redis)")
    consume.add_argument("--metrics-port", type=int, default=9100, help="Prometheus port (0 = none)")
    consume.add_argument("--metrics-host", default="127.0.0.1")
    consume.set_defaults(run=cmd_consume)

    simulate = commands.add_parser("simulate", help="synthetic leads: a JSON-lines history or a live Kafka feed")
    simulate.add_argument("--leads", type=int, default=1000)
    simulate.add_argument("--days", type=float, default=90.0)
    simulate.add_argument("--seed", type=int, default=11)
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write a history file (.jsonl or .jsonl.gz)")
    target.add_argument("--kafka", action="store_true", help="produce to the events topic")
    simulate.add_argument("--rate", type=float, default=100.0, help="events/s with --kafka (0 = unpaced)")
    simulate.add_argument("--limit", type=int, default=None, help="stop after this many events")
    simulate.add_argument("--history", action="store_true", help="with --kafka: send the history, not live events")
    simulate.set_defaults(run=cmd_simulate)

    train = commands.add_parser("train", help="train a model on an event history")
    train.add_argument("--events", type=Path, required=True, help="JSON-lines history (optionally .gz)")
    train.add_argument("--out", type=Path, required=True, help="directory for the model artifact")
    train.add_argument("--config", type=Path, default=None, help="feature/segment YAML (default: shipped)")
    train.add_argument("--horizon-days", type=float, default=30.0)
    train.add_argument("--seed", type=int, default=7)
    train.add_argument("--version", default=None)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    lead = commands.add_parser("lead", help="print one lead's decoded record from Redis")
    lead.add_argument("lead_id")
    lead.set_defaults(run=cmd_lead)

    models = commands.add_parser("models", help="the model registry: list, show, register, activate")
    models.add_argument("action", choices=["list", "show", "register", "activate"])
    models.add_argument("target", nargs="?", type=str, help="VERSION (show, activate) or artifact DIR (register)")
    models.set_defaults(run=cmd_models)

    rescore = commands.add_parser("rescore", help="rescore every stored lead with the active model")
    rescore.add_argument("--batch", type=int, default=1000)
    rescore.add_argument("--quiet", action="store_true", help="no progress bar")
    rescore.set_defaults(run=cmd_rescore)

    dev = commands.add_parser("dev", help="the whole stack locally: Redis, broker, consumer, API, simulator")
    dev.add_argument("--port", type=int, default=8000, help="API port")
    dev.add_argument("--rate", type=float, default=50.0, help="simulated events/s")
    dev.add_argument("--leads", type=int, default=500, help="simulated leads")
    dev.add_argument("--workdir", type=Path, default=None, help="where logs go (default: a temp dir)")
    dev.set_defaults(run=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError
    from redis.exceptions import RedisError

    from app.localstack import MissingDependency
    from models.scoring import ModelRefused

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        code = run(args)
    except (ModelRefused, MissingDependency, FileNotFoundError, ValidationError, ValueError) as exc:
        print(f"leadscore {args.command}: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(
            f"leadscore {args.command}: cannot reach Redis or Kafka ({exc}); check LEADSCORE_REDIS_URL", file=sys.stderr
        )
        return 3
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
