"""The feedback loop, measured: submit drawings of a new form → retrain → the API serves the new champion.

The new form is one the stroke generator never draws (``--form``, default a «4» with an open top, which the
champion reads as «ч» two times in three), so the probes show whether retraining learnt it.

Runs against whatever the settings point at; typically the native stack with a trained champion and the API up:

    ukr-hw stack up && source .stack/env && ukr-hw train        # once
    prefect deploy --name weekly                                 # once (see prefect.yaml)
    .venv/bin/python benchmarks/loop.py --samples 40 --probes 40 [--via prefect|flow]

Prints: seconds from the first submission to the API answering with the new champion (and the retrain's share),
accuracy on held-out drawings of the new form before/after, and frozen-test symbol
accuracy of the old and new model versions (from the registry tags).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def drawing(symbol: str, upper: bool | None, seed: int, shape=None) -> bytes:
    from ukr_hw.data.strokes import draw_canvas

    buf = io.BytesIO()
    draw_canvas(symbol, upper, seed=seed, shape=shape).save(buf, format="PNG")
    return buf.getvalue()


def form_accuracy(api, probes: list[bytes], symbol: str, upper: bool | None) -> tuple[float, set[str]]:
    answers = api.classify_batch(probes)
    ok = sum(a["label"] == symbol and (upper is None or a["is_uppercase"] is upper) for a in answers)
    return ok / len(answers), {a["model_version"] for a in answers}


def frozen_accuracy(version: str | None) -> float | None:
    if version is None:
        return None
    from ukr_hw import tracking

    return tracking.get_version_metrics(version).get("symbol_accuracy")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--form",
        default="4-open",
        help="a form of strokes.UNSEEN_FORMS (default: a «4» with an open top), or 'generator' for "
        "--symbol as the stroke generator draws it",
    )
    p.add_argument("--symbol", default="ю", help="with --form generator")
    p.add_argument("--lower", action="store_true", help="with --form generator: lowercase (default: uppercase)")
    p.add_argument("--samples", type=int, default=40, help="drawings submitted as feedback")
    p.add_argument("--probes", type=int, default=40, help="held-out drawings scored before/after")
    p.add_argument("--via", choices=["prefect", "flow"], default="prefect", help="deployment run or in-process flow")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()

    from ukr_hw import labels, tracking
    from ukr_hw.api_client import ApiClient
    from ukr_hw.data.strokes import UNSEEN_FORMS
    from ukr_hw.feedback import FeedbackStore
    from ukr_hw.settings import get_settings

    s = get_settings()
    if args.form == "generator":
        shape = None
        upper = None if labels.is_digit(args.symbol) else not args.lower
    elif args.form in UNSEEN_FORMS:
        args.symbol, upper, shape = UNSEEN_FORMS[args.form]
    else:
        p.error(f"unknown --form {args.form!r}: one of {sorted(UNSEEN_FORMS)} or 'generator'")
    api = ApiClient(s.api_url)
    api.wait_ready(timeout=60)
    probes = [drawing(args.symbol, upper, 10_000 + i, shape) for i in range(args.probes)]
    acc_before, served_before = form_accuracy(api, probes, args.symbol, upper)
    old = tracking.champion_version(s)

    store = FeedbackStore.from_settings(s)
    t0 = time.perf_counter()
    for i in range(args.samples):
        store.save(drawing(args.symbol, upper, i, shape), args.symbol, upper, client_id="benchmark")
    t_submitted = time.perf_counter()
    if args.via == "prefect":
        cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deployment", "run", "retrain/weekly"]
        proc = subprocess.run([*cmd, "--watch"], cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
    else:
        from flows.retrain import retrain

        print(json.dumps(retrain(), ensure_ascii=False, default=str)[:2000])
    t_retrained = time.perf_counter()
    new = tracking.champion_version(s)
    served_after: set[str] = served_before
    acc_after = acc_before
    if new != old:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            acc_after, served_after = form_accuracy(api, probes, args.symbol, upper)
            if served_after == {new}:
                break
            time.sleep(1)
    t_served = time.perf_counter()

    shown = labels.display(args.symbol, upper)
    if args.form != "generator":
        shown += f"» in the form «{args.form}"
    print(f"feedback loop: {args.samples} drawings of «{shown}», {args.probes} held-out probes")
    print(f"  submit                         {t_submitted - t0:8.1f} s")
    print(f"  retrain (flow run)             {t_retrained - t_submitted:8.1f} s")
    if new != old:
        answers = ", ".join(f"v{v}" for v in sorted(served_after))
        print(f"  submit → new champion served   {t_served - t0:8.1f} s  (v{old} → v{new}, API answers {answers})")
    else:
        latest = next(iter(tracking.list_versions(s)), None)  # newest first
        print(f"  champion unchanged (v{old}): the new version did not pass the promotion gate")
        if latest is not None and str(latest["version"]) != str(old):
            print(f"    v{latest['version']}: {latest.get('promotion')}")
            print(f"    to serve it anyway: ukr-hw promote {latest['version']} --reason '<why>'")
    print(f"  «{shown}» accuracy (API)        {acc_before:8.3f} → {acc_after:.3f}")
    fb, fa = frozen_accuracy(old), frozen_accuracy(new)
    if fb is not None and fa is not None:
        print(f"  frozen-test symbol accuracy    {fb:8.4f} → {fa:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
