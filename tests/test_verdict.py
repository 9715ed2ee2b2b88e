"""The verdict helper on constructed cases, degenerate ones included, and the notebooks' Report of claims."""
from __future__ import annotations

import json
import math

import pytest
import torch

from minidit.course.reference import Report
from minidit.verdict import Measurement, bootstrap_se, judge, paired_se


def test_a_difference_beyond_two_standard_errors_reproduces_and_its_opposite_does_not():
    small, large = Measurement(1.0, 0.1), Measurement(2.0, 0.1)  # difference 1, 2 se = 0.283
    assert judge("a < b", small, large).outcome == "reproduced"
    assert judge("a > b", small, large, expect="greater").outcome == "not reproduced"
    assert judge("a < b", large, small).outcome == "not reproduced"


def test_a_difference_within_noise_is_inconclusive_and_the_threshold_is_z_standard_errors():
    a, b = Measurement(1.0, 0.3), Measurement(1.5, 0.3)  # se of the difference 0.424, 2 se = 0.849
    verdict = judge("a < b", a, b)
    assert verdict.outcome == "inconclusive" and "within noise" in verdict.reason
    assert verdict.values["z se"] == pytest.approx(2 * math.hypot(0.3, 0.3))
    assert judge("a < b", a, b, z=1.0).outcome == "reproduced"  # 0.5 > 0.424


def test_both_at_chance_is_inconclusive_even_when_the_values_differ():
    # Notebook 04's old "at least as accurate: yes" compared 0.000 with 0.000 over 35 samples, chance 1/35.
    zero = Measurement.proportion(0.0, 35)
    assert zero.se > 0  # the (k + 1) / (n + 2) estimate keeps an uncertainty at 0
    verdict = judge("flag more accurate", zero, zero, expect="greater", chance=1 / 35)
    assert verdict.outcome == "inconclusive" and "chance" in verdict.reason
    good = Measurement.proportion(0.6, 140)
    assert judge("good beats chance-level", good, Measurement.proportion(1 / 35, 140), expect="greater",
                 chance=1 / 35).outcome == "reproduced"


def test_values_below_the_noise_floor_cannot_win():
    # Notebook 02's old "SDE wins at NFE 64": 0.0604 against 0.0947 with a floor of 0.0947.
    verdict = judge("SDE beats ODE", Measurement(0.0604), Measurement(0.0947), floor=0.0947)
    assert verdict.outcome == "inconclusive" and "noise floor" in verdict.reason
    above = judge("ODE beats SDE", Measurement(0.103), Measurement(0.246), floor=0.0947)
    assert above.outcome == "reproduced"
    # One arm below the floor counts as the floor: 0.05 -> 0.0947 against 0.097 is a difference of 0.0023 only.
    assert judge("x", Measurement(0.05, 0.0005), Measurement(0.097, 0.0005), floor=0.0947).outcome == "reproduced"
    assert judge("x", Measurement(0.05, 0.01), Measurement(0.097, 0.01), floor=0.0947).outcome == "inconclusive"


def test_equality_claims_need_a_margin_and_respect_it():
    with pytest.raises(ValueError, match="margin"):
        judge("same", Measurement(1.0, 0.1), Measurement(1.0, 0.1), expect="equal")
    assert judge("same", Measurement(1.0, 0.01), Measurement(1.01, 0.01), expect="equal", margin=0.1).outcome == "reproduced"
    assert judge("same", Measurement(1.0, 0.01), Measurement(1.5, 0.01), expect="equal", margin=0.1).outcome == "not reproduced"
    assert judge("same", Measurement(1.0, 0.1), Measurement(1.05, 0.1), expect="equal", margin=0.1).outcome == "inconclusive"


def test_degenerate_inputs_are_refused_or_named():
    with pytest.raises(ValueError, match="no uncertainty"):
        judge("noisy values without errors", Measurement(1.0), Measurement(2.0))
    assert judge("exact", Measurement(1.0), Measurement(2.0), exact=True).outcome == "reproduced"
    equal = judge("exact equal", Measurement(0.0), Measurement(0.0), exact=True)
    assert equal.outcome == "inconclusive" and "equal values" in equal.reason
    with pytest.raises(ValueError, match="finite"):
        Measurement(float("nan"))
    with pytest.raises(ValueError, match="standard error"):
        Measurement(1.0, -0.1)
    with pytest.raises(ValueError, match="at least 2"):
        Measurement.from_samples([1.0])
    with pytest.raises(ValueError, match="expectation"):
        judge("x", Measurement(1.0, 0.1), Measurement(2.0, 0.1), expect="smaller")
    with pytest.raises(ValueError, match="proportion"):
        Measurement.proportion(1.5, 10)


def test_standard_errors_from_samples_pairs_and_the_bootstrap():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m = Measurement.from_samples(x)
    assert m.value == pytest.approx(2.5) and m.se == pytest.approx(x.std().item() / 2)
    # Pairing removes the shared part: b = a + 1 exactly has zero spread of differences.
    assert paired_se(x, x + 1) == 0.0
    judged = judge("a < a + 1", m, Measurement.from_samples(x + 1), se_diff=paired_se(x, x + 1))
    assert judged.outcome == "reproduced"
    assert judge("a < a + 1", m, Measurement.from_samples(x + 1)).outcome == "inconclusive"  # unpaired: 1 < 2 se
    samples = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    assert bootstrap_se(samples, torch.mean, n_boot=300) == pytest.approx(1 / math.sqrt(2000), rel=0.15)


def test_report_logs_prints_the_reference_in_quick_mode_and_checks_the_claims(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("")
    reference = tmp_path / "notebooks" / "reference"
    reference.mkdir(parents=True)
    (reference / "nb.json").write_text(json.dumps({"claims": [
        {"claim": "a < b", "verdict": "reproduced", "reason": "full-run reason", "values": {}}]}))
    monkeypatch.delenv("MINIDIT_RUNS", raising=False)
    full = Report("nb", quick=False)
    full.judge("a < b", Measurement(1.0, 0.01), Measurement(1.2, 0.01))
    full.finish()
    capsys.readouterr()
    report = Report("nb", quick=True)
    report.judge("a < b", Measurement(1.0, 0.5), Measurement(1.2, 0.5))
    out = capsys.readouterr().out
    assert "smoke run (quick): inconclusive" in out and "reference full run: REPRODUCED (full-run reason)" in out
    report.finish()
    written = json.loads((tmp_path / "runs" / "nb" / "quick" / "claims.json").read_text())
    assert written["mode"] == "quick" and [c["claim"] for c in written["claims"]] == ["a < b"]
    kept = json.loads((tmp_path / "runs" / "nb" / "claims.json").read_text())  # the full run's, not overwritten
    assert kept["mode"] == "full" and kept["claims"][0]["verdict"] == "reproduced"
    with pytest.raises(ValueError, match="twice"):
        report.judge("a < b", Measurement(1.0, 0.5), Measurement(1.2, 0.5))
    renamed = Report("nb", quick=True)
    renamed.judge("a is below b", Measurement(1.0, 0.5), Measurement(1.2, 0.5))
    with pytest.raises(AssertionError, match="make reference"):
        renamed.finish()
