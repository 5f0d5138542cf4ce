"""Cached stage artifacts, so that every notebook runs on its own.

A notebook asks for what an earlier stage made (the safety features of notebook 03, the
RRS and SFT checkpoints of notebook 04, ...) through these functions: each returns the
artifact from the on-disk cache when it exists and is complete, and otherwise rebuilds
it through the same code the earlier notebook ran. Keys hash everything the artifact
depends on (the model's id, dtype and weights fingerprint, the training questions and
their clips, the mask, the dataset structure, the seed and the training configuration),
so a stale artifact is never returned.

    P, adapter, questions = stages.setup("mini", seed=0)
    features = stages.safety_features(adapter, questions, P, seed)          # Δ, c, mask, δ
    ckpt = stages.method_checkpoint(adapter, questions, P, seed, "rrs")     # .../epoch_N
    model = stages.load_method(adapter, questions, P, seed, "rrs")          # peft model

Layout under rrs.paths.cache_dir(): features/<key>.pt and checkpoints/<key>/ (one folder
per training run: epoch_1 ... epoch_N, training_state.pt, loss_log.json, stage.json and the
loss over the whole training set after each epoch: epoch_mse.json for an RRS run that records
it (the ablation variants of METHODS do not), epoch_ce.json for an SFT run).
With a constant learning rate (the mini and ci profiles) the epoch count is not part of a
run's key: asking for more epochs than a run holds resumes it (the batch order depends on
(seed, epoch) only, so this equals a longer uninterrupted run); asking for fewer returns an
earlier epoch's folder. With the paper's linear decay (the paper and colab profiles) the rate of
every step depends on the run's length, so each length is a run of its own. An interrupted
run is resumed after its last complete epoch.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pandas as pd
import torch

from . import data
from . import io as rio
from .features import SafetyFeatures
from .modes import H0_PROMPT, MODES, REFUSAL_INSTRUCTION, TRAINING_PROMPTS, check_mode
from .paths import cache_dir
from .profiles import Profile, get_profile

FEATURES_MODE = "audio-text"  # docs/method.md: Δ is read from the spoken questions + the H0 prompt
STAGE_RECORD = "stage.json"
STAGES_FORMAT = 2  # 2: steps on cached decoder inputs (no encoder dropout); bump to invalidate every cached stage artifact

# method name -> how its checkpoint is made (notebooks 05-07 use these names). The ablation
# variants skip the per-epoch training-set MSE: no notebook shows it, and it cost 2.4 of
# notebook 06's 16.3 minutes on a slow day (2026-12-01; the adapters are the same without it)
METHODS: dict[str, dict | None] = {
    "vanilla": None,
    "rrs": {"kind": "rrs", "top_m": None, "structure": "mirror"},
    "sft_refusal": {"kind": "sft", "sft": "refusal"},
    "sft_mixed": {"kind": "sft", "sft": "mixed"},
    "rrs_top12.5": {"kind": "rrs", "top_m": 12.5, "structure": "mirror", "record_mse": False},
    "rrs_top25": {"kind": "rrs", "top_m": 25.0, "structure": "mirror", "record_mse": False},
    "rrs_top50": {"kind": "rrs", "top_m": 50.0, "structure": "mirror", "record_mse": False},
    "rrs_basic": {"kind": "rrs", "top_m": None, "structure": "basic", "record_mse": False},
    "rrs_parallel": {"kind": "rrs", "top_m": None, "structure": "parallel", "record_mse": False},
    # OUR control for Basic (rrs.data.dataset_structure): Mirror on as many harmful questions as Basic
    "rrs_mirror_half": {"kind": "rrs", "top_m": None, "structure": "mirror_half", "record_mse": False},
}
SFT_KINDS = ("refusal", "mixed")


# ----------------------------------------------------------------------------- setup

def _profile(profile) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def add_setup_arguments(parser) -> None:
    """--profile and --seed, as the diagnosis scripts in scripts/ pass them to `setup`."""
    parser.add_argument("--profile", default="mini",
                        help="the profile whose settings and cached stages are read (default mini)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the split and speech seed; the model must be built for it (default 0)")


def setup(profile="mini", seed: int = 0, model: str | None = None, device: str | None = None,
          dtype: str | None = None, n_train: int | None = None, *, n_test: int | None = None,
          epochs: int | None = None, revision: str | None = None, trust_remote_code: bool = False,
          progress: bool = True):
    """(P, adapter, questions): the profile, the loaded model and the prepared questions.

    `model` defaults to the profile's first model (a registered id or a local folder);
    `device` / `dtype` default to the profile's; `revision` and `trust_remote_code` go to
    `load_adapter` (a model with hub remote code, Qwen-Audio-Chat, needs both). `n_train` caps
    the training pairs, `n_test` the pairs of each test set (the paper pairs' test split and
    each extra set) and `epochs` sets the RRS and SFT epochs (all for quick runs and tests;
    None keeps the profile's). With a constant learning rate the epochs are not part of a
    checkpoint's cache key, so a shorter run reuses, and a longer one continues, the same
    training run; with a decaying one each length is its own run (module docstring).
    """
    from .mini import check_split_seed
    from .models import load_adapter
    from .models.base import mini_folder

    # another model than the profile's own writes to runs/<profile>/models/, never over the
    # committed mini outputs (Profile.for_model)
    P = _profile(profile).for_model(model)
    if n_train is not None:
        n_train = int(n_train)
        P = dataclasses.replace(P, max_train_pairs=min(n_train, P.max_train_pairs or n_train))
    if n_test is not None:
        n_test = int(n_test)
        P = dataclasses.replace(P, max_eval_questions=min(n_test, P.max_eval_questions or n_test),
                                max_test_pairs=min(n_test, P.max_test_pairs or n_test))
    if epochs is not None:
        P = dataclasses.replace(P, train=dataclasses.replace(P.train, epochs=_epochs(P, epochs)))
    device = device or P.device
    dtype = dtype or P.dtype
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"profile {P.name!r} runs on {device!r}, but no CUDA GPU is visible here; "
                           "pass device='cpu' and dtype='float32' to run it on the CPU "
                           "(./run_all.sh --device cpu --dtype float32)")
    # before any speech is made: an unknown model id, or a mini build whose corpus was drawn
    # for another seed's split (its training data could hold this seed's test questions)
    mini = mini_folder(model or P.default_model)
    if mini is not None:
        check_split_seed(mini, int(seed))
    questions = data.prepare_dataset(P, seed=seed, progress=progress)
    adapter = load_adapter(model or P.default_model, device=device, dtype=dtype, revision=revision,
                           trust_remote_code=bool(trust_remote_code))
    return P, adapter, questions


def provenance(P: Profile, adapter, seed: int, *, notebook: str, model: str | None = None, **extra) -> dict:
    """The record beside a notebook's figures and tables (rrs.io.provenance), with how the
    model ran (dtype, device, revision) and the profile's caps on data and epochs, which a
    quick run (./run_all.sh --dtype ..., the tests' n_train / n_test / epochs) changes."""
    run = {"dtype": str(adapter.dtype).replace("torch.", ""), "device": str(adapter.device),
           "revision": getattr(adapter, "revision", None), "max_train_pairs": P.max_train_pairs,
           "max_test_pairs": P.max_test_pairs, "max_eval_questions": P.max_eval_questions,
           "train_epochs": P.train.epochs}
    return rio.provenance(P.name, model or adapter.model_id, seed, data.data_checksum(), notebook=notebook,
                          run=run, **extra)


# ----------------------------------------------------------------------------- keys

def model_key(adapter) -> dict:
    """What identifies the vanilla model: id, revision, dtype and weights fingerprint."""
    from .models.base import weights_fingerprint

    with adapter.vanilla():
        weights = weights_fingerprint(adapter.model)
    return {"model_id": adapter.model_id, "revision": getattr(adapter, "revision", None),
            "dtype": str(adapter.dtype).replace("torch.", ""), "weights": weights}


def items_digest(items: pd.DataFrame) -> str:
    """Checksum of a table of questions as a stage uses them: id, label, text, modality and
    the clip (its file name is the hash of text, voice, rate and TTS engine)."""
    rows = []
    for row in items.itertuples(index=False):
        audio = getattr(row, "audio_path", None)
        rows.append([str(row.id), row.label, row.text, getattr(row, "modality", "audio"),
                     Path(audio).name if isinstance(audio, str) and audio else None])
    return rio.sha256_json(rows)[:16]


def _train_config(P: Profile, epochs: int | None = None) -> dict:
    """The training settings that key a run: all but the epochs, so that a longer run continues
    a shorter one; with a decaying learning rate the run's epochs too (another length, another run)."""
    cfg = dataclasses.asdict(P.train)
    cfg.pop("epochs")
    if P.train.lr_schedule != "constant":
        cfg["schedule_epochs"] = _epochs(P, epochs)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _key(parts: dict) -> str:
    return rio.sha256_json({"format": STAGES_FORMAT, **parts})[:20]


# ----------------------------------------------------------------------------- data

def train_questions(questions: pd.DataFrame) -> pd.DataFrame:
    """The training split's questions whose clips fit the model's window."""
    train = questions[questions["split"] == "train"]
    if "fits_window" in train:
        too_long = ~train["fits_window"].astype(bool)
        if too_long.any():
            warnings.warn(f"{int(too_long.sum())} training clips do not fit the audio window; left out",
                          stacklevel=3)
            train = train[~too_long]
    if train.empty:
        raise ValueError("no training questions (split == 'train') in the questions table")
    return train.reset_index(drop=True)


def training_items(questions: pd.DataFrame, structure: str = "mirror", seed: int = 0) -> pd.DataFrame:
    """Training items of one dataset structure (rrs.data.dataset_structure; `modality`
    column: 'audio' or 'text'), from the training split."""
    return data.dataset_structure(train_questions(questions), structure, seed=seed).reset_index(drop=True)


def split_questions(questions: pd.DataFrame, split: str = "test", label: str | None = None) -> pd.DataFrame:
    """Rows of one split (and label), in table order."""
    rows = questions[questions["split"] == split]
    if label is not None:
        rows = rows[rows["label"] == label]
    if rows.empty:
        raise ValueError(f"no questions with split={split!r}" + (f" and label={label!r}" if label else ""))
    return rows.reset_index(drop=True)


# ----------------------------------------------------------------------------- representations

def representations(adapter, rows: pd.DataFrame, mode: str, *, refusal: bool = False,
                    prompt: str | None = H0_PROMPT, model=None, batch_size: int = 16,
                    progress: bool = True) -> torch.Tensor:
    """h(x) ([N, H], float32) of `rows` in one input mode, through the representation cache.

    The audio-text prompt is the H0 prompt of the paper by default; `refusal=True` appends
    the refusal instruction; `model=` a peft model reads the fine-tuned representations.
    """
    from .representations import extract, question_inputs

    check_mode(mode)
    inputs = question_inputs(rows, mode, prompt=prompt, refusal=refusal)
    parts = {"ids": list(map(str, rows["id"])), "mode": mode, "prompt": prompt, "refusal": refusal}
    return extract(adapter, inputs, cache_key_parts=parts, batch_size=batch_size, progress=progress, model=model)


def check_tolerance(adapter, atol: float, rtol: float) -> dict:
    """assert_close tolerances for the notebooks' checks that two computations of the same
    numbers agree: the given ones in float32; in bfloat16 / float16 at least 3e-2, since one
    rounding step of a half-precision logit near 20 is 0.125 (up to 0.03 of a probability) and
    a GPU may round a matrix product of another shape differently."""
    if adapter.dtype == torch.float32:
        return dict(atol=atol, rtol=rtol)
    return dict(atol=max(atol, 3e-2), rtol=max(rtol, 3e-2))


@torch.no_grad()
def refusal_token_probs(adapter, h: torch.Tensor, model=None) -> torch.Tensor:
    """[N] probability of "I" as the first response token, from representations h(x) (the
    LM head is never adapted by LoRA, so this equals adapter.first_token_probs)."""
    head = adapter.lm_head(model)
    logits = head(torch.as_tensor(h).to(adapter.device, head.weight.dtype)).float()
    return torch.softmax(logits, dim=-1)[:, adapter.refusal_token_id()].cpu()


def delta_shift_table(adapter, h: torch.Tensor, labels, masks: dict) -> pd.DataFrame:
    """What RRS's targets h ± δ do to the first token, per mask ({name: SafetyFeatures}), on
    representations `h` with `labels` ("harmful" / "benign"): the smallest rise of the "I"
    logit under +δ and the largest change under −δ (features.i_logit_shift), and the mean
    p("I") of harmful questions before / after +δ and of benign ones before / after −δ."""
    from .features import i_logit_shift

    is_harmful = torch.as_tensor(pd.Series(labels).eq("harmful").to_numpy())
    w_I = adapter.refusal_token_row()
    rows = []
    for name, f in masks.items():
        up, down = i_logit_shift(h, f.direction, w_I)
        p0, p_up, p_down = (refusal_token_probs(adapter, x) for x in (h, h + f.direction, h - f.direction))
        rows.append({"mask": name, "logit_up_min": float(up.min()), "logit_down_max": float(down.max()),
                     "p_I_harmful": float(p0[is_harmful].mean()), "p_I_harmful+δ": float(p_up[is_harmful].mean()),
                     "p_I_benign": float(p0[~is_harmful].mean()), "p_I_benign-δ": float(p_down[~is_harmful].mean())})
    return pd.DataFrame(rows)


def representation_shift(adapter, h_vanilla: dict, h_rrs: dict, centroids: dict, labels, rrs_model) -> pd.DataFrame:
    """Per mode (keys of the dicts) and label: mean p("I") of the vanilla and the RRS model, and
    the mean distance of their representations to that mode's refusal-zone centroid."""
    from .representations import mean_distance

    labels = pd.Series(labels).to_numpy()
    rows = []
    for mode in h_vanilla:
        p_van = refusal_token_probs(adapter, h_vanilla[mode])
        p_rrs = refusal_token_probs(adapter, h_rrs[mode], rrs_model)
        for label in ("harmful", "benign"):
            sel = torch.as_tensor(labels == label)
            rows.append({"mode": mode, "label": label,
                         "p_I_vanilla": float(p_van[sel].mean()), "p_I_rrs": float(p_rrs[sel].mean()),
                         "dist_vanilla": mean_distance(h_vanilla[mode][sel], centroids[mode]),
                         "dist_rrs": mean_distance(h_rrs[mode][sel], centroids[mode]), "n": int(sel.sum())})
    return pd.DataFrame(rows, columns=["mode", "label", "p_I_vanilla", "p_I_rrs", "dist_vanilla", "dist_rrs", "n"])


# ----------------------------------------------------------------------------- safety features

def feature_questions(questions: pd.DataFrame, structure: str = "mirror", seed: int = 0) -> pd.DataFrame:
    """The questions Δ is taken from: the spoken training items of `structure` (Parallel's
    written copies add no new question, so it shares Mirror's; Basic and its control have
    other benign questions than Mirror)."""
    items = training_items(questions, structure, seed)
    return items[items["modality"] == "audio"].drop(columns="modality").reset_index(drop=True)


def features_path(adapter, questions: pd.DataFrame, top_m: float | None = None, *, structure: str = "mirror",
                  seed: int = 0) -> Path:
    key = _key({"stage": "features", "model": model_key(adapter),
                "items": items_digest(feature_questions(questions, structure, seed)),
                "mode": FEATURES_MODE, "prompt": H0_PROMPT, "refusal": REFUSAL_INSTRUCTION,
                "top_m": None if top_m is None else float(top_m)})
    return cache_dir() / "features" / f"{key}.pt"


def safety_features(adapter, questions: pd.DataFrame, P, seed: int = 0, top_m: float | None = None, *,
                    structure: str = "mirror", progress: bool = True) -> SafetyFeatures:
    """Δ, c, the mask and δ (docs/method.md steps 1-5) from the training questions of
    `structure` (feature_questions) in audio-text mode: h0_ref of the harmful questions (H0
    prompt + refusal instruction), h0 of the benign ones (H0 prompt). top_m=None keeps the
    features with c > 0 (the paper's default). Cached under cache_dir()/features/ by model
    fingerprint, questions and top_m."""
    from .representations import safety_features as compute

    P = _profile(P)
    path = features_path(adapter, questions, top_m, structure=structure, seed=seed)
    if path.is_file():
        return SafetyFeatures.load(path, model_id=adapter.model_id, hidden_size=adapter.hidden_size)
    features = compute(adapter, feature_questions(questions, structure, seed), mode=FEATURES_MODE, top_m=top_m,
                       batch_size=P.eval_batch_size, progress=progress)
    features.save(path)
    return features


# ----------------------------------------------------------------------------- checkpoints

def _epoch_dir(run_dir: Path, epoch: int) -> Path:
    return run_dir / f"epoch_{epoch}"


def _complete(epoch_dir: Path) -> bool:
    return ((epoch_dir / "adapter_model.safetensors").is_file() and (epoch_dir / "adapter_config.json").is_file()
            and (epoch_dir / "rrs_checkpoint.json").is_file())


def _epoch_of(checkpoint: Path) -> int:
    from .training import CHECKPOINT_META, read_checkpoint_meta

    epoch = read_checkpoint_meta(checkpoint).get("epoch")  # its errors name the record
    if not isinstance(epoch, int):
        raise ValueError(f"{checkpoint}/{CHECKPOINT_META} names no epoch")
    return epoch


def epoch_checkpoints(checkpoint: str | Path) -> dict[int, Path]:
    """{epoch: folder} of the complete epochs of a checkpoint's run, up to its own epoch
    (epoch 0, the vanilla model, has no folder)."""
    checkpoint = Path(checkpoint)
    last = _epoch_of(checkpoint)
    found = {}
    for p in checkpoint.parent.glob("epoch_*"):
        n = p.name.split("_")[1]
        if p.is_dir() and n.isdigit() and int(n) <= last and _complete(p):
            found[int(n)] = p
    return dict(sorted(found.items()))


def _run_rows(checkpoint: str | Path, name: str) -> list[dict]:
    """The rows of the run's JSON file `name`, up to and including the checkpoint's epoch."""
    checkpoint = Path(checkpoint)
    path = checkpoint.parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {checkpoint.parent} is not a training run of this rrs version")
    epoch = _epoch_of(checkpoint)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or text
        raise ValueError(f"{path}: unreadable training record ({type(e).__name__}: {e}); delete its run "
                         f"folder {path.parent} to train it again") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "epoch" in r for r in rows):
        raise ValueError(f"{path}: expected a list of rows with an epoch each")
    return [row for row in rows if row["epoch"] <= epoch]


def training_log(checkpoint: str | Path) -> list[dict]:
    """The loss log of a checkpoint's run, up to and including the checkpoint's epoch."""
    from .training import LOG_FILE

    return _run_rows(checkpoint, LOG_FILE)


def epoch_mse(checkpoint: str | Path) -> list[dict]:
    """An RRS run's MSE over its whole training set ({"epoch", "mse", "mse_harmful",
    "mse_benign"}), epoch 0 (the vanilla model) up to and including the checkpoint's epoch."""
    from .training import EPOCH_MSE_FILE, read_checkpoint_meta

    if read_checkpoint_meta(checkpoint).get("record_mse") is False:
        raise FileNotFoundError(f"{checkpoint} was trained with record_mse=False: its run has no {EPOCH_MSE_FILE}")
    return _run_rows(checkpoint, EPOCH_MSE_FILE)


def epoch_ce(checkpoint: str | Path) -> list[dict]:
    """An SFT run's response cross-entropy (per token) over its whole training set
    ({"epoch", "ce"}), epoch 0 (the vanilla model) up to and including the checkpoint's epoch."""
    from .training import EPOCH_CE_FILE

    return _run_rows(checkpoint, EPOCH_CE_FILE)


def _run(run_dir: Path, record: dict, epochs: int, train, *, retrain_on_mismatch: bool = True) -> Path:
    """Return run_dir/epoch_<epochs>, training (or resuming) only when it is missing."""
    from .training import STATE_FILE, CheckpointMismatchError

    target = _epoch_dir(run_dir, epochs)
    if _complete(target):
        return target
    run_dir.mkdir(parents=True, exist_ok=True)
    rio.write_json(run_dir / STAGE_RECORD, record)
    resume = (run_dir / STATE_FILE).is_file()
    try:
        train(resume=resume)
    except CheckpointMismatchError as err:
        if not (resume and retrain_on_mismatch):
            raise
        warnings.warn(f"{run_dir}: the saved training state does not match ({err}); training from scratch",
                      stacklevel=3)
        train(resume=False)
    if not _complete(target):
        raise RuntimeError(f"training finished but {target} is missing or incomplete")
    return target


def _epochs(P: Profile, epochs: int | None) -> int:
    epochs = P.train.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    return epochs


def rrs_run_dir(adapter, questions: pd.DataFrame, P, seed: int = 0, *, top_m: float | None = None,
                structure: str = "mirror", features: SafetyFeatures | None = None, record_mse: bool = True,
                epochs: int | None = None) -> Path:
    """The cache folder of one RRS training run (see the module docstring)."""
    P = _profile(P)
    features = features or safety_features(adapter, questions, P, seed, top_m, structure=structure)
    items = training_items(questions, structure, seed)
    return cache_dir() / "checkpoints" / _key(
        {"stage": "rrs", "model": model_key(adapter), "top_m": None if top_m is None else float(top_m),
         "direction": features.direction_hash, "structure": structure, "items": items_digest(items),
         "seed": seed, "train": _train_config(P, epochs), "prompts": list(TRAINING_PROMPTS), "h0_prompt": H0_PROMPT,
         # True: the run records epoch_mse.json (runs from before that file existed are not reused)
         "epoch_mse": record_mse})


def rrs_checkpoint(adapter, questions: pd.DataFrame, P, seed: int = 0, *, top_m: float | None = None,
                   structure: str = "mirror", epochs: int | None = None, progress: bool = True,
                   record_mse: bool = True) -> Path:
    """The final epoch folder of an RRS run (LoRA, docs/method.md steps 6-8) with the Top-m% mask
    `top_m` (None: c > 0) on the training items of `structure`, trained with the profile's
    hyper-parameters for `epochs` (None: the profile's) when no complete checkpoint exists;
    an interrupted run is resumed. The adapter is left vanilla (no LoRA attached).
    `record_mse=False` skips the per-epoch MSE over the whole training set (`epoch_mse`),
    which costs about a quarter of the training time and does not change the weights; such a
    run is cached apart from a recording one."""
    from .training import detach_lora, train_rrs

    P = _profile(P)
    epochs = _epochs(P, epochs)
    features = safety_features(adapter, questions, P, seed, top_m, structure=structure, progress=progress)
    items = training_items(questions, structure, seed)
    run_dir = rrs_run_dir(adapter, questions, P, seed, top_m=top_m, structure=structure, features=features,
                          record_mse=record_mse, epochs=epochs)
    record = {"stage": "rrs", "model_id": adapter.model_id, "top_m": top_m, "structure": structure, "seed": seed,
              "profile": P.name, "items": len(items), "train": _train_config(P, epochs), "record_mse": record_mse}

    def train(resume: bool):
        try:
            train_rrs(adapter, items, features, P.train, run_dir, seed, epochs=epochs, resume=resume,
                      extract_batch_size=P.eval_batch_size, progress=progress, record_mse=record_mse)
        finally:
            detach_lora(adapter)

    return _run(run_dir, record, epochs, train)


def _sft_data(adapter, items: pd.DataFrame, P: Profile, seed: int, kind: str, progress: bool):
    from .training import REFUSAL_TEMPLATES, mixed_sft_data, refusal_sft_data

    if kind == "refusal":
        return *refusal_sft_data(items, seed, templates=REFUSAL_TEMPLATES), None
    return mixed_sft_data(adapter, items, seed=seed, templates=REFUSAL_TEMPLATES, max_new_tokens=P.max_new_tokens,
                          batch_size=P.eval_batch_size, progress=progress)


def sft_checkpoint(adapter, questions: pd.DataFrame, P, seed: int = 0, *, kind: str = "refusal",
                   epochs: int | None = None, progress: bool = True) -> Path:
    """The final epoch folder of an SFT baseline on RRS's Mirror items, with the same LoRA
    targets, optimiser and budget (OURS, the paper's SFT recipe is unknown):

    - kind='refusal': harmful -> a refusal (drawn from rrs.training.REFUSAL_TEMPLATES);
    - kind='mixed': harmful -> a refusal, benign -> the vanilla model's own greedy answer.
    """
    from .training import REFUSAL_TEMPLATES, detach_lora, train_sft

    if kind not in SFT_KINDS:
        raise ValueError(f"unknown SFT kind {kind!r}; choose one of {SFT_KINDS}")
    P = _profile(P)
    epochs = _epochs(P, epochs)
    items = training_items(questions, "mirror", seed)
    key = {"stage": f"sft_{kind}", "model": model_key(adapter), "items": items_digest(items), "seed": seed,
           "templates": list(REFUSAL_TEMPLATES), "train": _train_config(P, epochs), "prompts": list(TRAINING_PROMPTS),
           "epoch_ce": True}  # the run records epoch_ce.json (runs from before that file are not reused)
    if kind == "mixed":
        key["max_new_tokens"] = P.max_new_tokens
        key["cut_answers_end_no_turn"] = True  # runs that taught the model to stop at the cut are not reused
    run_dir = cache_dir() / "checkpoints" / _key(key)
    record = {"stage": f"sft_{kind}", "model_id": adapter.model_id, "seed": seed, "profile": P.name,
              "items": len(items), "train": _train_config(P, epochs)}
    if _complete(_epoch_dir(run_dir, epochs)):
        return _epoch_dir(run_dir, epochs)
    rows, responses, ends_turn = _sft_data(adapter, items, P, seed, kind, progress)

    def train(resume: bool):
        try:
            train_sft(adapter, rows, responses, P.train, run_dir, seed, ends_turn=ends_turn, kind=f"sft_{kind}",
                      epochs=epochs, resume=resume, extract_batch_size=P.eval_batch_size, progress=progress)
        finally:
            detach_lora(adapter)

    return _run(run_dir, record, epochs, train)


def method_checkpoint(adapter, questions: pd.DataFrame, P, seed: int, method: str, *,
                      epochs: int | None = None, progress: bool = True) -> Path | None:
    """The checkpoint of a method by name (None for 'vanilla'); see METHODS:

    vanilla, rrs (mask c > 0, Mirror), sft_refusal, sft_mixed, rrs_top12.5, rrs_top25,
    rrs_top50 (Top-m% masks, Mirror), rrs_basic, rrs_parallel, rrs_mirror_half (mask c > 0, other
    structures).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    spec = METHODS[method]
    if spec is None:
        return None
    if spec["kind"] == "sft":
        return sft_checkpoint(adapter, questions, P, seed, kind=spec["sft"], epochs=epochs, progress=progress)
    return rrs_checkpoint(adapter, questions, P, seed, top_m=spec["top_m"], structure=spec["structure"],
                          epochs=epochs, progress=progress, record_mse=spec.get("record_mse", True))


def load_method(adapter, questions: pd.DataFrame, P, seed: int, method: str, *, epochs: int | None = None,
                progress: bool = True):
    """The model of a method, ready to pass as `model=` to the adapter's methods: None for
    'vanilla' (any LoRA detached), else the peft model of method_checkpoint (attached)."""
    from .training import detach_lora, load_trained

    path = method_checkpoint(adapter, questions, P, seed, method, epochs=epochs, progress=progress)
    if path is None:
        detach_lora(adapter)
        return None
    spec = METHODS[method]
    features = (safety_features(adapter, questions, P, seed, spec["top_m"], structure=spec["structure"])
                if spec["kind"] == "rrs" else None)
    return load_trained(adapter, path, features=features)


def structure_summary(adapter, questions: pd.DataFrame, P, seed: int, structures: dict) -> pd.DataFrame:
    """Per dataset structure ({label: method of METHODS}; vanilla skipped): its training items by
    label and form, and how its δ compares with Mirror's (features.compare_directions)."""
    from .features import compare_directions

    mirror = safety_features(adapter, questions, P, seed).direction
    rows = []
    for label, method in structures.items():
        if method == "vanilla":
            continue
        structure = METHODS[method]["structure"]
        items = training_items(questions, structure, seed)
        cmp = compare_directions(safety_features(adapter, questions, P, seed, structure=structure).direction, mirror)
        counts = {f"{kind} ({form})": int(((items.label == kind) & (items.modality == modality)).sum())
                  for form, modality in (("spoken", "audio"), ("written", "text")) for kind in ("harmful", "benign")}
        rows.append({"structure": label, **counts, "cosine with Mirror's δ": cmp["cosine"],
                     "|δ − δ_Mirror| / |δ|": cmp["relative_difference"]})
    return pd.DataFrame(rows)


def evaluate_methods(adapter, questions: pd.DataFrame, P, seed: int, methods, *, test_sets, judge,
                     model_name: str, progress: bool = True) -> tuple[list[dict], pd.DataFrame]:
    """Each method's checkpoint (method_checkpoint: trained when the cache lacks it) judged on
    `test_sets` in every mode (rrs.evaluation.evaluate_method, which reuses stored verdicts).
    Returns (the verdict rows, one row per method: its checkpoint, the seconds spent training or
    loading it, the answers generated and reused, the seconds spent generating)."""
    import time

    from .evaluation import evaluate_method

    rows, timing = [], []
    for method in methods:
        t0 = time.perf_counter()
        checkpoint = method_checkpoint(adapter, questions, P, seed, method, progress=progress)
        t1 = time.perf_counter()
        stats = {}
        rows += evaluate_method(adapter, questions, P, seed, method, checkpoint, test_sets=test_sets, judge=judge,
                                model_name=model_name, progress=progress, stats=stats)
        timing.append({"method": method,
                       "checkpoint": "-" if checkpoint is None else "/".join(Path(checkpoint).parts[-2:]),
                       "train_or_load_s": round(t1 - t0, 1), "generated": stats["generated"],
                       "reused": stats["reused"], "generating_s": round(stats["seconds_generating"], 1)})
    return rows, pd.DataFrame(timing)


__all__ = ["METHODS", "MODES", "setup", "evaluate_methods", "structure_summary", "delta_shift_table",
           "representation_shift", "safety_features", "training_items", "rrs_checkpoint", "sft_checkpoint",
           "method_checkpoint", "load_method", "representations", "refusal_token_probs", "epoch_checkpoints",
           "training_log", "epoch_mse", "epoch_ce", "split_questions", "train_questions", "feature_questions"]
