"""The ``pyrobust`` command: each subcommand's happy path and its bad-input messages."""

import json

import pytest
import xarray as xr

from pyrobust.analysis import load
from pyrobust.cli import COMMANDS, main

TINY = ["--n", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "100"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "digits"
    assert main(["train", "--out", str(run), *TINY]) == 0
    return run


def test_train_writes_run_directory(digits_run):
    assert (digits_run / "model.pt").is_file()
    cfg = json.loads((digits_run / "run.json").read_text())
    assert cfg["dataset"] == "digits" and cfg["epochs"] == 1 and cfg["hidden"] == [16]
    history = load(digits_run / "history.nc")
    assert history["history"]["train_loss"].sizes["epoch"] == 1
    settings = json.loads(history.attrs["cli_settings"])
    assert settings["latent_dim"] == 2


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_explains_options(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "default:" in out
    # every command that draws at random takes --seed; report draws nothing
    assert ("--seed" in out) == (command != "report")


def test_robustness_curve(digits_run, tmp_path):
    out = tmp_path / "rob.nc"
    args = ["--run", str(digits_run), "--n-inputs", "3", "--r", "0.5,1", "--eps", "0,1"]
    assert main(["robustness", *args, "--num-samples", "50", "--out", str(out)]) == 0
    rob = load(out)["robustness"]
    assert rob["probability"].sizes == {"obs_id": 3, "eps": 2, "radius": 2}
    if "ci" in rob:  # limits on a ci_bound dim (ArviZ convention)
        lo, hi = rob["ci"].sel(ci_bound="lower"), rob["ci"].sel(ci_bound="upper")
    else:
        lo, hi = rob["ci_lower"], rob["ci_upper"]
    assert ((lo <= rob["probability"]) & (rob["probability"] <= hi)).all()


def test_margin_attack_and_empirical(digits_run):
    run = ["--run", str(digits_run), "--n-inputs", "2"]
    assert main(["margin", *run, "--num-samples", "50", "--confidence", "0.9"]) == 0
    margin = load(digits_run / "margin.nc")["robustness"]
    assert (margin["bound"] >= 0).all() and "p_a_lower" in margin
    assert main(["attack", *run, "--eps", "0.5", "--steps", "3", "--restarts", "1"]) == 0
    attack = load(digits_run / "attack.nc")
    assert attack["constant_data"]["delta"].sizes["obs_id"] == 2
    args = ["--empirical", "--r", "1.0", "--steps", "3", "--restarts", "1"]
    assert main(["attack", *run, *args]) == 0
    assert (load(digits_run / "empirical_margin.nc")["robustness"]["margin"] >= 0).all()


def test_certify_with_given_constants(digits_run):
    args = ["--run", str(digits_run), "--n-inputs", "2", "--r", "4", "--a", "1", "--b", "1"]
    assert main(["certify", *args, "--c", "1"]) == 0
    cert = load(digits_run / "certify.nc")["robustness"]
    assert (cert["certified_margin"] >= 0).all()


def test_certify_reads_constants_of_a_lipschitz_run(tmp_path):
    run = tmp_path / "lip"
    args = ["--arch", "lipschitz", "--lipschitz", "2", "--out", str(run)]
    assert main(["train", *args, *TINY]) == 0
    assert main(["certify", "--run", str(run), "--n-inputs", "3", "--r", "6"]) == 0
    tree = load(run / "certify.nc")
    cert = tree["robustness"]
    assert cert["certified_margin"].sizes == {"obs_id": 3}
    assert (cert["certified_margin"] >= 0).all()
    # verified from the layers, never above the nominal targets (2 for mu and sigma)
    assert 0 < float(tree.attrs["b"]) <= 2 + 1e-6 and 0 < float(tree.attrs["c"]) <= 2 + 1e-6


def test_metrics_and_report(tmp_path):
    run = tmp_path / "sprites"
    tiny = [*TINY[:1], "400", *TINY[2:]]
    assert main(["train", "--dataset", "dsprites", "--out", str(run), *tiny]) == 0
    assert main(["metrics", "--run", str(run), "--n-inputs", "80", "--num-bootstrap", "2"]) == 0
    metrics = load(run / "metrics.nc")["metrics"]
    assert 0 <= float(metrics["mig"]) <= 1
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<img" in html and "history" in html


def test_config_file_and_flag_precedence(tmp_path, digits_run):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[margin]\nr = 0.7\nnum_samples = 40\nn_inputs = 1\nnorm = "spectral"\n')
    out = tmp_path / "m.nc"
    assert main(["margin", "--config", str(cfg), "--run", str(digits_run), "--r", "0.9",
                 "--out", str(out)]) == 0  # fmt: skip
    tree = load(out)
    assert tree.attrs["norm"] == "spectral" and float(tree.attrs["r"]) == 0.9
    assert json.loads(tree.attrs["cli_settings"])["num_samples"] == 40


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (["train", "--epochs", "many"], "argument --epochs: expected an integer, got 'many'"),
        (["margin"], "the following arguments are required: --run"),
        (["margin", "--run", "/nonexistent"], "expected a run directory"),
        (["robustness", "--config", "/nonexistent.toml", "--run", "x"], "no such file"),
        (["report"], "the following arguments are required: inputs"),
        (["reproduce", "--datasets", "mnist"], "'datasets' (--datasets) must be one of"),
    ],
)
def test_bad_input_is_one_line_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("epoch = 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown setting(s) ['epoch']" in capsys.readouterr().err


def test_debug_shows_traceback():
    with pytest.raises(ValueError, match="invalid choice: 'cifar'"):
        main(["train", "--dataset", "cifar", "--debug"])


def test_reproduce_quick_has_every_variable(tmp_path):
    out = tmp_path / "rep"
    assert main(["reproduce", "--quick", "--out", str(out), "--betas", "4"]) == 0
    tree = xr.open_datatree(out / "reproduce.nc", engine="h5netcdf")
    expected = {
        "min_scale", "mean_scale", "jacobian_norm", "p_a", "bound", "empirical_margin",
        "likelihood_degradation", "val_loss",
    }  # fmt: skip
    for name in ("digits", "dsprites"):
        ds = tree[name].to_dataset()
        assert expected <= set(ds.data_vars)
        assert set(ds["objective"].values) == {"vae", "beta-vae", "beta-tcvae"}
        assert (ds["bound"] >= 0).all()
    assert {"mig", "sap", "dci_disentanglement"} <= set(tree["dsprites"].to_dataset().data_vars)
    text = (out / "RESULTS.md").read_text()
    assert "Pearson" in text and "## digits" in text and "## dsprites" in text
    assert (out / "digits_margins.png").stat().st_size > 1000


def test_demo_prints_report_and_saves_trees(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "r-robustness at r = 1.0" in text and "margins:" in text
    for name in ("history", "robustness", "margin", "empirical_margin"):
        tree = xr.open_datatree(out / f"{name}.nc", engine="h5netcdf")
        assert tree.children
    assert (out / "report" / "index.html").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attack", "--empirical"], "--empirical needs the radius --r"),
        (["certify"], "lipschitz"),
        (["metrics"], "no ground-truth factors"),
        (["demo", "--epochs", "0"], "epochs"),
        (["robustness", "--r", "-1"], "r"),
    ],
)
def test_bad_input_of_each_query_command(argv, message, digits_run, tmp_path, capsys):
    if argv[0] != "demo":
        out = tmp_path / "out.nc"
        argv = [*argv, "--run", str(digits_run), "--n-inputs", "2", "--out", str(out)]
    else:
        argv = [*argv, "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err.lower() or message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
