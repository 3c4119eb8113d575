"""``ukr-hw``: the one command line over the whole platform.

This module is the composition root: the only place in ``ukr_hw`` that reaches into ``flows/`` and
``services/`` (lazily, inside each handler, so ``ukr-hw --help`` stays instant). Each subcommand is a thin call
into the code that owns the work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], int | None]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


# --- handlers --------------------------------------------------------------------------------------------------


def _prepare(args: argparse.Namespace) -> None:
    from flows.prepare import prepare

    _print_json(prepare(mnist_per_class=args.mnist_per_class, push=not args.no_push))


def _train(args: argparse.Namespace) -> None:
    from flows.train import train

    _print_json(train(config_path=args.config, overrides=dict(args.set or [])))


def _tune(args: argparse.Namespace) -> None:
    from flows.tune import tune

    _print_json(tune(n_trials=args.trials, study_name=args.study, config_path=args.config))


def _pipeline(args: argparse.Namespace) -> None:
    from flows.pipeline import pipeline

    _print_json(pipeline(config_path=args.config))


def _predict(args: argparse.Namespace) -> int:
    from ukr_hw.inference import InvalidModeError, ModelNotFoundError, parse_mode, predict_paths

    try:
        mode = parse_mode(args.mode)
    except InvalidModeError as exc:
        print(f"ukr-hw predict: --mode: {exc}", file=sys.stderr)
        return 2
    failed = 0
    try:
        for result in predict_paths(args.images, model_uri=args.model, batch_size=args.batch_size, mode=mode):
            failed += "error" in result
            _print_json(result)
    except ModelNotFoundError as exc:
        print(f"ukr-hw predict: {exc}", file=sys.stderr)
        return 2
    return 1 if failed and failed == len(args.images) else 0


def _serve(args: argparse.Namespace) -> int:
    from services.bento.run import serve

    return serve(port=args.port, host=args.host)


def _ui(args: argparse.Namespace) -> None:
    from services.ui.app import launch

    launch(port=args.port, host=args.host, api_url=args.api_url)


def _up(args: argparse.Namespace) -> int:
    from services.up import up

    return up()


def _retrain(args: argparse.Namespace) -> None:
    from flows.retrain import retrain

    _print_json(retrain())


def _models(args: argparse.Namespace) -> None:
    from ukr_hw import tracking

    for row in tracking.list_versions():
        _print_json(row)


def _promote(args: argparse.Namespace) -> int:
    from ukr_hw import tracking
    from ukr_hw.retraining import notify_api

    try:
        result = tracking.promote_by_hand(args.version, args.reason)
    except ValueError as exc:
        print(f"ukr-hw promote: {exc}", file=sys.stderr)
        return 2
    _print_json({**result, "api": notify_api()})
    return 0


def _stack(args: argparse.Namespace) -> int:
    from ukr_hw import stack

    return stack.main(args.action, services=args.services)


# --- parser ----------------------------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ukr-hw", description="Hand-drawn Ukrainian letters and digits: data, training, serving, feedback."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = add("prepare", _prepare, "Ingest raw data and run the data-prep flow; print a JSON summary.")
    p.add_argument("--mnist-per-class", type=int, default=None, help="MNIST digits per class in the fine-tune set")
    p.add_argument("--no-push", action="store_true", help="version the data with DVC but do not push it")

    p = add("train", _train, "Pretrain on MNIST (cached) and fine-tune; register and maybe promote the model.")
    p.add_argument("--config", type=Path, default=Path("configs/train.yaml"))
    p.add_argument("--set", type=_key_value, action="append", metavar="KEY=VALUE", help="override a config value")

    p = add("tune", _tune, "Optuna study over the fine-tune config; best params written to configs/.")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--study", default="ukr-hw-finetune")
    p.add_argument("--config", type=Path, default=Path("configs/tune.yaml"))

    p = add("pipeline", _pipeline, "prepare → pretrain → finetune → register/promote, end to end.")
    p.add_argument("--config", type=Path, default=Path("configs/train.yaml"))

    p = add("predict", _predict, "Classify image files with the champion model; one JSON line per image.")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, …)")
    p.add_argument("--model", default=None, help="model URI (default: models:/<name>@champion)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--mode",
        default="any",
        metavar="{any,letters,digits}",
        help="which symbols an answer may name: any (default), letters only or digits only (З, not 3)",
    )

    p = add("serve", _serve, "Start the BentoML API on the champion model.")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--host", default=None)

    p = add("ui", _ui, "Start the Gradio sketchpad.")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--host", default=None)
    p.add_argument("--api-url", default=None)

    add("up", _up, "Train a first model if needed, then start the API and the UI together (Ctrl-C stops both).")
    add("retrain", _retrain, "Retrain on new feedback samples; promote if better; tell the API to reload.")
    add("models", _models, "List the registered versions: frozen-test accuracy, champion or not, and why.")
    p = add("promote", _promote, "Make a registered version the champion by hand, over the gate; tell the API.")
    p.add_argument("version", help="the registered version (`ukr-hw models` lists them)")
    p.add_argument("--reason", required=True, help="why: kept in the version's promotion tag")

    p = add("stack", _stack, "Start, stop or inspect the native service stack (no Docker needed).")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("services", nargs="*", help="subset of services (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Prefect's embedded server phones home on start; on a fresh SQLite home that races its own migrations and
    # prints a "database is locked" traceback. Opt out unless the user decided otherwise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # On a new machine the embedded server first builds its SQLite database (~20-40 s on 2 cores), longer than
    # Prefect's 20 s start-up wait: the very first `ukr-hw pipeline` failed with "Timed out while attempting to
    # connect to ephemeral Prefect API server". Wait longer; a server that never comes up still fails.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
