"""The modules of prefkit.rm import alone and form no import circle; the spec is typed."""

from __future__ import annotations

import ast
import dataclasses
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import prefkit.rm
from prefkit.rm.spec import BackboneSpec, RewardModelSpec

RM_DIR = Path(prefkit.rm.__file__).parent
RM_MODULES = sorted(f"prefkit.rm.{info.name}" for info in pkgutil.iter_modules([str(RM_DIR)]))
FIXTURES = Path(__file__).parent / "fixtures" / "rm_format_v1"


def rm_imports(module: str) -> set[str]:
    """The prefkit.rm modules that ``module`` imports anywhere in its source (top level or
    inside functions)."""
    tree = ast.parse((RM_DIR / f"{module.rsplit('.', 1)[1]}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in RM_MODULES and name != module}
    return found


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target, [*path, target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_circle() -> None:
    """The check below can fail: the circle that model.py -> multiobjective.py -> train.py
    -> model.py once formed is found."""
    graph = {"model": {"multiobjective"}, "multiobjective": {"train"}, "train": {"model"}}
    assert import_cycle(graph) == ["model", "multiobjective", "train", "model"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_rm() -> None:
    assert "prefkit.rm.model" in RM_MODULES and "prefkit.rm.train" in RM_MODULES
    graph = {module: rm_imports(module) for module in RM_MODULES}
    assert import_cycle(graph) is None, import_cycle(graph)
    # The model interface does not depend on the recipes or on the concrete models.
    assert graph["prefkit.rm.model"] <= {"prefkit.rm.spec"}
    assert graph["prefkit.rm.spec"] <= {
        "prefkit.rm.encoder"
    }  # encoder: BackboneSpec.from_checkpoint
    assert graph["prefkit.rm.encoder"] == set()


@pytest.mark.parametrize("module", RM_MODULES)
def test_each_rm_module_imports_alone(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)


def test_spec_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys, prefkit.rm.spec; "
        "print(','.join(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == ""


def _spec(**changes) -> RewardModelSpec:
    values = {
        "mode": "embedding",
        "backbone": BackboneSpec("enc", "abc123", "mean", "bert", 8),
        "max_length": 32,
        "truncation": "truncate",
        "loss": "bradley-terry",
        "features": ("response", "length"),
        "hidden_sizes": (16,),
    }
    return RewardModelSpec(**{**values, **changes})


def test_spec_is_frozen_validated_and_round_trips() -> None:
    spec = _spec(training={"steps": 3})
    assert dataclasses.is_dataclass(spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.max_length = 64  # type: ignore[misc]
    written = spec.to_json()
    assert written["format_version"] == 2 and written["features"] == ["response", "length"]
    assert RewardModelSpec.from_json(json.loads(json.dumps(written))) == spec
    for changes, message in (
        ({"mode": "tree"}, "mode must be"),
        ({"max_length": 2}, "max_length must be an integer >= 4"),
        ({"features": ("response", "nonsense")}, "features"),
        ({"reward_std": 0.0}, "reward_std must be a number > 0"),
        ({"mode": "lora"}, "lora must be adapters exactly when mode is lora"),
        ({"mode": "multi-objective", "attributes": ("A",)}, "two or more"),
    ):
        with pytest.raises(ValueError, match=message):
            _spec(**changes)
    with pytest.raises(ValueError, match="format_version 7"):
        RewardModelSpec.from_json({**written, "format_version": 7})
    with pytest.raises(ValueError, match="unknown fields colour"):
        RewardModelSpec.from_json({**written, "colour": "red"})


@pytest.mark.parametrize(
    "path",
    [
        "embedding/config.json",
        "multiobjective/config.json",
        "finetune_config.json",
        "lora_config.json",
    ],
)
def test_version_1_configs_read_as_specs(path: str) -> None:
    """config.json files written by format_version 1 (a frozen copy in tests/fixtures) read,
    and write back as version 2 with the same content."""
    old = json.loads((FIXTURES / path).read_text())
    spec = RewardModelSpec.from_json(old)
    assert spec.mode == old["mode"] and spec.embedding_dim == old["embedding_dim"]
    assert spec.backbone.weights_hash == old["backbone"]["weights_hash"]
    assert spec.reward_mean == old["reward_mean"] and spec.training == old["training"]
    if old["mode"] == "lora":
        assert (spec.lora.r, spec.lora.alpha) == (old["lora"]["r"], old["lora"]["alpha"])
    assert RewardModelSpec.from_json(spec.to_json()) == spec
