"""Model folders written by earlier prefkit versions still load and score the same.

``tests/fixtures/rm_format_v1`` holds folders written by the code of config.json
format_version 1 (an embedding model and a multi-objective model on the packaged
all-MiniLM-L6-v2, with the scores that code gave in ``expected.json``), and the
config.json of a finetune and a LoRA model of that version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prefkit.rm.encoder import default_backbone
from prefkit.rm.model import RewardModel

FIXTURES = Path(__file__).parent / "fixtures" / "rm_format_v1"


def _moved_copy(name: str, tmp_path: Path) -> Path:
    """The fixture folder, with its backbone path pointing at this machine's packaged encoder
    (the folder was written on another machine; the weights hash still pins the encoder)."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["path"] = default_backbone()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", ["embedding", "multiobjective"])
def test_version_1_folders_load_and_score_as_before(name: str, tmp_path: Path) -> None:
    folder = _moved_copy(name, tmp_path)
    expected = json.loads((folder / "expected.json").read_text())
    model = RewardModel.load(folder, cache_dir=tmp_path / "cache")
    prompts, responses = expected["prompts"], expected["responses"]
    np.testing.assert_allclose(model.score(prompts, responses), expected["scores"], atol=1e-5)
    np.testing.assert_allclose(
        model.score(prompts, responses, normalize=True), expected["normalized"], atol=1e-5
    )
    assert model.compare(prompts[0], responses[0], responses[1]) == pytest.approx(
        expected["compare"], abs=1e-5
    )
    attributes = model.score_attributes(prompts, responses)
    assert sorted(attributes) == sorted(expected["attributes"])
    for attribute, values in expected["attributes"].items():
        np.testing.assert_allclose(attributes[attribute], values, atol=1e-5)
