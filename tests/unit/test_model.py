"""The model side: network contract, loss masking, augmentation, data modules, evaluation, config, pretrain cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.tiny_data import make_samples, write_tiny_processed
from ukr_hw.data.arrays import Samples
from ukr_hw.labels import CASE_UNKNOWN, NUM_CLASSES, index_of
from ukr_hw.model.augment import AugmentConfig, augment_batch, change_thickness
from ukr_hw.model.datamodule import GlyphDataModule, SamplesDataModule, balanced_weights, stratified_split
from ukr_hw.model.evaluate import evaluate, write_reports
from ukr_hw.model.lit import LitUkrHw, masked_case_loss, to_input
from ukr_hw.model.network import EnsembleNet, build_network, member_nets, network_config
from ukr_hw.settings import get_settings
from ukr_hw.training import ConfigError, finetune, load_config, pretrain

torch.set_num_threads(1)  # a shared CPU: one thread avoids OpenMP spin-waits


@pytest.mark.parametrize("ink_to_symbol", [False, True])
def test_forward_contract_shapes(ink_to_symbol: bool):
    net = build_network({"width": 8, "hidden": 32, "ink_to_symbol": ink_to_symbol}).eval()
    x = torch.rand(5, 1, 28, 28)
    sym, case = net(x, torch.rand(5, 2))
    assert sym.shape == (5, NUM_CLASSES) and case.shape == (5,)
    # the ink-box size reaches the symbol head only when asked (з vs 3: one shape, other sizes)
    sym_big, case_big = net(x, torch.full((5, 2), 0.9))
    sym_small, case_small = net(x, torch.full((5, 2), 0.3))
    assert torch.equal(sym_big, sym_small) is not ink_to_symbol
    assert not torch.equal(case_big, case_small)


def test_channels_last_layout_changes_speed_not_results():
    """The network runs NHWC (faster on a CPU); weights saved in NCHW (older logged models) load and agree."""
    torch.manual_seed(0)
    net = build_network({"width": 8, "hidden": 32}).eval()
    assert net.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = build_network({"width": 8, "hidden": 32}).set_memory_format(torch.contiguous_format).eval()
    nchw.load_state_dict({k: v.contiguous() for k, v in net.state_dict().items()})
    reloaded = build_network({"width": 8, "hidden": 32}).eval()
    reloaded.load_state_dict(nchw.state_dict())
    assert reloaded.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x, ink = torch.rand(6, 1, 28, 28), torch.rand(6, 2)
    for other in (nchw, reloaded):
        for a, b in zip(net(x, ink), other(x, ink), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ensemble_answers_with_its_members_averaged_probabilities_and_round_trips():
    torch.manual_seed(0)
    members = [build_network({"width": 4, "hidden": 16}).eval() for _ in range(3)]
    ens = EnsembleNet(members).eval()
    x, ink = torch.rand(7, 1, 28, 28), torch.rand(7, 2)
    with torch.no_grad():
        sym, case = ens(x, ink)
        outs = [m(x, ink) for m in members]
    mean_probs = torch.stack([torch.softmax(s, 1) for s, _ in outs]).mean(0)
    mean_upper = torch.stack([torch.sigmoid(c) for _, c in outs]).mean(0)
    torch.testing.assert_close(torch.softmax(sym, 1), mean_probs)  # same contract: logits in, softmax gives probs
    torch.testing.assert_close(torch.sigmoid(case), mean_upper)
    assert not torch.allclose(mean_probs, torch.softmax(outs[0][0], 1))  # the members really differ

    config = network_config(ens)  # what a logged model's config.json holds
    assert config["members"] == 3 and config["width"] == 4
    rebuilt = build_network(json.loads(json.dumps(config))).eval()
    rebuilt.load_state_dict(ens.state_dict())
    assert isinstance(rebuilt, EnsembleNet) and len(member_nets(rebuilt)) == 3
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, ink)[0], sym)
    assert "members" not in network_config(members[0]) and member_nets(members[0]) == [members[0]]
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleNet([])


def test_case_threshold_shifts_the_eval_case_logit_and_travels_with_the_model():
    torch.manual_seed(0)
    raw = build_network({"width": 4, "hidden": 16})
    tuned = build_network({"width": 4, "hidden": 16, "case_threshold": 0.6})
    tuned.load_state_dict(raw.state_dict())
    x, ink = torch.rand(9, 1, 28, 28), torch.rand(9, 2)
    with torch.no_grad():
        raw_case = raw.eval()(x, ink)[1]
        sym, case = tuned.eval()(x, ink)
        torch.testing.assert_close(sym, raw(x, ink)[0])  # the symbol head is untouched
        torch.testing.assert_close(case, raw_case - math.log(0.6 / 0.4))
        # an uppercase answer (sigmoid > 0.5) is exactly a raw P(upper) above the threshold
        assert torch.equal(torch.sigmoid(case) > 0.5, torch.sigmoid(raw_case) > 0.6)
        torch.manual_seed(1)
        train_case = tuned.train()(x, ink)[1]
        torch.manual_seed(1)
        torch.testing.assert_close(train_case, raw.train()(x, ink)[1])  # training sees the raw logit
    # an ensemble applies the threshold once, to its members' averaged raw P(upper)
    other = build_network({"width": 4, "hidden": 16, "case_threshold": 0.6}).eval()
    ens = EnsembleNet([tuned.eval(), other]).eval()
    with torch.no_grad():
        raw_upper = (
            torch.sigmoid(tuned(x, ink)[1] + math.log(1.5)) + torch.sigmoid(other(x, ink)[1] + math.log(1.5))
        ) / 2
        torch.testing.assert_close(ens(x, ink)[1], torch.logit(raw_upper, eps=1e-6) - math.log(1.5))
    config = json.loads(json.dumps(network_config(ens)))  # config.json of a logged model
    assert config["case_threshold"] == 0.6
    rebuilt = build_network(config).eval()
    rebuilt.load_state_dict(ens.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, ink)[1], ens(x, ink)[1])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            build_network({"case_threshold": bad})
    for bad in ("0", "1.2", "high"):
        with pytest.raises(ConfigError, match="case_threshold must be a probability"):
            finetune(load_config(None, {"finetune.case_threshold": bad}))


def test_memory_blends_the_nearest_training_glyphs_vote_in_eval_mode_and_travels_in_the_state_dict():
    torch.manual_seed(0)
    plain = build_network({"width": 4, "hidden": 16}).eval()
    net = build_network({"width": 4, "hidden": 16, "knn_weight": 0.5, "knn_k": 1}).eval()
    net.load_state_dict(plain.state_dict())  # an older model without a memory loads, with an empty one
    x, ink = torch.rand(6, 1, 28, 28), torch.rand(6, 2)
    with torch.no_grad():
        torch.testing.assert_close(net(x, ink)[0], plain(x, ink)[0])  # no memory: the network alone
        labels = torch.tensor([7, 20, 7, 30, 1, 42])
        net.remember(x, labels)
        assert net.knn_keys.shape == (6, 16) and net.knn_labels.tolist() == labels.tolist()
        # the nearest remembered glyph (k = 1) of each input votes for its class with half the weight
        nearest = (nn.functional.normalize(net.body(x)) @ net.knn_keys.T).argmax(1)
        sym, case = net(x, ink)
        probs = torch.softmax(sym, 1)
        torch.testing.assert_close(probs.sum(1), torch.ones(6))
        vote = nn.functional.one_hot(labels[nearest], NUM_CLASSES).float()
        torch.testing.assert_close(probs, 0.5 * torch.softmax(plain(x, ink)[0], 1) + 0.5 * vote)
        torch.testing.assert_close(case, plain(x, ink)[1])  # the case head is untouched
        torch.manual_seed(1)
        train_sym = net.train()(x, ink)[0]
        torch.manual_seed(1)
        torch.testing.assert_close(train_sym, plain.train()(x, ink)[0])  # training sees the network alone
    net.eval()
    plain.eval()
    # the memory is part of the state_dict: a model rebuilt from config.json + state_dict answers the same
    ens = EnsembleNet([net, build_network({"width": 4, "hidden": 16, "knn_weight": 0.5, "knn_k": 1})]).eval()
    ens.members[1].remember(x[:3], labels[:3])
    rebuilt = build_network(json.loads(json.dumps(network_config(ens)))).eval()
    rebuilt.load_state_dict(ens.state_dict())
    assert [len(m.knn_labels) for m in rebuilt.members] == [6, 3]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, ink)[0], ens(x, ink)[0])
    assert len(net.forget().knn_labels) == 0
    for bad in ({"knn_weight": 1.0}, {"knn_weight": -0.1}, {"knn_k": 0}, {"knn_temperature": 0}):
        with pytest.raises(ValueError, match="knn"):
            build_network(bad)
    with pytest.raises(ConfigError, match="knn"):
        finetune(load_config(None, {"finetune.knn_weight": "1.5"}))


def test_memory_case_vote_asks_the_nearest_letters_of_the_predicted_symbol_in_style_and_size():
    torch.manual_seed(0)
    plain = build_network({"width": 4, "hidden": 16, "case_threshold": 0.55}).eval()
    config = {"width": 4, "hidden": 16, "case_threshold": 0.55, "knn_case_weight": 0.4, "knn_ink_scale": 100.0}
    net = build_network(config).eval()
    net.load_state_dict(plain.state_dict())
    x, ink = torch.rand(4, 1, 28, 28), torch.tensor([[0.3, 0.3], [0.7, 0.6], [0.3, 0.3], [0.7, 0.6]])
    with torch.no_grad():
        pred = plain(x, ink)[0].argmax(1)
        # remembered: for each input's predicted symbol, a small lowercase one and a big capital; plus a digit
        k = int(pred[0])
        mem_x = torch.rand(3, 1, 28, 28)
        mem_y = torch.tensor([k, k, 3])
        mem_case = torch.tensor([0, 1, -1])
        mem_ink = torch.tensor([[0.3, 0.3], [0.7, 0.6], [0.5, 0.5]])
        net.remember(mem_x, mem_y, mem_case, mem_ink)
        assert net.knn_case.tolist() == [0, 1, -1] and net.knn_ink.shape == (3, 2)
        sym, case = net(x, ink)
        torch.testing.assert_close(sym, plain(x, ink)[0])  # knn_weight 0: the symbol is the network's alone
        shift = math.log(0.55 / 0.45)
        raw = torch.sigmoid(plain(x, ink)[1] + shift)  # the head's P(upper) before the threshold

        def answered(vote: float, i: int) -> torch.Tensor:  # the vote joins the raw P(upper), then the threshold
            return torch.sigmoid(torch.logit(0.6 * raw[i] + 0.4 * vote) - shift)

        for i in range(4):
            if int(pred[i]) != k:  # no remembered letter of its symbol: P(upper) alone
                torch.testing.assert_close(case[i], plain(x, ink)[1][i])
                continue
            # knn_k 5 > 2 letters: both vote, so the share is 1/2 whatever the size ...
            torch.testing.assert_close(torch.sigmoid(case[i]), answered(0.5, i), atol=1e-5, rtol=0)
        net.config = type(net.config)(**{**net.config.to_dict(), "knn_k": 1})
        p = torch.sigmoid(net(x, ink)[1])
        for i in range(4):  # ... and with one neighbour, the letter nearest in size decides
            if int(pred[i]) == k:
                torch.testing.assert_close(p[i], answered(1.0 if ink[i, 0] > 0.5 else 0.0, i), atol=1e-5, rtol=0)
        torch.manual_seed(1)
        train_case = net.train()(x, ink)[1]
        torch.manual_seed(1)
        torch.testing.assert_close(train_case, plain.train()(x, ink)[1])  # training sees the head alone
    with pytest.raises(ValueError, match="knn_case_weight"):
        build_network({"knn_case_weight": 1.0})


def test_masked_case_loss_ignores_digits():
    logits = torch.tensor([5.0, -5.0, 100.0, -100.0], requires_grad=True)
    case = torch.tensor([1, 0, -1, -1])  # two letters (correct, confident), two digits with wild logits
    loss = masked_case_loss(logits, case)
    assert loss.item() < 0.01  # the digits' logits are not penalised
    loss.backward()
    assert logits.grad[2].item() == 0 and logits.grad[3].item() == 0
    # only digits: exactly zero, still differentiable
    only_digits = masked_case_loss(torch.tensor([3.0, -2.0], requires_grad=True), torch.tensor([-1, -1]))
    assert only_digits.item() == 0.0
    only_digits.backward()
    # a wrong letter is penalised
    assert masked_case_loss(torch.tensor([-5.0]), torch.tensor([1])).item() > 4


def test_overfit_one_batch():
    """The model + loss can drive one batch's loss to ~0: guards against broken wiring (heads, masking, optim)."""
    torch.manual_seed(0)
    s = make_samples(1, seed=7)  # 43 samples, one per class, letters with both cases
    lit = LitUkrHw(
        build_network({"width": 8, "hidden": 64, "dropout": 0.0}), optim={"label_smoothing": 0.0}, augment=None
    )
    x, ink = to_input(torch.from_numpy(s.x)), torch.from_numpy(s.ink)
    y, case = torch.from_numpy(s.y), torch.from_numpy(s.case.astype(np.int64))
    opt = torch.optim.Adam(lit.parameters(), lr=3e-3)
    lit.train()
    for _ in range(100):
        sym, c = lit(x, ink)
        loss, _, _ = lit._losses(sym, c, y, case)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    lit.eval()
    with torch.no_grad():
        sym, c = lit(x, ink)
    assert (sym.argmax(1) == y).all()
    letters = case >= 0
    assert ((c[letters] > 0).long() == case[letters]).all()


def test_augment_keeps_shape_range_and_changes_pixels():
    torch.manual_seed(0)
    s = make_samples(2, seed=3)
    x, ink = to_input(torch.from_numpy(s.x)), torch.from_numpy(s.ink)
    cfg = AugmentConfig(elastic_prob=1.0, thickness_prob=1.0)
    out, ink_out = augment_batch(x, ink, cfg)
    assert out.shape == x.shape and out.dtype == x.dtype and ink_out.shape == ink.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert (out - x).abs().mean() > 0.01  # pixels changed
    assert not torch.equal(ink_out, ink) and (ink_out - ink).abs().max() < 0.25  # jittered a little, not scrambled
    # glyphs keep most of their ink (no erasing, no flips out of the frame)
    kept = out.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert float(kept.min()) > 0.3
    # disabled → identity
    same, same_ink = augment_batch(x, ink, AugmentConfig.off())
    assert torch.equal(same, x) and torch.equal(same_ink, ink)


def test_augment_identity_parameters_preserve_image():
    s = make_samples(1, seed=4, classes=range(5))
    x, ink = to_input(torch.from_numpy(s.x)), torch.from_numpy(s.ink)
    cfg = AugmentConfig(
        rotation_deg=0, shift=0, scale_min=1, scale_max=1, shear_deg=0, elastic_alpha=0, thickness_prob=0,
        noise_std=0, ink_jitter=0,
    )  # fmt: skip
    out, ink_out = augment_batch(x, ink, cfg)
    assert torch.allclose(out, x, atol=1e-5) and torch.allclose(ink_out, ink)


def test_thickness_dilates_and_erodes():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10:18, 13:16] = 1.0
    bold = change_thickness(x, AugmentConfig(thickness_prob=1.0, dilate_max=1.0, erode_max=0.0))
    assert float(bold.sum()) >= float(x.sum())
    thin = change_thickness(x, AugmentConfig(thickness_prob=1.0, dilate_max=0.0, erode_max=1.0))
    assert float(thin.sum()) <= float(x.sum())


def test_augment_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown augment keys"):
        AugmentConfig.from_dict({"flip": True})


def test_stratified_split_and_balanced_weights():
    s = make_samples(6, seed=1)
    train, val = stratified_split(s, 0.2, seed=0)
    assert len(train) + len(val) == len(s)
    assert not set(train.id) & set(val.id)
    assert set(np.unique(val.y)) == set(range(NUM_CLASSES))  # every class represented
    _again_train, again_val = stratified_split(s, 0.2, seed=0)
    assert list(again_val.id) == list(val.id)  # seeded
    y = np.array([0] * 90 + [1] * 10)
    w = balanced_weights(y, 1.0).numpy()
    assert np.isclose(w[y == 0].sum(), w[y == 1].sum())


def test_epoch_size_sets_the_samples_per_epoch_with_or_without_balancing():
    s = make_samples(3, seed=2)  # 129 samples
    for power in (0.0, 1.0):
        dm = SamplesDataModule(s, batch_size=16, balance_power=power, epoch_size=48)
        assert sum(len(batch[0]) for batch in dm.train_dataloader()) == 48
    assert sum(len(b[0]) for b in SamplesDataModule(s, batch_size=16).train_dataloader()) == 128  # whole, drop_last


def test_source_weights_tilt_a_class_towards_a_source_without_changing_class_balance():
    y = np.array([0] * 90 + [1] * 10)
    source = np.array(["font"] * 60 + ["rukopys"] * 30 + ["font"] * 5 + ["rukopys"] * 5)
    w = balanced_weights(y, 1.0, source, {"rukopys": 3}).numpy()
    assert np.isclose(w[y == 0].sum(), 0.5) and np.isclose(w[y == 1].sum(), 0.5)  # classes still equally often
    assert np.allclose(w[source == "rukopys"][:1] / w[source == "font"][:1], 3.0)  # 3× per sample within a class
    assert np.allclose(balanced_weights(y, 1.0, source, {}).numpy(), balanced_weights(y, 1.0).numpy())
    with pytest.raises(ValueError, match="must be > 0"):
        balanced_weights(y, 1.0, source, {"font": 0})


def test_glyph_datamodule_draws_by_source_weight(tmp_path):
    processed = write_tiny_processed(tmp_path / "processed")

    def font_share(weights: dict[str, float]) -> float:
        dm = GlyphDataModule.from_dir(
            processed,
            val_fraction=0.2,
            seed=0,
            batch_size=64,
            epoch_size=4096,
            balance_power=1.0,
            source_weights=weights,
        )
        torch.manual_seed(0)
        drawn = np.fromiter(iter(dm.train_dataloader().sampler), dtype=np.int64)
        return float((dm.train_samples.source[drawn] == "font").mean())

    assert font_share({"font": 10}) > font_share({}) + 0.2


def test_glyph_datamodule_never_uses_frozen_test(tmp_path):
    processed = write_tiny_processed(tmp_path / "processed")
    dm = GlyphDataModule.from_dir(processed, val_fraction=0.2, seed=0, batch_size=16, balance_power=1.0)
    test_ids = set(np.load(processed / "finetune_test.npz")["id"])
    assert not test_ids & set(dm.train_samples.id) and not test_ids & set(dm.val_samples.id)
    assert "font" in set(dm.train_samples.source) and "font" not in set(dm.val_samples.source)
    x, ink, _y, case = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 28, 28) and x.dtype == torch.uint8 and ink.shape == (16, 2) and case.dtype == torch.int64


def test_evaluate_metrics_and_figures(tmp_path):
    s = make_samples(2, seed=5)
    net = build_network({"width": 8, "hidden": 32})
    report = evaluate(net, s)
    m = report.metrics
    assert 0 <= m["symbol_accuracy"] <= 1 and 0 <= m["case_accuracy"] <= 1
    assert m["n"] == len(s) and m["n_letters"] == (s.case >= 0).sum()
    for key in ("pair_г_ґ_accuracy", "pair_о_0_accuracy", "letters_as_digits"):
        assert key in m
    assert len(report.per_class) == NUM_CLASSES and report.confusion.sum() == len(s)
    assert report.case_confusion.sum() == (s.case >= 0).sum()
    figs = report.figures()
    assert set(figs) == {"confusion_symbol", "confusion_case", "misclassified"}
    paths = write_reports(report, tmp_path / "reports")
    assert json.loads(paths["metrics"].read_text())["n"] == len(s)
    with pytest.raises(ValueError, match="empty"):
        evaluate(net, Samples.empty())


def test_evaluate_counts_exact_predictions():
    """A network that always answers 'о' lowercase: accuracy equals the share of 'о' samples, case the share of
    lowercase letters."""
    s = make_samples(2, seed=6)
    target = index_of("о")

    class Const(torch.nn.Module):
        def forward(self, x, ink):
            logits = torch.full((len(x), NUM_CLASSES), -10.0)
            logits[:, target] = 10.0
            return logits, torch.full((len(x),), -10.0)

    m = evaluate(Const(), s).metrics
    assert m["symbol_accuracy"] == pytest.approx(np.mean(s.y == target))
    assert m["case_accuracy"] == pytest.approx(np.mean(s.case[s.case >= 0] == 0))
    assert m["letters_as_digits"] == 0.0


def test_evaluate_reports_each_population_and_the_letters_only_reading():
    """Per sample source: symbol accuracy, case accuracy only where the case is labelled (never for CoMNIST),
    letters-only accuracy (digits excluded, as the ``letters`` mode reads); a CoMNIST letter counts as a letter."""
    ruk = make_samples(2, seed=6)
    drawn = make_samples(2, seed=7, classes=range(10, 43), source="comnist")
    drawn.case[:] = CASE_UNKNOWN
    s = Samples.concat([ruk, drawn])
    target = index_of("з")

    class ThreeOrZe(torch.nn.Module):  # «3» first, «з» a close second: right only when digits are excluded
        def forward(self, x, ink):
            logits = torch.full((len(x), NUM_CLASSES), -10.0)
            logits[:, 3], logits[:, target] = 5.0, 4.0
            return logits, torch.full((len(x),), 10.0)

    m = evaluate(ThreeOrZe(), s).metrics
    assert m["comnist_n"] == len(drawn) and m["rukopys_n"] == len(ruk)
    assert m["comnist_symbol_accuracy"] == 0.0 and "comnist_case_accuracy" not in m
    assert m["comnist_letters_only_accuracy"] == pytest.approx(np.mean(drawn.y == target))
    assert m["comnist_letters_as_digits"] == 1.0 and m["letters_as_digits"] == 1.0
    assert m["rukopys_case_accuracy"] == pytest.approx(np.mean(ruk.case[ruk.case >= 0] == 1))
    assert m["case_accuracy"] == m["rukopys_case_accuracy"] and m["n_cased"] == (ruk.case >= 0).sum()
    assert m["n_letters"] == (ruk.y >= 10).sum() + len(drawn)
    assert m["digits_only_accuracy"] == pytest.approx(np.mean(ruk.y[ruk.y < 10] == 3))  # the digits mode


def test_config_merge_and_overrides(tmp_path):
    (tmp_path / "best.yaml").write_text("finetune:\n  lr: 0.0123\n")
    (tmp_path / "train.yaml").write_text("merge: [best.yaml, missing.yaml]\nfinetune:\n  lr: 0.5\n  epochs: 7\n")
    cfg = load_config(tmp_path / "train.yaml", {"finetune.epochs": "3", "augment.rotation_deg": "5"})
    assert cfg["finetune"]["lr"] == 0.0123 and cfg["finetune"]["epochs"] == 3 and cfg["augment"]["rotation_deg"] == 5
    with pytest.raises(ConfigError, match=r"unknown config key 'finetune\.lrr'"):
        load_config(None, {"finetune.lrr": "1"})
    # retrain holds finetune keys (what `ukr-hw retrain` changes)
    assert load_config(None, {"retrain.lr": "1e-3"})["retrain"] == {"lr": 0.001}
    with pytest.raises(ConfigError, match=r"unknown config key 'retrain\.lrr'"):
        load_config(None, {"retrain.lrr": "1"})
    with pytest.raises(ConfigError, match="retrain must be a mapping"):
        load_config(None, {"retrain": "8"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_finetune_rejects_a_member_count_below_one_and_callbacks_on_an_ensemble():
    for bad in ("-1", "0"):  # 0 is no network at all, not silently one
        config = load_config(None, {"finetune.members": bad})
        with pytest.raises(ConfigError, match="members must be 1"):
            finetune(config)
    config = load_config(None, {"finetune.members": "2"})
    with pytest.raises(ConfigError, match="cannot take training callbacks"):
        finetune(config, callbacks=[object()])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_overfit_one_batch_through_the_trainer_in_either_precision(precision):
    """Lightning's fit in ``trainer.precision`` learns one batch and leaves float32 weights: bfloat16 is only the
    training arithmetic, never what is saved or served."""
    from torch.utils.data import DataLoader, TensorDataset

    from ukr_hw.training.config import TrainConfig
    from ukr_hw.training.trainer import make_trainer, resolve_precision

    assert resolve_precision(precision) == precision
    assert resolve_precision("auto") in ("32-true", "bf16-mixed")
    s = make_samples(1, seed=7)
    data = TensorDataset(*(torch.from_numpy(a) for a in (s.x, s.ink, s.y, s.case.astype(np.int64))))
    net = build_network({"width": 8, "hidden": 64, "dropout": 0.0})
    lit = LitUkrHw(net, optim={"lr": 3e-3, "label_smoothing": 0.0, "schedule": "constant"}, augment=None)
    cfg = TrainConfig.coerce(load_config(None, {"trainer.progress": "false", "trainer.precision": precision}))
    make_trainer(cfg, max_epochs=150).fit(lit, DataLoader(data, batch_size=len(data)))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    net.eval()
    with torch.no_grad():
        sym, c = net(to_input(data.tensors[0]), data.tensors[1])
    y, case = data.tensors[2], data.tensors[3]
    assert (sym.argmax(1) == y).float().mean() >= 0.95
    letters = case >= 0
    assert ((c[letters] > 0).long() == case[letters]).float().mean() >= 0.9


def test_pretrain_cache_key_follows_the_training_precision():
    from ukr_hw.training.pretrain import pretrain_key
    from ukr_hw.training.trainer import resolve_precision

    def key(precision: str) -> str:
        return pretrain_key(load_config(None, {"trainer.precision": precision}), "digest")

    assert key("32-true") != key("bf16-mixed")
    assert key("auto") == key(resolve_precision("auto"))  # a body is cached by the arithmetic it was trained in


def test_pretrain_cache_hit_skips_training(tmp_path, monkeypatch):
    write_tiny_processed(tmp_path / "data" / "processed", mnist_per_class=8)
    settings = get_settings(root=tmp_path, torch_threads=1)
    cfg = load_config(None, {"pretrain.epochs": 1, "net.width": 4, "net.hidden": 16, "trainer.progress": False})
    net, m = pretrain(cfg, settings)
    assert m["cached"] is False and (tmp_path / "data" / "cache" / f"pretrain-{m['cache_key']}.pt").exists()

    import lightning

    def boom(*a, **k):
        raise AssertionError("cache hit must not train")

    monkeypatch.setattr(lightning.Trainer, "fit", boom)
    net2, m2 = pretrain(cfg, settings)
    assert m2["cached"] is True and m2["mnist_test_accuracy"] == m["mnist_test_accuracy"]
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a changed config is a cache miss (and trains)
    cfg2 = load_config(None, {"pretrain.epochs": 1, "pretrain.lr": 0.001, "net.width": 4, "net.hidden": 16})
    with pytest.raises(AssertionError, match="must not train"):
        pretrain(cfg2, settings)
