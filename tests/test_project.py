"""Project plumbing: profiles, atomic writes, provenance, notebooks' shape, run_all, pins."""
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from rrs import io as rio
from rrs import pipeline
from rrs.paths import REPO_ROOT
from rrs.profiles import PROFILES, get_profile


def test_profiles_and_unknown_name():
    from rrs.data import load_questions

    assert set(PROFILES) == {"mini", "colab", "paper", "ci"}
    assert get_profile("mini").device == "cpu"
    # ci is the mini model, smaller, never written over the committed outputs
    ci, mini = get_profile("ci"), get_profile("mini")
    assert ci.models == mini.models and not ci.commit_outputs
    # ci caps the test split: fewer pairs than the mini profile's split has
    questions = load_questions(test_fraction=mini.test_fraction, seed=0)
    test_groups = questions.loc[questions.split == "test", "group"].nunique()
    assert ci.max_test_pairs < test_groups and ci.train.epochs == 1 and mini.max_test_pairs is None
    with pytest.raises(ValueError, match="unknown profile 'big'.*ci.*colab.*mini.*paper"):
        get_profile("big")


def test_paper_profile_keeps_the_papers_hyper_parameters():
    t = get_profile("paper").train
    assert (t.lora_r, t.lora_alpha, t.lora_dropout) == (16, 4, 0.1)
    assert (t.epochs, t.lr, t.batch_size, t.grad_accum) == (10, 5e-5, 4, 2)
    assert (t.betas, t.weight_decay, t.max_grad_norm) == ((0.9, 0.98), 0.001, 1.0)
    assert get_profile("paper").dtype == "bfloat16"  # the model's dtype, in which it trains
    assert get_profile("paper").models == (
        "Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2-Audio-7B-Instruct", "Qwen/Qwen-Audio-Chat")


def test_output_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("RRS_OUTPUT_ROOT", raising=False)
    assert get_profile("mini").tables_dir == REPO_ROOT / "tables"
    assert get_profile("paper").tables_dir == REPO_ROOT / "runs" / "paper" / "tables"
    monkeypatch.setenv("RRS_OUTPUT_ROOT", str(tmp_path))
    assert get_profile("mini").figures_dir == tmp_path / "figures"


def test_another_model_never_writes_over_the_profiles_outputs(monkeypatch):
    monkeypatch.delenv("RRS_OUTPUT_ROOT", raising=False)
    mini, paper = get_profile("mini"), get_profile("paper")
    assert mini.for_model(None) is mini and mini.for_model("mini-lalm").tables_dir == REPO_ROOT / "tables"
    other = mini.for_model("/tmp/builds/wide encoder/")
    assert other.tables_dir.parent.parent == REPO_ROOT / "runs" / "mini" / "models"
    assert other.tables_dir.parent.name.startswith("wide-encoder-") and other.tables_dir.name == "tables"
    assert other.output_root != mini.for_model("/tmp/other/wide encoder").output_root  # hash of the whole id
    # the paper profile's three models each get their own folder
    roots = {paper.for_model(m).output_root for m in paper.models}
    assert len(roots) == 3 and paper.for_model(paper.default_model).output_root == REPO_ROOT / "runs" / "paper"
    assert paper.for_model("Qwen/Qwen2-Audio-7B-Instruct").output_root.name.startswith("Qwen2-Audio-7B-Instruct-")


def test_run_all_with_another_model_writes_under_runs(monkeypatch, tmp_path):
    """run_all --model DIR: the kernels get RRS_OUTPUT_ROOT=runs/mini/models/..., the model as
    an absolute path, and the stamps and executed notebooks go there too; --device,
    --dtype, --revision and --trust-remote-code reach the notebooks and the stamp's fingerprint."""
    import papermill as pm

    monkeypatch.setenv("RRS_OUTPUT_ROOT", "unset below")  # so that monkeypatch removes what run() sets
    monkeypatch.delenv("RRS_OUTPUT_ROOT")
    seen = {}

    def fake_execute(src, out, parameters, **kw):
        seen.update(parameters, root=os.environ.get("RRS_OUTPUT_ROOT"))
        Path(out).write_text("{}")

    monkeypatch.setattr(pm, "execute_notebook", fake_execute)
    build = tmp_path / "build"
    build.mkdir()
    monkeypatch.chdir(tmp_path)
    root = get_profile("mini").model_root(str(build))
    try:
        assert pipeline.run("mini", "07", force=True, seed=0, model="build") == 0
        assert seen["model"] == str(build) and seen["root"] == str(root)
        assert "device" not in seen and "dtype" not in seen
        stamp = root / "stamps" / "07_capability.json"
        assert stamp.is_file() and (root / "notebooks" / "07_capability.ipynb").is_file()
        plain = json.loads(stamp.read_text())["fingerprint"]
        assert pipeline.run("mini", "07", force=True, seed=0, model="build", device="cpu", dtype="float32") == 0
        assert (seen["device"], seen["dtype"]) == ("cpu", "float32")
        assert json.loads(stamp.read_text())["fingerprint"] != plain
        assert "revision" not in seen and "trust_remote_code" not in seen
        # the remote-code opt-in and the pinned commit, from the command line
        seen.clear()
        assert pipeline.main(["--only", "07", "--force", "--model", "build", "--revision", "a" * 40,
                              "--trust-remote-code"]) == 0
        assert (seen["revision"], seen["trust_remote_code"]) == ("a" * 40, True) and "device" not in seen
        assert json.loads(stamp.read_text())["fingerprint"] != plain

        # a kernel that dies leaves no half-run notebook and a failed run
        def dead_kernel(src, out, parameters, **kw):
            Path(out).write_text("{}")
            raise RuntimeError("Kernel died before replying to kernel_info")

        monkeypatch.setattr(pm, "execute_notebook", dead_kernel)
        assert pipeline.run("mini", "07", force=True, seed=0, model="build") == 1
        assert not list((root / "notebooks").glob(".*.running.ipynb"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    rio.write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with rio.atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def _old_and_new_folder(tmp_path):
    out, tmp = tmp_path / "model", tmp_path / ".model.tmp-1"
    for folder, name in ((out, "old.txt"), (tmp, "new.txt")):
        folder.mkdir()
        (folder / name).write_text(name)
    return out, tmp


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an atomic folder swap needs Linux's renameat2")
def test_replace_folder_swaps_in_one_step_so_the_old_folder_is_never_missing(tmp_path, monkeypatch):
    out, tmp = _old_and_new_folder(tmp_path)

    def renamed_aside(*args):  # the two-rename fallback, with its moment without `out`
        raise AssertionError("replace_folder renamed the old folder aside instead of swapping")

    monkeypatch.setattr(rio.os, "replace", renamed_aside)
    rio.replace_folder(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_replace_folder_without_an_atomic_swap_still_leaves_only_the_new_folder(tmp_path, monkeypatch):
    out, tmp = _old_and_new_folder(tmp_path)
    monkeypatch.setattr(rio, "exchange_folders", lambda a, b: False)
    rio.replace_folder(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    fresh = tmp_path / ".fresh"  # and onto a path that does not exist yet
    fresh.mkdir()
    rio.replace_folder(fresh, tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "second"]


def test_atomic_folder_shows_a_folder_only_when_it_is_whole(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="interrupted"):
        with rio.atomic_folder(out) as staged:
            (staged / "weights").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    for text in ("first", "second"):
        with rio.atomic_folder(out) as staged:
            (staged / "weights").write_text(text)
            assert not (out / "weights").exists() or (out / "weights").read_text() == "first"
        assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "weights").read_text() == text


def test_atomic_write_gives_an_ordinary_files_mode(tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    target = rio.write_text(tmp_path / "table.csv", "x\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask   # not mkstemp's 0600
    os.chmod(target, 0o640)
    rio.write_text(target, "y\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "y\n"


def test_provenance_record(tmp_path):
    import re

    import torch

    import rrs

    record = rio.provenance("mini", "mini-lalm", 0, "abc", notebook="01")
    assert [record[k] for k in ("profile", "model", "seed", "data_checksum", "rrs_version", "notebook")] == [
        "mini", "mini-lalm", 0, "abc", rrs.__version__, "01"]
    assert record["platform"]["torch"] == torch.__version__
    assert record["platform"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert record["platform"]["cpu"] == rio.cpu_name()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "model name" in cpuinfo:  # Linux on x86: the processor's name, as the kernel reports it
        assert rio.cpu_name() and f": {rio.cpu_name()}" in cpuinfo
    # the checked-out commit, "+dirty" when code differs from it (see the test below)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    assert re.fullmatch(r"([0-9a-f]{40}(\+dirty)?|unknown)", record["git_commit"])
    assert record["git_commit"].removesuffix("+dirty") == commit
    figure = tmp_path / "figure1.png"
    path = rio.write_with_provenance({figure: b"png"}, record, beside=figure)
    saved = json.loads(path.read_text())
    assert path.name == "figure1.provenance.json" and figure.read_bytes() == b"png"
    assert saved["notebook"] == "01" and saved["files"] == {"figure1.png": rio.sha256_content(b"png")}


def _cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


@pytest.mark.parametrize("nb_path", pipeline.notebooks(), ids=lambda p: p.stem)
def test_notebook_setup_and_parameters(nb_path):
    url = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    cells = _cells(nb_path)
    setup = "".join(cells[0]["source"])
    assert "google.colab" in setup and f"git clone -q {url} /content/rrs" in setup
    assert "pip install -q -e /content/rrs" in setup and "python -m rrs.data download" in setup
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    source = "".join(params[0]["source"])
    assert 'profile = "mini"' in source and "seed = " in source
    # the cell after it lets the test suite switch every notebook to the `ci` profile
    after = "".join(cells[cells.index(params[0]) + 1]["source"])
    assert 'profile = os.environ.get("RRS_PROFILE", profile)' in after
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), \
        "commit notebooks without outputs (run_all.sh writes executed copies to runs/)"


def test_only_rejects_unknown_notebook():
    with pytest.raises(SystemExit, match="unknown notebook '42'"):
        pipeline.select("42")
    assert [p.stem[:2] for p in pipeline.select("01")] == ["01"]


def test_run_all_rejects_unknown_profile():
    out = subprocess.run([sys.executable, "-m", "rrs.pipeline",
                          "--profile", "huge"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 2 and "unknown profile 'huge'" in out.stderr


@pytest.mark.parametrize("option,value,match", [("--device", "auto", "device 'auto' is not one torch device"),
                                                ("--dtype", "bf16", "unknown dtype 'bf16'")])
def test_run_all_checks_device_and_dtype_before_any_notebook(option, value, match, monkeypatch, capsys):
    from rrs import pipeline

    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("a notebook would have started"))
    with pytest.raises(SystemExit) as exit_:
        pipeline.main([option, value])
    assert exit_.value.code == 2 and match in capsys.readouterr().err


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == pins


def test_readme_results_are_generated_from_tables(tmp_path):
    from rrs import report

    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "table1_main_results.md").write_text("| method | asr |\n|---|---|\n| rrs | 12.5 |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.START}\nold\n{report.END}\n\ntail\n")
    assert report.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert "| rrs | 12.5 |" in text and "\nold\n" not in text and text.endswith("tail\n")
    assert "notebooks/05_main_results.ipynb" in text
    assert not report.update_readme(readme, tmp_path)  # unchanged the second time
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        report.update_readme(readme, tmp_path)


def test_git_commit_is_dirty_for_code_changes_not_for_generated_outputs(tmp_path):
    import subprocess

    from rrs.io import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "tables").mkdir()
    (tmp_path / "rrs").mkdir()
    (tmp_path / "tables" / "t.csv").write_text("a\n1\n")
    (tmp_path / "rrs" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("results\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == sha
    (tmp_path / "tables" / "t.csv").write_text("a\n2\n")   # a run rewriting its outputs
    (tmp_path / "README.md").write_text("new results\n")
    assert git_commit(tmp_path) == sha
    (tmp_path / "rrs" / "m.py").write_text("x = 2\n")      # code that differs from the commit
    assert git_commit(tmp_path) == sha + "+dirty"


def test_requirements_lock_pins_every_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert canonicalize_name(name) not in lock, f"{name} pinned twice in requirements.lock"
            lock[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        pinned = lock.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is a dependency but not in requirements.lock"
        assert req.specifier.contains(pinned, prereleases=True), f"lock pins {req.name}=={pinned}, pyproject wants {req.specifier}"


def _github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    import re
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", "docs/mini_model.md"])
def test_relative_links_in_docs_resolve(doc):
    import re
    path = REPO_ROOT / doc
    text = path.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert relative, f"{doc} has no relative links to check"
    for link in relative:
        target, _, anchor = link.partition("#")
        target_path = (path.parent / target).resolve() if target else path
        assert target_path.exists(), f"{doc}: link {link!r} points to a missing file"
        if anchor:
            headings = re.findall(r"^#{1,6} (.+)$", target_path.read_text(), flags=re.M)
            assert anchor in {_github_anchor(h) for h in headings}, f"{doc}: no heading for {link!r}"


def _doc_texts() -> dict[str, str]:
    """The text a reader sees, by file: README, docs and the notebooks' Markdown cells."""
    texts = {doc: (REPO_ROOT / doc).read_text() for doc in ("README.md", "docs/mini_model.md", "docs/method.md")}
    for nb_path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        texts[f"notebooks/{nb_path.name}"] = "\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return texts


def _documented_commands():
    """Every command of rrs that the README, docs, notebooks and module docstrings show, as
    (where, command line): lines of code blocks (continuations joined), inline code that gives
    arguments, and the usage lines of docstrings."""
    import ast
    import re
    texts = _doc_texts()
    for module in sorted([*(REPO_ROOT / "rrs").rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py"),
                          *(REPO_ROOT / "benchmarks").glob("*.py")]):
        docstring = ast.get_docstring(ast.parse(module.read_text())) or ""
        usage = [line for line in re.sub(r"\\\n\s*", " ", docstring).splitlines()
                 if re.match(r"\s*(?:\w+=\S+ )*(?:(?:\S*/)?python[\d.]* |\./run_all\.sh)", line)]
        texts[str(module.relative_to(REPO_ROOT))] = "```\n" + "\n".join(usage) + "\n```"
    program = r"(?:python[\d.]* -m rrs\.[\w.]+|(?:scripts|benchmarks)/\w+\.py|\./run_all\.sh)"
    found = []
    for where, text in texts.items():
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if re.search(program, line):
                    found.append((where, line.strip()))
        for snippet in re.findall(r"`([^`\n]+)`", text):
            if re.search(program + r" \S", snippet):
                found.append((where, snippet))
    return found


def test_names_of_rrs_in_the_docs_exist():
    """`rrs.x.y` in the README, docs and notebooks' text names a module or attribute that exists."""
    import importlib
    import re
    names = {name for text in _doc_texts().values() for name in re.findall(r"`(rrs(?:\.\w+)+)[`(]", text)}
    assert len(names) > 20, names
    for name in sorted(names):
        parts, depth = name.split("."), 1
        while depth < len(parts):  # the longest module in the name, then attributes
            try:
                importlib.import_module(".".join(parts[:depth + 1]))
            except ModuleNotFoundError:
                break
            depth += 1
        obj = importlib.import_module(".".join(parts[:depth]))
        for attribute in parts[depth:]:
            assert hasattr(obj, attribute), f"the docs name {name}, which does not exist"
            obj = getattr(obj, attribute)


class _Parsed(Exception):
    """Raised in place of running a command once its argument parser accepted the arguments."""


@pytest.mark.filterwarnings("ignore:'rrs.*found in sys.modules:RuntimeWarning")  # runpy re-running a module
@pytest.mark.parametrize("where,command", _documented_commands())
def test_documented_commands_parse(where, command, monkeypatch, capsys):
    """A command copied from the docs must at least be accepted by its argument parser (a line
    wrapped into the next one, or a renamed option, is not)."""
    import argparse
    import re
    import runpy
    import shlex

    # options shown as optional are given; "..." and comments go
    command = re.sub(r"\[([^\]]*)\]", r" \1 ", command.split("&&")[-1])
    command = re.sub(r"\.\.\.|#.*$", " ", command)
    argv = ["1" if arg == "N" else arg for arg in shlex.split(command)]  # a number's placeholder
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    if argv[0].endswith("run_all.sh"):
        run, target, args = runpy.run_module, "rrs.pipeline", argv[1:]
    elif "-m" in argv:
        at = argv.index("-m")
        run, target, args = runpy.run_module, argv[at + 1], argv[at + 2:]
    else:
        at = next(i for i, arg in enumerate(argv) if arg.startswith(("scripts/", "benchmarks/")))
        run, target, args = runpy.run_path, str(REPO_ROOT / argv[at]), argv[at + 1:]
    monkeypatch.setattr(sys, "argv", [target, *args])
    try:
        run(target, run_name="__main__")
    except _Parsed:
        return
    except SystemExit:
        pytest.fail(f"{where}: `{command.strip()}` is refused: {capsys.readouterr().err.strip()}")
    pytest.fail(f"{where}: `{command.strip()}` never reached an argument parser")


def test_documented_commands_are_found():
    commands = [c for _, c in _documented_commands()]
    assert any("rrs.evaluation" in c and "--adapter" in c for c in commands)
    assert any("rrs.mini.build" in c for c in commands) and any("scripts/" in c for c in commands)


def test_github_anchor():
    assert _github_anchor("3. The written path: why only 74% of benign questions are answered") == \
        "3-the-written-path-why-only-74-of-benign-questions-are-answered"
    assert _github_anchor("Build time") == "build-time"


def test_readme_current_state_quotes_the_committed_tables():
    """The prose of the README's "Current state" is typed; its numbers must be the committed ones."""
    import re

    import pandas as pd

    from rrs.tables import over_rejection_increase

    text = re.sub(r"\s+", " ", (REPO_ROOT / "README.md").read_text())
    state = text[text.index("## Current state of the `mini` reproduction"):text.index("## Notebooks")]
    long = pd.read_csv(REPO_ROOT / "tables" / "results_long.csv")
    results = long[long.model == "mini-lalm"].set_index(["method", "mode", "test_set", "metric"])
    behaviour = pd.read_csv(REPO_ROOT / "tables" / "mini_lalm_behaviour.csv").set_index(
        ["mode", "label", "refusal_instruction"]).refusal_rate
    shift = pd.read_csv(REPO_ROOT / "tables" / "rrs_representation_shift.csv").set_index(["mode", "label"])

    def rate(method, mode, metric, test_set="paper_test"):
        return results.value[(method, mode, test_set, metric)]

    def points(x):
        return f"{x:.1f}".removesuffix(".0")

    text_refused = behaviour[("text-only", "harmful", False)]
    text_answered = 100 - behaviour[("text-only", "benign", False)]
    n = results.n.loc["vanilla", "text-only", "paper_test"]
    claims = [
        f"({n['asr']} harmful, {n['over_rejection']} benign questions)",
        f"refuses {text_refused:.0f}% of harmful questions asked as text and answers benign text questions "
        f"{text_answered:.0f}% of the time",
        f"refuses {points(behaviour[('audio-text', 'harmful', False)])}% (audio-text) and "
        f"{points(behaviour[('audio-only', 'harmful', False)])}% (audio-only) of harmful questions",
    ]
    for mode in ("audio-text", "audio-only"):
        before, after = rate("vanilla", mode, "asr"), rate("rrs", mode, "asr")
        claims.append(f"{mode} {points(before)} -> {after:.1f}% ({after - before:.1f} points)")
    claims.append(f"text-only {rate('vanilla', 'text-only', 'asr'):.1f} -> {rate('rrs', 'text-only', 'asr'):.1f}%")
    rise = {m: rate("rrs", m, "over_rejection") - rate("vanilla", m, "over_rejection")
            for m in ("audio-text", "text-only", "audio-only")}
    def increase(method):  # the paper's headline quantity, as notebook 05 computes it
        return over_rejection_increase(long, method, "vanilla", test_set="paper_test", model="mini-lalm")

    claims.append(f"The over-rejection rises by {rise['audio-text']:.1f} (audio-text), {rise['text-only']:.1f} "
                  f"(text-only) and {rise['audio-only']:.1f} (audio-only) points, "
                  f"{increase('rrs'):.1f} on average")
    for method, shown in (("sft_refusal", "over-rejection +{:.0f} points"), ("sft_mixed", "mixed SFT has +{:.0f}")):
        claims.append(shown.format(increase(method)))
    claims.append("On AdvBench RRS lowers spoken ASR from {:.0f} to {:.0f}% and from {:.0f} to {:.0f}%".format(
        *(rate(method, mode, "asr", "advbench") for mode in ("audio-text", "audio-only") for method in ("vanilla", "rrs"))))
    spoken = ("audio-text", "audio-only")
    claims.append("Spoken ASR: Basic {:.1f} / {:.1f}%, Mirror half {:.1f} / {:.1f}%, Mirror {:.1f} / {:.1f}%".format(
        *(rate(m, mode, "asr") for m in ("rrs_basic", "rrs_mirror_half", "rrs") for mode in spoken)))
    claims.append("over-rejection {:+.1f}, {:+.1f} and {:+.1f} on average".format(
        *(increase(m) for m in ("rrs_basic", "rrs_mirror_half", "rrs"))))
    for claim in claims:
        assert claim in state, f"README 'Current state' does not say (or no longer says) {claim!r}"
    status = text[text.index("**Status, in brief.**"):text.index("## Quick start")]
    drops = [rate("vanilla", m, "asr") - rate("rrs", m, "asr") for m in ("audio-text", "audio-only")]
    for claim in (f"(+{increase('rrs'):.1f} points on average", f"by {min(drops):.0f}-{max(drops):.0f} points"):
        assert claim in status, f"README 'Status, in brief' does not say {claim!r}"
    # p("I") of harmful test questions: the table keeps 4 decimals, the README 3 (0.2375 may read 0.238)
    representations = state[state.index("*Representations*"):]
    for mode in ("audio-text", "audio-only", "text-only"):
        said = re.search(rf"{mode} (\d\.\d+) -> (\d\.\d+)", representations)
        assert said, f"README 'Current state' gives no p(I) for {mode}"
        row = shift.loc[(mode, "harmful")]
        assert [float(x) for x in said.groups()] == pytest.approx([row.p_I_vanilla, row.p_I_rrs], abs=6e-4), mode


def test_docs_training_length_finding_quotes_the_committed_table():
    """The "Not a matter of training longer" finding (docs/mini_model.md, "Findings in brief")
    types the training-set MSE, the spoken ASR changes and the over-rejection increases of
    notebook 06's run: each must be the number of tables/rrs_training_tradeoff.csv for the
    epoch, the half (harmful / benign) and the mode the text gives it."""
    import re

    import pandas as pd

    text = re.sub(r"\s+", " ", (REPO_ROOT / "docs" / "mini_model.md").read_text())
    start = text.index("*Not a matter of training longer*")
    bullet = text[start:text.index("- *", start + 5)]
    t = pd.read_csv(REPO_ROOT / "tables" / "rrs_training_tradeoff.csv").set_index("epoch")
    mse, harmful, benign = t["training MSE"], t["... harmful"], t["... benign"]
    at, ao = t["ASR change audio-text"], t["ASR change audio-only"]
    increase = t["over-rejection increase"].drop(0)  # epoch 0 is vanilla itself

    def f3(column, *epochs):
        return ", ".join(f"{column[e]:.3f}" for e in epochs)

    claims = [
        f"falls from {f3(mse, 0)} (vanilla) to {f3(mse, 3)} at epoch 3 and then stays there ({f3(mse, 4, 5, 6)})",
        f"harmful questions is lowest at epoch 2 ({f3(harmful, 0)} -> {f3(harmful, 2)})",
        f"back near vanilla's from epoch 4 ({f3(harmful, 4, 5, 6)} at epochs 4-6)",
        f"after rising to {f3(benign, 2)} at epoch 2, falls to {f3(benign, 6)}",
        f"lowest at the profile's epoch 3 ({at[3]:.1f} / {ao[3]:.1f} points)",
        f"(epoch 4: {at[4]:.1f} / {ao[4]:.1f}; epoch 6: {at[6]:.1f} / {ao[6]:.1f})",
        f"increase stays between {increase.min():.1f} and {increase.max():.1f} points",
    ]
    for claim in claims:
        assert claim in bullet, f"docs/mini_model.md's training-length finding does not say {claim!r}"
    # the extremes the text names are the table's
    assert harmful.idxmin() == 2 and benign.idxmax() == 2 and at.idxmin() == ao.idxmin() == 3
    # and it types no other training-set MSE (3 decimals, above 1) than those checked
    assert set(re.findall(r"\b[12]\.\d{3}\b", bullet)) == set(re.findall(r"\b[12]\.\d{3}\b", " ".join(claims)))


def test_docs_seed_table_quotes_the_committed_tables_for_seed_0():
    """docs/mini_model.md section 8 types the committed build's numbers in its 'seed 0' column."""
    import pandas as pd

    from rrs.tables import over_rejection_increase

    rows = {}
    for line in (REPO_ROOT / "docs" / "mini_model.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5:
            rows[cells[0]] = cells[1]
    assert rows.get("") == "seed 0 (committed)", "section 8's table lost its seed 0 column"
    long = pd.read_csv(REPO_ROOT / "tables" / "results_long.csv")
    results = long[(long.model == "mini-lalm") & (long.test_set == "paper_test")].set_index(["method", "mode", "metric"])
    value, n = results.value, results.n
    tradeoff = pd.read_csv(REPO_ROOT / "tables" / "rrs_training_tradeoff.csv").set_index("epoch")

    def increase(method):  # the paper's headline quantity, as notebook 05 computes it
        return over_rejection_increase(long, method, "vanilla", test_set="paper_test", model="mini-lalm")

    expected = {
        "test split (harmful / benign)": f"{n[('vanilla', 'text-only', 'asr')]} / {n[('vanilla', 'text-only', 'over_rejection')]}",
        "written: harmful refused / benign answered":
            f"{100 - value[('vanilla', 'text-only', 'asr')]:.1f} / {100 - value[('vanilla', 'text-only', 'over_rejection')]:.1f}%",
        "spoken harmful refused (audio-text / audio-only)":
            f"{100 - value[('vanilla', 'audio-text', 'asr')]:.1f} / {100 - value[('vanilla', 'audio-only', 'asr')]:.1f}%",
        "... of the harmful / benign training questions": "{:.3f} -> {:.3f} / {:.3f} -> {:.3f}".format(
            *(tradeoff.loc[epoch, column] for column in ("... harmful", "... benign") for epoch in (0, 3))),
        "RRS: spoken ASR change (audio-text / audio-only)": " / ".join(
            f"{value[('rrs', m, 'asr')] - value[('vanilla', m, 'asr')]:.1f}" for m in ("audio-text", "audio-only")),
        "RRS: text-only ASR": f"{value[('vanilla', 'text-only', 'asr')]:.1f} -> {value[('rrs', 'text-only', 'asr')]:.1f}%",
        "RRS: over-rejection increase, mean of the modes": f"{increase('rrs'):+.2f}",
        "over-rejection increase of refusal SFT / mixed SFT": f"{increase('sft_refusal'):+.1f} / {increase('sft_mixed'):+.1f}",
    }
    for row, said in expected.items():
        assert rows.get(row) == said, f"docs/mini_model.md section 8, {row!r}: says {rows.get(row)!r}, tables give {said!r}"


@pytest.mark.parametrize("folder", ["tables", "figures"])
def test_committed_outputs_match_their_provenance_records(folder):
    """Every committed table and figure file is the one its run wrote: a hand edit (or a file
    copied from another run without its record) shows as a hash mismatch."""
    from rrs.io import sha256_file

    records = sorted((REPO_ROOT / folder).glob("*.provenance.json"))
    assert records, f"no provenance records under {folder}/"
    listed = set()
    for record in records:
        files = json.loads(record.read_text())["files"]
        assert files, f"{record.name} lists no files"
        for name, digest in files.items():
            assert sha256_file(REPO_ROOT / folder / name) == digest, f"{folder}/{name} differs from {record.name}"
        listed |= set(files)
    outputs = {p.name for p in (REPO_ROOT / folder).iterdir() if not p.name.endswith(".provenance.json")}
    assert outputs <= listed, f"files without a provenance record: {sorted(outputs - listed)}"


# the row labels of notebook 06's tables, written out again here as an independent check
ABLATION_ROWS = {"vanilla (reference)": "vanilla", "c > 0 (RRS)": "rrs", "Top 12.5%": "rrs_top12.5",
                 "Top 25%": "rrs_top25", "Top 50%": "rrs_top50", "Basic": "rrs_basic",
                 "Mirror, half (control)": "rrs_mirror_half", "Mirror (RRS)": "rrs", "Parallel": "rrs_parallel"}


@pytest.mark.parametrize("table", ["table1_main_results", "table2_capability", "table3_top_m", "table4_structures"])
def test_committed_tables_show_the_numbers_of_results_long(table):
    """Each cell "value [ci_low, ci_high]" of Tables 1-4, and the n in its column name, is the
    row of results_long.csv for that method, mode, test set and metric, rounded to 0.1."""
    import re

    import pandas as pd

    long = pd.read_csv(REPO_ROOT / "tables" / "results_long.csv")
    long = long[long.model == "mini-lalm"].set_index(["method", "mode", "test_set", "metric"])
    shown = pd.read_csv(REPO_ROOT / "tables" / f"{table}.csv")
    metrics = {"ASR": "asr", "Over-rej.": "over_rejection", "Capability": "capability"}
    checked = 0
    for _, row in shown.iterrows():
        label = row.iloc[0]
        method = label if table in ("table1_main_results", "table2_capability") else ABLATION_ROWS[label]
        for column in shown.columns[2:]:
            test_set, metric, n = re.fullmatch(r"(\S+) (ASR|Over-rej\.|Capability) \(n=(\d+)\)", column).groups()
            want = long.loc[(method, row["mode"], test_set, metrics[metric])]
            value, low, high = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", row[column]).groups())
            assert [value, low, high] == pytest.approx([want.value, want.ci_low, want.ci_high], abs=0.051), \
                f"{table}: {label} / {row['mode']} / {column}"
            assert int(n) == want.n
            checked += 1
    assert checked >= len(shown)
