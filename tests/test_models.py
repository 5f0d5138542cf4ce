"""Model adapters on tiny random models of the real transformers classes, built offline."""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

from rrs.models import REGISTRY, ModelNotAvailableError, load_adapter, weights_fingerprint
from rrs.models.qwen2_audio import Qwen2AudioAdapter
from rrs.models.qwen25_omni import Qwen25OmniAdapter
from rrs.modes import ModelInput


@pytest.fixture
def mixed(tiny_waveform):
    """Audio-text, text-only and audio-only in one batch, of different lengths."""
    return [ModelInput("Answer the question in the audio.", tiny_waveform(1.0, 1), "audio-text"),
            ModelInput("How can I help my neighbour's cat?", None, "text-only"),
            ModelInput(None, tiny_waveform(1.5, 2), "audio-only"),
            ModelInput("Hi", None, "text-only")]


def test_batch_shapes_and_left_padding(tiny_adapter, mixed):
    batch = tiny_adapter.prepare(mixed)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 4 and ids.shape == mask.shape
    assert tiny_adapter.tokenizer.padding_side == "left"
    assert mask[:, -1].all()                      # every row ends on a real token
    assert not mask[3, 0]                         # the short row is padded on the left
    assert (mask.cumsum(-1) > 0).eq(mask.bool()).all()  # padding only before the first real token
    assert batch["input_features"].shape[0] == 2  # one feature set per item with audio
    audio_id = tiny_adapter.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert (ids[1] == audio_id).sum() == 0 and (ids[0] == audio_id).sum() > 0
    assert (ids[2] == audio_id).sum() > (ids[0] == audio_id).sum()  # 1.5 s gives more audio tokens than 1 s


def test_chat_format(tiny_qwen2_audio_adapter, tiny_omni_adapter, tiny_waveform):
    x = ModelInput("What is it?", tiny_waveform(0.5, 0), "audio-text")
    text = tiny_qwen2_audio_adapter.chat_texts([x])[0]
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n")
    omni = tiny_omni_adapter.chat_texts([x])[0]
    assert omni.startswith("<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team")
    assert omni.endswith("<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>What is it?<|im_end|>\n"
                         "<|im_start|>assistant\n")


@torch.no_grad()
def test_position_minus_one_is_each_rows_last_real_token(tiny_adapter, mixed):
    inputs = mixed
    batched = tiny_adapter.last_hidden(tiny_adapter.prepare(inputs))
    alone = torch.cat([tiny_adapter.last_hidden(tiny_adapter.prepare([x])) for x in inputs])
    assert batched.shape == (4, tiny_adapter.hidden_size)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    # and the batched extraction helper gives the same, in order
    torch.testing.assert_close(tiny_adapter.hidden_states(inputs, batch_size=3, progress=False), alone,
                               atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_last_hidden_is_the_lm_head_input(tiny_adapter, mixed):
    batch = tiny_adapter.prepare(mixed)
    h = tiny_adapter.last_hidden(batch)
    logits = tiny_adapter.model(**batch).logits[:, -1]
    torch.testing.assert_close(h @ tiny_adapter.lm_head().weight.T, logits, atol=1e-5, rtol=1e-4)
    probs = tiny_adapter.first_token_probs(mixed)
    i = tiny_adapter.refusal_token_id()
    torch.testing.assert_close(probs, torch.softmax(logits, -1)[:, i], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(tiny_adapter.first_token_probs_forward(mixed), torch.softmax(logits, -1)[:, i],
                               atol=1e-6, rtol=1e-4)
    other = tiny_adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.testing.assert_close(tiny_adapter.first_token_probs_forward(mixed, other),
                               torch.softmax(logits, -1)[:, other], atol=1e-6, rtol=1e-4)


def test_refusal_token(tiny_adapter):
    i = tiny_adapter.refusal_token_id()
    assert i == tiny_adapter.tokenizer.convert_tokens_to_ids("I")
    torch.testing.assert_close(tiny_adapter.refusal_token_row(), tiny_adapter.model.lm_head.weight[i].detach())


def test_refusal_token_error_names_the_model(tiny_qwen2_audio_adapter):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())  # lower-case only alphabet: "I" has no token at all
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["help me please"] * 3, trainers.BpeTrainer(vocab_size=40, show_progress=False))
    tiny_qwen2_audio_adapter.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    with pytest.raises(ValueError, match="tiny-qwen2-audio.*'I'.*not exactly one"):
        tiny_qwen2_audio_adapter.refusal_token_id()


PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_lora_targets_only_decoder_projections(tiny_adapter):
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from rrs.profiles import TrainConfig
    from rrs.training import lora_config

    model = tiny_adapter.model
    layers = model.config.get_text_config().num_hidden_layers
    expected = {f"model.language_model.layers.{i}.{p}" for i in range(layers) for p in PROJECTIONS}
    # the audio tower has q_proj/k_proj/v_proj too, the vision tower gate/up/down_proj: none may match
    assert any(re.search(r"audio_tower.*q_proj", n) for n, _ in model.named_modules())
    r = 4
    by_name = dict(model.named_modules())
    hand_count = sum(r * (by_name[n].in_features + by_name[n].out_features) for n in expected)
    peft_model = get_peft_model(model, lora_config(TrainConfig(lora_r=r, lora_alpha=8), tiny_adapter.lora_target_pattern))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == expected
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == hand_count


@torch.no_grad()
def test_generate_batched_equals_alone(tiny_adapter, mixed):
    inputs = mixed
    batched = tiny_adapter.generate(inputs, max_new_tokens=4, batch_size=4, progress=False)
    alone = [tiny_adapter.generate([x], max_new_tokens=4, progress=False)[0] for x in inputs]
    assert len(batched) == 4 and batched == alone


@torch.no_grad()
def test_generate_is_plain_greedy_whatever_the_generation_config_says(tiny_adapter, mixed):
    plain = tiny_adapter.generate(mixed, max_new_tokens=8, progress=False)
    config = tiny_adapter.model.generation_config
    saved = config.repetition_penalty, config.no_repeat_ngram_size
    config.repetition_penalty, config.no_repeat_ngram_size = 100.0, 1  # as a hub model's file may set them
    try:
        assert tiny_adapter.generate(mixed, max_new_tokens=8, progress=False) == plain
    finally:
        config.repetition_penalty, config.no_repeat_ngram_size = saved


def test_sft_batch_labels_are_the_response(tiny_adapter, mixed):
    inputs = mixed[:3]
    responses = ["I cannot help with that.", "Sure, here are the steps.", "I can't"]
    batch = tiny_adapter.sft_batch(inputs, responses)
    tok = tiny_adapter.tokenizer
    for row, r in zip(range(3), responses):
        want = tok.encode(r + "<|im_end|>", add_special_tokens=False)
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled == want
        assert batch["labels"][row, -len(want):].tolist() == batch["input_ids"][row, -len(want):].tolist()
        assert (batch["labels"][row, :-len(want)] == -100).all()


@pytest.mark.parametrize("kind", ["qwen2_audio", "omni"])
def test_saved_folder_loads_back_identically(kind, tmp_path, request, mixed):
    adapter = request.getfixturevalue("tiny_qwen2_audio_adapter" if kind == "qwen2_audio" else "tiny_omni_adapter")
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    loaded = load_adapter(str(tmp_path))
    assert type(loaded) is type(adapter) and loaded.model_id == str(tmp_path.resolve())
    assert loaded.chat_texts(mixed) == adapter.chat_texts(mixed)
    torch.testing.assert_close(loaded.hidden_states(mixed, progress=False),
                               adapter.hidden_states(mixed, progress=False), atol=0, rtol=0)
    assert weights_fingerprint(loaded.model) == weights_fingerprint(adapter.model)


def test_omni_chat_template_is_the_processors_and_is_checked(tiny_omni_adapter, tmp_path, mixed):
    """The hub's Qwen2.5-Omni keeps its template in the processor's chat_template.json, which
    transformers' processor (the authors' code) reads first; a template that does not place
    the audio as Qwen2.5-Omni does is refused by name."""
    from rrs.models.qwen25_omni import OMNI_CHAT_TEMPLATE

    adapter = tiny_omni_adapter
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    text_only = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": text_only}))
    with pytest.raises(ValueError, match=f"{tmp_path}: its chat template does not render a spoken question"):
        load_adapter(str(tmp_path))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": OMNI_CHAT_TEMPLATE}))
    tokenizer_config = tmp_path / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    config["chat_template"] = text_only  # the tokenizer's own (text) template is not the one used
    tokenizer_config.write_text(json.dumps(config))
    for name in ("chat_template.jinja",):
        (tmp_path / name).unlink(missing_ok=True)
    assert load_adapter(str(tmp_path)).chat_texts(mixed) == adapter.chat_texts(mixed)


def test_a_local_folder_with_damaged_weights_or_no_tokenizer_is_named(tiny_qwen2_audio_adapter, tmp_path):
    import shutil

    adapter = tiny_qwen2_audio_adapter
    adapter.model.save_pretrained(tmp_path / "good")
    adapter.processor.save_pretrained(tmp_path / "good")
    cut = shutil.copytree(tmp_path / "good", tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ModelNotAvailableError, match=r"cut: the model folder cannot be loaded \(SafetensorError"):
        load_adapter(str(cut))
    bare = shutil.copytree(tmp_path / "good", tmp_path / "bare")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ModelNotAvailableError, match=r"bare: its tokenizer encodes no text"):
        load_adapter(str(bare))


def test_registry_and_errors(tmp_path, monkeypatch):
    assert REGISTRY["mini-lalm"].adapter_class is Qwen2AudioAdapter
    assert REGISTRY["Qwen/Qwen2.5-Omni-7B"].adapter_class is Qwen25OmniAdapter
    with pytest.raises(ValueError, match="unknown model 'no/such-model'.*mini-lalm"):
        load_adapter("no/such-model")
    # a registered hub model whose weights are not cached: a clear error, no download
    # huggingface_hub reads HF_HUB_CACHE when it is imported, so the environment variable would
    # come too late; transformers reads the constant at each call, whatever this machine caches
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotAvailableError,
                       match="(?s)'Qwen/Qwen2-Audio-7B-Instruct' are not available.*snapshot_download.*HF_HUB_OFFLINE"):
        load_adapter("Qwen/Qwen2-Audio-7B-Instruct", local_files_only=True)
    # mini-lalm before it is built
    spec = REGISTRY["mini-lalm"]
    monkeypatch.setitem(REGISTRY, "mini-lalm", type(spec)(spec.adapter, None, spec.lora_pattern, spec.notes,
                                                          path=tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="rrs-build-mini"):
        load_adapter("mini-lalm")


def test_remote_code_needs_opt_in_and_revision(tmp_path):
    # the message also names the command-line flags, which the notebooks' users pass to run_all.sh
    with pytest.raises(ValueError, match="trust_remote_code=True.*--trust-remote-code --revision COMMIT"):
        load_adapter("Qwen/Qwen-Audio-Chat")
    from rrs.models.qwen_audio_chat import QwenAudioChatAdapter

    with pytest.raises(ValueError, match="revision=.*--trust-remote-code --revision COMMIT"):
        QwenAudioChatAdapter.load("Qwen/Qwen-Audio-Chat", model_id="Qwen/Qwen-Audio-Chat", trust_remote_code=True)
    # a local folder of such a model (config model_type "qwen") needs the opt-in too
    folder = tmp_path / "qwen-audio-chat"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen"}')
    with pytest.raises(ValueError, match="runs code from its hub repository.*--trust-remote-code --revision COMMIT"):
        load_adapter(str(folder))
    # with both, transformers 5 is refused before anything is downloaded or executed
    with pytest.raises(RuntimeError, match="transformers 4.x.*separate environment"):
        load_adapter("Qwen/Qwen-Audio-Chat", trust_remote_code=True, revision="0" * 40)


def test_weights_fingerprint_tracks_weights_and_lora_state(tiny_qwen2_audio_adapter):
    from peft import get_peft_model

    from rrs.profiles import TrainConfig
    from rrs.training import lora_config

    model = tiny_qwen2_audio_adapter.model
    before = weights_fingerprint(model)
    peft_model = get_peft_model(model, lora_config(TrainConfig(lora_r=2), tiny_qwen2_audio_adapter.lora_target_pattern))
    with_lora = weights_fingerprint(peft_model)
    assert with_lora != before
    with peft_model.disable_adapter():
        assert weights_fingerprint(peft_model) == weights_fingerprint(model) == before
    peft_model.unload()
    assert weights_fingerprint(model) == before
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    assert weights_fingerprint(model) != before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the paper profile's device)")
def test_weights_fingerprint_is_the_same_on_the_gpu():
    # above 2**24 elements (an embedding matrix of a 7B model) float32 linspace rounds differently on
    # CUDA; a checkpoint trained on a GPU must keep its fingerprint when evaluated on the CPU
    layer = torch.nn.Embedding(151_936, 128)
    assert weights_fingerprint(layer) == weights_fingerprint(layer.to("cuda"))


@pytest.mark.parametrize("device", ["auto", "balanced", "cuda:x"])
def test_load_adapter_refuses_a_device_map(device):
    with pytest.raises(ValueError, match=rf"device '{device}' is not one torch device.*single device"):
        load_adapter("mini-lalm", device=device)


OMNI_REFERENCE = Path(__file__).parent / "fixtures" / "omni_processor_reference.json"
OMNI_INTEGER_KEYS = ("input_ids", "attention_mask", "feature_attention_mask")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="Qwen2_5OmniProcessor cannot be built without torchvision")
def test_omni_processor_matches_transformers(tiny_omni_adapter, mixed):
    """Our OmniAudioTextProcessor against transformers' own, on every input mode, and the stored
    reference (tests/fixtures) against transformers'. Skipped in .venv (no torchvision); to run
    it, in a throwaway environment:
    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.11.0 torchvision==0.26.0 &&
    grep -v '^torch==' requirements.lock | /tmp/tv/bin/pip install --no-deps -r /dev/stdin &&
    PYTHONPATH=. /tmp/tv/bin/python -m pytest tests/test_models.py -k omni_processor
    (RRS_WRITE_OMNI_REFERENCE=1 writes the reference anew instead of checking it)."""
    import transformers
    from transformers import Qwen2_5OmniProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    ours = tiny_omni_adapter.processor
    theirs = Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                  feature_extractor=ours.feature_extractor, tokenizer=ours.tokenizer,
                                  chat_template=ours.chat_template)
    texts = tiny_omni_adapter.chat_texts(mixed)
    audios = [x.audio for x in mixed if x.audio is not None]
    a = ours(text=texts, audio=audios)
    b = theirs(text=texts, audio=audios, return_tensors="pt", padding=True)
    for key in ("input_ids", "attention_mask", "input_features", "feature_attention_mask"):
        torch.testing.assert_close(a[key], b[key])
    reference = {"transformers": transformers.__version__, "input_features_shape": list(b["input_features"].shape),
                 **{key: b[key].tolist() for key in OMNI_INTEGER_KEYS}}
    if os.environ.get("RRS_WRITE_OMNI_REFERENCE") == "1":
        OMNI_REFERENCE.write_text(json.dumps(reference) + "\n")
    stored = json.loads(OMNI_REFERENCE.read_text())
    assert {k: v for k, v in stored.items() if k != "transformers"} == {
        k: v for k, v in reference.items() if k != "transformers"}


def test_omni_processor_matches_the_stored_transformers_output(tiny_omni_adapter, mixed):
    """What the test above checks where torchvision is installed, against its stored output: the
    audio placeholders expanded and placed as transformers' Qwen2_5OmniProcessor does."""
    stored = json.loads(OMNI_REFERENCE.read_text())
    texts = tiny_omni_adapter.chat_texts(mixed)
    a = tiny_omni_adapter.processor(text=texts, audio=[x.audio for x in mixed if x.audio is not None])
    for key in OMNI_INTEGER_KEYS:
        assert a[key].tolist() == stored[key], key
    assert list(a["input_features"].shape) == stored["input_features_shape"]


@torch.no_grad()
def test_cached_decoder_inputs_give_the_full_forward_pass(tiny_adapter, mixed):
    """Training runs only the decoder on inputs read once per example; regrouped and
    re-padded, they must give the states of the whole model (encoder included)."""
    from rrs.training import attach_lora, detach_lora, response_cross_entropy, sft_loss

    peft_model = attach_lora(tiny_adapter, _lora(tiny_adapter), seed=0)
    for name, p in peft_model.named_parameters():  # LoRA B starts at 0; make the adapter matter
        if "lora_B" in name:
            p.add_(0.05 * torch.randn_like(p))
    peft_model.eval()
    full = tiny_adapter.last_hidden(tiny_adapter.prepare(mixed), model=peft_model)
    rows = tiny_adapter.decoder_inputs(tiny_adapter.prepare(mixed))
    assert [r["inputs_embeds"].shape[0] for r in rows] == tiny_adapter.prepare(mixed)["attention_mask"].sum(-1).tolist()
    for order in ([0, 1, 2, 3], [3, 1], [2]):  # other batch compositions pad differently
        inputs = tiny_adapter.collate_decoder_inputs([rows[i] for i in order])
        cached = tiny_adapter.decoder_states(inputs, peft_model)[:, -1]
        torch.testing.assert_close(cached, full[order], atol=1e-5, rtol=1e-4)
    vanilla = tiny_adapter.decoder_states(tiny_adapter.collate_decoder_inputs(rows), peft_model)[:, -1]
    assert (vanilla - tiny_adapter.last_hidden(tiny_adapter.prepare(mixed))).abs().max() > 1e-3  # LoRA is on

    responses = ["I cannot help with that.", "Sure, here are the steps.", "I can't", "Hello there"]
    batch = tiny_adapter.sft_batch(mixed, responses)
    rows = tiny_adapter.decoder_inputs(batch)
    inputs = tiny_adapter.collate_decoder_inputs([rows[i] for i in (2, 0, 3, 1)])
    cached = response_cross_entropy(tiny_adapter, peft_model, tiny_adapter.decoder_states(inputs, peft_model),
                                    inputs["labels"])
    torch.testing.assert_close(cached, sft_loss(tiny_adapter, batch, peft_model), atol=1e-5, rtol=1e-4)
    detach_lora(tiny_adapter)


def _lora(adapter):
    from rrs.profiles import TrainConfig
    from rrs.training import lora_config

    return lora_config(TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0), adapter.lora_target_pattern)
