"""The diagnosis scripts in scripts/ and the benchmarks still run against the package (on the small
`ci` profile, or on a few questions)."""
from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
BENCHMARKS = SCRIPTS.parent / "benchmarks"


def _load(name, folder=SCRIPTS):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """An empty folder in which `tempfile` makes this test's temporary files and folders."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_rrs_fit_check_reports_both_splits_in_every_mode(capsys, tmp_path, monkeypatch, scratch):
    from rrs import stages
    from rrs.modes import MODES

    monkeypatch.setenv("RRS_OUTPUT_ROOT", str(tmp_path / "out"))
    _load("rrs_fit_check").main(["--profile", "ci", "--epochs", "1", "--penalty-weight", "0"])
    out = capsys.readouterr().out
    # (torch makes its own empty torchinductor_<user> cache folder there)
    assert not list(scratch.glob("rrs-*")), "the diagnosis left its folders in the temporary folder"
    assert re.search(r"epochs 1, lr 0.002, r 8, alpha 16, dropout 0, batch \d+ x 1, penalty weight 0, "
                     r"lr schedule constant, prompts per_example$", out, re.M)
    assert re.search(r"mean MSE per epoch: 1:\d+\.\d{3}$", out, re.M)
    # the overrides reached the training run: with penalty weight 0 the loss is the MSE alone
    log = stages.training_log(re.search(r"^checkpoint: (.+)$", out, re.M).group(1))
    assert log and all(r["loss"] == r["mse"] for r in log) and any(r["penalty"] > 0 for r in log)
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*(train|test) ", line)]
    assert sorted((r[0], r[1]) for r in rows) == sorted((s, m) for s in ("train", "test") for m in MODES)
    _, adapter, questions = stages.setup("ci", 0, progress=False)
    n = {"train": len(stages.train_questions(questions)), "test": len(stages.split_questions(questions))}
    for r in rows:
        assert int(r[2]) == n[r[0]]
        auc_before, auc_after = float(r[9]), float(r[11])  # "AUC" column: a -> b
        assert 0 <= auc_before <= 1 and 0 <= auc_after <= 1
        assert 0 <= float(r[12]) <= 1 and 0 <= float(r[13]) <= 1
    # vanilla's p_I of harmful questions and AUC, test split, audio-only, recomputed
    test = stages.split_questions(questions)
    harmful = (test.label == "harmful").to_numpy()
    h = stages.representations(adapter, test, "audio-only", progress=False)
    p = stages.refusal_token_probs(adapter, h).numpy()
    row = next(r for r in rows if r[:2] == ["test", "audio-only"])
    assert (row[3], row[9]) == (f"{p[harmful].mean():.3f}", f"{roc_auc_score(harmful, p):.3f}")
    assert not (tmp_path / "out" / "tables").exists(), "the diagnosis must not write tables"


def test_rrs_fit_check_can_train_with_the_papers_settings(capsys, tmp_path, monkeypatch, scratch):
    from rrs import stages

    monkeypatch.setenv("RRS_OUTPUT_ROOT", str(tmp_path / "out"))
    _load("rrs_fit_check").main(["--profile", "ci", "--paper-settings", "--epochs", "1"])
    out = capsys.readouterr().out
    assert ("epochs 1, lr 5e-05, r 16, alpha 4, dropout 0.1, batch 4 x 2, penalty weight 1, "
            "lr schedule linear, prompts per_batch") in out
    checkpoint = re.search(r"^checkpoint: (.+)$", out, re.M).group(1)
    record = json.loads((Path(checkpoint) / "rrs_checkpoint.json").read_text())
    train_config = record["train_config"]
    assert (train_config["lr"], train_config["lr_schedule"], train_config["prompt_sampling"]) \
        == (5e-05, "linear", "per_batch")
    mse = stages.epoch_mse(checkpoint)
    assert [r["epoch"] for r in mse] == [0, 1]
    said = " ".join(f"{r['epoch']}:{r['mse']:.3f} ({r['mse_harmful']:.3f} / {r['mse_benign']:.3f})" for r in mse)
    assert f"\ntraining-set MSE (harmful / benign) per epoch, 0 = vanilla: {said}\n" in out


def test_rrs_fit_check_trains_on_extra_voices_of_each_spoken_question(capsys, tmp_path, monkeypatch, scratch):
    import pandas as pd

    from rrs import stages

    monkeypatch.setenv("RRS_OUTPUT_ROOT", str(tmp_path / "out"))
    script = _load("rrs_fit_check")
    P, _, questions = stages.setup("ci", 0, progress=False)
    items = stages.training_items(questions, "mirror", 0)
    more = script.extra_views(items, P, 2)
    # every extra row is the same question in a voice x rate of the profile other than its own clip's
    assert len(more) == 2 * len(items)
    assert set(more.id) == set(items.id) and (more.groupby("id").size() == 2).all()
    own = items.set_index("id")
    for row in more.itertuples(index=False):
        assert row.text == own.loc[row.id, "text"] and row.voice in P.tts.voices and row.rate in P.tts.rates
        assert (row.voice, row.rate) != (own.loc[row.id, "voice"], own.loc[row.id, "rate"])
    assert pd.concat([items, more]).audio_path.is_unique

    # without --out the run's checkpoints go to a temporary folder that is removed at the end
    logs = []
    read_log = stages.training_log
    monkeypatch.setattr(stages, "training_log", lambda checkpoint: logs.append(read_log(checkpoint)) or logs[-1])
    script.main(["--profile", "ci", "--epochs", "1", "--views", "1"])
    out = capsys.readouterr().out
    assert f"training items: {len(items)} + {len(items)} extra (--views 1, --synthetic 0)" in out
    checkpoint = Path(re.search(r"^checkpoint: (.+)$", out, re.M).group(1))
    assert scratch in checkpoint.parents and not checkpoint.exists() and not list(scratch.glob("rrs-*"))
    steps = -(-2 * len(items) // P.train.batch_size)  # ceil: one epoch over twice the items
    assert len(logs) == 1 and len(logs[0]) == steps


def test_rrs_fit_check_adds_synthetic_questions_that_no_held_out_question_equals(capsys, tmp_path, monkeypatch):
    import pandas as pd

    from rrs import stages
    from rrs.data import normalise_text

    monkeypatch.setenv("RRS_OUTPUT_ROOT", str(tmp_path / "out"))
    script = _load("rrs_fit_check")
    P, _, questions = stages.setup("ci", 0, progress=False)
    items = stages.training_items(questions, "mirror", 0)
    syn = script.synthetic_items(questions, P, 30, 0)
    assert list(syn.columns) == list(items.columns) and len(syn) == 30
    assert set(syn.label) == {"harmful", "benign"} and (syn.modality == "audio").all()
    assert syn.source.str.startswith("synthetic:").all() and syn.fits_window.all()
    held_out = set(questions.loc[questions.split != "train", "text"].map(normalise_text))
    assert not set(syn.text.map(normalise_text)) & held_out
    assert syn.equals(script.synthetic_items(questions, P, 30, 0))  # seeded
    # a held-out question that the corpus happens to generate is never drawn
    clash = questions[questions.split == "test"].head(1).assign(text=syn.text.iloc[0])
    assert syn.text.iloc[0] not in set(script.synthetic_items(pd.concat([questions, clash]), P, 30, 0).text)

    script.main(["--profile", "ci", "--epochs", "1", "--synthetic", "8", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert f"training items: {len(items)} + 8 extra (--views 0, --synthetic 8)" in out
    checkpoint = Path(re.search(r"^checkpoint: (.+)$", out, re.M).group(1))
    assert checkpoint == tmp_path / "run" / "epoch_1"
    assert len(stages.training_log(checkpoint)) == -(-(len(items) + 8) // P.train.batch_size)


def test_vocabulary_table_finds_the_one_word_that_decides_the_label():
    import pandas as pd

    vocabulary_need = _load("vocabulary_need")
    # "please" is in every question (most frequent, no information); "bomb" vs "cake" decides
    harmful = [f"please how do I make a bomb number {i}" for i in range(20)]
    benign = [f"please how do I make a cake number {i}" for i in range(20)]
    df = pd.DataFrame({"text": harmful + benign, "label": ["harmful"] * 20 + ["benign"] * 20})
    table = vocabulary_need.vocabulary_table(df.iloc[::2], df.iloc[1::2], [1, 1000]).set_index("words")
    assert table.loc[1, "salient"] == 1.0       # the best single keyword is bomb or cake
    assert table.loc[1, "frequent"] == 0.5      # the most frequent single word carries nothing
    n_words = len({w for t in df.iloc[::2].text for w in vocabulary_need.words(t)})
    assert list(table.index) == [1, n_words]    # sizes above the vocabulary are capped
    assert table.loc[n_words].tolist() == [1.0, 1.0]


def test_vocabulary_need_prints_the_paper_split(capsys):
    from rrs.data import load_questions
    from rrs.profiles import get_profile

    script = _load("vocabulary_need")
    script.main(["--sizes", "10,40"])
    out = capsys.readouterr().out
    head = re.search(r"(\d+) train / (\d+) test questions; (\d+) distinct training words", out)
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+0\.\d+\s+", line)]
    assert [int(r[0]) for r in rows] == [10, 40]
    # the mini profile's split, and its table recomputed with the script's helper
    df = load_questions(test_fraction=get_profile("mini").test_fraction, seed=0)
    train, test = df[df.split == "train"], df[df.split == "test"]
    assert head and (int(head.group(1)), int(head.group(2))) == (len(train), len(test))
    table = script.vocabulary_table(train, test, [10, 40]).round(3)
    assert [[float(x) for x in r[1:]] for r in rows] == table[["frequent", "salient"]].to_numpy().tolist()


def test_hearing_check_reports_both_splits(capsys):
    _load("hearing_check").main(["--profile", "ci", "--n", "4"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*(train|test) ", line)]
    assert [r[0] for r in rows] == ["train", "test"]
    for r in rows:
        assert int(r[1]) == 4
        assert 0 <= float(r[2]) and 0 <= float(r[3]) <= 100 and 0 <= float(r[5]) <= 100
        assert int(r[4]) > 0 and int(r[6]) > 0
        # the committed model hears the frequent words far better than the rest (measured on
        # these questions: 92.1 vs 19.6% train, 72.6 vs 11.9% test)
        assert float(r[3]) > float(r[5]) + 30


def test_perfect_audio_tokens_replace_only_the_spoken_ones():
    import numpy as np
    import torch

    perfect = _load("hearing_oracle").perfect_audio_tokens
    audio = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    embeddings = 100 + torch.arange(15, dtype=torch.float32).reshape(5, 3)
    out = perfect(audio, np.array([-100, 2, 4, -100]), embeddings)
    assert torch.equal(out[[0, 3]], audio[[0, 3]])          # silence: what the encoder made of it
    assert torch.equal(out[1], embeddings[2]) and torch.equal(out[2], embeddings[4])
    assert torch.equal(audio, torch.arange(12, dtype=torch.float32).reshape(4, 3))  # input untouched
    # with `where`, only the chosen spoken tokens: token 1 is chosen, 2 is not, 0 is silent
    some = perfect(audio, np.array([-100, 2, 4, -100]), embeddings, where=np.array([True, True, False, False]))
    assert torch.equal(some[[0, 2, 3]], audio[[0, 2, 3]]) and torch.equal(some[1], embeddings[2])


def test_hearing_oracle_reports_every_view_per_mode(capsys, monkeypatch):
    from rrs import stages
    from rrs.modes import build_input

    script = _load("hearing_oracle")
    # keep the clips the script speaks: eSpeak NG in this process, so they depend on what it spoke before
    clips, speak = {}, script.speech_with_word_timings

    def speak_and_keep(df, *args):
        spoken = speak(df, *args)
        clips.update(spoken)
        return spoken

    monkeypatch.setattr(script, "speech_with_word_timings", speak_and_keep)
    script.main(["--profile", "ci", "--modes", "audio-only", "--fractions", "0.5"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*audio-only ", line)]
    assert [r[1] for r in rows] == ["heard", "perfect_50%", "perfect"]
    for r in rows:
        assert all(0 <= float(x) <= 1 for x in r[2:4]) and all(0 <= float(x) <= 100 for x in r[4:6])
    # the views differ: the perfect tokens are not what the encoder hands over
    assert rows[0][2:] != rows[-1][2:]
    # "heard" is what the model itself makes of those clips: its p("I") AUC through the adapter
    _, adapter, questions = stages.setup("ci", 0, progress=False)
    test = stages.split_questions(questions, "test")
    inputs = [build_input(t, clips[i][0], "audio-only") for i, t in zip(test.id, test.text)]
    p = stages.refusal_token_probs(adapter, adapter.hidden_states(inputs, batch_size=1, progress=False))
    assert rows[0][2] == f"{roc_auc_score(test.label == 'harmful', p.numpy()):.3f}"


def test_best_refusal_gain_picks_the_best_threshold_within_the_benign_budget():
    best = _load("tradeoff_ceiling").best_refusal_gain
    # 4 harmful (scores .9 .8 .4 .1), 4 benign (.7 .3 .2 .05); vanilla refused 25% of harmful, none of benign
    p = [0.9, 0.8, 0.4, 0.1, 0.7, 0.3, 0.2, 0.05]
    harmful = [True] * 4 + [False] * 4
    assert best(p, harmful, 25.0, 0.0, 0.0) == 25.0     # t = .8: 2 of 4 harmful, no benign
    assert best(p, harmful, 25.0, 0.0, 25.0) == 50.0    # t = .7 adds one benign (25 points), no harmful
    assert best(p, harmful, 25.0, 0.0, 50.0) == 50.0    # t = .3: 3 harmful, 2 benign
    assert best(p, harmful, 25.0, 0.0, 100.0) == 75.0   # refuse everything
    assert best(p, harmful, 25.0, 50.0, 0.0) == 50.0    # a base above zero leaves room for 2 benign
    assert best([0.5] * 8, harmful, 0.0, 0.0, 10.0) == 0.0  # a tie: all or nothing, and all costs 100
    assert best([0.9, 0.8, 0.4, 0.01, 0.7, 0.3, 0.2, 0.05], harmful, 25.0, 0.0, 100.0) == 75.0  # the lowest too
    with pytest.raises(ValueError, match="harmful and benign"):
        best([0.1, 0.2], [True, True], 0.0, 0.0, 3.0)


def test_tradeoff_rows_measure_every_method_against_vanillas_greedy_rates():
    import numpy as np

    rows = _load("tradeoff_ceiling").tradeoff_rows
    harmful = np.array([True] * 4 + [False] * 4)
    scores = {"vanilla": ([0.6, 0.2, 0.2, 0.1, 0.3, 0.1, 0.1, 0.1], [1, 0, 0, 0, 0, 0, 0, 0]),
              "rrs": ([0.9, 0.8, 0.4, 0.1, 0.7, 0.3, 0.2, 0.05], [1, 1, 1, 0, 1, 0, 0, 0])}
    vanilla, rrs = rows(scores, harmful, [0.0, 25.0])
    assert (vanilla["greedy_harmful"], vanilla["greedy_benign"]) == (0.0, 0.0)
    assert (rrs["greedy_harmful"], rrs["greedy_benign"]) == (50.0, 25.0)  # 3 of 4 and 1 of 4, against 1 and 0
    assert rrs["auc"] == 0.75 and rrs[0.0] == 25.0 and rrs[25.0] == 50.0  # gains over vanilla's 25%
    # vanilla's own ranking: the .3 benign question sits above two harmful ones at .2
    assert vanilla[0.0] == 0.0 and vanilla[25.0] == 50.0
    with pytest.raises(ValueError, match="vanilla"):
        rows({"rrs": scores["rrs"]}, harmful, [3.0])


def test_tradeoff_ceiling_reports_every_method_in_every_mode(capsys):
    from rrs import stages
    from rrs.modes import MODES

    script = _load("tradeoff_ceiling")
    script.main(["--profile", "ci", "--methods", "rrs", "--budgets", "0,100"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"(audio-text|text-only|audio-only) ", line)]
    assert [(r[0], r[1]) for r in rows] == [(m, x) for m in MODES for x in ("vanilla", "rrs")]
    for r in rows:
        assert 0 <= float(r[2]) <= 1
        zero, everything = float(r[6]), float(r[7])
        assert zero <= everything and everything >= 0   # with no budget limit, refusing all is allowed
    vanilla = [r for r in rows if r[1] == "vanilla"]
    assert all(r[3] == "+0.0" and r[5] == "+0.0" for r in vanilla)  # vanilla's greedy rates are the base
    # text-only recomputed from the representations it reads: vanilla's AUC, and with no budget
    # limit every method's best gain is 100 minus vanilla's greedy harmful refusal rate
    P, adapter, questions = stages.setup("ci", 0, progress=False)
    test = stages.split_questions(questions, "test")
    harmful = (test.label == "harmful").to_numpy()
    h = stages.representations(adapter, test, "text-only", prompt=None, batch_size=P.eval_batch_size, progress=False)
    p, greedy = script.first_token_scores(adapter, h)
    assert next(r[2] for r in vanilla if r[0] == "text-only") == f"{roc_auc_score(harmful, p):.3f}"
    assert [r[7] for r in rows if r[0] == "text-only"] == [f"{100 - 100 * greedy[harmful].mean():+.1f}"] * 2


def test_perfect_hearing_views_reproduce_the_pipeline_and_differ_only_where_words_are_spoken():
    import numpy as np
    import torch

    from rrs import stages
    from rrs.mini.behaviour import speech_with_word_timings
    from rrs.modes import build_input

    script = _load("perfect_hearing_rrs")
    P, adapter, questions = stages.setup("ci", 0, progress=False)
    test = stages.split_questions(questions, "test").head(6)
    clips = speech_with_word_timings(test, P, 0)
    spoken = {script._wave_key(clips[r.id][0]): (r.text, clips[r.id][1]) for r in test.itertuples()}
    inputs = [build_input(t, clips[i][0], "audio-text") for i, t in zip(test.id, test.text)]
    heard = script.view_decoder_inputs(adapter, inputs, "heard", spoken, batch_size=4)
    perfect = script.view_decoder_inputs(adapter, inputs, "perfect", spoken, batch_size=4)
    # heard: the pipeline's own representations (same clips, evaluation prompt, vanilla model)
    h = adapter.hidden_states(inputs, batch_size=4, progress=False)
    assert torch.allclose(script.last_states(adapter, heard), h, atol=1e-4)
    audio_id = adapter.model.config.audio_token_id
    for inp, a, b in zip(inputs, heard, perfect):
        ids = adapter.prepare([inp])["input_ids"][0]
        differs = (a["inputs_embeds"] != b["inputs_embeds"]).any(-1)
        assert differs.any() and not differs[ids != audio_id].any()  # only audio tokens change
    # each changed token is the input embedding of a token of its own question, in spoken order
    table = adapter.model.get_input_embeddings().weight.detach()
    for text, a, b in zip(test.text, heard, perfect):
        changed = b["inputs_embeds"][(a["inputs_embeds"] != b["inputs_embeds"]).any(-1)]
        read = (changed[:, None, :] == table[None]).all(-1).float().argmax(-1).tolist()
        assert all(torch.equal(table[t], row) for t, row in zip(read, changed))
        words = iter(adapter.tokenizer(text.strip(), add_special_tokens=False)["input_ids"])
        assert all(any(t == w for w in words) for t in dict.fromkeys(read))  # a subsequence of the question
    with pytest.raises(ValueError, match="unknown view"):
        script.view_decoder_inputs(adapter, inputs, "imagined", spoken)


def test_refused_as_text_counts_the_benign_questions_the_written_path_refuses_too():
    import numpy as np

    counts = _load("perfect_hearing_rrs").refused_as_text
    harmful = np.array([True, True, False, False, False])
    p = np.zeros(5)
    scores = {"text-only": {"vanilla": (p, [1, 0, 1, 1, 0])},           # writes off benign 2 and 3
              "audio-text": {"vanilla": (p, [0, 0, 0, 0, 0]), "epoch_1": (p, [1, 1, 1, 0, 1])},
              "audio-only": {"vanilla": (p, [0, 0, 0, 1, 0])}}
    assert counts(scores, harmful) == {("audio-text", "vanilla"): (0, 0), ("audio-text", "epoch_1"): (2, 1),
                                       ("audio-only", "vanilla"): (1, 1)}


def test_perfect_hearing_rrs_reports_every_epoch_in_every_mode_for_both_views(capsys):
    from rrs.modes import MODES

    _load("perfect_hearing_rrs").main(["--profile", "ci", "--epochs", "1", "--budgets", "0,100"])
    out = capsys.readouterr().out
    views = out.split("\nview ")[1:]
    assert [v.split(";")[0] for v in views] == ["heard", "perfect"]
    for view in views:
        n_benign = int(re.search(r"harmful / (\d+) benign", view).group(1))
        whole, answered = view.split("the same, on the ")
        for table in (whole, answered):
            rows = [line.split() for line in table.splitlines()
                    if re.match(r"(audio-text|text-only|audio-only) ", line)]
            assert [(r[0], r[1]) for r in rows] == [(m, x) for m in MODES for x in ("vanilla", "epoch_1")]
            assert all(0 <= float(r[2]) <= 1 for r in rows)
            assert all(r[3] == "+0.0" and r[5] == "+0.0" for r in rows if r[1] == "vanilla")
            mean = re.search(r"mean of the modes: vanilla ([-+]\d+\.\d+), epoch_1 ([-+]\d+\.\d+)", table)
            assert float(mean.group(1)) == 0.0
            assert float(mean.group(2)) == pytest.approx(sum(float(r[5]) for r in rows if r[1] == "epoch_1") / 3,
                                                         abs=0.06)
        # the second table leaves out exactly the benign questions that the vanilla model refuses as text
        refused_as_text = int(re.search(r"% \((\d+)\) of benign questions", view).group(1))
        assert int(re.match(r"(\d+) benign", answered).group(1)) == n_benign - refused_as_text
        refused = [re.findall(r"\d+", line)[-2:] for line in view.splitlines() if line.startswith("benign refused")]
        assert len(refused) == 4 and all(int(a) <= int(n) for n, a in refused)


def test_qwen_audio_chat_check_names_what_it_lacks_before_running_anything(tmp_path):
    """The check runs only in Qwen-Audio-Chat's separate transformers-4 environment; here it
    must stop at once, with the reason, and build nothing."""
    script = _load("qwen_audio_chat_check")
    (tmp_path / "modeling_qwen.py").write_text("")
    with pytest.raises(FileNotFoundError, match="lacks configuration_qwen.py, qwen_generation_utils.py"):
        script.main([str(tmp_path)])
    for name in script.REMOTE_CODE:
        (tmp_path / name).write_text("")
    with pytest.raises(RuntimeError, match="transformers 4.x.*separate environment"):
        script.main([str(tmp_path), "--out", str(tmp_path / "model")])
    assert not (tmp_path / "model").exists()


def test_training_benchmark_times_both_methods_both_ways(capsys):
    _load("bench_training", BENCHMARKS).main(["--steps", "1", "--batch-size", "2", "--seconds", "1"])
    out = capsys.readouterr().out
    steps = [float(ms) for ms in re.findall(r"(?:RRS|refusal-SFT) step +([\d.]+) ms", out)]
    assert len(steps) == 4 and all(ms > 0 for ms in steps), out  # whole model, then decoder only
    assert re.search(r"extraction +[\d.]+ items/s batched \(batch 2\)", out), out


def test_evaluation_benchmark_times_every_mode_and_batch_size(capsys):
    _load("bench_evaluation", BENCHMARKS).main(["--n", "3", "--batch-sizes", "1,3", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert re.search(r"speech: [\d.]+ clips/s", out) and re.search(r"judge \S+ \S+: [\d,]+ responses/s", out), out
    rows = [line.split() for line in out.splitlines() if re.match(r" *(audio-text|text-only|audio-only) +\d", line)]
    assert [(r[0], int(r[1])) for r in rows] == [(m, b) for m in ("audio-text", "text-only", "audio-only") for b in (1, 3)]
    assert all(float(v) > 0 for r in rows for v in r[2:])
    with pytest.raises(SystemExit):
        _load("bench_evaluation", BENCHMARKS).main(["--batch-sizes", "0"])
