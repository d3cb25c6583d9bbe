"""The ``pyrobust`` command refuses bad settings before any work, by name, in one line.

Issue 13 (items 4, 6, 7, 10, 13, damaged run.json) and issue 14 section 5 (CLI conventions).
"""

import ast
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrobust.analysis import experiment, load
from pyrobust.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--n", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "100"]


def one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli-rel") / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    return run


# --------------------------------------------------------------------------------------------
# issue 14 section 5: --version, --help
# --------------------------------------------------------------------------------------------
def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyrobust {version('pyrobust')}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_choices_required_and_each_default_once(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = sub.format_help()
    for action in sub._actions:
        assert (action.help or "").count("default") <= 1, action.option_strings
        if action.choices and action.option_strings:
            assert "{" + ",".join(action.choices) + "}" in text
    required = {a.dest for a in sub._actions if a.required}
    if command in ("robustness", "margin", "attack", "certify", "metrics"):
        assert required == {"run"}
        assert "required settings" in text and "--run RUN" in text.split("\n\n")[0]
    settings = [a for a in sub._actions if a.dest not in ("help", "config", "debug", "version")]
    for action in settings:
        shown = (action.help or "").count("(default:")
        assert shown == (0 if action.required or not action.option_strings else 1), action.dest


def test_choices_agree_with_the_library():
    import pyrobust.cli as cli
    from pyrobust.models.likelihoods import _ALIASES

    assert cli.DATASETS == experiment.DATASETS
    assert cli.ARCHS == experiment.ARCHS
    assert cli.OBJECTIVES == experiment.OBJECTIVES
    assert set(cli.LIKELIHOODS) == set(_ALIASES)


# --------------------------------------------------------------------------------------------
# item 6, 10, 13: every setting checked before any work; one line, exit status 2
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--batch-size", "0"], "'batch_size' (--batch-size) must be positive"),
        (["train", "--n", "-5"], "'n' (--n) must be positive"),
        (["train", "--n", "5000"], "at most 1797 for digits"),
        (["train", "--n", "1"], "at least 2"),
        (["train", "--epochs", "0"], "'epochs' (--epochs) must be positive"),
        (["train", "--epochs", "1.5"], "argument --epochs: expected an integer"),
        (["train", "--lr", "nan"], "argument --lr: expected a finite number"),
        (["train", "--lr", "-1"], "'lr' (--lr) must be positive"),
        (["train", "--hidden", "16,-3"], "'hidden' (--hidden) must be positive"),
        (["train", "--hidden", "16,"], "expected a comma-separated list"),
        (["train", "--beta", "0"], "'beta' (--beta) must be positive"),
        (["train", "--seed", "-1"], "'seed' (--seed) must be an integer in [0, 2**32 - 1]"),
        (["train", "--threads", "0"], "'threads' (--threads) must be between 1 and"),
        (["train", "--threads", "100000"], "'threads' (--threads) must be between 1 and"),
        (["train", "--device", "foo"], "--device 'foo' is not a device"),
        (["train", "--device", "meta"], "pyrobust runs on cpu, cuda, cuda:N or mps"),
        (["train", "--resume"], "--resume needs --checkpoint-dir"),
        (["train", "--arch", "resnet"], "argument --arch: invalid choice"),
        (["train", "--unknown", "1"], "unrecognized arguments: --unknown 1"),
        (["robustness", "--confidence", "1.5", "--run", "x"], "strictly between 0 and 1"),
        (["robustness", "--eps", "-1", "--run", "x"], "'eps' (--eps) must be >= 0"),
        (["robustness", "--num-samples", "0", "--run", "x"], "must be a positive integer or auto"),
        (["robustness", "--num-samples", "fast", "--run", "x"], "expected an integer, got 'fast'"),
        (["robustness", "--tolerance", "0.6", "--run", "x"], "between 0 and 1/2"),
        (["robustness", "--n-inputs", "-1", "--run", "x"], "'n_inputs' (--n-inputs) must be"),
        (["attack", "--steps", "0", "--run", "x"], "'steps' (--steps) must be positive"),
        (["metrics", "--num-bootstrap", "-2", "--run", "x"], "must be >= 0"),
        (["demo", "--r", "inf"], "argument --r: expected a finite number"),
        (["reproduce", "--betas", "1,0"], "'betas' (--betas) must be positive"),
        (["robustness", "--r", "0.5,1,0.5", "--run", "x"], "'r' (--r) repeats [0.5]"),
        (["reproduce", "--datasets", "digits,digits"], "repeats ['digits']"),
    ],
)
def test_bad_setting_is_named_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_line_error(capsys, message)
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused setting"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_named(tmp_path, capsys):
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "CUDA is not available on this machine")
    assert not (tmp_path / "r").exists()


def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import pyrobust.inference

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pyrobust.inference, "fit", no_training)
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["train", "--out", str(target), *TINY]) == 2
    one_line_error(capsys, "exists and is not a directory")
    assert target.read_text() == "keep me"
    assert main(["train", "--out", str(target / "run"), *TINY]) == 2
    one_line_error(capsys, "is a file, not a directory")


def test_query_checks_inputs_and_output_before_loading(run_dir, tmp_path, capsys):
    base = ["--run", str(run_dir)]
    assert main(["margin", *base, "--n-inputs", "100000"]) == 2
    one_line_error(capsys, "--n-inputs 100000 exceeds the 60 test inputs")
    assert main(["margin", *base, "--out", str(tmp_path / "m.txt")]) == 2
    one_line_error(capsys, "needs one of the extensions")
    assert main(["margin", *base, "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "is a directory")
    assert main(["margin", "--run", str(tmp_path / "none")]) == 2
    one_line_error(capsys, "expected a run directory")
    assert not (tmp_path / "none").exists()
    # a missing directory is named, not created (like pr.analysis.save)
    out = tmp_path / "new" / "m.nc"
    assert main(["margin", *base, "--n-inputs", "1", "--out", str(out)]) == 2
    one_line_error(capsys, f"the directory {out.parent} does not exist")
    assert not out.parent.exists()


# --------------------------------------------------------------------------------------------
# item 10: config files do not coerce; YAML errors are one line
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs = 1.5\n", "'epochs' (--epochs) must be an integer; got 1.5 (float)"),
        ("epochs = true\n", "'epochs' (--epochs) must be an integer; got True (bool)"),
        ("lr = true\n", "'lr' (--lr) must be a number; got True (bool)"),
        ("hidden = 16\n", "'hidden' (--hidden) must be a list, e.g. hidden = [16, 32]"),
        ('hidden = "16,32"\n', "'hidden' (--hidden) must be a list"),
        ("hidden = [16, 2.5]\n", "'hidden' (--hidden) must be an integer; got 2.5"),
        ("hidden = []\n", "must not be an empty list"),
        ("dataset = 3\n", "'dataset' (--dataset) must be a string; got 3 (int)"),
        ('dataset = "cifar"\n', "'dataset' (--dataset) must be one of ['digits', 'dsprites'"),
        ("resume = 1\n", "'resume' (--resume) must be true or false"),
        ("n = -5\n", "'n' (--n) must be positive"),
        ("lr = nan\n", "'lr' (--lr) must be finite"),
        ("[trian]\nepochs = 2\n", "unknown table(s) ['trian']"),
        ("epochs = \n", "not valid TOML"),
    ],
)
def test_config_values_are_not_coerced(text, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.toml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg)]) == 2
    one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  epochs: [1\n", "not valid YAML at line 3, column 1"),
        ("epochs: 2\n  lr: 3\n", "not valid YAML at line 2"),
        ("- 1\n- 2\n", "expected a table of settings; got list"),
        ("epochs: 1.5\n", "must be an integer; got 1.5 (float)"),
    ],
)
def test_yaml_errors_are_one_line(text, message, tmp_path, capsys):
    pytest.importorskip("yaml")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b"\xff\xfe", "cannot read the file"),
        (None, "is a directory"),
    ],
)
def test_unreadable_config_files_are_one_line(content, message, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    if content is None:
        cfg.mkdir()
    elif isinstance(content, bytes):
        cfg.write_bytes(content)
    else:
        cfg.write_text(content)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, message)


def test_required_setting_may_come_from_the_config(run_dir, tmp_path):
    cfg = tmp_path / "q.toml"
    cfg.write_text(f'[margin]\nrun = "{run_dir}"\nn_inputs = 1\nnum_samples = 20\n')
    out = tmp_path / "m.nc"
    assert main(["margin", "--config", str(cfg), "--out", str(out)]) == 0
    assert load(out)["robustness"]["bound"].sizes["obs_id"] == 1


# --------------------------------------------------------------------------------------------
# damaged and mixed run directories
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "run.json is damaged, not JSON"),
        ("[1, 2]", "run.json is damaged: expected a table of training settings, got list"),
        ('{"dataset": "cifar"}', "run.json is damaged: setting 'dataset' (--dataset) must be"),
        ('{"dataset": "digits", "n": "all"}', "run.json is damaged: setting 'n' (--n) must be"),
        ("[" * 100_000 + "]" * 100_000, "run.json is damaged"),
    ],
)
def test_damaged_run_json_names_the_file(content, message, run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pt").write_bytes((run_dir / "model.pt").read_bytes())
    (bad / "run.json").write_text(content)
    assert main(["margin", "--run", str(bad), "--n-inputs", "1"]) == 2
    line = one_line_error(capsys, message)
    assert f"--run {bad}" in line
    assert not (bad / "margin.nc").exists()


def test_mixed_run_directory_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), *TINY, "--seed", "7"]) == 0
    (other / "model.pt").write_bytes((run_dir / "model.pt").read_bytes())
    capsys.readouterr()
    assert main(["margin", "--run", str(other), "--n-inputs", "1"]) == 2
    one_line_error(capsys, "model.pt is not the model that run.json describes")


# --------------------------------------------------------------------------------------------
# item 4: same --seed, same bits, for every command that takes --seed
# --------------------------------------------------------------------------------------------
def state(path: Path) -> dict:
    payload = torch.load(path, weights_only=True)
    flat = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)

    walk("", payload)
    assert flat, f"no tensors in {path}"
    return flat


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


#: Variables whose values are clock readings, not results.
CLOCK = {"time", "elapsed_seconds", "train_seconds"}


def values(path: Path) -> dict:
    tree = load(path)
    out = {}
    for node in tree.subtree:
        for name, var in node.to_dataset().variables.items():
            if name not in CLOCK:
                out[f"{node.path}/{name}"] = np.asarray(var.values)
    return out


def same_values(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
        for k in a
    )


def test_train_same_seed_same_bits(tmp_path):
    runs = []
    for i, seed in enumerate((3, 3, 4)):
        torch.manual_seed(1000 + i)  # a different global RNG state before each run
        out = tmp_path / f"run{i}"
        assert main(["train", "--out", str(out), *TINY, "--epochs", "2", "--seed", str(seed)]) == 0
        runs.append(out)
    a, b, c = (state(r / "model.pt") for r in runs)
    assert same_tensors(a, b)
    assert not any(torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)
    assert same_values(values(runs[0] / "history.nc"), values(runs[1] / "history.nc"))


@pytest.mark.parametrize(
    ("command", "args", "file"),
    [
        ("robustness", ["--r", "0.5,1", "--eps", "0,1", "--num-samples", "40"], "robustness"),
        ("margin", ["--num-samples", "40", "--confidence", "0.9"], "margin"),
        ("attack", ["--eps", "0.5", "--steps", "3", "--restarts", "2", "--r", "1"], "attack"),
        ("attack", ["--empirical", "--r", "1", "--steps", "3", "--restarts", "2"], "empirical"),
        ("robustness", ["--r", "1", "--eps", "0,2", "--num-samples", "auto"], "robustness"),
        ("margin", ["--num-samples", "auto", "--confidence", "0.9"], "margin"),
        (
            "attack",
            ["--empirical", "--r", "1", "--steps", "3", "--restarts", "2", "--num-samples", "auto"],
            "empirical",
        ),
        ("certify", ["--a", "1", "--b", "1", "--c", "1"], "certify"),
    ],
)
def test_query_same_seed_same_bits(command, args, file, run_dir, tmp_path):
    outs = []
    for i in range(2):
        torch.manual_seed(1000 + i)
        out = tmp_path / f"{file}{i}.nc"
        argv = [command, "--run", str(run_dir), "--n-inputs", "3", "--seed", "5", *args]
        assert main([*argv, "--out", str(out)]) == 0
        outs.append(values(out))
    assert same_values(*outs)


def test_metrics_same_seed_same_bits(tmp_path):
    run = tmp_path / "sprites"
    assert main(["train", "--dataset", "dsprites", "--out", str(run), "--n", "300", *TINY[2:]]) == 0
    outs = []
    for i in range(2):
        torch.manual_seed(1000 + i)
        out = tmp_path / f"metrics{i}.nc"
        argv = [
            "metrics",
            "--run",
            str(run),
            "--n-inputs",
            "30",
            "--num-bootstrap",
            "2",
            "--seed",
            "5",
        ]
        assert main([*argv, "--out", str(out)]) == 0
        outs.append(values(out))
    assert same_values(*outs)


def test_demo_same_seed_same_bits(tmp_path):
    outs = []
    for i in range(2):
        torch.manual_seed(1000 + i)
        out = tmp_path / f"demo{i}"
        assert main(["demo", "--out", str(out), "--epochs", "1", "--seed", "2"]) == 0
        outs.append({n: values(out / f"{n}.nc") for n in ("history", "robustness", "margin")})
    for name in outs[0]:
        assert same_values(outs[0][name], outs[1][name]), name


@pytest.mark.slow
def test_reproduce_same_seed_same_bits(tmp_path):
    outs = []
    for i in range(2):
        torch.manual_seed(1000 + i)
        out = tmp_path / f"rep{i}"
        argv = ["reproduce", "--quick", "--out", str(out), "--betas", "4", "--seed", "1"]
        assert main([*argv, "--datasets", "digits"]) == 0
        outs.append(values(out / "reproduce.nc"))
    assert same_values(*outs)


# --------------------------------------------------------------------------------------------
# item 7 and issue 14: a run is replaced whole, results only with --force; checkpoints
# --------------------------------------------------------------------------------------------
def test_results_and_runs_are_replaced_only_with_force(run_dir, tmp_path, capsys):
    out = tmp_path / "m.nc"
    argv = ["margin", "--run", str(run_dir), "--n-inputs", "1", "--num-samples", "20"]
    assert main([*argv, "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--r", "2"]) == 2
    one_line_error(capsys, "exists; pass --force to replace it")
    assert out.read_bytes() == before
    assert main([*argv, "--out", str(out), "--r", "2", "--force"]) == 0
    assert float(load(out).attrs["r"]) == 2.0
    capsys.readouterr()
    assert main(["train", "--out", str(run_dir), *TINY]) == 2
    one_line_error(capsys, "exists; pass --force to replace that run")


def test_failed_train_leaves_the_old_run_whole(tmp_path, monkeypatch):
    import pyrobust.analysis

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    (run / "margin.nc").write_bytes(b"a result of the old model")
    old = {p.name: p.read_bytes() for p in run.iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C while history.nc is written

    monkeypatch.setattr(pyrobust.analysis, "save", crash)
    assert main(["train", "--out", str(run), *TINY, "--seed", "9", "--force"]) == 130
    assert {p.name: p.read_bytes() for p in run.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "the temp run is removed"
    monkeypatch.undo()
    assert main(["train", "--out", str(run), *TINY, "--seed", "9", "--force"]) == 0
    # the new run replaced the old one whole: the old model's results went with it
    assert sorted(p.name for p in run.iterdir()) == ["history.nc", "model.pt", "run.json"]
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 9
    assert record["model_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()


def train_in_subprocess(argv: list[str]) -> subprocess.Popen:
    code = "import sys; from pyrobust.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def check_whole_run(run: Path) -> None:
    record = json.loads((run / "run.json").read_text())
    assert record["model_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    history = load(run / "history.nc")
    assert json.loads(history.attrs["cli_settings"])["seed"] == record["seed"]


def kill_during_train(tmp_path: Path, kills: int, rng: random.Random) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    for k in range(kills):
        argv = ["train", "--out", str(run), *TINY, "--epochs", "3", "--seed", str(k + 1)]
        proc = train_in_subprocess([*argv, "--force", "--threads", "1"])
        time.sleep(rng.uniform(0.5, 8.0))
        proc.kill()
        proc.wait()
        check_whole_run(run)  # the old run or the new one, never a mix
    # the next run cleans what killed runs left behind
    assert main(["train", "--out", str(run), *TINY, "--force"]) == 0
    check_whole_run(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_kill_during_train_never_mixes_runs(tmp_path):
    kill_during_train(tmp_path, kills=1, rng=random.Random(0))


@pytest.mark.slow
def test_kill_during_train_never_mixes_runs_repeated(tmp_path):
    kill_during_train(tmp_path, kills=12, rng=random.Random(1))


def test_checkpoints_and_resume_match_an_uninterrupted_run(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = [*TINY, "--seed", "4"]
    assert main(["train", "--out", str(tmp_path / "full"), *base, "--epochs", "3"]) == 0
    argv = ["train", *base, "--checkpoint-dir", str(ckpt)]
    assert main([*argv, "--out", str(tmp_path / "part"), "--epochs", "2"]) == 0
    assert (ckpt / "last.pt").is_file()
    capsys.readouterr()
    # another setting than the checkpointed run: refused by name
    assert (
        main([*argv, "--out", str(tmp_path / "x"), "--epochs", "3", "--resume", "--lr", "0.01"])
        == 2
    )
    one_line_error(capsys, "--lr 0.002 there, 0.01 now")
    # the same directory without --resume: refused, the checkpoints are kept
    assert main([*argv, "--out", str(tmp_path / "x"), "--epochs", "3"]) == 2
    one_line_error(capsys, "pass --resume to continue it")
    assert main([*argv, "--out", str(tmp_path / "resumed"), "--epochs", "3", "--resume"]) == 0
    assert same_tensors(
        state(tmp_path / "full" / "model.pt"), state(tmp_path / "resumed" / "model.pt")
    )
    capsys.readouterr()
    inside = ["--checkpoint-dir", str(tmp_path / "full" / "ckpt")]
    assert main(["train", *base, "--out", str(tmp_path / "full"), "--force", *inside]) == 2
    one_line_error(capsys, "lies inside --out")


# --------------------------------------------------------------------------------------------
# issue 14 section 5: decisions, logging, no print in library code
# --------------------------------------------------------------------------------------------
def test_robustness_prints_decision_counts(run_dir, tmp_path, capsys):
    out = tmp_path / "r.nc"
    argv = ["robustness", "--run", str(run_dir), "--n-inputs", "5", "--r", "0.01,100"]
    assert main([*argv, "--eps", "0,1", "--num-samples", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if "not robust" in line)
    assert header.split() == ["robust", "not", "robust", "undecided"]
    rows = [
        line.split()
        for line in text.splitlines()
        if len(line.split()) >= 4 and all(t.isdigit() for t in line.split()[-3:])
    ]
    counts = [list(map(int, row[-3:])) for row in rows]
    assert len(counts) == 4 and all(sum(c) == 5 for c in counts)
    tree = load(out)["robustness"]
    decision = tree["decision"]
    if decision.dtype.kind in "iu":
        robust = int((decision == 1).sel(radius=100.0, eps=0.0).sum())
    else:
        robust = int((decision == "robust").sel(radius=100.0, eps=0.0).sum())
    assert robust == 5  # every input is r-robust at a radius of 100
    assert [5, 0, 0] in counts


def test_progress_goes_to_logging_off_a_terminal(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY]) == 0
    err = capsys.readouterr().err
    assert "training vae (mlp, bernoulli) on 240 digits images for 1 epochs" in err
    assert "train_loss per image by epoch" in err and "pyrobust train: done in" in err


def test_library_code_does_not_print():
    offenders = []
    for path in (ROOT / "pyrobust").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "pyrobust":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


# --------------------------------------------------------------------------------------------
# items 2, 3: files are data, not code
# --------------------------------------------------------------------------------------------
def test_floors_and_readme():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.10"' in text and '"zarr>=3"' in text and "zarr>=2" not in text
    readme = (ROOT / "README.md").read_text()
    assert "2.5.1" not in readme and "Files are data, not code" in readme
    assert "2.5.1" not in (ROOT / "Makefile").read_text()
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 10)


def test_load_refuses_object_codecs_before_opening(tmp_path):
    pytest.importorskip("zarr")
    import xarray as xr

    from pyrobust.analysis import save

    tree = xr.DataTree()
    tree["robustness"] = xr.DataTree(xr.Dataset({"p": (("obs_id",), [0.1, 0.2])}))
    store = save(tree, tmp_path / "r.zarr")
    assert float(load(store)["robustness"]["p"][1]) == 0.2
    for meta in (store / "robustness" / "p" / ".zarray", store / ".zmetadata"):
        data = json.loads(meta.read_text())
        entry = data["metadata"]["robustness/p/.zarray"] if meta.name == ".zmetadata" else data
        entry["dtype"], entry["filters"] = "|O", [{"id": "pickle"}]
        meta.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"array robustness/p declares an object dtype or codec"):
        load(store)


def test_replacement_without_atomic_exchange(tmp_path, monkeypatch):
    import pyrobust.cli as cli

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    old = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setattr(cli, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new run moving in: fails after the old one moved aside
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(cli.os, "rename", rename)
    assert main(["train", "--out", str(run), *TINY, "--seed", "3", "--force"]) == 2
    assert {p.name: p.read_bytes() for p in run.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    monkeypatch.setattr(cli.os, "rename", real_rename)
    assert main(["train", "--out", str(run), *TINY, "--seed", "3", "--force"]) == 0
    check_whole_run(run)
    assert json.loads((run / "run.json").read_text())["seed"] == 3


def test_a_run_moved_aside_by_a_killed_process_is_restored(tmp_path):
    import pyrobust.cli as cli

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid no longer alive
    dead.wait()
    aside = tmp_path / f".run.{dead.pid}.abc.tmp"
    aside.mkdir()
    os.rename(run, aside / "old")
    cli._clean_stale(run)
    check_whole_run(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_settings_too_large_for_memory_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--latent-dim", str(10**11)]) == 2
    one_line_error(capsys, "out of memory")
    assert not any(tmp_path.iterdir())
    assert main(["train", "--dataset", "dsprites", "--n", str(10**9), "--out", str(out)]) == 2
    one_line_error(capsys, "at most 737280 for dsprites")


def test_hidden_widths_may_repeat():
    from pyrobust.cli import make_config

    assert make_config("train", {"hidden": [16, 16]}).hidden == [16, 16]


def test_num_samples_auto_reaches_the_sequential_queries(run_dir, tmp_path, capsys):
    # --num-samples auto (and --tolerance) arrive at the API: the result records them.
    from pyrobust.analysis.io import load

    base = ["--run", str(run_dir), "--n-inputs", "2", "--seed", "1"]
    out = tmp_path / "rob.nc"
    argv = ["robustness", *base, "--eps", "0,2", "--num-samples", "auto", "--tolerance", "0.1"]
    assert main([*argv, "--out", str(out)]) == 0
    tree = load(out)
    assert tree.attrs["num_samples"] == "auto" and tree.attrs["tolerance"] == 0.1
    assert int(tree["robustness"]["num_draws"].max()) >= 16
    out = tmp_path / "emp.nc"
    argv = ["attack", *base, "--empirical", "--r", "1", "--steps", "3", "--restarts", "1"]
    assert main([*argv, "--num-samples", "auto", "--out", str(out)]) == 0
    tree = load(out)
    assert tree.attrs["num_samples"] == "auto" and tree.attrs["tolerance"] == 0.04
    # refused by name, before any work
    capsys.readouterr()
    assert main(["robustness", *base, "--tolerance", "0.1", "--out", str(tmp_path / "a.nc")]) == 2
    one_line_error(capsys, "--tolerance needs --num-samples auto")
    argv = ["attack", *base, "--r", "1", "--num-samples", "auto", "--out", str(tmp_path / "b.nc")]
    assert main(argv) == 2
    one_line_error(capsys, "--num-samples auto applies to --empirical")
    assert not (tmp_path / "a.nc").exists() and not (tmp_path / "b.nc").exists()
