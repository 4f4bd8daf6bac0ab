"""Training configs (YAML + overrides), the packaged configs of the paper and Table 1, and the optimizer."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from typer.testing import CliRunner

from aki.train.cli import app
from aki.train.config import CONFIG_DIR, load_config
from aki.train.optim import build_optimizer, parameter_groups, warmup_cosine


def test_stage_defaults_then_file_then_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("steps: 7\noptim:\n  lr: 0.5\n  warmup_steps: 3\n")
    config = load_config("sft", tmp_path / "run.yaml", ["optim.lr=1e-4", "model.lora={r: 8}"])
    assert (config.stage, config.steps, config.optim.lr, config.optim.warmup_steps) == ("sft", 7, 1e-4, 3)
    assert config.model.attention == "mma" and config.model.lora.r == 8 and config.model.lora.alpha == 32
    assert load_config("pretrain").model.attention == "causal"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.learning_rate=1", r"unknown key\(s\) \['learning_rate'\] in optim"),
        ("model.attention=bidirectional", r"model.attention must be one of \['mma', 'causal'\]"),
        ("steps=many", "steps must be a int"),
        ("batch_size=0", r"must be >= 1: \{'batch_size': 0\}"),
        ("data.sources=[]", "data.sources is empty"),
        ("optim.lr", "not of the form key=value"),
    ],
)
def test_bad_settings_name_their_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("sft", overrides=[override])


def test_table1_rows_differ_from_each_other_only_where_the_ablation_says():
    causal = load_config("sft", "table1/sft_causal.yaml")
    mma = load_config("sft", "table1/sft_mma.yaml")
    differences = {
        f.name for f in dataclasses.fields(causal) if getattr(causal, f.name) != getattr(mma, f.name)
    }
    assert differences == {"output_dir", "model"}
    assert (causal.model.attention, mma.model.attention) == ("causal", "mma")
    assert dataclasses.replace(causal.model, attention="mma") == mma.model


def test_dot_stages_chain_orders_and_initialisations():
    stages = [
        load_config("pretrain", "table1/dot_1_pretrain_text_image.yaml"),
        load_config("pretrain", "table1/dot_2_pretrain_image_text.yaml"),
        load_config("sft", "table1/dot_3_sft_text_image.yaml"),
        load_config("sft", "table1/dot_4_sft_image_text.yaml"),
    ]
    assert [s.data.order for s in stages] == ["text_first", "image_first", "text_first", "image_first"]
    for before, after in itertools.pairwise(stages):
        assert after.model.init == f"{before.output_dir}/final"


def test_every_packaged_config_loads():
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        if path.name == "study.yaml":  # the quickstart's own sizes, not a recipe config
            continue
        relative = path.relative_to(CONFIG_DIR)
        stage = next((s for s in ("vision", "pretrain") if s in path.name), "sft")
        assert load_config(stage, relative).stage == stage


def test_cli_prints_the_resolved_config():
    result = CliRunner().invoke(app, ["sft", "--print-config", "steps=3", "--resume"])
    assert result.exit_code == 0, result.output
    assert "steps: 3" in result.output and "resume: auto" in result.output
    bad = CliRunner().invoke(app, ["pretrain", "--print-config", "optim.nope=1"])
    assert bad.exit_code == 2 and "unknown key(s) ['nope'] in optim" in bad.output


def test_warmup_then_cosine_to_the_floor():
    factors = [warmup_cosine(s, warmup_steps=2, total_steps=6, min_lr_ratio=0.1) for s in range(6)]
    # warmup 1/2, 2/2; then 0.1 + 0.9 * (1 + cos(pi * k / 3)) / 2 for k = 0..3
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.325, 0.1])


def test_weight_decay_skips_biases_and_norms_and_frozen_parameters():
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False)
    )
    model[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["names"] == ["0.weight"] and decay["weight_decay"] == 0.1
    assert no_decay["names"] == ["0.bias", "1.weight", "1.bias"] and no_decay["weight_decay"] == 0.0
    config = load_config("sft").optim
    assert len(build_optimizer(model, config).param_groups) == 2
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(model, config)
