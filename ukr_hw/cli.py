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
    from ukr_hw.inference import (
        InvalidModeError,
        ModelNotFoundError,
        RegistryUnavailableError,
        parse_mode,
        predict_paths,
    )

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
    except (ModelNotFoundError, RegistryUnavailableError) as exc:  # no champion, or the registry is down
        print(f"ukr-hw predict: {exc}", file=sys.stderr)
        return 2
    return 1 if failed and failed == len(args.images) else 0


def _serve(args: argparse.Namespace) -> int:
    from services.bento.run import serve

    return serve(port=args.port, host=args.host)


def _bento(args: argparse.Namespace) -> int:
    from services.bento.run import build

    return build(model=args.model, version=args.version)


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
    from ukr_hw import registry

    for row in registry.list_versions():
        _print_json(row)


def _promote(args: argparse.Namespace) -> int:
    from ukr_hw import registry
    from ukr_hw.retraining import notify_api

    try:
        result = registry.promote_by_hand(args.version, args.reason)
    except ValueError as exc:
        print(f"ukr-hw promote: {exc}", file=sys.stderr)
        return 2
    _print_json({**result, "api": notify_api()})
    return 0


def _stack(args: argparse.Namespace) -> int:
    from ukr_hw import stack

    return stack.main(args.action, services=args.services)


def _since(text: str):
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age: ``90m``, ``24h``, ``7d``."""
    from datetime import UTC, datetime, timedelta

    text = text.strip()
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if len(text) > 1 and text[-1].lower() in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1].lower()]: float(text[:-1])})
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO date/time or an age like 24h or 7d, got {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _source_arg(text: str | None) -> str | None:
    """``--source``: a source as listed (``src-…``), or a raw address, hashed with the UI's salt (same machine)."""
    import ipaddress

    if text is None or text.startswith("src-"):
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text
    from ukr_hw.feedback import source_id, source_salt
    from ukr_hw.settings import get_settings

    return source_id(text, source_salt(get_settings()))


def _feedback_row(ref, record: dict) -> dict:
    upper = record.get("is_uppercase")
    return {
        "id": ref.sample_id,
        "symbol": record.get("symbol"),
        # a letter saved as "can't tell" has no case: "unknown"; a digit has none to tell: null
        "case": ("unknown" if record.get("case_known") is False else None)
        if upper is None
        else ("upper" if upper else "lower"),
        "mode": record.get("mode"),
        "client": record.get("client_id"),
        "source": record.get("source"),
        "created_at": record.get("created_at"),
        "predicted": record.get("predicted_symbol"),
        "rejected": record.get("rejected"),
    }


def _feedback_list(args: argparse.Namespace) -> int:
    from ukr_hw import labels
    from ukr_hw.feedback import CorruptSample, FeedbackStore, sample_grid

    store = FeedbackStore.from_settings()
    args.source = _source_arg(args.source)
    found = store.records(args.since, client_id=args.client, source=args.source, limit=args.limit, newest_first=True)
    images, captions, marked = [], [], []
    for i, (ref, record) in enumerate(found, 1):
        _print_json(_feedback_row(ref, record))
        if args.grid:
            try:
                png, _ = store.read(ref)
            except CorruptSample:
                png = b""
            images.append(png)
            shown = labels.display(record["symbol"], record.get("is_uppercase"))
            captions.append(f"{i} {shown}" + (" ✗" if record.get("rejected") else ""))
            marked.append(bool(record.get("rejected")))
    if args.grid:
        if not images:
            print("ukr-hw feedback list: no samples matched; no grid written", file=sys.stderr)
        else:
            args.grid.parent.mkdir(parents=True, exist_ok=True)
            sample_grid(images, captions, marked).save(args.grid)
            print(f"grid of {len(images)} samples (numbered as listed): {args.grid}", file=sys.stderr)
    return 0


def _feedback_reject(args: argparse.Namespace) -> int:
    from ukr_hw.feedback import FeedbackStore

    chosen = sum(bool(x) for x in (args.sample_ids, args.client, args.source))
    if chosen != 1:
        print("ukr-hw feedback reject: name SAMPLE_ID…, or --client CLIENT_ID, or --source SOURCE", file=sys.stderr)
        return 2
    store = FeedbackStore.from_settings()
    args.source = _source_arg(args.source)
    rejected: list[str] = []
    if args.sample_ids:
        for sample_id in args.sample_ids:
            try:
                store.reject(sample_id, args.reason, by=args.by)
            except (KeyError, ValueError) as exc:
                print(f"ukr-hw feedback reject: {str(exc).strip(chr(39))}", file=sys.stderr)
                return 2
            rejected.append(sample_id)
    else:
        rejected = store.reject_where(
            args.reason, client_id=args.client, source=args.source, since=args.since, by=args.by
        )
        if not rejected and not store.records(args.since, client_id=args.client, source=args.source, limit=1):
            who = f"client {args.client}" if args.client else f"source {args.source}"
            print(f"ukr-hw feedback reject: no samples of {who} in {store.description}", file=sys.stderr)
            return 2
    _print_json({"rejected": rejected, "count": len(rejected), "reason": args.reason})
    return 0


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

    p = add("bento", _bento, "Build the API as a Bento with the champion (then `bentoml containerize <tag>`).")
    p.add_argument("action", choices=["build"])
    p.add_argument("--model", default=None, help="a model in the BentoML store (default: import the champion)")
    p.add_argument("--version", default=None, help="the Bento's version (default: generated)")

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

    fb = sub.add_parser(
        "feedback",
        help="Review users' samples: list recent ones (with a picture grid), reject bad ones.",
        description="Review users' samples: list recent ones (with a picture grid), reject bad ones (kept in the "
        "store, marked, left out of training).",
    )
    fb_sub = fb.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    p = fb_sub.add_parser(
        "list",
        help="Recent samples, newest first: one JSON line each (id, symbol, case, mode, client, source, …).",
        description="Recent samples, newest first: one JSON line each (id, symbol, case, mode, client, source, "
        "created_at, predicted, rejected).",
    )
    p.set_defaults(handler=_feedback_list)
    p.add_argument("--since", type=_since, default=None, help="only samples after this: ISO date/time, or 24h, 7d")
    p.add_argument("--client", default=None, help="only this client id (one browser session)")
    p.add_argument("--source", default=None, help="only this source (the hashed sender address)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--grid", type=Path, default=None, metavar="OUT.png", help="also write their pictures as a grid")
    p = fb_sub.add_parser(
        "reject",
        help="Mark samples rejected (kept, left out of training): by id, or all of one client's or source's.",
        description="Mark samples rejected (kept in the store, left out of training, the reason recorded): by id, or "
        "all of one client's or one source's.",
    )
    p.set_defaults(handler=_feedback_reject)
    p.add_argument("sample_ids", nargs="*", metavar="SAMPLE_ID", help="the samples (`ukr-hw feedback list` ids)")
    p.add_argument("--client", default=None, help="every sample of this client id")
    p.add_argument("--source", default=None, help="every sample of this source")
    p.add_argument("--since", type=_since, default=None, help="with --client/--source: only samples after this")
    p.add_argument("--reason", required=True, help="why: kept with the rejection")
    p.add_argument("--by", default=None, help="who rejects (default: the user name)")
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
