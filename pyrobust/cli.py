"""The ``pyrobust`` command: train VAEs, ask robustness queries, write reports.

Every subcommand's settings are a dataclass (below); each field is a command-line flag and a key
of an optional config file (``--config run.toml``, a flat table or one table per subcommand, e.g.
``[train]``). Flags given on the command line win over the file. The settings are stored in the
attrs of every result written, so a result says how it was made.

A run directory (``pyrobust train --out runs/vae``) holds ``model.pt`` (weights + JSON config,
loaded safely), ``run.json`` (the training settings, which also fix the data split) and
``history.nc``. The query subcommands take ``--run DIR`` and write DataTree files into it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["main"]


def _opt(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass
class Common:
    device: str | None = _opt(None, "torch device, e.g. cpu or cuda (default: cpu)")
    seed: int = _opt(0, "seed of every random choice (same seed, same result)")
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice)")


@dataclass
class DemoConfig(Common):
    out: str = _opt("pyrobust-demo", "directory for the demo's results")
    epochs: int = _opt(40, "training epochs of the demo VAE")
    r: float = _opt(1.0, "radius r of r-robustness (l2 distance between reconstructions)")


@dataclass
class TrainConfig(Common):
    out: str = _opt("runs/model", "run directory to create (model.pt, run.json, history.nc)")
    dataset: str = _opt("digits", "digits (scikit-learn, 8x8) or dsprites (procedural, 64x64)")
    n: int | None = _opt(None, "number of images (dsprites default 10000; digits all 1797)")
    arch: str = _opt("mlp", "network: mlp, conv, burgess (64x64 only) or lipschitz ([BAR])")
    lipschitz: float = _opt(5.0, "Lipschitz constant of each lipschitz-arch network")
    latent_dim: int = _opt(8, "latent dimension")
    hidden: list[int] = _opt((256,), "hidden widths of mlp nets, comma separated")
    likelihood: str = _opt("bernoulli", "bernoulli, continuous_bernoulli, gaussian or laplace")
    objective: str = _opt("vae", "vae, beta-vae, beta-tcvae, capacity, dip-vae-i, dip-vae-ii")
    beta: float = _opt(1.0, "disentangling weight of the objective")
    epochs: int = _opt(30, "training epochs")
    batch_size: int = _opt(64, "minibatch size")
    lr: float = _opt(2e-3, "Adam learning rate")


@dataclass
class QueryConfig(Common):
    run: str = _opt(None, "run directory written by `pyrobust train`", required=True)
    n_inputs: int = _opt(16, "number of test inputs to query (the first ones of the test split)")
    out: str | None = _opt(None, "output file (default: RUN/<subcommand>.nc)")


@dataclass
class RobustnessConfig(QueryConfig):
    r: list[float] = _opt((1.0,), "radius or radii r, comma separated")
    eps: list[float] | None = _opt(None, "perturbation sizes for a robustness curve")
    family: str = _opt("sphere", "random perturbation family for --eps: gaussian, sphere, linf")
    num_samples: int = _opt(1000, "encoder-noise draws per input")
    reference: str = _opt("mean", "mean (ball around g(mu(x)), [CAM]) or sample ([BAR])")
    confidence: float = _opt(0.95, "level of the Clopper-Pearson intervals")


@dataclass
class MarginConfig(QueryConfig):
    r: float = _opt(1.0, "radius r")
    num_samples: int = _opt(1000, "encoder-noise draws for p_A")
    norm: str = _opt("frobenius", "Jacobian norm: frobenius ([CAM]) or spectral (tighter)")
    confidence: float | None = _opt(None, "use the one-sided lower bound of p_A at this level")


@dataclass
class AttackConfig(QueryConfig):
    eps: list[float] = _opt((0.5,), "attack budgets, comma separated")
    norm: str = _opt("l2", "l2 or linf")
    steps: int = _opt(100, "gradient steps")
    restarts: int = _opt(4, "random restarts")
    r: float | None = _opt(None, "also estimate r-robustness at the attacked inputs")
    empirical: bool = _opt(False, "also find the empirical margin at radius --r by bisection")


@dataclass
class CertifyConfig(QueryConfig):
    r: float = _opt(1.0, "radius r")
    a: float | None = _opt(None, "decoder Lipschitz constant (default: read from the model)")
    b: float | None = _opt(None, "encoder-mean Lipschitz constant (default: from the model)")
    c: float | None = _opt(None, "encoder-std Lipschitz constant (default: from the model)")


@dataclass
class MetricsConfig(QueryConfig):
    n_inputs: int = _opt(2000, "number of test inputs used for MIG, SAP and DCI")
    num_bootstrap: int = _opt(20, "bootstrap replicates of the intervals (0: none)")


@dataclass
class ReportConfig(Common):
    inputs: list[str] = _opt(None, "result files (.nc) or run directories", positional=True)
    out: str = _opt("pyrobust-report", "directory of the HTML report")


@dataclass
class ReproduceConfig(Common):
    out: str = _opt("pyrobust-reproduce", "directory for the reproduction's results")
    quick: bool = _opt(False, "tiny scale (for tests and a first look)")
    datasets: list[str] = _opt(("digits", "dsprites"), "datasets, comma separated")
    objectives: list[str] = _opt(("vae", "beta-vae", "beta-tcvae"), "objectives")
    betas: list[float] | None = _opt(None, "beta values (default 1,2,4,8,16; --quick: 1,4)")


COMMANDS: dict[str, tuple[type, str]] = {
    "demo": (DemoConfig, "train a small VAE on digits and print a robustness report"),
    "train": (TrainConfig, "train a VAE with a disentangling objective"),
    "robustness": (RobustnessConfig, "r-robustness probabilities with exact intervals"),
    "margin": (MarginConfig, "the [CAM] margin bound from the encoder's Jacobian"),
    "attack": (AttackConfig, "maximum-damage attacks (and empirical margins)"),
    "certify": (CertifyConfig, "certified margins of a Lipschitz VAE ([BAR])"),
    "metrics": (MetricsConfig, "disentanglement metrics (dsprites runs)"),
    "report": (ReportConfig, "a self-contained HTML report of result files"),
    "reproduce": (ReproduceConfig, "the [CAM] experiment at laptop scale"),
}


# --------------------------------------------------------------------------------------------
# parsing: dataclass fields <-> flags <-> config file
# --------------------------------------------------------------------------------------------
def _base_type(tp):
    """(scalar type, is_list) of a field annotation such as ``list[float] | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _convert(value, tp, name: str):
    scalar, is_list = _base_type(tp)
    if value is None:
        return None
    if is_list:
        items = value.split(",") if isinstance(value, str) else list(value)
        return [_convert(v.strip() if isinstance(v, str) else v, scalar, name) for v in items]
    if scalar is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"setting {name!r} must be true or false; got {value!r}.")
    try:
        return scalar(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name!r} must be a {scalar.__name__}; got {value!r}.") from None


def _add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        scalar, is_list = _base_type(hints[f.name])
        meta = f.metadata
        default = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default))
        help_text = f"{meta['help']} (default: {default})"
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="*", default=argparse.SUPPRESS, help=meta["help"])
        elif scalar is bool:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=("A,B,..." if is_list else scalar.__name__.upper()),
                help=help_text,
            )


def _read_config(path: str, command: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                "or write the file as TOML."
            ) from None
        data = yaml.safe_load(text) or {}
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err}).") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: expected a table of settings; got {type(data).__name__}."
        )
    section = data.get(command, {})
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    return {**flat, **section}


def make_config(command: str, values: dict):
    """Build the settings dataclass of ``command`` from a dict, checking names and types."""
    cls = COMMANDS[command][0]
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} for `pyrobust {command}`; valid: {sorted(names)}."
        )
    kwargs = {k: _convert(v, hints[k], k) for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if f.metadata.get("required") and kwargs.get(f.name, f.default) is None:
            raise ValueError(f"`pyrobust {command}` needs --{f.name.replace('_', '-')}.")
        if f.metadata.get("positional") and not kwargs.get(f.name):
            raise ValueError(f"`pyrobust {command}` needs at least one of {f.name}.")
        if f.name not in kwargs and isinstance(f.default, tuple):
            kwargs[f.name] = list(f.default)
    return cls(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrobust",
        description="Robustness of variational autoencoders as queries on Pyro models.",
        epilog="Run `pyrobust COMMAND --help` for each command's settings.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="TOML (or YAML) file of settings; flags override it")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
        _add_flags(p, cls)
    return parser


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def _device(cfg):
    import torch

    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {cfg.threads}.")
        torch.set_num_threads(cfg.threads)
    if cfg.device is None:
        return torch.device("cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: CUDA is not available on this machine.")
    return dev


def _settings(cfg) -> dict:
    return {"cli_command": type(cfg).__name__, **dataclasses.asdict(cfg)}


def _save(tree, path: Path, cfg) -> Path:
    from pyrobust.analysis import save

    tree.attrs["cli_settings"] = json.dumps(_settings(cfg))
    out = save(tree, path)
    print(f"wrote {out}")
    return out


def cmd_train(cfg: TrainConfig) -> None:
    from pyrobust.analysis.experiment import build_vae, load_dataset, make_objective
    from pyrobust.inference import fit
    from pyrobust.models import save_model

    out = Path(cfg.out)
    dev = _device(cfg)
    split = load_dataset(cfg.dataset, n=cfg.n, seed=cfg.seed, device=dev)
    vae = build_vae(
        split.input_shape,
        arch=cfg.arch,
        latent_dim=cfg.latent_dim,
        hidden=cfg.hidden,
        likelihood=cfg.likelihood,
        lipschitz=cfg.lipschitz,
    )
    steps = cfg.epochs * -(-split.train.shape[0] // cfg.batch_size)
    elbo = make_objective(
        cfg.objective, beta=cfg.beta, dataset_size=split.train.shape[0], total_steps=steps
    )
    history = fit(
        vae,
        split.train,
        elbo=elbo,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        val_data=split.test,
        device=dev,
        seed=cfg.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_model(vae, out / "model.pt")
    (out / "run.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    _save(history, out / "history.nc", cfg)
    print(f"wrote {out / 'model.pt'}")


def _load_run(cfg: QueryConfig):
    """The trained VAE of ``cfg.run``, the run's settings and the first test inputs."""
    from pyrobust.analysis.experiment import load_dataset
    from pyrobust.models import load_model

    run = Path(cfg.run)
    if not (run / "model.pt").is_file() or not (run / "run.json").is_file():
        raise FileNotFoundError(
            f"--run {run}: expected a run directory with model.pt and run.json, as written by "
            "`pyrobust train --out DIR`."
        )
    train_cfg = json.loads((run / "run.json").read_text())
    dev = _device(cfg)
    vae = load_model(run / "model.pt", map_location=dev)
    vae.eval()
    split = load_dataset(
        train_cfg["dataset"], n=train_cfg.get("n"), seed=train_cfg["seed"], device=dev
    )
    return vae, train_cfg, split


def _out(cfg: QueryConfig, name: str) -> Path:
    return Path(cfg.out) if cfg.out else Path(cfg.run) / f"{name}.nc"


def cmd_robustness(cfg: RobustnessConfig) -> None:
    from pyrobust.robustness import r_robustness

    vae, _, split = _load_run(cfg)
    x = split.test[: cfg.n_inputs]
    tree = r_robustness(
        vae.model,
        vae.guide,
        x,
        r=cfg.r,
        eps=cfg.eps,
        family=cfg.family if cfg.eps is not None else None,
        num_samples=cfg.num_samples,
        reference=cfg.reference,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )
    rob = tree["robustness"].to_dataset()
    print(rob[["probability", "ci_lower", "ci_upper", "degree"]].to_dataframe().head(20))
    _save(tree, _out(cfg, "robustness"), cfg)


def cmd_margin(cfg: MarginConfig) -> None:
    from pyrobust.robustness import margin_bound

    vae, _, split = _load_run(cfg)
    tree = margin_bound(
        vae.model,
        vae.guide,
        split.test[: cfg.n_inputs],
        r=cfg.r,
        num_samples=cfg.num_samples,
        norm=cfg.norm,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )
    print(tree["robustness"].to_dataset().to_dataframe().head(20))
    _save(tree, _out(cfg, "margin"), cfg)


def cmd_attack(cfg: AttackConfig) -> None:
    from pyrobust.robustness import empirical_margin, max_damage_attack

    vae, _, split = _load_run(cfg)
    x = split.test[: cfg.n_inputs]
    if cfg.empirical:
        if cfg.r is None:
            raise ValueError("--empirical needs the radius --r of r-robustness.")
        tree = empirical_margin(
            vae.model,
            vae.guide,
            x,
            r=cfg.r,
            norm=cfg.norm,
            steps=cfg.steps,
            restarts=cfg.restarts,
            seed=cfg.seed,
        )
        name = "empirical_margin"
    else:
        tree = max_damage_attack(
            vae.model,
            vae.guide,
            x,
            eps=cfg.eps,
            norm=cfg.norm,
            steps=cfg.steps,
            restarts=cfg.restarts,
            r=cfg.r,
            seed=cfg.seed,
        )
        name = "attack"
    ds = tree["robustness"].to_dataset()
    print(ds[[v for v in ds.data_vars if ds[v].ndim <= 2]].to_dataframe().head(20))
    _save(tree, _out(cfg, name), cfg)


def cmd_certify(cfg: CertifyConfig) -> None:
    from pyrobust.robustness import certified_margin

    vae, _, split = _load_run(cfg)
    tree = certified_margin(
        vae.model, vae.guide, split.test[: cfg.n_inputs], r=cfg.r, a=cfg.a, b=cfg.b, c=cfg.c
    )
    print(tree["robustness"].to_dataset().to_dataframe().head(20))
    _save(tree, _out(cfg, "certify"), cfg)


def cmd_metrics(cfg: MetricsConfig) -> None:
    import torch

    from pyrobust.analysis.experiment import disentanglement

    vae, train_cfg, split = _load_run(cfg)
    if split.test_factors is None:
        raise ValueError(
            f"--run {cfg.run} was trained on {train_cfg['dataset']!r}, which has no ground-truth "
            "factors; disentanglement metrics need a dsprites run."
        )
    with torch.no_grad():
        codes, _ = vae.encode(split.test[: cfg.n_inputs])
    factors = split.test_factors[: cfg.n_inputs, 1:]  # the colour factor is constant
    tree = disentanglement(codes, factors, num_bootstrap=cfg.num_bootstrap, seed=cfg.seed)
    print(tree["metrics"].to_dataset())
    _save(tree, _out(cfg, "metrics"), cfg)


def cmd_report(cfg: ReportConfig) -> None:
    from pyrobust.analysis import report

    paths = []
    for item in cfg.inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(p.glob("*.nc")))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"report input {item}: no such file or directory.")
    if not paths:
        raise ValueError(f"no result files (.nc) found in {cfg.inputs}.")
    out = report(paths, cfg.out)
    print(f"wrote {out}")


def cmd_reproduce(cfg: ReproduceConfig) -> None:
    from pyrobust.analysis.reproduce import reproduce

    reproduce(
        cfg.out,
        quick=cfg.quick,
        datasets=cfg.datasets,
        objectives=cfg.objectives,
        betas=cfg.betas,
        device=_device(cfg),
        seed=cfg.seed,
        settings=_settings(cfg),
    )


def cmd_demo(cfg: DemoConfig) -> None:
    from pyrobust.analysis.demo import run_demo

    run_demo(cfg.out, epochs=cfg.epochs, r=cfg.r, device=_device(cfg), seed=cfg.seed)


HANDLERS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "robustness": cmd_robustness,
    "margin": cmd_margin,
    "attack": cmd_attack,
    "certify": cmd_certify,
    "metrics": cmd_metrics,
    "report": cmd_report,
    "reproduce": cmd_reproduce,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrobust`` console script; returns the exit status."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command, debug, config = args.pop("command"), args.pop("debug"), args.pop("config")
    try:
        values = _read_config(config, command) if config else {}
        values.update(args)
        cfg = make_config(command, values)
        start = time.perf_counter()
        HANDLERS[command](cfg)
        print(f"pyrobust {command}: done in {time.perf_counter() - start:.1f} s")
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, KeyError) as err:
        if debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"pyrobust {command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
