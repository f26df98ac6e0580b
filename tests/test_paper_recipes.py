"""The paper recipes follow the paper's text, their _official twins the official scripts (docs/hyperparameters.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tinyclip.inherit.auto import AutoInheritSpec
from tinyclip.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DOC = Path(__file__).resolve().parent.parent / "docs" / "hyperparameters.md"
PAIRS = ["paper_auto_vit", "paper_manual_vit", "paper_manual_resnet"]
BATCH = 8192
EPOCH = 400_000_000   # LAION-400M


def steps(epochs: float) -> int:
    return -(-int(epochs * EPOCH) // BATCH)


@pytest.mark.parametrize("name", PAIRS)
def test_each_chain_ships_as_paper_text_and_official_and_the_doc_names_both(name):
    paper, official = load_recipe(RECIPES / f"{name}.yaml"), load_recipe(RECIPES / f"{name}_official.yaml")
    assert [s.student for s in paper.stages] == [s.student for s in official.stages]
    doc = DOC.read_text()
    assert f"`{name}`" in doc and f"`{name}_official`" in doc
    assert all(s.loss["affinity_reduction"] == "sum" for s in paper.stages)        # paper: L_I2T + L_T2I
    assert all(s.loss["affinity_reduction"] == "mean" for s in official.stages)    # official soft loss: mean
    assert all(s.logit_scale == {"mode": "fixed", "value": 50.0} for s in paper.stages + official.stages)


def test_auto_chain_values():
    paper, official = load_recipe(RECIPES / "paper_auto_vit.yaml"), load_recipe(RECIPES / "paper_auto_vit_official.yaml")
    assert [s.steps for s in paper.stages] == [steps(6), steps(16), steps(16)]          # paper: 6 / 16 / 16 epochs
    assert [s.steps for s in official.stages] == [steps(6)] * 3                         # scripts: --epochs 6
    assert [s.auto["mask_steps"] for s in paper.stages] == [3000] * 3                  # paper: 3,000 iterations
    assert [s.auto["mask_steps"] for s in official.stages] == [3000, 5000, 8000]        # --prune-step
    assert {s.auto["mask_lr"] for s in paper.stages} == {0.01}
    assert {s.auto["mask_lr"] for s in official.stages} == {0.02}
    assert {s.auto["lambda_init"] for s in paper.stages} == {0.01}
    assert not any(s.auto["official_lagrangian"] for s in paper.stages)
    assert all(s.auto["official_lagrangian"] and "lambda_init" not in s.auto for s in official.stages)   # λ from 10
    assert [(s.auto["start_sparsity"], s.auto["target_sparsity"]) for s in paper.stages] == \
        [(s.auto["start_sparsity"], s.auto["target_sparsity"]) for s in official.stages] == \
        [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75)]
    assert [s.warmup_steps for s in official.stages] == [3000, 5000, 8000]              # --warmup = --prune-step


def test_manual_chains_values():
    vit, vit_official = load_recipe(RECIPES / "paper_manual_vit.yaml"), load_recipe(RECIPES / "paper_manual_vit_official.yaml")
    assert {s.inherit["depth_rule"] for s in vit.stages} == {"even"}                     # paper: even intervals
    assert {s.inherit["depth_rule"] for s in vit_official.stages} == {"interval_front"}
    resnet = load_recipe(RECIPES / "paper_manual_resnet.yaml")
    resnet_official = load_recipe(RECIPES / "paper_manual_resnet_official.yaml")
    assert [s.steps for s in resnet.stages] == [steps(4), steps(12)]                     # paper: 4 then 12 epochs
    assert [s.steps for s in resnet_official.stages] == [steps(6), steps(6)]


def test_lambda_init_starts_the_multipliers_and_leaves_old_identities_alone():
    import open_clip
    import torch

    import tinyclip  # noqa: F401

    from tinyclip.inherit.auto import MaskedCLIP

    assert "lambda_init" not in AutoInheritSpec(target_sparsity=0.25).to_dict()   # run hashes of older recipes
    torch.manual_seed(0)
    smoke = open_clip.create_model("TinyCLIP-smoke-teacher")
    paper = MaskedCLIP(smoke, AutoInheritSpec(target_sparsity=0.25, lambda_init=0.01))
    assert paper.lambda_1.item() == pytest.approx(0.01) and paper.lambda_2.item() == pytest.approx(0.01)
    default = MaskedCLIP(smoke, AutoInheritSpec(target_sparsity=0.25))
    assert default.lambda_1.item() == 0.0
    official = MaskedCLIP(smoke, AutoInheritSpec(target_sparsity=0.25, official_lagrangian=True))
    assert official.lambda_1.item() == 10.0
