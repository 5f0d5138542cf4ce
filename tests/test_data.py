"""Data pipeline: real files from the data directory, checksums, splits, bad input."""
import json
import shutil

import pandas as pd
import pytest

from rrs import data
from rrs.paths import data_dir


@pytest.fixture(scope="module")
def questions():
    return data.load_questions(test_fraction=0.2, seed=0)


@pytest.fixture()
def data_copy(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir(), root)
    return root


def test_sources_verify_and_load(questions):
    counts = data.statistics(questions).set_index(["source", "split", "label"])["n"]
    assert counts[("figstep", "figstep", "harmful")] == 500
    assert counts[("advbench", "advbench", "harmful")] == 520
    paper = questions[questions.source == "rrs_paper"]
    # 700 pairs, but prompts repeat: one row per distinct question of each file
    for label, key in (("harmful", "rrs_harmful"), ("benign", "rrs_benign")):
        distinct = {data.normalise_text(r["prompt"]) for r in data.read_source(key)}
        assert paper.label.eq(label).sum() == len(distinct) < 700, label
    assert set(questions.columns) >= set(data.COLUMNS + ["split", "test_set"])
    assert questions.id.is_unique


def test_download_command_fetches_and_verifies_every_source(tmp_path, monkeypatch, capsys):
    import dataclasses

    # the public hosts cannot be reached here: serve this machine's copies through file:// URLs,
    # so the download, the record check and the atomic write are the real ones
    served = {k: dataclasses.replace(s, url=(data_dir() / s.path).as_uri()) for k, s in data.SOURCES.items()}
    monkeypatch.setattr(data, "SOURCES", served)
    assert data.main(["download", str(tmp_path / "fetched")]) == 0
    assert "RRS_DATA_DIR=" in capsys.readouterr().out
    assert data.data_checksum(tmp_path / "fetched") == data.data_checksum()
    # an edited copy upstream is refused and not kept
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps([{**r, "prompt": r["prompt"] + "!"} if i == 0 else r
                                  for i, r in enumerate(data.read_source("rrs_harmful"))]))
    served["rrs_harmful"] = dataclasses.replace(served["rrs_harmful"], url=edited.as_uri())
    with pytest.raises(SystemExit, match="rrs.data: error: downloaded .*edited.json does not match"):
        data.main(["download", str(tmp_path / "again")])
    assert not (tmp_path / "again" / data.SOURCES["rrs_harmful"].path).exists()
    served["rrs_harmful"] = dataclasses.replace(served["rrs_harmful"], url=(tmp_path / "nowhere.json").as_uri())
    dest = tmp_path / "again" / data.SOURCES["rrs_harmful"].path
    with pytest.raises(SystemExit, match=f"rrs.data: error: could not download .*nowhere.json \\(for {dest}\\): "):
        data.main(["download", str(tmp_path / "again")])


@pytest.mark.parametrize("body,match", [
    (b'{"prompt": "How?"}', r"rrs_paper/harmful\.json: expected a JSON list of objects"),
    (b"[]", r"rrs_paper/harmful\.json holds no records"),
    (b'[{"prompt": "How?"', r"rrs_paper/harmful\.json is malformed"),
])
def test_a_source_file_of_the_wrong_shape_is_named(body, match):
    with pytest.raises(data.DataError, match=match):
        data.parse_records("rrs_harmful", body)


def test_split_is_deterministic_and_seeded():
    a = data.load_questions(seed=0)
    b = data.load_questions(seed=0)
    c = data.load_questions(seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.split.equals(c.split)


def test_no_test_question_in_training_in_any_form(questions):
    train = questions[questions.split == "train"]
    held_out = questions[questions.split.isin(["test", "advbench", "figstep"])]
    # same normalised text (case, punctuation, spacing folded) never crosses the line
    assert not set(train.norm) & set(held_out.norm)
    # pairs (and groups of pairs linked by a repeated prompt) stay on one side
    assert not set(train.group) & set(questions[questions.split == "test"].group)
    assert not set(train.pair_id) & set(questions[questions.split == "test"].pair_id)


def _paper_pairs(n):
    """A synthetic paper frame of `n` pairs: harmful 'h<i>' and its benign twin 'b<i>'."""
    rows = [{"id": f"{label[0]}{i}", "text": text, "label": label, "category": "c", "source": "rrs_paper",
             "pair_id": f"rrs-{i:03d}"}
            for i in range(n)
            for text, label in ((f"How do I poison pond number {i}?", "harmful"),
                                (f"How do I clean pond number {i}?", "benign"))]
    return pd.DataFrame(rows, columns=data.COLUMNS)


def test_make_splits_excludes_a_training_pair_whose_question_an_extra_test_set_holds():
    paper = _paper_pairs(10)
    alone = data.make_splits(paper, {}, test_fraction=0.2, seed=0).set_index("id")
    assert alone.loc["h3", "split"] == "train"  # without the extra set, pair 3 is trained on
    # the same question as pair 3's harmful one up to case and punctuation
    extra = pd.DataFrame([{"id": "adv-1", "text": "HOW do I poison pond, number 3!!", "label": "harmful",
                           "category": "advbench", "source": "advbench", "pair_id": "adv-1"}], columns=data.COLUMNS)
    out = data.make_splits(paper, {"advbench": extra}, test_fraction=0.2, seed=0).set_index("id")
    assert out.loc[["h3", "b3"], "split"].tolist() == ["excluded", "excluded"]  # the whole pair
    assert out.loc["adv-1", "split"] == "advbench"
    rest = alone.index.difference(["h3", "b3"])
    assert out.loc[rest, "split"].equals(alone.loc[rest, "split"])  # no other pair moves


def test_make_splits_excludes_a_pair_whose_benign_twin_is_its_harmful_question():
    paper = _paper_pairs(10)
    paper.loc[paper.id == "b4", "text"] = "how do I POISON pond number 4"  # the harmful text again
    out = data.make_splits(paper, {}, test_fraction=0.2, seed=0)
    assert sorted(out.loc[out.split == "excluded", "id"]) == ["b4", "h4"]


def test_excluded_paper_rows_are_the_texts_that_carry_both_labels(questions):
    # no paper question is in AdvBench or FigStep, so only the label conflict excludes
    paper = questions[questions.source == "rrs_paper"]
    both = paper.groupby("norm").label.transform("nunique") > 1
    assert both.any()
    assert set(paper.loc[paper.split == "excluded", "group"]) == set(paper.loc[both, "group"])


def test_training_halves_of_an_odd_number_of_groups():
    train = pd.DataFrame({"group": ["g0", "g0", "g1", "g2", "g3", "g3", "g4"]})
    a, b = data.training_halves(train, seed=0)
    assert (len(a), len(b)) == (3, 2)  # the first half takes the odd group
    assert a | b == {"g0", "g1", "g2", "g3", "g4"} and not a & b
    assert data.training_halves(train, seed=0) == (a, b)


def test_no_duplicates_within_a_split(questions):
    paper = questions[questions.source == "rrs_paper"]
    assert not paper.duplicated(["norm", "label"]).any()
    # each test pair keeps its harmful question and its benign twin together
    test = paper[paper.split == "test"]
    assert set(test[test.label == "harmful"].group) == set(test[test.label == "benign"].group)


def test_rewrite_cleaning_is_reproducible(questions):
    benign = questions[questions.source == "advbench_safe"]
    assert not benign.text.str.match(r"^\s").any()
    assert not benign.text.str.contains("Safe Question").any()
    assert data.clean_rewrite("### Safe Question:How can I help?") == "How can I help?"


def test_dataset_structures(questions):
    mirror = data.dataset_structure(questions, "mirror")
    basic = data.dataset_structure(questions, "basic", seed=0)
    half = data.dataset_structure(questions, "mirror_half", seed=0)
    parallel = data.dataset_structure(questions, "parallel")
    assert set(mirror.modality) == {"audio"} and set(parallel.modality) == {"audio", "text"}
    assert len(parallel) == 2 * len(mirror)
    train = questions[questions.split == "train"]
    assert sorted(mirror.id) == sorted(train.id)
    # basic: the harmful questions of one half of the groups, the benign ones of the other, so no
    # trained harmful question has its twin among the benign ones; the control keeps the twins
    groups = lambda items, label: set(items.loc[items.label == label, "group"])  # noqa: E731
    assert groups(basic, "harmful") and groups(basic, "benign")
    assert not groups(basic, "harmful") & groups(basic, "benign")
    assert groups(basic, "harmful") | groups(basic, "benign") == set(train.group)
    assert groups(half, "harmful") == groups(half, "benign") == groups(basic, "harmful")
    assert sorted(half[half.label == "harmful"].id) == sorted(basic[basic.label == "harmful"].id)
    n_groups = train.group.nunique()
    assert len(groups(basic, "harmful")) == (n_groups + 1) // 2
    # the halves follow the seed
    other = data.dataset_structure(questions, "basic", seed=1)
    assert groups(other, "harmful") != groups(basic, "harmful")
    with pytest.raises(ValueError, match="unknown dataset structure"):
        data.dataset_structure(questions, "zigzag")


def test_missing_data_directory(monkeypatch, tmp_path):
    import re

    import rrs.paths

    monkeypatch.setenv("RRS_DATA_DIR", str(tmp_path / "nowhere"))
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=re.escape(f"RRS_DATA_DIR={nowhere!r} is not a directory")):
        data_dir()
    # neither the variable nor ../shared/data: the message says how to get the files
    monkeypatch.delenv("RRS_DATA_DIR")
    monkeypatch.setattr(rrs.paths, "REPO_ROOT", tmp_path / "clone")
    with pytest.raises(FileNotFoundError, match="No data directory.*python -m rrs.data download FOLDER"):
        data_dir()


def test_missing_file_says_where_to_get_it(data_copy):
    (data_copy / "public" / "figstep_safebench.csv").unlink()
    with pytest.raises(data.DataError, match="missing data file .*figstep.*raw.githubusercontent"):
        data.load_figstep(data_copy)


def test_altered_file_fails_its_checksum(data_copy):
    path = data_copy / "rrs_paper" / "harmful.json"
    rows = json.loads(path.read_text())
    rows[0]["prompt"] = rows[0]["prompt"] + " please"
    path.write_text(json.dumps(rows))
    with pytest.raises(data.DataError, match="record checksum"):
        data.load_paper_pairs(data_copy)


def test_reformatted_file_still_verifies(data_copy):
    # a copy serialised differently (no indentation, trailing newline) has the same records
    path = data_copy / "rrs_paper" / "benign.json"
    path.write_text(json.dumps(json.loads(path.read_text())) + "\n")
    assert len(data.read_source("rrs_benign", data_copy)) == 700


def test_malformed_json_and_csv(data_copy):
    (data_copy / "sarsteer" / "advbench_audio.json").write_text("[{not json")
    with pytest.raises(data.DataError, match="advbench_audio.json is malformed"):
        data.read_source("advbench_audio", data_copy)
    (data_copy / "public" / "figstep_safebench.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(data.DataError, match="figstep_safebench.csv is malformed"):
        data.read_source("figstep", data_copy)


def test_a_csv_row_with_more_or_fewer_fields_is_named_by_line(data_copy):
    path = data_copy / "public" / "figstep_safebench.csv"
    lines = path.read_text().splitlines()
    for bad, many in ((lines[3] + ",extra", "more"), (lines[3].split(",")[0], "fewer")):
        path.write_text("\n".join(lines[:3] + [bad] + lines[4:]) + "\n")
        match = rf"figstep_safebench\.csv is malformed: line 4 has {many} fields than its header's \d+"
        with pytest.raises(data.DataError, match=match):
            data.load_figstep(data_copy)
        with pytest.raises(data.DataError, match=match):
            data.data_checksum(data_copy)


def test_empty_question_text_is_refused(data_copy, monkeypatch):
    path = data_copy / "rrs_paper" / "harmful.json"
    rows = json.loads(path.read_text())
    rows[3]["prompt"] = "   "
    path.write_text(json.dumps(rows))
    monkeypatch.setitem(data.RECORD_CHECKSUMS, "rrs_harmful",
                        data.rio.sha256_json(data.parse_records("rrs_harmful", path.read_bytes())))
    with pytest.raises(data.DataError, match="empty text"):
        data.load_paper_pairs(data_copy)


def test_data_checksum_changes_with_content(data_copy):
    before = data.data_checksum(data_copy)
    path = data_copy / "public" / "figstep_safebench.csv"
    path.write_text(path.read_text().replace("manufacture", "make", 1))
    assert data.data_checksum(data_copy) != before


def test_cap_groups_keeps_whole_pairs_of_one_split(questions):
    capped = data.cap_groups(questions, "test", 5, seed=0)
    test = capped[capped.split == "test"]
    assert test.group.nunique() == 5
    # whole groups: every row of a kept pair stays, the other splits are untouched
    full = questions[questions.group.isin(set(test.group))]
    assert len(full) == len(test)
    assert capped[capped.split != "test"].equals(questions[questions.split != "test"])
    assert data.cap_groups(questions, "test", 5, seed=0).equals(capped)
    assert data.cap_groups(questions, "test", None, seed=0) is questions


def test_ci_profile_caps_the_test_split_and_mini_does_not():
    from rrs.mini.behaviour import test_questions
    from rrs.profiles import get_profile

    ci, mini = test_questions(get_profile("ci")), test_questions(get_profile("mini"))
    assert ci.group.nunique() == get_profile("ci").max_test_pairs
    # mini keeps every question of its test split
    split = data.load_questions(test_fraction=get_profile("mini").test_fraction, seed=0).split
    assert set(ci.id) < set(mini.id) and len(mini) == (split == "test").sum()


def test_model_inputs_name_questions_with_empty_text():
    df = pd.DataFrame({"id": ["h1", "b1"], "text": ["How do I pick a lock?", ""], "label": ["harmful", "benign"]})
    with pytest.raises(data.DataError, match=r"questions \['b1'\] have empty text"):
        data.model_inputs(df, "text-only")
    assert data.model_inputs(df.iloc[:1], "text-only")[0].text == "How do I pick a lock?"
