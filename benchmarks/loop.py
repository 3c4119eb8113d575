"""The feedback loop, measured: users submit drawings → retrain → the API serves the new champion.

Two populations of "users" (``--population``):

**synthetic** (the default): one form the stroke generator never draws (``--form``, default a «4» with an open top,
which the champion reads as «ч» two times in three), written straight into the feedback store; the probes show
whether retraining learnt it. Runs against whatever the settings point at, typically the native stack with a
trained champion and the API up::

    ukr-hw stack up && source .stack/env                        # trains a first champion on the worker if none
    .venv/bin/python benchmarks/loop.py --samples 40 --probes 40 [--via prefect|flow]

Prints: seconds from the first submission to the API answering with the new champion (and the retrain's share),
accuracy on held-out drawings of the new form before/after, and frozen-test symbol accuracy of the old and new
model versions (from the registry tags).

**comnist**: real other writers. CoMNIST drawing sessions (one writer at one sitting, :func:`ukr_hw.data.comnist.
session_of`) that base training never saw submit their drawings through the sketchpad exactly as a browser does
(gradio_client: ``/predict``, then ``/confirm`` when the symbol is right, else ``/correct`` with the true symbol);
the weekly retrain runs as ``prefect deployment run 'retrain/weekly'`` on the worker; the benchmark prints the
accuracy of *other* sessions of that population (probe sessions, never submitting) before and after, through the
API, 43-way and letters-only; each frozen population's symbol/case accuracy of the old and the new version (their
registry tags); the gate's decision and reason (the new version's ``promotion`` tag); how many samples the retrain
took in (lineage); and the timings: submission, retrain, first submission → the API serving the new champion.

The sessions are chosen by ``--seed``: sessions larger than 5 % of CoMNIST's drawings are left out (one writer's
afternoon is not a population), the rest are shuffled; the first ``--probe-sessions`` are probes, the following
ones submit, each at most ``--per-writer`` of its drawings (drawn at random), until ``--samples`` are submitted.
Probes too are at most ``--per-writer`` drawings per session, so each probe writer weighs about the same. A session
is a probe or a submitter, never both.

How a drawing reaches the sketchpad: CoMNIST's 28×28 RGB files have no alpha; the ink (``ukr_hw.preprocess.ink_map``,
the rule the ingest applies to these files) becomes the alpha of a brush-coloured layer, the form in which a browser
sends strokes. The layer keeps the drawing's own 28×28 (``--canvas``): the preprocessing is canvas-size independent
(relative ink box), so the stored sample reads exactly as the published file does (0 pixel difference), while scaling
it up to the sketchpad's 560×560 invents a resampling (mean 8/255 per pixel after preprocessing; ``--canvas 560``
measures that variant). Probes go to the API as the published files.

Case: CoMNIST has no case labels, and the benchmark invents none. By default (``--case unsure``) a "user" says the
symbol and "can't tell" for the case: every letter goes through ``/correct`` with the true symbol and the sketchpad's
*can't tell* choice (a right reading counts as confirmed, a wrong one as corrected), so the sample trains the symbol
head only, as the ingest does with CoMNIST. ``--case model`` keeps what the sketchpad pre-fills, the case the model
read (``/confirm`` when the symbol is right), so the case labels are the model's own readings and the users' held-out
case figure measures nothing (the champion agrees with itself). When the model read a letter as a digit (the case
control is then empty), the "user" switches the choice to *Letters* and asks again, as a person would. The case
accuracy of probe writers cannot be measured (no labels); the frozen populations' case accuracy shows whether the
retrain harmed it.

The base champion must not have seen CoMNIST, and neither may the retrain (which re-runs prepare on the worker):
the stack is started with ``UKR_HW_COMNIST=false``, which its worker inherits. The benchmark refuses a champion
whose frozen-test metrics have a CoMNIST population, and flags a new version that has one. One sender address would
be one source to the retrain's per-source cap (``retrain_max_source_share``), so each writer sends as its own
address (``X-Forwarded-For`` from a proxy the UI trusts: loopback), and the sketchpad's save limits, meant for one
person drawing by hand, are lifted for the benchmark's fast writers. The full run (a champion by the project's
recipe, trained on the worker by the bootstrap; CoMNIST from the mirror)::

    export UKR_HW_COMNIST=false UKR_HW_DATA_MIRROR=/work/shared/datasets UKR_HW_TORCH_THREADS=1
    export UKR_HW_UI_TRUSTED_PROXIES='["127.0.0.1"]' UKR_HW_UI_SAVES_PER_SESSION=0 \\
           UKR_HW_UI_SAVES_PER_ADDRESS=0 UKR_HW_UI_PREDICTS_PER_ADDRESS=0
    UKR_HW_BOOTSTRAP_TRAIN=worker ukr-hw stack up               # base champion: pipeline/default on the worker
    source .stack/env
    .venv/bin/python benchmarks/loop.py --population comnist --samples 1000 --probe-sessions 20
    ukr-hw stack down

A quicker base champion (a smoke run): start the servers without training, train a small recipe here, then the
API and the UI; ``UKR_HW_RETRAIN_CONFIG`` (exported before ``stack up``, so the worker has it) gives the retrain the
same small recipe::

    export UKR_HW_RETRAIN_CONFIG=/tmp/small.yaml                 # e.g. train.yaml with members 1, a few epochs
    UKR_HW_BOOTSTRAP_TRAIN=none ukr-hw stack up s3 mlflow prefect worker
    source .stack/env && ukr-hw prepare && ukr-hw train --config /tmp/small.yaml
    ukr-hw stack up
    .venv/bin/python benchmarks/loop.py --population comnist --samples 60 --probe-sessions 4 --concurrency 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ukr_hw.ops.wait import NotReady, wait_until
from ukr_hw.ui.messages import UNSURE

REPO = Path(__file__).resolve().parents[1]

#: sessions larger than this share of CoMNIST's drawings are neither probes nor submitters (comnist.pick_sessions)
MAX_SESSION_SHARE = 0.05
CANVAS = 28  #: the layer's side: CoMNIST's own (services/ui/app.py draws on 560×560)
BRUSH = (0x2B, 0x59, 0xC3)  #: the sketchpad's fixed brush colour
RATE_LIMIT_HINT = (
    "the sketchpad refused a save or a recognition (its rate limits). For the benchmark start the stack with "
    "UKR_HW_UI_SAVES_PER_SESSION=0 UKR_HW_UI_SAVES_PER_ADDRESS=0 UKR_HW_UI_PREDICTS_PER_ADDRESS=0 exported "
    "(see this module's docstring)"
)


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked; the message says what to fix."""


# --------------------------------------------------------------------------------------------------------------
# shared: the retrain and the wait for the API


def run_retrain(via: str, timeout: float) -> None:
    """The weekly retrain, as a deployment run on the worker (``prefect``) or in this process (``flow``)."""
    if via == "prefect":
        prefect = str(Path(sys.executable).parent / "prefect")
        cmd = [prefect, "--no-prompt", "deployment", "run", "retrain/weekly", "--watch"]
        cmd += ["--watch-timeout", str(int(timeout))]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout + 60)
        if proc.returncode != 0 or "Completed" not in proc.stdout:
            raise BenchmarkError(
                f"`{' '.join(cmd[1:])}` did not complete (exit {proc.returncode}); is the stack's worker up and "
                f"`retrain/weekly` deployed (`ukr-hw stack up` does both)?\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
    else:
        from flows.retrain import retrain

        print(json.dumps(retrain(), ensure_ascii=False, default=str)[:2000])


def wait_served(api: Any, version: str, timeout: float = 300) -> bool:
    """Poll the API until it answers with model ``version``; False when it did not within ``timeout`` s."""
    try:  # an error of the API is no "not yet": it ends the benchmark
        wait_until(
            lambda: api.model_version() == version,
            timeout=timeout,
            what=f"v{version}",
            interval=0.5,
            fatal=(Exception,),
        )
    except NotReady:
        return False
    return True


def newest_version(settings: Any) -> dict[str, Any] | None:
    from ukr_hw import registry

    return next(iter(registry.list_versions(settings)), None)  # newest first


# --------------------------------------------------------------------------------------------------------------
# synthetic users: one unseen form of the stroke generator


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
    from ukr_hw import registry

    return registry.get_version_metrics(version).get("symbol_accuracy")


def run_synthetic(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ukr_hw import labels, registry
    from ukr_hw.api_client import ApiClient
    from ukr_hw.data.strokes import UNSEEN_FORMS
    from ukr_hw.feedback import FeedbackStore
    from ukr_hw.settings import get_settings

    s = get_settings()
    samples = args.samples or 40
    if args.form == "generator":
        shape = None
        upper = None if labels.is_digit(args.symbol) else not args.lower
    elif args.form in UNSEEN_FORMS:
        args.symbol, upper, shape = UNSEEN_FORMS[args.form]
    else:
        parser.error(f"unknown --form {args.form!r}: one of {sorted(UNSEEN_FORMS)} or 'generator'")
    api = ApiClient(s.api_url)
    api.wait_ready(timeout=60)
    probes = [drawing(args.symbol, upper, 10_000 + i, shape) for i in range(args.probes)]
    acc_before, served_before = form_accuracy(api, probes, args.symbol, upper)
    old = registry.champion_version(s)

    store = FeedbackStore.from_settings(s)
    t0 = time.perf_counter()
    for i in range(samples):
        store.save(drawing(args.symbol, upper, i, shape), args.symbol, upper, client_id="benchmark")
    t_submitted = time.perf_counter()
    run_retrain(args.via, args.timeout)
    t_retrained = time.perf_counter()
    new = registry.champion_version(s)
    served_after: set[str] = served_before
    acc_after = acc_before
    if new != old:

        def served_new() -> bool:  # every probe answered by the new champion (the last answers are kept)
            nonlocal acc_after, served_after
            acc_after, served_after = form_accuracy(api, probes, args.symbol, upper)
            return served_after == {new}

        with contextlib.suppress(NotReady):
            wait_until(served_new, timeout=300, what=f"v{new} served", interval=1, fatal=(Exception,))
    t_served = time.perf_counter()

    shown = labels.display(args.symbol, upper)
    if args.form != "generator":
        shown += f"» in the form «{args.form}"
    print(f"feedback loop: {samples} drawings of «{shown}», {args.probes} held-out probes")
    print(f"  submit                         {t_submitted - t0:8.1f} s")
    print(f"  retrain (flow run)             {t_retrained - t_submitted:8.1f} s")
    if new != old:
        answers = ", ".join(f"v{v}" for v in sorted(served_after))
        print(f"  submit → new champion served   {t_served - t0:8.1f} s  (v{old} → v{new}, API answers {answers})")
    else:
        latest = newest_version(s)
        print(f"  champion unchanged (v{old}): the new version did not pass the promotion gate")
        if latest is not None and str(latest["version"]) != str(old):
            print(f"    v{latest['version']}: {latest.get('promotion')}")
            print(f"    to serve it anyway: ukr-hw promote {latest['version']} --reason '<why>'")
    print(f"  «{shown}» accuracy (API)        {acc_before:8.3f} → {acc_after:.3f}")
    fb, fa = frozen_accuracy(old), frozen_accuracy(new)
    if fb is not None and fa is not None:
        print(f"  frozen-test symbol accuracy    {fb:8.4f} → {fa:.4f}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# real writers: CoMNIST sessions base training never saw


@dataclass(frozen=True)
class Writers:
    """Which CoMNIST drawings probe and which submit; a session is in one role only."""

    probes: dict[str, list[Any]]  #: probe session → its drawings (comnist.Drawing), at most per_writer each
    submitters: dict[str, list[Any]]  #: submitting session → the drawings it submits, in submission order
    left_out: int = 0  #: sessions too large to stand for a population (MAX_SESSION_SHARE)

    @property
    def probe_drawings(self) -> list[Any]:
        return [d for ds in self.probes.values() for d in ds]

    @property
    def submitted(self) -> int:
        return sum(map(len, self.submitters.values()))


def choose_writers(
    drawings: Sequence[Any],
    probe_sessions: int,
    samples: int,
    per_writer: int,
    seed: int,
    max_share: float = MAX_SESSION_SHARE,
) -> Writers:
    """Probe and submitting sessions of ``drawings`` (comnist.Drawing with ``session``), chosen by ``seed`` alone.

    Sessions over ``max_share`` of the drawings are left out; the others are shuffled: the first
    ``probe_sessions`` probe (each at most ``per_writer`` of its drawings), the next ones submit up to
    ``per_writer`` drawings each until ``samples`` are reached (the last one fewer). Raises
    :class:`BenchmarkError` when the sessions cannot give that many.
    """
    import numpy as np

    if probe_sessions < 1 or samples < 1 or per_writer < 1:
        raise BenchmarkError(
            f"--probe-sessions ({probe_sessions}), --samples ({samples}) and --per-writer ({per_writer}) must be ≥ 1"
        )
    by_session: dict[str, list[Any]] = defaultdict(list)
    for d in drawings:
        by_session[d.session].append(d)
    limit = max(1.0, max_share * len(drawings))
    names = sorted(s for s, ds in by_session.items() if len(ds) <= limit)
    rng = np.random.default_rng(seed)
    order = [names[int(k)] for k in rng.permutation(len(names))]

    def pick(session: str, n: int) -> list[Any]:
        ds = sorted(by_session[session], key=lambda d: d.id)
        take = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
        return [ds[int(k)] for k in take]

    if len(order) <= probe_sessions:
        raise BenchmarkError(
            f"{len(order)} CoMNIST sessions are usable (of {len(by_session)}; those over {max_share:.0%} of the "
            f"drawings are left out): --probe-sessions {probe_sessions} leaves none to submit; ask for fewer"
        )
    probes = {s: pick(s, per_writer) for s in order[:probe_sessions]}
    submitters: dict[str, list[Any]] = {}
    left = samples
    for s in order[probe_sessions:]:
        if left <= 0:
            break
        submitters[s] = pick(s, min(per_writer, left))
        left -= len(submitters[s])
    if left > 0:
        raise BenchmarkError(
            f"the {len(order) - probe_sessions} submitting sessions give only {samples - left} drawings at "
            f"--per-writer {per_writer}: ask for fewer --samples, fewer --probe-sessions or a larger --per-writer"
        )
    return Writers(probes, submitters, left_out=len(by_session) - len(names))


def load_comnist(settings: Any) -> list[Any]:
    """Every Ukrainian CoMNIST drawing of the raw mirror, labelled and in sessions (ukr_hw.data.comnist.scan)."""
    from ukr_hw.data import comnist

    if settings.data_mirror is None:
        raise BenchmarkError(
            "UKR_HW_DATA_MIRROR is not set: the writers' drawings are read from the raw mirror "
            "(<mirror>/comnist/Cyrillic/<Letter>/*.png, e.g. UKR_HW_DATA_MIRROR=/work/shared/datasets)"
        )
    folder = Path(settings.data_mirror).expanduser() / comnist.SOURCE
    if not (folder / comnist.FOLDER).is_dir():
        raise BenchmarkError(f"{folder / comnist.FOLDER} is missing: UKR_HW_DATA_MIRROR must hold comnist/Cyrillic/")
    return comnist.scan(folder).drawings


def sketch_layer(file: Path, canvas: int = CANVAS) -> bytes:
    """A CoMNIST file as the sketchpad's strokes: its ink (the preprocessing's rule) as the alpha of a layer in the
    brush colour, ``canvas`` pixels square (scaled bilinearly when not the file's own size)."""
    import numpy as np
    from PIL import Image

    from ukr_hw.preprocess import ink_map

    alpha = Image.fromarray(np.rint(ink_map(file) * 255).astype(np.uint8), mode="L")
    if alpha.size != (canvas, canvas):
        alpha = alpha.resize((canvas, canvas), Image.BILINEAR)
    layer = Image.new("RGBA", (canvas, canvas), (*BRUSH, 0))
    layer.putalpha(alpha)
    buf = io.BytesIO()
    layer.save(buf, format="PNG")
    return buf.getvalue()


def _value(out: Any) -> Any:
    """A plain value from a gradio_client output (``gr.update(...)`` outputs come as dicts)."""
    return out.get("value") if isinstance(out, dict) and out.get("__type__") == "update" else out


@dataclass
class Submitted:
    confirmed: int = 0
    corrected: int = 0
    reread_as_letters: int = 0  #: read as a digit, asked again under the Letters choice
    abstained: int = 0  #: refused as "not one symbol" (nothing stored: a person would draw it again)
    first_at: float | None = None  #: perf_counter of the first /predict
    cases: dict[str, int] = field(default_factory=lambda: defaultdict(int))  #: the case stored: upper / lower

    def add(self, other: Submitted) -> None:
        self.confirmed += other.confirmed
        self.corrected += other.corrected
        self.reread_as_letters += other.reread_as_letters
        self.abstained += other.abstained
        if other.first_at is not None:
            self.first_at = other.first_at if self.first_at is None else min(self.first_at, other.first_at)
        for k, v in other.cases.items():
            self.cases[k] += v


def submit_writer(
    ui_url: str,
    drawings: Sequence[Any],
    address: str | None,
    mode: str,
    workdir: Path,
    canvas: int = CANVAS,
    case_choice: str = "unsure",
) -> Submitted:
    """One writer's drawings through the sketchpad, as the browser sends them: one browser session (one
    gradio_client), ``/predict`` each drawing, then ``/confirm`` or ``/correct`` with the true symbol; with
    ``case_choice="unsure"`` a letter is always sent through ``/correct`` with "can't tell" as its case."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from ukr_hw import labels

    headers = {"X-Forwarded-For": address} if address else None
    # a loaded machine answers slowly: gradio_client's default 5 s read timeout would end the session
    client = Client(ui_url, verbose=False, download_files=False, headers=headers, httpx_kwargs={"timeout": 120.0})
    done = Submitted()
    try:
        for d in drawings:
            png = workdir / f"{d.session}-{d.letter}-{d.file.stem}.png"
            png.write_bytes(sketch_layer(d.file, canvas))
            sketch = {"background": None, "layers": [handle_file(str(png))], "composite": handle_file(str(png))}
            sketch["id"] = None
            if done.first_at is None:
                done.first_at = time.perf_counter()
            used = mode
            out = client.predict(sketch, used, api_name="/predict")
            symbol, case = _value(out[2]), _value(out[3])
            if symbol is None:  # "not one symbol": the sketchpad refused it, as it would a person's scribble
                done.abstained += 1
                continue
            if labels.is_digit(symbol) and used != "letters":  # the case control is empty: say "Letters"
                used = "letters"
                out = client.predict(sketch, used, api_name="/predict")
                symbol, case = _value(out[2]), _value(out[3])
                done.reread_as_letters += 1
                if symbol is None:
                    done.abstained += 1
                    continue
            unsure = case_choice == UNSURE and labels.has_case(d.symbol)
            if unsure:  # the writer's case is not known: say the symbol, and "can't tell"
                case = UNSURE
                client.predict(sketch, d.symbol, case, used, api_name="/correct")
            elif symbol == d.symbol:
                client.predict(sketch, used, api_name="/confirm")
            else:
                client.predict(sketch, d.symbol, case, used, api_name="/correct")
            if symbol == d.symbol:
                done.confirmed += 1
            else:
                done.corrected += 1
            done.cases[str(case)] += 1
    except AppError as exc:
        text = str(exc)
        if "Slow down" in text or "limit" in text:
            raise BenchmarkError(f"{RATE_LIMIT_HINT}: {text}") from exc
        raise BenchmarkError(f"the sketchpad at {ui_url} refused a drawing of session {d.session}: {text}") from exc
    finally:
        client.close()
    return done


def submit_all(
    ui_url: str,
    writers: Writers,
    mode: str,
    concurrency: int,
    forward: bool,
    workdir: Path,
    canvas: int = CANVAS,
    case_choice: str = "unsure",
) -> Submitted:
    """Every submitting session at once (``concurrency`` writers at a time), each as its own browser session and,
    with ``forward``, its own address (198.18.0.0/15, the benchmarking range, behind the trusted proxy)."""
    jobs: list[Callable[[], Submitted]] = []
    for i, (session, drawings) in enumerate(writers.submitters.items()):
        address = f"198.18.{i // 250}.{i % 250 + 1}" if forward else None
        (workdir / session).mkdir(parents=True, exist_ok=True)
        jobs.append(
            lambda ds=drawings, a=address, w=workdir / session: submit_writer(
                ui_url, ds, a, mode, w, canvas, case_choice
            )
        )
    total = Submitted()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for part in pool.map(lambda job: job(), jobs):
            total.add(part)
    return total


#: the sketchpad's rate-limit settings the benchmark's own writers lift; the wrong-label sender faces their defaults
LIMIT_VARS = ("UKR_HW_UI_SAVES_PER_SESSION", "UKR_HW_UI_SAVES_PER_ADDRESS", "UKR_HW_UI_PREDICTS_PER_ADDRESS")
WRONG_ADDRESS = "198.19.255.66"  #: the one address the wrong labels come from (benchmarking range, forwarded)


@dataclass
class WrongLabels:
    sent: int = 0
    saved: int = 0
    refused: int = 0  #: refused by a rate limit (the sketchpad's "Slow down, please")
    seconds: float = 0.0
    source: str | None = None  #: the address's source id, as the store records it


def send_wrong_labels(drawings: Sequence[Any], workdir: Path, canvas: int = CANVAS) -> WrongLabels:
    """One address sends each drawing through ``/correct`` with a wrong symbol, as fast as it can, each from a
    fresh browser session (a fresh ``client_id``: a per-session limit alone stops nobody), to a sketchpad of its own
    with the default rate limits (started here on a free port, on the same API and store, trusting the loopback
    proxy's ``X-Forwarded-For``)."""
    import os

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from ukr_hw import labels
    from ukr_hw.feedback import source_id, source_salt
    from ukr_hw.ops.ports import free_port
    from ukr_hw.ops.processes import ManagedProcess
    from ukr_hw.ops.wait import http_ok
    from ukr_hw.settings import get_settings

    letters = [sym for sym in labels.SYMBOLS if labels.has_case(sym)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ui = ManagedProcess(
        "ui-default-limits",
        [str(Path(sys.executable).parent / "ukr-hw"), "ui", "--port", str(port), "--host", "127.0.0.1"],
        workdir / "ui.log",
        cwd=REPO,
        env={"UKR_HW_UI_TRUSTED_PROXIES": '["127.0.0.1"]'},
    )
    saved_env = {k: os.environ.pop(k) for k in LIMIT_VARS if k in os.environ}  # the child inherits the defaults
    try:
        ui.start()
    finally:
        os.environ.update(saved_env)
    done = WrongLabels(source=source_id(WRONG_ADDRESS, source_salt(get_settings())))
    try:
        ui.wait_ready(lambda: http_ok(f"{url}/healthz"), timeout=180, what=url)
        t0 = time.perf_counter()
        for i, d in enumerate(drawings):
            png = workdir / f"wrong-{i}.png"
            png.write_bytes(sketch_layer(d.file, canvas))
            sketch = {"background": None, "layers": [handle_file(str(png))], "composite": handle_file(str(png))}
            sketch["id"] = None
            wrong = letters[(letters.index(d.symbol) + 1 + i % (len(letters) - 1)) % len(letters)]
            client = Client(url, verbose=False, download_files=False, headers={"X-Forwarded-For": WRONG_ADDRESS})
            done.sent += 1
            try:
                client.predict(sketch, wrong, "upper", "any", api_name="/correct")
                done.saved += 1
            except AppError as exc:
                if "Slow down" not in str(exc) and "limit" not in str(exc):
                    raise BenchmarkError(f"the sketchpad refused a wrong label for another reason: {exc}") from exc
                done.refused += 1
            finally:
                client.close()
        done.seconds = time.perf_counter() - t0
    finally:
        ui.stop(timeout=20)
    return done


def reject_source(source: str) -> int:
    """``ukr-hw feedback reject --source …`` (an address or a source id), the one command an operator runs;
    returns how many it marked."""
    cmd = [str(Path(sys.executable).parent / "ukr-hw"), "feedback", "reject", "--source", source]
    cmd += ["--reason", "benchmarks/loop.py: deliberately wrong labels"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BenchmarkError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["count"])


def probe_accuracy(api: Any, drawings: Sequence[Any], batch: int) -> tuple[float, float, set[str]]:
    """(43-way, letters-only) symbol accuracy of the API on the probe files, and the model versions answering."""
    files = [d.file.read_bytes() for d in drawings]
    ok = {"any": 0, "letters": 0}
    versions: set[str] = set()
    for start in range(0, len(files), batch):
        part, truth = files[start : start + batch], drawings[start : start + batch]
        for mode in ok:
            answers = api.classify_batch(part, mode=None if mode == "any" else mode)
            ok[mode] += sum(a["label"] == d.symbol for a, d in zip(answers, truth, strict=True))
            versions |= {str(a["model_version"]) for a in answers}
    return ok["any"] / len(files), ok["letters"] / len(files), versions


def populations(metrics: dict[str, float]) -> list[str]:
    return sorted(k[: -len("_n")] for k in metrics if k.endswith("_n") and f"{k[:-2]}_symbol_accuracy" in metrics)


def _fmt(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.4f}" if key in metrics else "  –   "


def run_comnist(args: argparse.Namespace) -> int:
    from ukr_hw import registry
    from ukr_hw.api_client import ApiClient
    from ukr_hw.registry import lineage
    from ukr_hw.settings import get_settings

    s = get_settings()
    samples = args.samples or 1000
    writers = choose_writers(load_comnist(s), args.probe_sessions, samples, args.per_writer, args.seed)
    probes = writers.probe_drawings
    ui_url = args.ui_url or f"http://{s.ui_host}:{s.ui_port}"

    api = ApiClient(s.api_url)
    api.wait_ready(timeout=60)
    old = registry.champion_version(s)
    if old is None:
        raise BenchmarkError(f"the registry at {s.resolved_tracking_uri()} has no champion: train one first")
    old_metrics = registry.get_version_metrics(old, s)
    if "comnist_n" in old_metrics:
        raise BenchmarkError(
            f"the champion v{old} was trained and scored with CoMNIST (its frozen test has a comnist population): "
            "its writers are not new to it. Start the stack with UKR_HW_COMNIST=false and train the base champion "
            "there (this module's docstring)"
        )
    before_any, before_letters, _ = probe_accuracy(api, probes, s.max_batch_images)
    known = newest_version(s)
    known_version = str(known["version"]) if known is not None else None

    with tempfile.TemporaryDirectory(prefix="ukr-hw-loop-") as tmp:
        t_start = time.perf_counter()
        sent = submit_all(
            ui_url, writers, args.ui_mode, args.concurrency, not args.no_forwarded, Path(tmp), args.canvas, args.case
        )
        t0 = sent.first_at or t_start
        t_submitted = time.perf_counter()
        wrong = None
        if args.wrong_labels:
            used = set(writers.probes) | set(writers.submitters)
            spare = [d for d in load_comnist(s) if d.session not in used][: args.wrong_labels]
            wrong = send_wrong_labels(spare, Path(tmp), args.canvas)
    t_attack = time.perf_counter() - t_submitted  # the wrong labels' time is not the loop's
    run_retrain(args.via, args.timeout)
    t_retrained = time.perf_counter()

    latest = newest_version(s)
    new = str(latest["version"]) if latest is not None and str(latest["version"]) != known_version else None
    champion = registry.champion_version(s)
    promoted = new is not None and champion == new
    served = wait_served(api, new, args.serve_timeout) if promoted else False
    t_served = time.perf_counter()
    after_any, after_letters, answering = probe_accuracy(api, probes, s.max_batch_images)
    new_metrics = registry.get_version_metrics(new, s) if new is not None else {}

    w = writers
    print(
        f"feedback loop on real writers (CoMNIST, seed {args.seed}): {w.submitted} drawings of {len(w.submitters)} "
        f"sessions submitted through the sketchpad ({ui_url}, choice {args.ui_mode!r}); {len(probes)} drawings of "
        f"{len(w.probes)} other sessions probe ({w.left_out} sessions over {MAX_SESSION_SHARE:.0%} left out)"
    )
    cases = ", ".join(f"{k} {v}" for k, v in sorted(sent.cases.items()))
    print(
        f"  submitted: {sent.confirmed} confirmed, {sent.corrected} corrected ({sent.reread_as_letters} read as a "
        f"digit and asked again under Letters; {sent.abstained} refused as not one symbol, not stored); "
        f"case stored ({'the case control' if args.case == 'model' else 'can’t tell for letters'}): {cases}"
    )
    if new is None:
        print(f"  no new version registered: the retrain took nothing in (champion v{old})")
    else:
        taken = lineage.samples_for_model_version(new, settings=s)
        roles = defaultdict(int)
        for row in taken:
            roles[row["role"]] += 1
        split = ", ".join(f"{k} {v}" for k, v in sorted(roles.items()))
        print(f"  retrain took in {len(taken)} of {w.submitted} samples ({split}): v{new}")
    if wrong is not None:
        from ukr_hw.feedback import FeedbackStore

        store = FeedbackStore.from_settings(s)
        theirs = {ref.sample_id for ref, _ in store.records(None, source=wrong.source)}
        trained = {row["sample_id"] for row in lineage.samples_for_model_version(new, settings=s)} if new else set()
        print(
            f"  wrong labels from one address ({WRONG_ADDRESS}, a fresh session each, default limits): "
            f"{wrong.sent} sent in {wrong.seconds:.0f} s, {wrong.saved} saved, {wrong.refused} refused by the rate "
            f"limit; the retrain took in {len(theirs & trained)} of them"
        )
        marked = reject_source(WRONG_ADDRESS)
        left = [r for _, r in store.records(None, source=wrong.source) if not r.get("rejected")]
        print(
            f"  `ukr-hw feedback reject --source {WRONG_ADDRESS}` marked {marked} rejected; "
            f"{len(left)} of that source's samples left unmarked"
        )
    print(
        f"  probe sessions, 43-way (API)        {before_any:.3f} → {after_any:.3f}  "
        f"({100 * (after_any - before_any):+.1f} points)"
    )
    print(
        f"  probe sessions, letters-only (API)  {before_letters:.3f} → {after_letters:.3f}  "
        f"({100 * (after_letters - before_letters):+.1f} points)"
    )
    print(f"  answering after: {', '.join(f'v{v}' for v in sorted(answering))}")
    print(f"  frozen populations, v{old} → v{new or old}   symbol                case                  n")
    for p in sorted(set(populations(old_metrics)) | set(populations(new_metrics))):
        sym, case = f"{p}_symbol_accuracy", f"{p}_case_accuracy"
        n = new_metrics.get(f"{p}_n", old_metrics.get(f"{p}_n", 0))
        print(
            f"    {p:18}  {_fmt(old_metrics, sym)} → {_fmt(new_metrics, sym)}   "
            f"{_fmt(old_metrics, case)} → {_fmt(new_metrics, case)}   {int(n)}"
        )
    if new is not None:
        verdict = "PROMOTED" if promoted else "REJECTED"
        print(f"  gate: {verdict} v{new}: {latest.get('promotion')}")
        if not promoted:
            print(f"    to serve it anyway: ukr-hw promote {new} --reason '<why>'")
        if "comnist_n" in new_metrics:
            print(
                f"  WARNING: v{new} has a CoMNIST population: the retrain ingested CoMNIST (the worker lacks "
                "UKR_HW_COMNIST=false); its probe figures are not on unseen writers"
            )
    print(f"  submit                         {t_submitted - t0:8.1f} s")
    if wrong is not None:
        print(f"  wrong labels (not counted below) {t_attack:6.1f} s")
    print(f"  retrain (deployment run)       {t_retrained - t_submitted - t_attack:8.1f} s")
    if promoted:
        status = "" if served else f"  (NOT served within {args.serve_timeout:.0f} s)"
        print(f"  first submission → served      {t_served - t0 - t_attack:8.1f} s  (v{old} → v{new}){status}")
    else:
        print(f"  first submission → served         –      (champion unchanged: v{champion})")
    return 0


# --------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--population", choices=["synthetic", "comnist"], default="synthetic", help="who the users are")
    p.add_argument("--samples", type=int, default=None, help="drawings submitted (default 40 synthetic, 1000 comnist)")
    p.add_argument("--via", choices=["prefect", "flow"], default="prefect", help="deployment run or in-process flow")
    p.add_argument("--timeout", type=float, default=1800, help="seconds the retrain may take")
    g = p.add_argument_group("synthetic")
    g.add_argument(
        "--form",
        default="4-open",
        help="a form of strokes.UNSEEN_FORMS (default: a «4» with an open top), or 'generator' for "
        "--symbol as the stroke generator draws it",
    )
    g.add_argument("--symbol", default="ю", help="with --form generator")
    g.add_argument("--lower", action="store_true", help="with --form generator: lowercase (default: uppercase)")
    g.add_argument("--probes", type=int, default=40, help="held-out drawings scored before/after")
    g = p.add_argument_group("comnist")
    g.add_argument("--probe-sessions", type=int, default=20, help="CoMNIST sessions held out as probes")
    g.add_argument("--per-writer", type=int, default=40, help="most drawings one session submits (or probes)")
    g.add_argument("--seed", type=int, default=23, help="chooses the sessions and their drawings")
    g.add_argument("--ui-url", default=None, help="the sketchpad (default: http://UKR_HW_UI_HOST:UKR_HW_UI_PORT)")
    g.add_argument("--ui-mode", choices=["any", "letters"], default="any", help="the Letters/Digits/Any choice")
    g.add_argument(
        "--wrong-labels",
        type=int,
        default=0,
        help="after the writers, one address sends this many wrong labels to a sketchpad with the default limits",
    )
    g.add_argument(
        "--case",
        choices=["unsure", "model"],
        default="unsure",
        help="the case a letter is saved with: can't tell (default), or as the model read it",
    )
    g.add_argument("--concurrency", type=int, default=4, help="writers drawing at once")
    g.add_argument("--canvas", type=int, default=CANVAS, help="side of the sketch layer (28: CoMNIST's own)")
    g.add_argument(
        "--no-forwarded",
        action="store_true",
        help="send every writer from this one address (no X-Forwarded-For): the retrain's per-source cap applies",
    )
    g.add_argument("--serve-timeout", type=float, default=300, help="seconds to wait for the API to switch")
    args = p.parse_args(argv)
    try:
        return run_comnist(args) if args.population == "comnist" else run_synthetic(args, p)
    except BenchmarkError as exc:
        print(f"loop benchmark: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
