"""TRL's SFTTrainer fine-tunes with MMA active and exact: a tiny LLaVA (vision collator), a text model packed
padding-free (MMA stays within each packed sample), and AKI with its own processor.

Each test runs one step at learning rate 0 and reads, through hooks placed before aki's own, the batch TRL
built and the per-token log-probabilities its fused LM head computed; they must equal the dense reference on
that batch (media MEDIA, labelled tokens RESPONSE, the rest TEXT) and differ from causal attention.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

from aki.mma import IGNORE_INDEX, Role, roles_from_token_ids

from .tiny import IMAGE_TOKEN, PAD, VOCAB, build, reference_logits

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

WORDS = [f"w{i}" for i in range(8, VOCAB)]  # ids 8.. in the tiny models' vocabulary
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %} <image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT:{% generation %}{% for c in m['content'] %} {{ c['text'] }}{% endfor %} </s>"
    "{% endgeneration %}{% endif %}{% endfor %}"
)


def tokenizer():
    """A word-level tokenizer whose ids are the tiny models': <pad> 0, <s> 1, </s> 2, <image> 3, w8.. 8.."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<pad>": PAD,
        "<s>": 1,
        "</s>": 2,
        "<image>": IMAGE_TOKEN,
        "USER:": 4,
        "ASSISTANT:": 5,
        "<unk>": 6,
    }
    vocab |= {word: 8 + i for i, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["<pad>", "<s>", "</s>", "<image>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def sft_config(tmp_path, **options):
    defaults = dict(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=0.0,
        bf16=False,  # SFTConfig's defaults (bf16, gradient checkpointing) are for GPUs
        gradient_checkpointing=False,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    return trl.SFTConfig(**{**defaults, **options})


def capture_first_call(model) -> dict:
    """The kwargs (before aki's hook takes ``mma_roles`` out) and the output of the first fused-head call."""
    seen: dict = {}

    def before(module, args, kwargs):
        seen.setdefault("kwargs", {k: v for k, v in kwargs.items()})

    def after(module, args, kwargs, output):
        if kwargs.get("fused_lm_head"):  # not the backbone call nested in it (AKI's base model is itself)
            seen.setdefault("output", output)

    model.register_forward_pre_hook(before, with_kwargs=True, prepend=True)
    model.register_forward_hook(after, with_kwargs=True)
    return seen


def next_token_log_probs(logits, labels):
    targets = labels[:, 1:]
    chosen = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return chosen.masked_fill(targets == IGNORE_INDEX, 0.0)


def test_sft_trainer_on_a_tiny_llava_with_its_vision_collator_trains_with_exact_mma(tmp_path):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}),
        tokenizer=tokenizer(),
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which the default strategy drops: 4 tokens per image
        chat_template=TEMPLATE,
    )
    rows = []
    for i in range(4):
        image = Image.effect_noise((12, 12), 40 + 10 * i).convert("RGB")
        question = " ".join(WORDS[i : i + 3 + i % 2])
        rows.append(
            {
                "images": [image],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": " ".join(WORDS[20 + i : 23 + i])}],
                    },
                ],
            }
        )
    model = build("llava", mma=True)
    seen = capture_first_call(model)
    trainer = trl.SFTTrainer(
        model=model,
        args=sft_config(tmp_path, assistant_only_loss=True, max_length=None),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=processor,
    )
    trainer.train()
    batch, labels = seen["kwargs"], seen["kwargs"]["labels"]
    assert seen["kwargs"].get("fused_lm_head") is True and "forward" in vars(model)
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    roles = roles_from_token_ids(
        inputs["input_ids"], IMAGE_TOKEN, labels=labels, attention_mask=inputs["attention_mask"]
    )
    assert (roles == Role.MEDIA).sum() == 2 * 4 and (roles == Role.TEXT).sum() > 0
    expected = next_token_log_probs(reference_logits("llava", inputs, roles), labels)
    causal = next_token_log_probs(reference_logits("llava", inputs, torch.zeros_like(roles)), labels)
    torch.testing.assert_close(seen["output"].log_probs, expected, atol=1e-5, rtol=0)
    assert (seen["output"].log_probs - causal).abs().max() > 1e-4


def test_sft_trainer_packing_padding_free_keeps_mma_within_each_packed_sample(tmp_path):
    """A text model with media token ids (``enable_mma(media_token_ids=...)``), TRL's BFD packing: one row,
    position ids only. Each packed sample's log-probabilities equal that sample's reference alone.
    """
    from aki.integration import enable_mma

    model = enable_mma(build("llama"), media_token_ids=[IMAGE_TOKEN])
    rows = [
        {
            "prompt": f"{WORDS[i]} <image> <image> <image> {WORDS[i + 1]} {WORDS[i + 2]}",
            "completion": f" {WORDS[30 + i]} {WORDS[31 + i]}",
        }
        for i in range(4)
    ]
    seen = capture_first_call(model)
    trainer = trl.SFTTrainer(
        model=model,
        args=sft_config(tmp_path, packing=True, max_length=64, per_device_train_batch_size=4),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer(),
    )
    trainer.train()
    batch = seen["kwargs"]
    input_ids, labels, position_ids = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert input_ids.shape[0] == 1 and "attention_mask" not in batch  # padding-free: one packed row
    starts = [*(position_ids[0] == 0).nonzero().flatten().tolist(), input_ids.shape[1]]
    assert len(starts) - 1 == 4
    log_probs = seen["output"].log_probs
    for start, stop in itertools.pairwise(starts):
        ids, sample_labels = input_ids[:, start:stop], labels[:, start:stop]
        roles = roles_from_token_ids(ids, IMAGE_TOKEN, labels=sample_labels)
        alone = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        expected = next_token_log_probs(reference_logits("llama", alone, roles), sample_labels)
        causal = next_token_log_probs(
            reference_logits("llama", alone, torch.zeros_like(roles)), sample_labels
        )
        torch.testing.assert_close(log_probs[:, start : stop - 1], expected, atol=1e-5, rtol=0)
        assert (expected - causal).abs().max() > 1e-5


def test_sft_trainer_fine_tunes_aki_with_its_chat_collator_and_exact_mma(tmp_path):
    """AKI in TRL: aki's ChatCollator renders TRL's vision rows with the AKI template (labels on the answers,
    the processor's roles); TRL's fused head on AKI's last hidden state gives the model's own MMA log-probs.
    """
    from aki.data.encoding import ChatCollator
    from aki.models import AkiForConditionalGeneration, AkiProcessor, aki_tiny, tiny_tokenizer

    words = ["what", "colour", "is", "it", "red", "blue", "a", "cat"]
    aki_tokenizer = tiny_tokenizer([" ".join(words)])
    config = aki_tiny(aki_tokenizer, text_init_std=0.2)
    torch.manual_seed(0)
    model = AkiForConditionalGeneration(config)
    processor = AkiProcessor.for_model(config, aki_tokenizer)
    rows = [
        {
            "images": [Image.effect_noise((40, 40), 30 + 20 * i).convert("RGB")],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "what colour is it?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": ["red", "blue"][i % 2]}]},
            ],
        }
        for i in range(4)
    ]
    seen = capture_first_call(model)
    trainer = trl.SFTTrainer(
        model=model,
        args=sft_config(tmp_path, remove_unused_columns=False, max_length=None),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=processor,
        data_collator=ChatCollator(processor),
    )
    trainer.train()
    batch = seen["kwargs"]
    assert batch.get("fused_lm_head") is True and torch.equal(
        batch["mma_roles"], processor.roles_of(batch["input_ids"], batch["attention_mask"])
    )
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "mma_roles")}
    model.eval()
    with torch.no_grad():
        expected = next_token_log_probs(model(**inputs).logits, batch["labels"])
        model.set_mma(False)
        causal = next_token_log_probs(model(**inputs).logits, batch["labels"])
    torch.testing.assert_close(seen["output"].log_probs, expected, atol=1e-5, rtol=0)
    assert (seen["output"].log_probs - causal).abs().max() > 1e-4
