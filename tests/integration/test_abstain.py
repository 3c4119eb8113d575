"""Abstention ("not one symbol"): the ink rule on generated non-symbols and on real letters of the mirror, the
glyph of :func:`abstain.analyse` equal to ``preprocess``'s, the confidence score and its fitted threshold, the
threshold stored with a model (and a model without one), and the results that carry the abstention.

The full measurement (every real held-out letter, hundreds of non-symbols of each kind) is
``benchmarks/abstention.py``; these are the rule's and the wiring's contracts on a few dozen images."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ukr_hw.data import strokes
from ukr_hw.inference import Predictor, format_result, load_net_from_dir
from ukr_hw.labels import SYMBOLS, index_of
from ukr_hw.model import abstain
from ukr_hw.model.network import NetConfig, build_network, member_nets, network_config
from ukr_hw.preprocess import EmptyImageError, preprocess


def _png(img: Image.Image | np.ndarray, fmt: str = "PNG") -> bytes:
    img = img if isinstance(img, Image.Image) else Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _noise(seed: int, side: int = 300) -> bytes:
    return _png(np.random.default_rng(seed).uniform(0, 256, (side, side, 3)))


def _scribble(seed: int, side: int = 400) -> bytes:
    """A pen wandering at random for long, crossing itself: black on a transparent sketchpad layer."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    pts, angle, (x, y) = [], 0.0, (side / 2, side / 2)
    for _ in range(150):
        angle += rng.normal(0, 0.9)
        x = float(np.clip(x + 0.09 * side * np.cos(angle), 0.05 * side, 0.95 * side))
        y = float(np.clip(y + 0.09 * side * np.sin(angle), 0.05 * side, 0.95 * side))
        pts.append((x, y))
    ImageDraw.Draw(img).line(pts, fill=(0, 0, 0, 255), width=8, joint="curve")
    return _png(img)


def _on_white(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert("L")


def _pair(a: bytes, b: bytes, gap: float = 0.2) -> bytes:
    ia, ib = _on_white(a), _on_white(b)
    canvas = Image.new("L", (ia.width + ib.width + int(gap * ia.height), max(ia.height, ib.height)), 255)
    canvas.paste(ia, (0, 0))
    canvas.paste(ib, (canvas.width - ib.width, 0))
    return _png(canvas)


def _drawn(symbol: str, upper: bool = True, seed: int = 3) -> bytes:
    return strokes.png_bytes(strokes.draw_canvas(symbol, upper, (400, 400), seed=seed))


def _reason(source) -> str | None:
    return abstain.ink_reason(abstain.analyse(source)[1])


# --- the ink rule -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_noise_and_textured_photos_are_refused_for_their_ink(seed):
    reason = _reason(_noise(seed, side=[28, 200, 300, 900][seed]))
    assert reason is not None and ("noise" in reason or "marks" in reason), reason
    stats = abstain.analyse(_noise(seed))[1]
    assert stats.fill > abstain.LIMITS["max_fill"]


def test_scribbles_are_refused_for_their_loops():
    refused = [_reason(_scribble(s)) for s in range(6)]
    assert sum(r is not None for r in refused) >= 5, refused


def test_a_long_wandering_stroke_is_refused_for_its_length():
    """A zigzag that never closes a loop: no holes, one part, but far more stroke than a letter in its box."""
    img = Image.new("L", (400, 400), 255)
    pts = [(40 + 320 * (i % 2), 40 + 16 * i) for i in range(21)]  # 20 strokes across a square box
    ImageDraw.Draw(img).line(pts, fill=0, width=6)
    stats = abstain.analyse(_png(img))[1]
    assert stats.holes == 0 and stats.length > abstain.LIMITS["max_length"]
    assert "scribble" in abstain.ink_reason(stats)


def test_two_letters_side_by_side_are_refused(mirror: Path):
    files = sorted((mirror / "rukopys" / "glyphs").glob("*.png"))[::40][:8]
    pairs = [_pair(files[i].read_bytes(), files[i + 1].read_bytes()) for i in range(0, len(files) - 1, 2)]
    pairs.append(_pair(_drawn("к"), _drawn("о")))
    reasons = [_reason(p) for p in pairs]
    assert all(r == "two separate symbols side by side" for r in reasons), reasons


def test_real_letters_pass_the_ink_rule(mirror: Path):
    """Letters of several parts (і ї й, a «ю» whose bar stands apart), wide ones (ш щ ж м) and real scans,
    browser drawings and MNIST digits are not refused."""
    from ukr_hw.data.mnist import load_split

    many_parts = [_drawn(s, u, seed) for s in "іїйюшщжм" for u in (True, False) for seed in (1, 2)]
    rukopys = [p.read_bytes() for p in sorted((mirror / "rukopys" / "glyphs").glob("*.png"))[::25]]
    comnist = [p.read_bytes() for p in sorted((mirror / "comnist" / "Cyrillic").glob("*/*.png"))[::150]]
    digits = list(load_split(mirror / "mnist", "test").images[:60])
    for name, sources in (("drawn", many_parts), ("rukopys", rukopys), ("comnist", comnist), ("mnist", digits)):
        refused = [i for i, s in enumerate(sources) if _reason(s) is not None]
        assert not refused, f"{name}: {len(refused)} of {len(sources)} refused, e.g. {_reason(sources[refused[0]])}"


def test_ink_stats_of_simple_shapes():
    ring = np.zeros((100, 100), np.float32)
    yy, xx = np.mgrid[0:100, 0:100]
    ring[(np.hypot(yy - 50, xx - 50) < 30) & (np.hypot(yy - 50, xx - 50) > 22)] = 1.0
    s = abstain.ink_stats(ring)
    assert (s.components, s.holes, s.split) == (1, 1, 0.0) and s.aspect == pytest.approx(1.0, abs=0.05)
    assert s.length == pytest.approx(2 * np.pi * 26 / 120, rel=0.15)  # its circumference / (height + width)
    boxes = np.zeros((100, 400), np.float32)  # two hollow boxes side by side, 50 and 70 wide, 40 high
    boxes[30:70, 20:70] = boxes[30:70, 130:200] = 1.0
    boxes[33:67, 23:67] = boxes[33:67, 133:197] = 0.0
    s = abstain.ink_stats(boxes)
    assert (s.components, s.holes) == (2, 2)
    assert s.aspect == pytest.approx(180 / 40) and s.split == pytest.approx(50 / 40)
    assert abstain.ink_reason(s) == "two separate symbols side by side"
    assert abstain.ink_stats(np.zeros((10, 10))).components == 0


def test_analyse_gives_exactly_the_glyph_preprocess_gives(mirror: Path):
    sources = [
        (mirror / "rukopys" / "glyphs" / "a-0.png").read_bytes(),
        strokes.sketchpad_value("ж", True, seed=5),
        np.random.default_rng(0).integers(0, 255, (28, 28)).astype(np.uint8),
        _noise(1),
    ]
    for src in sources:
        glyph, _ = abstain.analyse(src)
        want = preprocess(src)
        np.testing.assert_array_equal(glyph.pixels, want.pixels)
        assert (glyph.ink_height, glyph.ink_width) == (want.ink_height, want.ink_width)
    with pytest.raises(EmptyImageError):  # a blank image is what preprocess says it is
        abstain.analyse(_png(np.full((200, 200), 128.0)))


# --- the confidence and its threshold ---------------------------------------------------------------------------


def test_fit_threshold_refuses_the_configured_share_and_needs_enough_glyphs():
    scores = np.linspace(0.01, 1.0, 1000)
    fit = abstain.fit_threshold(scores, {"refuse": 0.01})
    assert 0.015 < fit.threshold <= scores[10] and fit.refused <= 0.01 and fit.glyphs == 1000
    assert abstain.fit_threshold(scores[:50]).threshold == 0.0  # too few glyphs: no confidence check
    assert abstain.fit_threshold(np.full(500, 0.9), {"max_threshold": 0.5}).threshold == 0.5
    assert set(fit.metrics()) == {"abstain_threshold", "abstain_fit_glyphs", "abstain_fit_refused"}
    assert fit.energy is None  # no energies given: no energy check
    energies = -np.linspace(1.0, 10.0, 1000)  # high energy: unlike the training glyphs
    fit = abstain.fit_threshold(scores, {"refuse": 0.01}, energies)
    assert energies[0] >= fit.energy > energies[11] and fit.energy_refused <= 0.01
    assert {"abstain_energy", "abstain_fit_energy_refused"} <= set(fit.metrics())
    assert abstain.fit_threshold(scores[:50], energies=energies[:50]).energy is None
    assert list(abstain.energy_refuses(np.array([-3.0, -1.0]), -2.0)) == [False, True]
    assert not abstain.energy_refuses(np.array([5.0]), None).any()
    for bad in ({"refuse": 0.7}, {"sources": "comnist"}, {"nope": 1}, {"max_threshold": 1.0}):
        with pytest.raises(ValueError):
            abstain.check(bad)


def test_format_result_abstains_below_the_threshold_whatever_the_mode():
    flat = np.full(len(SYMBOLS), 1 / len(SYMBOLS))
    flat[index_of("ж")] += 0.1
    flat /= flat.sum()
    sure = np.full(len(SYMBOLS), 0.001)
    sure[index_of("ж")] = 1.0
    sure /= sure.sum()
    for mode in ("any", "letters", "digits"):  # a restriction renormalises, but the confidence is over all 43
        r = format_result(flat, 0.6, "3", mode, abstain_threshold=0.3)
        assert r["abstained"] is True and "confidence" in r["abstain_reason"]
    kept = format_result(sure, 0.6, "3", abstain_threshold=0.3)
    assert kept["abstained"] is False and kept["abstain_reason"] is None and kept["label"] == "ж"
    never = format_result(flat, 0.6, "3")  # no threshold (an older model): never on confidence
    assert never["abstained"] is False
    # given the energy and the model's energy threshold, that is the check (the probability one is not made)
    high = format_result(sure, 0.6, "3", "letters", 0.3, energy=-1.0, abstain_energy=-2.0)
    assert high["abstained"] is True and "energy" in high["abstain_reason"] and high["label"] == "ж"
    low = format_result(flat, 0.6, "3", abstain_threshold=0.3, energy=-5.0, abstain_energy=-2.0)
    assert low["abstained"] is False
    no_energy = format_result(flat, 0.6, "3", abstain_threshold=0.3, energy=None, abstain_energy=-2.0)
    assert no_energy["abstained"] is True and "confidence" in no_energy["abstain_reason"]  # the fallback
    inked = format_result(sure, 0.6, "3", ink_reason="two separate symbols side by side")
    assert inked["abstained"] is True and inked["abstain_reason"] == "two separate symbols side by side"
    assert inked["label"] == "ж"  # the guess is still given


def test_the_threshold_is_stored_with_the_model_and_older_models_load(champion_model, tmp_path: Path):
    import torch

    net = copy.deepcopy(champion_model.net)
    for m in member_nets(net):
        m.config = replace(m.config, abstain_threshold=0.42, abstain_energy=-3.25)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(network_config(net)))
    torch.save(net.state_dict(), folder / "state_dict.pt")
    assert Predictor.from_dir(folder).abstain_threshold == 0.42
    assert Predictor.from_dir(folder).abstain_energy == -3.25
    # a config written before the fields existed: loads, and never abstains on the model's scores
    old = {k: v for k, v in network_config(net).items() if k not in ("abstain_threshold", "abstain_energy")}
    (folder / "config.json").write_text(json.dumps(old))
    assert load_net_from_dir(folder).config.abstain_threshold == 0.0
    assert Predictor.from_dir(folder).abstain_threshold == 0.0
    assert Predictor.from_dir(folder).abstain_energy is None
    with pytest.raises(ValueError, match="abstain_threshold"):
        NetConfig(abstain_threshold=1.5)
    with pytest.raises(ValueError, match="abstain_energy"):
        NetConfig(abstain_energy=float("nan"))
    assert build_network({**old, "abstain_threshold": 0.2}).config.abstain_threshold == 0.2


def test_predictor_abstains_on_noise_and_on_low_confidence(champion_model, mirror: Path):
    net = copy.deepcopy(champion_model.net)
    for m in member_nets(net):  # the ink rule alone first (the fixture's thresholds depend on its data's size)
        m.config = replace(m.config, abstain_threshold=0.0, abstain_energy=None)
    scans = [p.read_bytes() for p in sorted((mirror / "rukopys" / "glyphs").glob("*.png"))[::100][:6]]
    plain = Predictor(net, "9").predict_sources([*scans, _noise(3)])
    assert [r["abstained"] for r in plain] == [False] * len(scans) + [True]
    assert "noise" in plain[-1]["abstain_reason"]
    # the fitted threshold: each member's confidence on its own held-out glyphs, here the fixture's test split
    scores = abstain.out_of_fold_scores(member_nets(net), [champion_model.test], ["rukopys", "mnist"])
    assert len(scores) == int(np.isin(champion_model.test.source, ["rukopys", "mnist"]).sum())
    assert ((scores > 0) & (scores <= 1)).all()
    for m in member_nets(net):  # a threshold no answer reaches: every scan abstains, for its confidence
        m.config = replace(m.config, abstain_threshold=0.9999)
    strict = Predictor(net, "9").predict_sources(scans)
    assert all(r["abstained"] and "confidence" in r["abstain_reason"] for r in strict)
    # the energy, where the model has a threshold for it, is the check made (the probability one is not)
    _, energies = abstain.out_of_fold(member_nets(net), [champion_model.test], ["rukopys", "mnist"])
    assert len(energies) == len(scores) and np.isfinite(energies).all()
    for m in member_nets(net):
        m.config = replace(m.config, abstain_energy=-1e6)  # below every energy: every scan abstains
    by_energy = Predictor(net, "9").predict_sources(scans)
    assert all(r["abstained"] and "energy" in r["abstain_reason"] for r in by_energy)
    for m in member_nets(net):
        m.config = replace(m.config, abstain_energy=1e6)  # above every energy: none, though the probability would
    assert not any(r["abstained"] for r in Predictor(net, "9").predict_sources(scans))


def test_the_energy_comes_from_the_same_pass_and_leaves_the_outputs_as_they_were(champion_model):
    """``predict_outputs`` gives ``predict_arrays``' probabilities and P(upper), and the members' mean energy of the
    symbol head's raw logits (before the memory's vote)."""
    import torch

    from ukr_hw.model.network import predict_arrays, predict_outputs

    net, test = champion_model.net, champion_model.test
    x, ink = test.x[:16], test.ink[:16]
    probs, case, energy = predict_outputs(net, x, ink, batch_size=5)
    want_probs, want_case = predict_arrays(net, x, ink)
    np.testing.assert_allclose(probs, want_probs, atol=1e-6)
    np.testing.assert_allclose(case, want_case, atol=1e-6)
    xt, it = torch.from_numpy(x).float().div(255.0).unsqueeze(1), torch.from_numpy(ink)
    with torch.inference_mode():
        raw = []
        for m in member_nets(net):
            z = m.body(xt.contiguous(memory_format=m.memory_format))
            raw.append(-torch.logsumexp(m.symbol_head(torch.cat([z, it], 1) if m.config.ink_to_symbol else z), 1))
    np.testing.assert_allclose(energy, torch.stack(raw).mean(0).numpy(), rtol=1e-5, atol=1e-5)
    e = Predictor(net, "1").predict_outputs(x, ink)[2]
    np.testing.assert_allclose(e, energy, atol=1e-6)
