"""Loading a model artifact and scoring feature rows with it (batched), plus its validation."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
from pydantic import ValidationError

from models.compiled import Predict, compile_trees
from models.spec import FeatureSpec
from models.vector import FeatureLayout, feature_names
from schemas.model import ModelMetadata

MODEL_FILE = "model.txt"
REPORT_FILE = "report.md"  # the evaluation report `leadscore train` writes beside the model
METADATA_FILE = "metadata.json"


class ModelRefused(ValueError):
    """A model artifact that cannot serve: unreadable, or not made for this feature config."""


class Scorer:
    """A loaded model: encodes named features, predicts calibrated conversion probabilities."""

    def __init__(self, booster: lgb.Booster, metadata: ModelMetadata) -> None:
        self.booster = booster
        self.metadata = metadata
        self.layout = FeatureLayout(tuple(metadata.feature_names), metadata.categories)
        self.column_index = {name: i for i, name in enumerate(metadata.feature_names)}
        calibration = metadata.calibration
        self._calibration = (np.asarray(calibration.raw), np.asarray(calibration.calibrated)) if calibration else None
        self._compiled: Predict | None = None

    def compile_trees(self, cache_dir: Path | None) -> None:
        """Predict with the trees compiled to native code from now on (models.compiled); raises what
        compiling raises, and the scorer then goes on with LightGBM."""
        self._compiled = compile_trees(self.booster.model_to_string(), cache_dir)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @property
    def version(self) -> str:
        return self.metadata.version

    @classmethod
    def load(cls, directory: Path) -> Scorer:
        """A model artifact directory: `model.txt` (LightGBM text model) and `metadata.json`."""
        if not directory.is_dir():
            raise ModelRefused(
                f"model at {directory}: no such directory; point LEADSCORE_MODEL_PATH at a directory made by"
                " `leadscore train` (or unset it for the shipped model)"
            )
        try:
            metadata_json = (directory / METADATA_FILE).read_bytes()
        except FileNotFoundError:
            raise ModelRefused(f"model at {directory}: {METADATA_FILE} is missing") from None
        try:
            model_text = (directory / MODEL_FILE).read_text()
        except (FileNotFoundError, UnicodeDecodeError) as exc:
            raise ModelRefused(f"model at {directory}: {MODEL_FILE} cannot be read ({exc})") from None
        return cls.from_texts(model_text, metadata_json, origin=f"model at {directory}")

    @classmethod
    def from_texts(cls, model_text: str, metadata_json: bytes | str, *, origin: str) -> Scorer:
        """A model from its two texts (as kept in a registry); ModelRefused says what is wrong."""
        try:
            metadata = ModelMetadata.model_validate_json(metadata_json)
        except ValidationError as exc:
            raise ModelRefused(f"{origin}: {METADATA_FILE} is invalid: {exc}") from None
        try:
            booster = lgb.Booster(model_str=model_text)
        except lgb.basic.LightGBMError as exc:
            raise ModelRefused(f"{origin}: {MODEL_FILE} is not a readable LightGBM model ({exc})") from None
        if booster.feature_name() != metadata.feature_names:
            raise ModelRefused(f"{origin}: the booster's features differ from {METADATA_FILE}'s feature_names")
        return cls(booster, metadata)

    def check_compatible(self, spec: FeatureSpec) -> None:
        """Raise ModelRefused naming the features that do not match the config."""
        expected = feature_names(spec)
        actual = self.metadata.feature_names
        if actual == expected:
            return
        missing = [n for n in actual if n not in expected]
        extra = [n for n in expected if n not in actual]
        details = []
        if missing:
            details.append(f"the model needs features the config does not define: {missing}")
        if extra:
            details.append(f"the config defines features the model was not trained on: {extra}")
        if not details:
            details.append("the features are the same but in a different order")
        raise ModelRefused(f"model {self.version} does not match the feature config: " + "; ".join(details))

    def raw_probability(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.empty(0)
        if self._compiled is not None:
            return self._compiled(matrix)
        return np.asarray(self.booster.predict(matrix, num_threads=1))

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated probability of conversion within the model's horizon, one per row."""
        raw = self.raw_probability(matrix)
        if self._calibration is None:
            return raw
        calibrated: np.ndarray = np.interp(raw, self._calibration[0], self._calibration[1])
        return calibrated


def load_scorer(directory: Path, spec: FeatureSpec) -> Scorer:
    """Load and validate a model against the feature config (the service's start-up check)."""
    scorer = Scorer.load(directory)
    scorer.check_compatible(spec)
    return scorer
