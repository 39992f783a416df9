"""The model's trees compiled to native code score as LightGBM does; a failed compile leaves LightGBM scoring."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from app.cli.runtime import compile_model
from app.settings import DEFAULT_MODEL_PATH, Settings
from models.scoring import Scorer, load_scorer
from models.vector import FeatureBatch
from tests.support import simulated_leads


def model_inputs(scorer: Scorer, settings: Settings) -> list[np.ndarray]:
    """Real feature matrices (NaNs, categoricals, decayed values) as of a few times after the events."""
    config = settings.service_config
    states = [r.state for r in simulated_leads(config, leads=150, events=3000, seed=11)]
    latest = max(s.anchor_ms for s in states)
    return [
        FeatureBatch.of(states, latest + hours * 3_600_000, config.features).model_input(scorer.layout)
        for hours in (0, 20, 24 * 30)
    ]


def test_compiled_trees_score_as_lightgbm_does_and_are_cached(tmp_path: Path) -> None:
    settings = Settings()
    scorer = load_scorer(DEFAULT_MODEL_PATH, settings.service_config.features)
    matrices = model_inputs(scorer, settings)
    expected = [scorer.raw_probability(matrix) for matrix in matrices]
    calibrated = [scorer.predict(matrix) for matrix in matrices]
    assert np.isnan(matrices[0]).any() and len(set(expected[0].tolist())) > 50

    scorer.compile_trees(tmp_path)
    assert scorer.compiled
    for matrix, lightgbm, lightgbm_calibrated in zip(matrices, expected, calibrated, strict=True):
        np.testing.assert_allclose(scorer.raw_probability(matrix), lightgbm, rtol=0, atol=1e-12)
        np.testing.assert_allclose(scorer.predict(matrix), lightgbm_calibrated, rtol=0, atol=1e-12)
        # rows handed over in another memory order read the same
        np.testing.assert_allclose(scorer.raw_probability(np.asfortranarray(matrix)), lightgbm, rtol=0, atol=1e-12)
    assert scorer.predict(matrices[0][:0]).shape == (0,)
    (cached,) = tmp_path.iterdir()
    assert cached.suffix == ".o" and cached.stat().st_size > 0

    again = load_scorer(DEFAULT_MODEL_PATH, settings.service_config.features)
    again.compile_trees(tmp_path)  # loaded from the cache: no second file
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]
    np.testing.assert_allclose(again.raw_probability(matrices[1]), expected[1], rtol=0, atol=1e-12)


async def test_a_model_whose_trees_do_not_compile_goes_on_scoring_with_lightgbm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(compiled_model_cache=tmp_path)
    scorer = load_scorer(DEFAULT_MODEL_PATH, settings.service_config.features)
    matrix = model_inputs(scorer, settings)[0]
    expected = scorer.predict(matrix)

    def no_compiler(cache_dir: Path | None) -> None:
        raise OSError("no LLVM here")

    monkeypatch.setattr(scorer, "compile_trees", no_compiler)
    with caplog.at_level(logging.WARNING, logger="app.runtime"):
        await compile_model(scorer, settings)
    assert not scorer.compiled
    assert "compiling its trees failed (OSError: no LLVM here)" in caplog.text
    assert "LEADSCORE_COMPILED_MODEL=false" in caplog.text
    np.testing.assert_array_equal(scorer.predict(matrix), expected)


async def test_compiling_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(compiled_model=False, compiled_model_cache=tmp_path)
    scorer = load_scorer(DEFAULT_MODEL_PATH, settings.service_config.features)
    await compile_model(scorer, settings)
    assert not scorer.compiled and not files_in(tmp_path)


def files_in(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir()]
