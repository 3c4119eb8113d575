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
        "members": 2,  # the champion is an ensemble, as in production, and so is every retrained model
    },
    "retrain": {"epochs": 1},  # finetune keys a retrain puts over finetune: here, shorter
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
            from ukr_hw import registry, retraining
            from ukr_hw.data import versioning
            from ukr_hw.settings import get_settings

            s = get_settings()
            trained = retraining.finetune_with_feedback(settings=s)  # no champion yet: nothing to compare with
            first = registry.log_model_and_register(
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
    from ukr_hw import registry
    from ukr_hw.data.arrays import load_samples
    from ukr_hw.data.versioning import data_version
    from ukr_hw.inference import load_net
    from ukr_hw.model.network import member_nets
    from ukr_hw.registry import lineage

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
    assert len(member_nets(retrained)) == 2  # as configured: an ensemble
    run = client.get_run(result["run_id"]).data
    assert run.params["finetune.epochs"] == "1"  # the retrain section over finetune
    # per-epoch learning curves of both members, although the run started after training
    for member in ("member0", "member1"):
        assert len(client.get_metric_history(result["run_id"], f"{member}-val/score")) == 1  # one epoch
        assert client.get_metric_history(result["run_id"], f"{member}-train/symbol_acc")
    # 10 drawings leave too few held-out feedback letters to re-fit the case threshold: the configured one stays,
    # logged with the evidence, and the registered model carries it
    logged = run.metrics
    assert logged["test_case_threshold_fit_letters"] < 60
    assert [m.config.case_threshold for m in member_nets(retrained)] == [logged["test_case_threshold"]] * 2
    # promoted only under the gate
    champion = registry.champion_version()
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
    """Samples taken in (snapshotted into data/raw/feedback) by a run that crashed before registering are taken once
    by the next run."""
    from flows.retrain import retrain
    from ukr_hw import retraining
    from ukr_hw.data.arrays import load_samples
    from ukr_hw.registry import lineage

    s = project["settings"]
    store = _store()
    ids = [store.save(drawing("5", None, seed=100 + i), "5", None) for i in range(4)]
    # the crashed run: collected and snapshotted, then died before preparing/registration
    collected = retraining.collect(store, s)
    assert sorted(collected.samples.id.tolist()) == sorted(ids)
    assert retraining.ingest(collected, s)["snapshotted"] == 4
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

    from ukr_hw import retraining
    from ukr_hw.feedback import new_sample_id, ref_for_id
    from ukr_hw.registry import lineage

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


def _take_in(collected, s) -> None:
    """What a registered retrain records in lineage for the samples it took in (no training needed here)."""
    from ukr_hw import retraining
    from ukr_hw.registry import lineage

    lineage.record_samples(
        [
            lineage.IngestedSample(
                sample_id=sid,
                key=rec["key"],
                symbol=rec["symbol"],
                is_uppercase=rec["is_uppercase"],
                role=retraining.role_of(sid, s.user_test_fraction),
                created_at=rec["created_at"],
            )
            for sid, rec in collected.records.items()
        ],
        s,
    )


def test_one_source_gets_at_most_its_share_and_the_rest_waits(project) -> None:
    """At most ``retrain_max_source_share`` of one retrain's new samples come from one source (the salted sender
    address); the oldest are taken, the rest are recorded as deferred and come in with a later retrain, however far
    the high-water mark has moved on by then."""
    from datetime import UTC, datetime, timedelta

    from ukr_hw import retraining
    from ukr_hw.feedback import new_sample_id, ref_for_id
    from ukr_hw.registry import lineage
    from ukr_hw.settings import get_settings

    s = project["settings"]
    store = _store()
    _take_in(retraining.collect(store, get_settings(retrain_max_source_share=1.0)), s)  # what earlier tests left
    flood = [store.save(drawing("7", None, seed=300 + i), "7", None, source="src-aaaaaaaaaaaaaaaa") for i in range(6)]
    others = [store.save(drawing("2", None, seed=320 + i), "2", None, source="src-bbbbbbbbbbbbbbbb") for i in range(2)]
    others += [store.save(drawing("3", None, seed=340 + i), "3", None, source=None) for i in range(2)]  # unknown
    capped = get_settings(retrain_max_source_share=0.5, retrain_source_min_samples=0)
    got = retraining.collect(store, capped)
    # 4 of the flood's 6 (its oldest) against 2 + 2 of the others: the flood is half of what is taken, no more
    assert got.samples.id.tolist() == sorted(flood[:4] + others)
    assert got.deferred == flood[4:]
    assert set(flood[4:]) <= set(lineage.deferred_samples(s))
    _take_in(got, s)
    # the next retrain takes the deferred ones (with no new ones from others, the floor lets a lone source in)
    later = retraining.collect(store, get_settings(retrain_source_min_samples=2))
    assert later.samples.id.tolist() == flood[4:] and later.deferred == []
    _take_in(later, s)
    assert not set(flood) & set(lineage.deferred_samples(s))  # taken in: no longer waiting
    # a sample deferred days before the newest one taken in is still listed: the listing reaches back to it
    sid = store.save(drawing("7", None, seed=360), "7", None, source="src-aaaaaaaaaaaaaaaa")
    png, record = store.read(ref_for_id(sid))
    for key in (ref_for_id(sid).json_key, ref_for_id(sid).png_key):
        store.backend.delete(key)
    drawn = datetime.now(UTC) - timedelta(days=5)
    old = ref_for_id(new_sample_id(drawn))
    record = {**record, "sample_id": old.sample_id, "created_at": drawn.isoformat().replace("+00:00", "Z")}
    store.backend.put(old.png_key, png, "image/png")
    store.backend.put(old.json_key, json.dumps(record).encode(), "application/json")
    newest = lineage.latest_created_at(s)
    assert newest is not None and newest - drawn > retraining.LISTING_SLACK
    assert old.sample_id not in retraining.collect(store, s).samples.id.tolist()  # outside the window: not listed
    lineage.record_deferred([(old.sample_id, record["created_at"], record["source"])], s)  # as a capped retrain does
    assert retraining.collect(store, s).samples.id.tolist() == [old.sample_id]
    store.reject(old.sample_id, "test: never to be trained on")  # a rejected deferred sample stops widening the list
    assert retraining.collect(store, s).samples.id.tolist() == []
    assert old.sample_id not in lineage.deferred_samples(s)


def _users_in_data(s) -> tuple[dict[str, str], Any, Any]:
    """sample id → role of every feedback sample in the prepared data; the train and user_test arrays."""
    from ukr_hw import retraining
    from ukr_hw.data.arrays import load_samples

    train = load_samples(s.processed_dir / "finetune_train.npz")
    user = retraining.load_user_test(s)
    return retraining.feedback_in_data(s), train, user


def test_no_sample_is_lost_when_prepare_runs_again(project) -> None:
    """Users' samples are a raw source: a re-run of prepare, even from scratch, as a preprocessing version bump makes
    it (every step cache stale), rebuilds the same training set and users' test set, every user sample in its role.
    On the old code (feedback appended to the processed files) every user sample was gone after it."""
    from flows.prepare import prepare
    from ukr_hw import retraining
    from ukr_hw.data import feedback_raw

    s = project["settings"]
    store = _store()
    new = [store.save(drawing("ж", False, seed=400 + i), "ж", False, source=f"src-{i:016x}") for i in range(6)]
    collected = retraining.collect(store, s)
    assert set(new) <= set(collected.samples.id.tolist())
    # the retrain's take-in; it also snapshots what lineage took in without a snapshot (the share-cap test above did,
    # as every retrain did before users' samples were raw data), so none of those is lost either
    taken = retraining.ingest(collected, s, store)
    assert taken["snapshotted"] == len(collected.samples) and taken["backfilled"] >= 10
    records = {r["sample_id"]: r for r in feedback_raw.read_records(s)}
    expected = {sid: r["role"] for sid, r in records.items() if sid not in feedback_raw.read_rejected(s)}
    assert set(new) <= set(expected) and len(expected) >= 10 + 4 + 10 + 6  # the earlier retrains' samples too
    assert all((feedback_raw.feedback_dir(s) / f"{sid}.png").exists() for sid in records)

    warm = prepare()
    roles, train, user = _users_in_data(s)
    assert roles == expected  # every one, each in the role fixed at take-in
    assert warm["feedback"]["train"] + warm["feedback"]["user_test"] == len(expected)
    assert warm["raw_version"] and warm["data_version"]

    # from scratch: a preprocessing version bump makes every step rebuild from data/raw; deleting every prepared
    # file and step cache forces exactly that rebuild
    shutil.rmtree(s.processed_dir)
    cold = prepare()
    roles_after, train_after, user_after = _users_in_data(s)
    assert roles_after == expected
    # the same data, byte for byte
    assert train_after.digest() == train.digest() and user_after.digest() == user.digest()
    assert cold["data_version"] == warm["data_version"] and cold["raw_version"] == warm["raw_version"]


def test_a_sample_rejected_after_its_snapshot_leaves_training(project) -> None:
    """An operator rejects samples that are already in the snapshot: the next prepare drops them from training and
    from users' test set; image and record stay (in the store and in data/raw/feedback), and a take-back restores."""
    from flows.prepare import prepare
    from ukr_hw.data import feedback_raw

    s = project["settings"]
    store = _store()
    roles, _, _ = _users_in_data(s)
    in_train = next(sid for sid, role in sorted(roles.items()) if role == "train")
    # 30-odd samples at a held-out share of 0.3: none of them held out happens once in some 40,000 runs
    in_test = next((sid for sid, role in sorted(roles.items()) if role == "user_test"), None)
    rejected = {in_train} | ({in_test} if in_test else set())
    for sid in rejected:
        store.reject(sid, "test: a wrong label")
    summary = prepare()
    roles_after, train, user = _users_in_data(s)
    assert in_train not in set(train.id.tolist()) and in_test not in set(user.id.tolist())
    assert set(roles) - set(roles_after) == rejected
    assert summary["feedback"]["rejected"] >= len(rejected)
    assert feedback_raw.read_rejected(s)[in_train] == "test: a wrong label"
    assert (feedback_raw.feedback_dir(s) / f"{in_train}.png").exists() and in_train in store.rejected_ids()
    assert in_train in {r["sample_id"] for r in feedback_raw.read_records(s)}
    # the operator takes one back: the next prepare has it again
    n_train = feedback_raw.prep(s)["train"]
    assert store.unreject(in_train)
    assert feedback_raw.sync_from_store(s)["restored"] == [in_train]
    assert feedback_raw.prep(s)["train"] == n_train + 1


def test_snapshot_is_idempotent_and_keeps_rejections_without_the_store(tmp_path) -> None:
    """The snapshot's own rules, without servers: a repeated take-in adds nothing, an altered image is refused, and a
    rejection is taken back only where the store says it holds the sample and no longer rejects it."""
    import hashlib

    from ukr_hw.data import feedback_raw
    from ukr_hw.settings import Settings

    s = Settings(root=tmp_path)
    png = drawing("ю", True, seed=5)
    rec = {"sample_id": "a", "symbol": "ю", "is_uppercase": True, "role": "train"}
    rec["image_sha256"] = hashlib.sha256(png).hexdigest()
    assert feedback_raw.snapshot([(png, rec)], s) == 1
    before = (feedback_raw.feedback_dir(s) / "records.jsonl").read_bytes()
    assert feedback_raw.snapshot([(png, rec), (png, {**rec, "symbol": "ж"})], s) == 0  # first wins, nothing rewritten
    assert (feedback_raw.feedback_dir(s) / "records.jsonl").read_bytes() == before
    with pytest.raises(ValueError, match="does not match"):
        feedback_raw.snapshot([(png + b"x", {**rec, "sample_id": "b"})], s)
    with pytest.raises(ValueError, match="role"):
        feedback_raw.snapshot([(png, {**rec, "sample_id": "c", "role": "test"})], s)
    assert feedback_raw.sync_rejections({"a": "wrong", "zzz": "not snapshotted"}, s)["added"] == ["a"]
    assert feedback_raw.read_rejected(s) == {"a": "wrong"}
    assert feedback_raw.sync_rejections({}, s)["restored"] == []  # no store to ask: the mark holds
    assert feedback_raw.sync_rejections({}, s, still_in_store=lambda r: False)["rejected"] == 1  # another store
    assert feedback_raw.sync_rejections({}, s, still_in_store=lambda r: True)["restored"] == ["a"]
    assert feedback_raw.prep(s)["train"] == 1


def test_source_cap() -> None:
    """One source's share of one retrain's new samples: the water level every source is cut at."""
    from collections import Counter

    from ukr_hw.retraining import cap_by_source, source_cap

    sources = ["a"] * 8 + ["b"] * 2 + [None] * 2
    assert source_cap(Counter(sources), 0.5) == 4
    keep = cap_by_source(sources, 0.5)
    assert keep[:8] == [True] * 4 + [False] * 4  # a source's oldest are taken
    assert Counter(src for src, k in zip(sources, keep, strict=True) if k) == {"a": 4, "b": 2, None: 2}
    # 200 wrong labels from one address among 50 honest drawings from 50 addresses: at most a fifth of what is taken
    flood = ["vandal"] * 200 + [f"user-{i}" for i in range(50)]
    keep = cap_by_source(flood, 0.2)
    taken = Counter(src for src, k in zip(flood, keep, strict=True) if k)
    assert taken["vandal"] == 12 and taken["vandal"] / sum(taken.values()) <= 0.2 and sum(taken.values()) == 62
    # a lone source: no share fits, the floor lets it give a bounded number; share 1 caps nothing
    assert source_cap({"me": 30}, 0.2) == 0 and source_cap({"me": 30}, 0.2, floor=20) == 20
    assert source_cap({"me": 30}, 1.0) == 30 and source_cap({}, 0.2) == 0


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
    # a letter whose writer said "can't tell" trains the symbol only (case masked)
    _, y, case, _ = sample_from_record(png, {"symbol": "ю", "is_uppercase": None, "case_known": False})
    assert (y, case) == (index_of("ю"), -2)
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
