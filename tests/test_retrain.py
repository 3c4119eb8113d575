"""The retrain flow on real parts: feedback in SeaweedFS S3, lineage in PostgreSQL, DVC, MLflow registry.

One module-scoped project root (a copy of the prepared data), a tiny training config, and a first champion
trained by the same fine-tune code. Samples are drawings of uppercase «Ю» (a form the data lacks).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.fixtures.data import temp_env
from ukr_hw import stack

TINY = {
    "seed": 7,
    "net": {"width": 8, "hidden": 64, "dropout": 0.1},
    "trainer": {"progress": False},
    "finetune": {
        "epochs": 2,
        "patience": 0,
        "epoch_size": 768,
        "batch_size": 64,
        "use_synthetic": False,
        "members": 2,  # the champion is an ensemble, as in production: retraining continues each member
    },
    # from the champion: shorter, anchored to the champion, averaged with its weights
    "retrain": {"epochs": 1, "anchor_weight": 1.0, "average_with_init": 0.5},
}


def drawing(symbol: str, upper: bool | None, seed: int) -> bytes:
    from ukr_hw.data.strokes import draw_canvas

    buf = io.BytesIO()
    draw_canvas(symbol, upper, seed=seed).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def project(prepared_data, s3_server: stack.S3Server, pg_admin_url: str, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A private copy of the prepared project, pointed at S3 feedback, PostgreSQL lineage and an MLflow file store."""
    base: Path = tmp_path_factory.mktemp("retrain")
    root = base / "project"
    shutil.copytree(prepared_data.root, root, symlinks=True)
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    bucket = s3_server.create_bucket("feedback")
    with stack.temporary_database(pg_admin_url, prefix="ukrhw_lineage") as lineage_url:
        env = {
            **prepared_data.env,
            "UKR_HW_ROOT": str(root),
            "UKR_HW_DVC_REMOTE_URL": str(base / "dvc-remote"),
            "UKR_HW_MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
            "UKR_HW_MLFLOW_ARTIFACT_ROOT": str(base / "mlartifacts"),
            "UKR_HW_LINEAGE_DB": lineage_url,
            "UKR_HW_FEEDBACK_URI": f"s3://{bucket}",
            "UKR_HW_FEEDBACK_SPOOL_DIR": str(base / "spool"),
            "UKR_HW_S3_ENDPOINT_URL": s3_server.endpoint_url,
            "UKR_HW_S3_ACCESS_KEY_ID": s3_server.access_key,
            "UKR_HW_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
            "UKR_HW_API_URL": f"http://127.0.0.1:{stack.free_port()}",  # nobody listens: reload is a warning
            "UKR_HW_ADMIN_TOKEN": "test-token",
            "UKR_HW_RETRAIN_CONFIG": str(config),
            "UKR_HW_USER_TEST_FRACTION": "0.3",
        }
        with temp_env(**env):
            from ukr_hw import retraining, tracking
            from ukr_hw.data import versioning
            from ukr_hw.settings import get_settings

            s = get_settings()
            trained = retraining.finetune_from_champion(settings=s)  # no champion yet: fresh weights
            first = tracking.log_model_and_register(
                trained["net"], report=trained["report"], data_version=versioning.data_version(s), params={}
            )
            assert first.promoted
            yield {"root": root, "bucket": bucket, "settings": s, "first": first, "s3": s3_server}


def _store():
    from ukr_hw.feedback import FeedbackStore

    return FeedbackStore.from_settings()


def test_no_new_samples_ends_early(project) -> None:
    from flows.retrain import retrain

    result = retrain()
    assert result["status"] == "no_new_samples"
    assert result["new_samples"] == 0


def test_retrain_learns_from_feedback_with_lineage(project) -> None:
    import mlflow

    from flows.retrain import retrain
    from ukr_hw import lineage, tracking
    from ukr_hw.data.arrays import load_samples
    from ukr_hw.data.versioning import data_version
    from ukr_hw.inference import load_net
    from ukr_hw.model.network import member_nets

    s = project["settings"]
    processed = s.processed_dir
    test_digest = load_samples(processed / "finetune_test.npz").digest()
    train_before = load_samples(processed / "finetune_train.npz")
    version_before = data_version(s)

    store = _store()
    ids = [
        store.save(drawing("ю", True, seed=i), "ю", True, predicted_symbol="ю", predicted_is_uppercase=False)
        for i in range(10)
    ]
    # a broken sample: a record whose label is not in the alphabet (written behind the store's back)
    s3 = project["s3"].client()
    good_key = store.list_since(None)[0].key
    s3.put_object(Bucket=project["bucket"], Key="2020/01/01/broken.png", Body=b"\x89PNG not really")
    record = json.loads(s3.get_object(Bucket=project["bucket"], Key=good_key + ".json")["Body"].read())
    record.update(sample_id="broken", symbol="Q")
    s3.put_object(Bucket=project["bucket"], Key="2020/01/01/broken.json", Body=json.dumps(record).encode())

    result = retrain()

    assert result["status"] == "retrained", result
    assert result["new_samples"] == 10
    assert [q["key"] for q in result["quarantined"]] == ["2020/01/01/broken"]
    assert [r.key for r in store.quarantined()] == ["quarantine/2020/01/01/broken"]
    # the frozen test split never changes; train grew by the train share only; user drawings hold the rest
    assert load_samples(processed / "finetune_test.npz").digest() == test_digest
    train_after = load_samples(processed / "finetune_train.npz")
    user = load_samples(processed / "user_test.npz")
    assert len(train_after) - len(train_before) + len(user) == 10
    assert set(user.id.tolist()) | set(train_after.id.tolist()[len(train_before) :]) == set(ids)
    assert result["data_version"] == data_version(s) != version_before
    # registered with lineage back to exactly those samples
    version = result["model_version"]
    assert version == "2"
    assert {r["sample_id"] for r in lineage.samples_for_model_version(version)} == set(ids)
    assert {r["sample_id"] for r in lineage.samples_for_model_version(version, role="user_test")} == set(
        user.id.tolist()
    )
    assert lineage.model_versions_for_sample(ids[0]) == [version]
    client = mlflow.MlflowClient(s.resolved_tracking_uri(), s.resolved_tracking_uri())
    mv = client.get_model_version(s.model_name, version)
    assert mv.tags["data_version"] == result["data_version"]
    arts = [a.path for a in client.list_artifacts(result["run_id"], "lineage")]
    assert arts == [f"lineage/feedback_samples-{result['data_version']}.jsonl"]
    retrained, _ = load_net(f"models:/{s.model_name}/{version}", s)
    assert len(member_nets(retrained)) == 2  # an ensemble champion retrains into an ensemble
    run = client.get_run(result["run_id"]).data
    assert run.params["finetune.epochs"] == "1" and run.params["finetune.anchor_weight"] == "1.0"  # retrain section
    assert run.params["finetune.average_with_init"] == "0.5"
    # per-epoch learning curves of both members, anchored to the champion, although the run started after training
    for member in ("member0", "member1"):
        assert len(client.get_metric_history(result["run_id"], f"{member}-val/score")) == 1  # one epoch
        assert client.get_metric_history(result["run_id"], f"{member}-train/anchor_loss")
    # 10 drawings leave too few held-out feedback letters to re-fit the case threshold: the configured one stays,
    # logged with the evidence, and the registered model carries it
    logged = run.metrics
    assert logged["test_case_threshold_fit_letters"] < 60
    assert [m.config.case_threshold for m in member_nets(retrained)] == [logged["test_case_threshold"]] * 2
    # promoted only under the gate
    champion = tracking.champion_version()
    if result["promoted"]:
        assert champion == version and mv.tags["promotion"].startswith("promoted")
        assert result["api"]["reloaded"] is False and "warning" in result["api"]  # API down: a warning only
    else:
        assert champion == project["first"].version and mv.tags["promotion"].startswith("rejected")
        assert ("on users' held-out drawings" in mv.tags["promotion"]) == bool(len(user)), mv.tags["promotion"]
    if len(user):
        assert "symbol_accuracy" in result["user_test_metrics"]

    # nothing new: nothing retrains, nothing is added
    again = retrain()
    assert again["status"] == "no_new_samples"
    assert len(load_samples(processed / "finetune_train.npz")) == len(train_after)


def test_rerun_after_crash_does_not_duplicate(project) -> None:
    """Samples appended to the data by a run that crashed before registering are taken once by the next run."""
    from flows.retrain import retrain
    from ukr_hw import lineage, retraining
    from ukr_hw.data.arrays import load_samples

    s = project["settings"]
    store = _store()
    ids = [store.save(drawing("5", None, seed=100 + i), "5", None) for i in range(4)]
    # the crashed run: collected and appended, then died before versioning/registration
    collected = retraining.collect(store, s)
    assert sorted(collected.samples.id.tolist()) == sorted(ids)
    retraining.add_to_data(*retraining.split_roles(collected.samples, s), s)
    result = retrain()
    assert result["status"] == "retrained" and result["new_samples"] == 4
    train = load_samples(s.processed_dir / "finetune_train.npz")
    user = retraining.load_user_test(s)
    all_ids = train.id.tolist() + user.id.tolist()
    assert all(all_ids.count(i) == 1 for i in ids)
    assert len(np.unique(train.id)) == len(train)
    assert lineage.model_versions_for_sample(ids[0]) == [result["model_version"]]


def test_a_late_upload_from_the_spool_and_a_rejection(project) -> None:
    """A drawing spooled during an outage days before the newest sample taken in, and uploaded only now, is still
    taken in by the next retrain; a sample an operator rejected is not (it stays in the store)."""
    from datetime import UTC, datetime, timedelta

    from ukr_hw import lineage, retraining
    from ukr_hw.feedback import new_sample_id, ref_for_id

    s = project["settings"]
    store = _store()
    newest = lineage.latest_created_at(s)
    assert newest is not None  # the earlier tests took samples in: a high-water mark exists
    sid = store.save(drawing("ю", True, seed=900), "ю", True, client_id="late")
    png, record = store.read(ref_for_id(sid))
    for key in (ref_for_id(sid).json_key, ref_for_id(sid).png_key):  # only its late twin exists
        store.backend.delete(key)
    drawn = newest - timedelta(days=3)
    late_id = new_sample_id(drawn)
    late = ref_for_id(late_id)
    record = {**record, "sample_id": late_id, "created_at": drawn.isoformat().replace("+00:00", "Z")}
    store.spool.put(late.png_key, png, "image/png")
    store.spool.put(late.json_key, json.dumps(record).encode(), "application/json")
    assert store.flush_spool() == 1 and datetime.now(UTC) - drawn > retraining.LISTING_SLACK
    wrong = store.save(drawing("ю", True, seed=901), "ж", True, client_id="vandal")
    store.reject(wrong, "an «ю» labelled «ж»")
    got = retraining.collect(store, s)
    assert late_id in got.samples.id.tolist()
    assert wrong not in got.samples.id.tolist() and got.rejected == 1
    assert wrong in store.rejected_ids()  # kept and marked, not deleted


def test_bad_record_reasons() -> None:
    from ukr_hw.retraining import BadSample, role_of, sample_from_record

    png = drawing("ю", True, seed=1)
    from ukr_hw.labels import index_of

    x, y, case, ink = sample_from_record(png, {"symbol": "Ю", "is_uppercase": True})
    assert x.shape == (28, 28) and x.dtype == np.uint8 and case == 1 and ink.shape == (2,)
    assert y == index_of("ю")
    with pytest.raises(BadSample, match="digits have no case"):
        sample_from_record(png, {"symbol": "5", "is_uppercase": True})
    with pytest.raises(BadSample, match="without a case"):
        sample_from_record(png, {"symbol": "ю", "is_uppercase": None})
    with pytest.raises(BadSample, match="unknown symbol"):
        sample_from_record(png, {"symbol": "Q", "is_uppercase": True})
    # roles are a stable function of the id, near the asked share
    roles = [role_of(f"id-{i}", 0.2) for i in range(2000)]
    assert roles == [role_of(f"id-{i}", 0.2) for i in range(2000)]
    assert 0.15 < roles.count("user_test") / 2000 < 0.25


def test_serve_keeps_an_admin_token_that_retrain_and_promote_find(tmp_path) -> None:
    """On a fresh machine no admin token is configured: `ukr-hw serve` generates one into an owner-only file and
    hands it to the API; `ukr-hw retrain` / `promote` read the same file, so the API reloads at once. A configured
    token wins over the file."""
    from ukr_hw.settings import Settings

    kept = Path("state/admin-token")
    fresh = Settings(root=tmp_path, admin_token=None, admin_token_file=kept)
    assert fresh.resolved_admin_token() is None
    token = fresh.ensure_admin_token()
    path = tmp_path / kept
    assert len(token) >= 32 and path.read_text().strip() == token and path.stat().st_mode & 0o777 == 0o600
    assert fresh.ensure_admin_token() == token  # kept, not regenerated
    assert Settings(root=tmp_path, admin_token=None, admin_token_file=kept).resolved_admin_token() == token
    configured = Settings(root=tmp_path, admin_token="configured", admin_token_file=kept)
    assert configured.resolved_admin_token() == configured.ensure_admin_token() == "configured"


def test_a_rejected_retrain_says_how_it_reads_users_drawings() -> None:
    """The gate's tag on a rejected version carries the operator's evidence: users' held-out drawings read by it and
    by the champion, and the override command where it reads them better; nothing without such drawings."""
    from types import SimpleNamespace

    from ukr_hw.retraining import _users_hint

    def report(acc: float) -> SimpleNamespace:
        return SimpleNamespace(metrics={"symbol_accuracy": acc})

    better = _users_hint("7", report(1.0), report(0.25))
    assert better == (
        "; on users' held-out drawings it reads 1.00 against the champion's 0.25: "
        "`ukr-hw promote 7 --reason …` serves it anyway"
    )
    assert (
        _users_hint("7", report(0.5), report(0.75))
        == "; on users' held-out drawings it reads 0.50 against the champion's 0.75"
    )
    assert _users_hint("7", None, report(0.5)) == _users_hint("7", report(float("nan")), report(0.5)) == ""
