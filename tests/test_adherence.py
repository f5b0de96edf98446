"""The shapes-world adherence metric and the prompt sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.verify.adherence import (
    ATTRIBUTES,
    COLOURS,
    Scene,
    adherence,
    all_scenes,
    analyse_image,
    parse_prompt,
    render,
)

DATA = Path(__file__).resolve().parents[1] / "calibration_data"


def test_captions_parse_back():
    for s in all_scenes():
        assert parse_prompt(s.caption) == s
    assert parse_prompt("a photo of a cat") is None


def test_reads_rendered_scenes():
    rng = np.random.default_rng(0)
    scenes = all_scenes()[::7]
    for s in scenes:
        assert analyse_image(render(s)) == s
    jittered = [analyse_image(render(s, rng=rng)) for s in scenes]
    for a in ATTRIBUTES:
        assert np.mean([getattr(g, a) == getattr(s, a) for g, s in zip(jittered, scenes)]) >= 0.97, a


def test_correct_image_scores_high_wrong_image_low():
    want = Scene("red", "circle", "large", "top left", "blue")
    right = render(want)
    wrong = render(Scene("green", "triangle", "small", "bottom right", "yellow"))
    good = adherence([want.caption], [right])
    bad = adherence([want.caption], [wrong])
    assert all(getattr(good, a) == 100.0 for a in ATTRIBUTES)
    assert all(getattr(bad, a) == 0.0 for a in ATTRIBUTES)
    blank = np.full((32, 32, 3), COLOURS["blue"], np.uint8)
    assert adherence([want.caption], [blank]).colour == 0.0  # no shape found counts as a miss


def test_noisy_image_is_still_read():
    want = Scene("yellow", "square", "large", "center", "black")
    img = render(want, 32).astype(np.float32) + np.random.default_rng(1).normal(0, 12, (32, 32, 3))
    assert analyse_image(np.clip(img, 0, 255).astype(np.uint8)) == want


def test_bad_prompt_is_an_error():
    with pytest.raises(ValueError, match="not a shapes-world prompt"):
        adherence(["a cat"], [render(all_scenes()[0])])


def _lines(p: Path) -> list[str]:
    lines = p.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and all(line.strip() == line and line for line in lines[:-1]), p
    return lines[:-1]


@pytest.mark.parametrize("name,n_cal,n_held", [("tiny-sd", 64, 64), ("sd15", 128, 32)])
def test_prompt_sets_are_disjoint_and_large_enough(name, n_cal, n_held):
    cal, held = _lines(DATA / name / "calibration.txt"), _lines(DATA / name / "heldout.txt")
    assert len(cal) >= n_cal and len(held) >= n_held
    assert len(set(cal)) == len(cal) and len(set(held)) == len(held)
    assert not set(cal) & set(held)


def test_tiny_sd_heldout_scenes_never_trained_on():
    """Held-out captions are all parseable and none of them is a calibration (training) caption."""
    held = _lines(DATA / "tiny-sd" / "heldout.txt")
    assert all(parse_prompt(p) is not None for p in held)
