"""MMA inside the tools people train with: never silently off, never leaking, or refused by name.

Every path checks the media rows against the dense reference of ``tiny.py`` (the plain eager model with the
rule as 4D masks) and against causal attention, so a path that silently dropped MMA would fail.
"""

from __future__ import annotations

import copy

import pytest
import torch

import aki
from aki.integration import CONFIG_KEY, disable_mma, enable_mma, is_mma_enabled
from aki.mma import IGNORE_INDEX, Role

from .tiny import batch, build, reference_logits

LAYOUTS = ["T M M M M T T T R R R", "T T M M M M T T R R R R"]


def labels_of(inputs: dict, roles: torch.Tensor) -> torch.Tensor:
    """Labels on the answers only (RESPONSE), -100 elsewhere: what SFT on answers trains."""
    return torch.where(roles == Role.RESPONSE, inputs["input_ids"], IGNORE_INDEX)


def next_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label of t + 1 | <= t) at the labelled positions, zero elsewhere: ``(B, L - 1)``."""
    targets = labels[:, 1:]
    chosen = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return chosen.masked_fill(targets == IGNORE_INDEX, 0.0)


def media_rows_change(a: torch.Tensor, b: torch.Tensor, roles: torch.Tensor) -> float:
    return float((a - b).abs().amax(-1)[roles == Role.MEDIA].min())


# --------------------------------------------------------------------------------------------------
# A forward replaced on the instance (TRL's fused LM head)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "llava"])
def test_trls_fused_lm_head_on_the_instance_keeps_mma(name):
    """TRL's ``add_fused_lm_head`` sets ``forward`` on the instance, calling the backbone directly; aki's hook
    still makes the media rows MMA: the fused log-probabilities equal the dense reference's.
    """
    add_fused_lm_head = pytest.importorskip("trl.trainer.utils").add_fused_lm_head

    inputs, roles = batch(name, LAYOUTS)
    labels = labels_of(inputs, roles)
    model = build(name, mma=True)
    add_fused_lm_head(model)
    assert "forward" in vars(model) and is_mma_enabled(model)
    with torch.no_grad():
        fused = model(**inputs, labels=labels, mma_roles=roles, fused_lm_head=True)
        plain = model(**inputs, mma_roles=roles).logits  # the fused head off: the model's own forward
    expected = next_token_log_probs(reference_logits(name, inputs, roles), labels)
    causal = next_token_log_probs(reference_logits(name, inputs, torch.zeros_like(roles)), labels)
    torch.testing.assert_close(fused.log_probs, expected, atol=1e-5, rtol=0)
    assert (fused.log_probs - causal).abs().max() > 1e-4  # MMA really changed the answer's probabilities
    torch.testing.assert_close(next_token_log_probs(plain, labels), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Roles that do not depend on labels reaching forward
# --------------------------------------------------------------------------------------------------


def _features(inputs: dict, labels: torch.Tensor) -> list[dict]:
    rows = []
    for b, valid in enumerate(inputs["attention_mask"].bool()):
        rows.append(
            {"input_ids": inputs["input_ids"][b, valid].tolist(), "labels": labels[b, valid].tolist()}
        )
    return rows


def test_the_collator_puts_the_template_roles_in_the_batch_padded_as_text():
    from transformers import DataCollatorForSeq2Seq

    inputs, roles = batch("llava", LAYOUTS, padding="right")
    labels = labels_of(inputs, roles)
    model = build("llava")

    class Pad:  # DataCollatorForSeq2Seq needs a tokenizer only for its pad id and side
        pad_token_id, padding_side = 0, "right"

        def pad(self, features, **kwargs):
            from transformers import BatchEncoding

            length = max(len(f["input_ids"]) for f in features)
            ids = [f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]
            mask = [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features]
            return BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})

    collator = aki.MmaDataCollator.for_model(DataCollatorForSeq2Seq(Pad(), label_pad_token_id=-100), model)
    collated = collator(_features(inputs, labels))
    assert torch.equal(collated["mma_roles"], roles)  # padding (right) is TEXT, as in tiny.batch
    assert torch.equal(collated["labels"], labels)


def test_a_batch_with_media_but_no_labels_and_no_template_is_refused_by_the_collator():
    collator = aki.MmaDataCollator(
        lambda features: {"input_ids": torch.tensor(features)}, media_token_ids=[3]
    )
    with pytest.raises(ValueError, match="MMA cannot tell this batch's answers from its prompts"):
        collator([[5, 3, 3, 6]])
    assert collator([[5, 6, 7]])["mma_roles"].tolist() == [[0, 0, 0]]


def test_training_without_labels_or_roles_is_refused_instead_of_leaking():
    """Trainer pops labels (label smoothing, compute_loss_func): roles derived without them would count the
    answer as TEXT that the media rows see. The forward refuses, naming MMA; in eval mode it is allowed.
    """
    inputs, _ = batch("llava", LAYOUTS)
    model = build("llava", mma=True).train()
    with pytest.raises(ValueError, match="MMA cannot derive the roles of this training batch"):
        model(**inputs)
    with torch.no_grad():
        model(**inputs)  # no gradients: inference, where the prompt is all there is
    model.eval()(**inputs)


@pytest.mark.parametrize("option", ["label_smoothing_factor", "compute_loss_func"])
def test_hf_trainer_options_that_pop_labels_keep_mma_exact_with_the_collator(tmp_path, option):
    """With ``label_smoothing_factor`` or a ``compute_loss_func``, Trainer calls forward without labels; the
    collator's roles still reach attention: the first step's loss is the reference's, not the leaking one.
    """
    from transformers import Trainer, TrainingArguments

    inputs, roles = batch("llava", LAYOUTS, padding="right")
    labels = labels_of(inputs, roles)
    features = [
        {
            "input_ids": inputs["input_ids"][b],
            "attention_mask": inputs["attention_mask"][b],
            "labels": labels[b],
            "pixel_values": inputs["pixel_values"][b : b + 1],
        }  # one image per row in these layouts
        for b in range(2)
    ]

    def stack(rows):
        out = {key: torch.stack([r[key] for r in rows]) for key in ("input_ids", "attention_mask", "labels")}
        out["pixel_values"] = torch.cat([r["pixel_values"] for r in rows])
        return out

    model = build("llava", mma=True)
    seen = {}

    def capture(module, args, kwargs, output):
        seen.setdefault("logits", output.logits.detach())
        seen.setdefault("had_labels", kwargs.get("labels") is not None)

    model.register_forward_hook(capture, with_kwargs=True)
    extra = {"label_smoothing_factor": 0.1} if option == "label_smoothing_factor" else {}
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=0.0,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        save_strategy="no",
        **extra,
    )
    loss_func = (
        (lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum() * 0)
        if option == "compute_loss_func"
        else None
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=features,
        data_collator=aki.MmaDataCollator.for_model(stack, model),
        compute_loss_func=loss_func,
    )
    trainer.train()
    assert seen["had_labels"] is False  # the Trainer did pop them
    expected = reference_logits("llava", inputs, roles)
    leaking = reference_logits("llava", inputs, torch.where(roles == Role.RESPONSE, int(Role.TEXT), roles))
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(seen["logits"][valid], expected[valid], atol=1e-5, rtol=0)
    assert media_rows_change(expected, leaking, roles) > 1e-4  # the leak would have been visible


def test_a_training_batch_with_every_text_token_labelled_warns_that_mma_is_causal():
    inputs, _roles = batch("llava", ["T M M M M T T R R"])
    labels = torch.where(inputs["input_ids"] == 3, IGNORE_INDEX, inputs["input_ids"])  # everything but media
    model = build("llava", mma=True).train()
    with pytest.warns(UserWarning, match="MMA equals causal attention on this training batch"):
        model(**inputs, labels=labels)


def test_roles_given_to_a_model_whose_mma_was_switched_off_are_refused():
    inputs, roles = batch("llama", LAYOUTS)
    model = disable_mma(build("llama", mma=True))
    with pytest.raises(ValueError, match="mma_roles were given to a model on which MMA is switched off"):
        model(**inputs, mma_roles=roles)


# --------------------------------------------------------------------------------------------------
# Save and reload
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "llava"])
def test_save_pretrained_records_mma_and_aki_from_pretrained_brings_it_back(name, tmp_path):
    inputs, roles = batch(name, LAYOUTS)
    model = build(name, "eager", mma=True)
    model.save_pretrained(tmp_path)
    assert getattr(model.config, CONFIG_KEY) == {"attn_implementation": "eager"}
    loaded = aki.from_pretrained(tmp_path).eval()
    assert is_mma_enabled(loaded)
    assert loaded.config.get_text_config(decoder=True)._attn_implementation == "aki_mma_eager"
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs, mma_roles=roles).logits, model(**inputs, mma_roles=roles).logits
        )


def test_loading_with_an_mma_implementation_but_without_enable_mma_is_refused(tmp_path):
    from transformers import AutoModelForCausalLM

    inputs, _roles = batch("llama", LAYOUTS)
    build("llama", mma=True).save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="aki_mma_sdpa")
    with pytest.raises(RuntimeError, match="is aki's MMA, but MMA is not enabled on this model"):
        plain(**inputs)


@pytest.mark.parametrize("copier", ["torch.save", "deepcopy"])
def test_torch_save_and_deepcopy_keep_mma(copier, tmp_path):
    inputs, roles = batch("llava", LAYOUTS)
    model = build("llava", mma=True)
    if copier == "deepcopy":
        copied = copy.deepcopy(model)
    else:
        torch.save(model, tmp_path / "model.pt")
        copied = torch.load(tmp_path / "model.pt", weights_only=False)
    assert is_mma_enabled(copied) and type(copied).__name__ == type(model).__name__
    with torch.no_grad():
        torch.testing.assert_close(
            copied(**inputs, mma_roles=roles).logits, model(**inputs, mma_roles=roles).logits
        )


# --------------------------------------------------------------------------------------------------
# peft
# --------------------------------------------------------------------------------------------------


def test_peft_sees_mma_through_and_lora_training_merging_and_adapters_keep_it(tmp_path):
    peft = pytest.importorskip("peft")
    LoraConfig, PeftModel, get_peft_model = peft.LoraConfig, peft.PeftModel, peft.get_peft_model

    inputs, roles = batch("llama", LAYOUTS)
    labels = labels_of(inputs, roles)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(build("llama", mma=True), lora)
    assert is_mma_enabled(peft_model)
    with torch.no_grad():
        with_mma = peft_model(**inputs, mma_roles=roles).logits
        causal = peft_model(**inputs).logits
    assert media_rows_change(with_mma, causal, roles) > 1e-4

    peft_model.train()
    loss = peft_model(**inputs, labels=labels, mma_roles=roles).loss
    loss.backward()
    assert all(
        p.grad is not None for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad
    )
    peft_model.eval()

    peft_model.save_pretrained(tmp_path / "adapter")
    plain = PeftModel.from_pretrained(build("llama"), tmp_path / "adapter")
    assert not is_mma_enabled(plain)
    enable_mma(plain)  # through the peft wrapper
    assert is_mma_enabled(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs, mma_roles=roles).logits, with_mma)
        merged = peft_model.merge_and_unload()
        assert is_mma_enabled(merged)
        torch.testing.assert_close(merged(**inputs, mma_roles=roles).logits, with_mma, atol=1e-5, rtol=0)
    disable_mma(plain)
    assert not is_mma_enabled(plain)


# --------------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------------


def test_torch_compile_runs_mma_forward_and_backward_equal_to_eager():
    torch._dynamo.reset()
    inputs, roles = batch("llama", LAYOUTS)
    labels = labels_of(inputs, roles)
    model = build("llama", mma=True)
    compiled = torch.compile(model)
    assert is_mma_enabled(compiled)
    with torch.no_grad():
        expected = model(**inputs, mma_roles=roles).logits
        actual = compiled(**inputs, mma_roles=roles).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    compiled.train()
    loss = compiled(**inputs, labels=labels, mma_roles=roles).loss
    loss.backward()
    reference = build("llama", mma=True).train()
    reference(**inputs, labels=labels, mma_roles=roles).loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0, msg=name)


def test_compiled_mma_breaks_the_graph_only_before_the_decoder_layers(monkeypatch):
    """The layout and the media-row patch are built once per forward, outside the compiled decoder layers
    (three breaks: the hook, the mask; no ContextVar read inside a layer), and the split compiles exactly.
    """
    import aki.integration

    monkeypatch.setattr(aki.integration, "SDPA_DENSE_MASK_MAX_KEYS", 4)  # the split, not the dense mask
    torch._dynamo.reset()
    inputs, roles = batch("llama", LAYOUTS)
    model = build("llama", mma=True)
    explanation = torch._dynamo.explain(model)(**inputs, mma_roles=roles)
    assert explanation.graph_break_count <= 3
    for reason in explanation.break_reasons:
        frames = " ".join(f"{frame.filename}:{frame.name}" for frame in reason.user_stack)
        assert (
            "DecoderLayer" not in frames
            and "Attention.forward" not in frames
            and "attention_forward" not in frames
        )
    with torch.no_grad():
        compiled = torch.compile(model)(**inputs, mma_roles=roles).logits
    torch.testing.assert_close(compiled, reference_logits("llama", inputs, roles), atol=1e-5, rtol=0)


def test_gradient_checkpointing_keeps_the_mma_gradients_exact():
    """Recomputed layers get the mask built for the step (not a context that is gone by backward)."""
    inputs, roles = batch("llama", LAYOUTS)
    labels = labels_of(inputs, roles)
    grads = {}
    for checkpointing in (False, True):
        model = build("llama", mma=True).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**inputs, labels=labels, mma_roles=roles).loss.backward()
        grads[checkpointing] = [p.grad for p in model.parameters()]
    for plain, checkpointed in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=0)


def test_trainer_keeps_an_mma_roles_column_because_forward_names_it(tmp_path):
    """``remove_unused_columns=True`` drops dataset columns forward does not name; MMA's forward names mma_roles."""
    datasets = pytest.importorskip("datasets")
    from transformers import Trainer, TrainingArguments

    inputs, roles = batch("llama", LAYOUTS)
    rows = [
        {"input_ids": inputs["input_ids"][b].tolist(), "mma_roles": roles[b].tolist(), "note": "dropped"}
        for b in range(2)
    ]
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True
    )
    trainer = Trainer(
        model=build("llama", mma=True), args=arguments, train_dataset=datasets.Dataset.from_list(rows)
    )
    loaded = next(iter(trainer.get_train_dataloader()))
    assert set(loaded) == {"input_ids", "mma_roles"}
    assert sorted(map(tuple, loaded["mma_roles"].tolist())) == sorted(map(tuple, roles.tolist()))
