"""Qwen-Audio-Chat (the paper's first-generation model), through its hub remote code.

Qwen/Qwen-Audio-Chat ships its own modelling and tokenizer code (modeling_qwen.py,
tokenization_qwen.py), written for transformers 4.x (it imports APIs that transformers 5
removed). So:

- it loads only with an explicit `trust_remote_code=True` AND a `revision=` commit you
  have reviewed (the code runs on your machine; a pinned commit cannot change under you);
- under transformers >= 5 (this project's main environment) loading raises an error that
  names the separate environment it needs. This one works (2026-12-02, Python 3.11, from
  the repository root; ffmpeg must be on the PATH, since the tokenizer reads audio files
  through it):

      python -m venv ENV
      grep -v -E '^(transformers|peft|tokenizers|huggingface-hub|hf-xet|accelerate)==' \
          requirements.lock | ENV/bin/pip install --no-deps -r /dev/stdin
      ENV/bin/pip install transformers==4.45.2 peft==0.13.2 "accelerate<1.3" tiktoken \
          transformers_stream_generator einops
      ENV/bin/pip install --no-deps -e .

  and run the notebooks there (./run_all.sh would use .venv, whose transformers is 5), all but
  00, which describes the mini model and needs transformers 5 to load it:

      ENV/bin/python -m rrs.pipeline --profile paper --model Qwen/Qwen-Audio-Chat \
          --revision COMMIT --trust-remote-code --only 01,02,03,04,05,06,07

What the adapter does in that environment (the project's tests run under transformers 5,
so they check only the opt-in and the transformers-5 error; `scripts/qwen_audio_chat_check.py`
runs the adapter there on a tiny random model built from the remote code, see below):
the chat is ChatML with system "You are a helpful assistant."; the user turn is
`tokenizer.from_list_format([{"audio": path}, {"text": ...}])`; each waveform is written to
a 16 kHz WAV under the cache because the tokenizer only takes paths; `tokenizer.process_audio`
gives the per-row `audio_info` list that the model's forward and generate take. The LLM is
`model.transformer` (its `last_hidden_state` is after the final RMSNorm `ln_f`), the LM
head is `model.lm_head`, and LoRA targets `transformer.h.N.attn.{c_attn,c_proj}` and
`transformer.h.N.mlp.{w1,w2,c_proj}` (the audio encoder lives in `transformer.audio`).

Run on 2026-12-02 (transformers 4.45.2, peft 0.13.2, torch 2.13.0 on the CPU): 13 of 13
checks of `scripts/qwen_audio_chat_check.py` passed (batches equal single inputs in h(x),
first-token probabilities and greedy answers; SFT labels; LoRA targets; RRS and SFT training,
checkpoints, detaching), and so did the paper profile's notebooks 02-07 on such a model
(`tests/test_paper_path.py -k qwen_audio_chat`, 124 s; the command is in its docstring). The
remote code was not the hub's Qwen-Audio-Chat revision, which cannot be downloaded here, but
github.com/QwenLM/Qwen-Audio at 0b0e882 (modeling_qwen.py, tokenization_qwen.py, audio.py,
qwen_generation_utils.py), with configuration_qwen.py from a mirror of the hub repository
(camenduru/Qwen-Audio) and cpp_kernels.py, which is never run. That code may differ from the
Chat revision: with the real 151,643-token vocabulary its tokenizer puts <audio> at id 155163,
the hub's Chat config at 155164. Run both on the revision you pin before a paper-profile run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import transformers
from transformers import BatchFeature

from ..modes import ModelInput
from .base import QWEN1_LLM_LORA_PATTERN, LALMAdapter, torch_dtype, transformers_major

SEPARATE_ENV = ('a separate environment with transformers 4.x (e.g. transformers==4.45.2, peft==0.13.2, '
                'accelerate<1.3, tiktoken, transformers_stream_generator, einops and the rest of '
                'requirements.lock; the commands are in the docstring of rrs/models/qwen_audio_chat.py)')

# how run_all.sh, rrs.pipeline and rrs.evaluation spell the two arguments
REMOTE_CODE_FLAGS = "(run_all.sh, rrs.pipeline, rrs.evaluation: --trust-remote-code --revision COMMIT)"


def check_remote_code_allowed(model_id: str, trust_remote_code: bool, revision: str | None) -> None:
    if not trust_remote_code:
        raise ValueError(f"{model_id} runs code from its hub repository: opt in with trust_remote_code=True "
                         f"{REMOTE_CODE_FLAGS}")
    if not revision:
        raise ValueError(f"{model_id}: pin the reviewed commit of its remote code with revision='<40-hex sha>' "
                         f"{REMOTE_CODE_FLAGS}")


def check_transformers_4() -> None:
    if transformers_major() >= 5:
        raise RuntimeError(f"Qwen-Audio-Chat's remote code targets transformers 4.x, but transformers "
                           f"{transformers.__version__} is installed. Run it in {SEPARATE_ENV}.")


class QwenAudioChatAdapter(LALMAdapter):
    lora_target_pattern = QWEN1_LLM_LORA_PATTERN
    system_prompt = "You are a helpful assistant."
    # its remote-code transformer merges audio inside one module (no separate decoder stack
    # to stop at), so training runs the whole forward pass every step
    caches_decoder_inputs = False
    # its tokenizer has no feature extractor to ask, and cuts every clip to 30 s (audio.py's
    # pad_or_trim, N_SAMPLES = 480000): longer clips are refused instead (rrs.evaluation)
    audio_window_seconds = 30.0

    @classmethod
    def load(cls, path_or_id, *, model_id, device="cpu", dtype="float32", revision=None,
             local_files_only=False, trust_remote_code=False):
        check_remote_code_allowed(model_id, trust_remote_code, revision if not Path(path_or_id).is_dir() else "local")
        check_transformers_4()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = dict(revision=revision, local_files_only=local_files_only, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, **kw)
        tokenizer.pad_token_id = tokenizer.eod_id
        model = AutoModelForCausalLM.from_pretrained(path_or_id, torch_dtype=torch_dtype(dtype), **kw).to(device)
        processor = type("QwenAudioTokenizerOnly", (), {"tokenizer": tokenizer})()
        return cls(model, processor, model_id=model_id, device=device, dtype=dtype, revision=revision)

    def _wav_path(self, audio: np.ndarray) -> str:
        """The tokenizer reads audio only from files: each waveform is saved once, under the
        cache and named by its hash (a temporary folder would outlive the notebooks' kernels,
        which are stopped, not closed)."""
        import hashlib

        from ..audio import save_audio
        from ..paths import cache_dir

        path = cache_dir() / "qwen-audio-chat-wav" / (hashlib.sha1(audio.tobytes()).hexdigest() + ".wav")
        if not path.exists():
            save_audio(path, audio)
        return str(path)

    def chat_texts(self, inputs: Sequence[ModelInput]) -> list[str]:
        texts = []
        for x in inputs:
            parts = ([{"audio": self._wav_path(np.asarray(x.audio, np.float32))}] if x.audio is not None else [])
            parts += [{"text": x.text}] if x.text else []
            query = self.tokenizer.from_list_format(parts)
            texts.append(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n"
                         f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n")
        return texts

    def _encode(self, texts, audios):
        self.tokenizer.padding_side = "left"
        infos = [self.tokenizer.process_audio(t) for t in texts]
        enc = self.tokenizer(texts, return_tensors="pt", padding="longest", audio_info=infos)
        batch = BatchFeature({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}).to(self.device)
        present = [i for i in infos if i is not None]
        batch["audio_info"] = present or None  # the model concatenates them in row order
        return batch

    def backbone(self, model):
        from .base import unwrap

        return unwrap(model).transformer

    def generation_kwargs(self) -> dict:
        return dict(pad_token_id=self.tokenizer.eod_id, eos_token_id=[self.tokenizer.im_end_id, self.tokenizer.eod_id])
