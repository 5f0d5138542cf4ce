"""The three run profiles in one place: `mini` (default, CPU), `colab` (free GPU), `paper`.

A profile fixes which models run, how much data, the speech settings, the RRS / SFT
hyper-parameters and where outputs go. Notebooks take a profile name through their
papermill `parameters` cell and look everything else up here.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .paths import REPO_ROOT


LR_SCHEDULES = ("constant", "linear")
PROMPT_SAMPLINGS = ("per_example", "per_batch")


@dataclass(frozen=True)
class TrainConfig:
    """LoRA + optimiser settings shared by RRS and the SFT baselines (same budget).

    Training runs in the model's own dtype (the profile's `dtype`, or `--dtype`), with the
    LoRA weights in float32 (peft's default), as in the authors' bf16 run."""

    lora_r: int = 16
    lora_alpha: int = 4
    lora_dropout: float = 0.1
    epochs: int = 10
    lr: float = 5e-5
    batch_size: int = 4
    grad_accum: int = 2
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.001
    max_grad_norm: float = 1.0
    penalty_weight: float = 1.0  # weight of sum ||s*B*A||_F^2 in the RRS loss
    # "constant", or "linear": decay to 0 over the run, no warmup (the Hugging Face Trainer's
    # default, which the authors' run used; the paper and colab profiles). With "linear" a run
    # of another length is another run; with "constant" a longer run continues a shorter one.
    lr_schedule: str = "constant"
    # RRS's training prompts: "per_example", one drawn per question for the whole run (each
    # question's decoder inputs are then read once and cached), or "per_batch": the pool
    # shuffled for every batch, as in the authors' collator (the paper and colab profiles)
    prompt_sampling: str = "per_example"

    def __post_init__(self):  # a misspelt setting fails where it is written, before any run
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("prompt_sampling", PROMPT_SAMPLINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}")


@dataclass(frozen=True)
class TTSConfig:
    """eSpeak NG settings; each clip records the voice and rate it was made with."""

    voices: tuple[str, ...] = ("en-us", "en", "en-us+f3", "en+m3")
    rates: tuple[int, ...] = (150, 170, 190)
    sample_rate: int = 16_000


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    models: tuple[str, ...]            # model ids understood by rrs.models.load_adapter
    device: str
    dtype: str
    test_fraction: float = 0.2          # share of unique paper pairs held out as `test`
    max_train_pairs: int | None = None  # cap on training pairs (None: all)
    max_eval_questions: int | None = None  # cap per extra test set (None: all)
    max_test_pairs: int | None = None   # cap on the paper pairs' test groups (None: all)
    max_audio_seconds: float = 30.0     # the model's audio window
    tts: TTSConfig = field(default_factory=TTSConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int = 16
    max_new_tokens: int = 32
    top_m_values: tuple[float | None, ...] = (12.5, 25.0, 50.0, None)  # None = positive c
    checkpoint_epochs: tuple[int, ...] = (0, 1, 5, 10)  # epochs drawn in Figure 2
    commit_outputs: bool = False        # mini only: figures/ and tables/ are committed
    other_model_root: Path | None = None  # set by for_model: outputs of a model not the profile's own

    @property
    def default_model(self) -> str:
        return self.models[0]

    @property
    def output_root(self) -> Path:
        """Root under which figures/, tables/ and results/ are written.

        `RRS_OUTPUT_ROOT` overrides it (tests use a temporary folder so that they never
        touch the committed mini outputs); then `for_model`'s folder for another model.
        """
        env = os.environ.get("RRS_OUTPUT_ROOT")
        if env:
            return Path(env).expanduser().resolve()
        if self.other_model_root is not None:
            return self.other_model_root
        return REPO_ROOT if self.commit_outputs else REPO_ROOT / "runs" / self.name

    def model_root(self, model: str | None) -> Path | None:
        """runs/<profile>/models/<name>-<hash of the id> for a model other than the
        profile's own (another mini build, another paper model); None for its own."""
        if not model or model == self.default_model:
            return None
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-.") or "model"
        digest = hashlib.sha256(str(model).encode()).hexdigest()[:8]
        return REPO_ROOT / "runs" / self.name / "models" / f"{name}-{digest}"

    def for_model(self, model: str | None) -> "Profile":
        """This profile, writing to `model_root(model)` when that is not its own model: the
        committed mini outputs (and the README built from them) describe the committed
        model only, and the paper profile's three models must not overwrite each other."""
        root = self.model_root(model)
        return self if root is None else replace(self, other_model_root=root)

    @property
    def figures_dir(self) -> Path:
        return self.output_root / "figures"

    @property
    def tables_dir(self) -> Path:
        return self.output_root / "tables"

    @property
    def results_dir(self) -> Path:
        return self.output_root / "results" / self.name


MINI = Profile(
    name="mini",
    description="CPU: the project's own miniature audio LLM (tiny Qwen2-Audio, trained here)",
    models=("mini-lalm",),
    device="cpu",
    dtype="float32",
    # AdvBench and FigStep are sampled (50 pairs / 50 questions, seeded) so that the
    # 4 methods x 3 modes of Table 1 fit a 2-core CPU; n is reported with every number.
    max_eval_questions=50,
    max_audio_seconds=8.0,  # eSpeak NG at 150-190 wpm: every question fits (max 8.0 s)
    tts=TTSConfig(),
    train=TrainConfig(
        lora_r=8, lora_alpha=16, lora_dropout=0.0, epochs=3, lr=2e-3, batch_size=16,
        grad_accum=1,
    ),
    eval_batch_size=64,
    max_new_tokens=24,
    checkpoint_epochs=(0, 1, 2, 3),
    commit_outputs=True,
)

COLAB = Profile(
    name="colab",
    description="free Colab GPU (T4, 15 GB): Qwen2.5-Omni-3B thinker in fp16, reduced data",
    models=("Qwen/Qwen2.5-Omni-3B",),
    device="cuda",
    dtype="float16",
    max_train_pairs=200,
    max_eval_questions=100,
    train=TrainConfig(epochs=3, batch_size=2, grad_accum=4, lr_schedule="linear",
                      prompt_sampling="per_batch"),
    eval_batch_size=8,
    max_new_tokens=32,
    checkpoint_epochs=(0, 1, 3),
)

PAPER = Profile(
    name="paper",
    description="the paper's three 7B Qwen audio LLMs on a GPU, with the paper's hyper-parameters",
    models=("Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2-Audio-7B-Instruct", "Qwen/Qwen-Audio-Chat"),
    device="cuda",
    dtype="bfloat16",
    # docs/method.md: r=16, alpha=4, dropout 0.1, 10 epochs, lr 5e-5 decaying to 0, ...
    train=TrainConfig(lr_schedule="linear", prompt_sampling="per_batch"),
    eval_batch_size=16,
    max_new_tokens=64,
)

# The test suite runs every notebook through nbval on this profile (RRS_PROFILE=ci in
# run_tests.sh): the mini model and the whole pipeline, on a few questions and one epoch,
# so that the suite fits its 30-minute budget. Its numbers are not results.
CI = replace(
    MINI,
    name="ci",
    description="the mini profile at smoke-test size (the test suite's notebook run; not results)",
    max_train_pairs=48,
    max_eval_questions=8,
    max_test_pairs=24,
    train=replace(MINI.train, epochs=1),
    checkpoint_epochs=(0, 1),
    commit_outputs=False,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (MINI, COLAB, PAPER, CI)}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile, optionally with fields replaced (e.g. a smaller `max_eval_questions`)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    return replace(profile, **overrides) if overrides else profile
