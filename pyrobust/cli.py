"""The ``pyrobust`` command: train VAEs, ask robustness queries, write reports.

Every subcommand's settings are a dataclass (below); each field is a command-line flag and a key
of an optional config file (``--config run.toml``, a flat table or one table per subcommand, e.g.
``[train]``). Flags given on the command line win over the file. Every value is checked (type,
range, choices) before any work starts, from the command line and from the file alike; config
values are never coerced (``epochs = 1.5`` or ``epochs = true`` are errors, not 1). The settings
are stored in the attrs of every result written, so a result says how it was made.

A run directory (``pyrobust train --out runs/vae``) holds ``model.pt`` (weights + JSON config,
loaded safely), ``run.json`` (the training settings, which also fix the data split, and the
SHA-256 of ``model.pt``) and ``history.nc``. It is written into a temporary sibling directory and
moved into place in one rename, so a killed run never leaves a mixed run directory. The query
subcommands take ``--run DIR`` and write DataTree files into it; an existing result is replaced
only with ``--force``.

Bad input exits with status 2 and a one-line message on stderr; ``--debug`` shows the traceback.
Progress goes to stderr: tqdm bars on a terminal, :mod:`logging` records otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("pyrobust.cli")

#: Choices of the string settings. They mirror ``pyrobust.analysis.experiment`` (tests check
#: that they agree); kept here so that ``pyrobust --help`` needs no torch import.
DATASETS = ("digits", "dsprites", "mnist5k")
ARCHS = ("mlp", "conv", "burgess", "lipschitz")
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian", "laplace")
OBJECTIVES = ("vae", "beta-vae", "beta-tcvae", "capacity", "dip-vae-i", "dip-vae-ii")

#: Largest ``--threads``: more than a few threads per core only slows torch down, and huge
#: values crash its thread pool.
MAX_THREADS_PER_CPU = 4
#: ``pyro.set_rng_seed`` seeds numpy, whose seeds are 32-bit.
MAX_SEED = 2**32 - 1
RESULT_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5", ".zarr")


def _opt(
    default,
    help: str,
    *,
    check: str | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    required: bool = False,
    positional: bool = False,
    unique: bool = True,
):
    """A settings field: its flag's help, value check and the default as ``--help`` shows it.

    ``check`` is one of ``"positive"`` (> 0), ``"nonneg"`` (>= 0), ``"unit"`` (in (0, 1)),
    ``"half"`` (in (0, 1/2)), ``"samples"`` (a positive int or ``"auto"``), ``"seed"``,
    ``"threads"``; ``shown`` replaces the default in ``--help`` (e.g. for ``None``);
    a list setting holds distinct values unless ``unique=False``.
    """
    meta = {"help": help, "check": check, "choices": choices, "shown": shown}
    meta.update(required=required, positional=positional, unique=unique)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass
class Common:
    device: str | None = _opt(None, "torch device: cpu, cuda, cuda:N or mps", shown="cpu")
    seed: int = _opt(0, "seed of every random choice (same seed, same bits)", check="seed")
    threads: int | None = _opt(
        None, "torch CPU threads (1 to 4 per CPU core)", check="threads", shown="torch's choice"
    )


@dataclass
class DemoConfig(Common):
    out: str = _opt("pyrobust-demo", "directory for the demo's results (replaced files)")
    epochs: int = _opt(40, "training epochs of the demo VAE", check="positive")
    r: float = _opt(
        1.0, "radius r of r-robustness (l2 distance between reconstructions)", check="positive"
    )


@dataclass
class TrainConfig(Common):
    out: str = _opt("runs/model", "run directory to create (model.pt, run.json, history.nc)")
    force: bool = _opt(False, "replace an existing run directory (and the results in it)")
    dataset: str = _opt(
        "digits",
        "digits (8x8, scikit-learn), dsprites (64x64, procedural), mnist5k (28x28)",
        choices=DATASETS,
    )
    n: int | None = _opt(
        None, "number of images", check="positive", shown="dsprites 10000; digits, mnist5k: all"
    )
    arch: str = _opt("mlp", "network (burgess: 64x64 only; lipschitz: [BAR] nets)", choices=ARCHS)
    lipschitz: float = _opt(
        5.0, "Lipschitz constant of each lipschitz-arch network", check="positive"
    )
    latent_dim: int = _opt(8, "latent dimension", check="positive")
    hidden: list[int] = _opt(
        (256,), "hidden widths of mlp nets, comma separated", check="positive", unique=False
    )
    likelihood: str = _opt("bernoulli", "likelihood of the pixels", choices=LIKELIHOODS)
    objective: str = _opt("vae", "training objective", choices=OBJECTIVES)
    beta: float = _opt(1.0, "disentangling weight of the objective", check="positive")
    epochs: int = _opt(30, "training epochs (with --resume: the total)", check="positive")
    batch_size: int = _opt(64, "minibatch size", check="positive")
    lr: float = _opt(2e-3, "Adam learning rate", check="positive")
    checkpoint_dir: str | None = _opt(
        None, "write last.pt/best.pt checkpoints here every epoch", shown="no checkpoints"
    )
    resume: bool = _opt(False, "continue from CHECKPOINT_DIR/last.pt (same settings)")


@dataclass
class QueryConfig(Common):
    run: str = _opt(None, "run directory written by `pyrobust train`", required=True)
    n_inputs: int = _opt(
        16, "number of test inputs to query (the first of the test split)", check="positive"
    )
    out: str | None = _opt(None, "output file (.nc or .zarr)", shown="RUN/<command>.nc")
    force: bool = _opt(False, "replace an existing output file")


@dataclass
class RobustnessConfig(QueryConfig):
    r: list[float] = _opt((1.0,), "radius or radii r, comma separated", check="positive")
    eps: list[float] | None = _opt(
        None, "perturbation sizes for a robustness curve", check="nonneg", shown="no perturbation"
    )
    family: str = _opt(
        "sphere", "random perturbation family for --eps", choices=("gaussian", "sphere", "linf")
    )
    num_samples: int | str = _opt(
        1000,
        "encoder-noise draws per input, or auto: sequential decisions with as few draws as each "
        "needs (error 1 - confidence per cell)",
        check="samples",
    )
    tolerance: float | None = _opt(
        None,
        "with --num-samples auto: decide 'about 1/2' inside 1/2 +- this",
        check="half",
        shown="no indifference zone",
    )
    reference: str = _opt(
        "mean",
        "ball around g(mu(x)) ([CAM]) or a sampled reconstruction ([BAR])",
        choices=("mean", "sample"),
    )
    confidence: float = _opt(0.95, "level of the Clopper-Pearson intervals", check="unit")


@dataclass
class MarginConfig(QueryConfig):
    r: float = _opt(1.0, "radius r", check="positive")
    num_samples: int | str = _opt(
        1000,
        "encoder-noise draws for p_A, or auto: draw until its lower limit is within 0.01",
        check="samples",
    )
    norm: str = _opt(
        "frobenius",
        "Jacobian norm: frobenius ([CAM]), spectral (tighter) or whitened (diag(sigma)^-1 J, "
        "tightest)",
        choices=("frobenius", "spectral", "whitened"),
    )
    confidence: float | None = _opt(
        None,
        "use the one-sided lower bound of p_A at this level",
        check="unit",
        shown="the point estimate",
    )


@dataclass
class AttackConfig(QueryConfig):
    eps: list[float] = _opt((0.5,), "attack budgets, comma separated", check="positive")
    norm: str = _opt("l2", "norm of the attack budget", choices=("l2", "linf"))
    steps: int = _opt(100, "gradient steps", check="positive")
    restarts: int = _opt(4, "random restarts", check="positive")
    r: float | None = _opt(
        None, "also estimate r-robustness at the attacked inputs", check="positive", shown="none"
    )
    empirical: bool = _opt(False, "instead find the empirical margin at radius --r by bisection")
    num_samples: int | str = _opt(
        1000,
        "encoder-noise draws per robustness estimate, or auto (--empirical only): sequential "
        "verdicts, attacks ended early (error 1 - 0.95 for each margin)",
        check="samples",
    )
    tolerance: float | None = _opt(
        None,
        "with --empirical --num-samples auto: the indifference zone 1/2 +- this",
        check="half",
        shown="0.04",
    )


@dataclass
class CertifyConfig(QueryConfig):
    r: float = _opt(1.0, "radius r", check="positive")
    a: float | None = _opt(
        None, "decoder Lipschitz constant", check="positive", shown="read from the model"
    )
    b: float | None = _opt(
        None, "encoder-mean Lipschitz constant", check="positive", shown="read from the model"
    )
    c: float | None = _opt(
        None, "encoder-std Lipschitz constant", check="positive", shown="read from the model"
    )


@dataclass
class MetricsConfig(QueryConfig):
    n_inputs: int | None = _opt(
        None,
        "number of test inputs used for MIG, SAP and DCI",
        check="positive",
        shown="the test split, at most 2000",
    )
    num_bootstrap: int = _opt(20, "bootstrap replicates of the intervals (0: none)", check="nonneg")


@dataclass
class ReportConfig:
    inputs: list[str] = _opt(
        None, "result files (.nc) or run directories", required=True, positional=True
    )
    out: str = _opt("pyrobust-report", "directory of the HTML report")


@dataclass
class ReproduceConfig(Common):
    out: str = _opt("pyrobust-reproduce", "directory for the reproduction's results")
    quick: bool = _opt(False, "tiny scale (for tests and a first look)")
    datasets: list[str] = _opt(
        ("digits", "dsprites"), "datasets, comma separated", choices=DATASETS
    )
    objectives: list[str] = _opt(
        ("vae", "beta-vae", "beta-tcvae"), "objectives, comma separated", choices=OBJECTIVES
    )
    betas: list[float] | None = _opt(
        None, "beta values, comma separated", check="positive", shown="1,2,4,8,16; --quick: 1,4"
    )
    engine: str = _opt(
        "local",
        "local (this process) or ray: each model trained, then audited, as its own Ray task",
        choices=("local", "ray"),
    )
    address: str | None = _opt(
        None, "Ray cluster: auto, HOST:6379 or ray://HOST:10001", shown="a new local Ray instance"
    )


@dataclass
class AuditConfig(Common):
    run: str = _opt(None, "run directory written by `pyrobust train`", required=True)
    dataset: str | None = _opt(
        None,
        "inputs: the test split of a dataset (digits, dsprites, mnist5k) or a .npy file",
        shown="the run's dataset",
    )
    n_inputs: int | None = _opt(None, "audit the first N inputs", check="positive", shown="all")
    out: str | None = _opt(
        None, "zarr store; resumed when it holds this same audit", shown="RUN/audit.zarr"
    )
    force: bool = _opt(False, "replace an existing audit store instead of resuming it")
    engine: str = _opt(
        "local", "local (this process) or ray (the `ray` extra)", choices=("local", "ray")
    )
    address: str | None = _opt(
        None, "Ray cluster: auto, HOST:6379 or ray://HOST:10001", shown="a new local Ray instance"
    )
    workers: int | None = _opt(None, "Ray workers", check="positive", shown="one per GPU or CPU")
    gpus_per_worker: float | None = _opt(
        None, "GPUs per Ray worker", check="nonneg", shown="1 on GPU clusters, else 0"
    )
    shard_size: int = _opt(1024, "inputs per shard (and per zarr chunk)", check="positive")
    r: list[float] = _opt((1.0,), "radius or radii r, comma separated", check="positive")
    num_samples: int | str = _opt(
        1000,
        "encoder-noise draws per input, or auto: sequential decisions with as few draws as each "
        "needs (error 1 - confidence per cell; the margin bound's p_A within 0.01)",
        check="samples",
    )
    confidence: float = _opt(0.95, "level of the intervals and of the margin bound", check="unit")
    margin: bool = _opt(True, "also the [CAM] margin bound at the first radius")


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
    "audit": (AuditConfig, "queries over a whole data set: sharded, resumable, on Ray"),
}


# --------------------------------------------------------------------------------------------
# parsing: dataclass fields <-> flags <-> config file
# --------------------------------------------------------------------------------------------
class UsageError(ValueError):
    """A bad command line (argparse's errors, raised instead of printing the usage)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyrobust")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _base_type(tp):
    """(scalar type, is_list) of a field annotation such as ``list[float] | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _parse_scalar(text: str, scalar: type):
    """A flag's text as ``scalar`` (int, float or str); raises ArgumentTypeError."""
    if scalar is int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if scalar is float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value
    return text


def _flag_type(scalar: type, is_list: bool, auto: bool = False):
    def parse(text: str):
        if auto and text == "auto":
            return text
        if not is_list:
            return _parse_scalar(text, scalar)
        items = [t.strip() for t in text.split(",")]
        if any(not t for t in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [_parse_scalar(t, scalar) for t in items]

    parse.__name__ = f"list of {scalar.__name__}" if is_list else scalar.__name__
    return parse


def _check_value(value, scalar: type, name: str, meta) -> None:
    """Type and range of one (scalar) setting value, as it came (never coerced)."""
    where = f"setting {name!r} ({_flag(name)})"
    if scalar is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false; got {value!r}.")
        return
    if meta.get("check") == "samples":  # a positive integer or "auto"
        if value == "auto":
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{where} must be a positive integer or auto; got {value!r} "
                f"({type(value).__name__})."
            )
        if value <= 0:
            raise ValueError(f"{where} must be a positive integer or auto; got {value!r}.")
        return
    if scalar is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{where} must be an integer; got {value!r} ({type(value).__name__}).")
    if scalar is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number; got {value!r} ({type(value).__name__}).")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite; got {value!r}.")
    if scalar is str and not isinstance(value, str):
        raise TypeError(f"{where} must be a string; got {value!r} ({type(value).__name__}).")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{where} must be one of {list(choices)}; got {value!r}.")
    check = meta.get("check")
    if check == "positive" and not value > 0:
        raise ValueError(f"{where} must be positive; got {value!r}.")
    if check == "nonneg" and not value >= 0:
        raise ValueError(f"{where} must be >= 0; got {value!r}.")
    if check == "half" and not 0 < value < 0.5:
        raise ValueError(f"{where} must lie strictly between 0 and 1/2; got {value!r}.")
    if check == "unit" and not 0 < value < 1:
        raise ValueError(f"{where} must lie strictly between 0 and 1; got {value!r}.")
    if check == "seed" and not 0 <= value <= MAX_SEED:
        raise ValueError(f"{where} must be an integer in [0, 2**32 - 1]; got {value!r}.")
    if check == "threads":
        top = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
        if not 1 <= value <= top:
            raise ValueError(
                f"{where} must be between 1 and {top} ({MAX_THREADS_PER_CPU} per CPU core of "
                f"this machine); got {value!r}."
            )


def _check_field(value, tp, name: str, meta):
    """Check one setting of any annotation; lists come as lists (flags are parsed before)."""
    scalar, is_list = _base_type(tp)
    if value is None:
        if tp is not None and type(None) not in typing.get_args(tp):
            raise TypeError(f"setting {name!r} ({_flag(name)}) must not be empty.")
        return None
    if is_list:
        if not isinstance(value, list | tuple):
            example = "[16, 32]" if scalar is int else "[1.0, 2.0]" if scalar is float else '["a"]'
            raise TypeError(
                f"setting {name!r} ({_flag(name)}) must be a list, e.g. {name} = {example} in a "
                f"config file or {_flag(name)} A,B on the command line; got {value!r}."
            )
        if not value:
            raise ValueError(f"setting {name!r} ({_flag(name)}) must not be an empty list.")
        for item in value:
            _check_value(item, scalar, name, meta)
        if meta.get("unique", True) and len(set(value)) != len(value):
            repeated = sorted({v for v in value if list(value).count(v) > 1})
            raise ValueError(
                f"setting {name!r} ({_flag(name)}) repeats {repeated}; give each value once."
            )
        return list(value)
    _check_value(value, scalar, name, meta)
    return value


def _add_flags(parser: argparse.ArgumentParser, cls: type, from_config: set[str]) -> None:
    hints = typing.get_type_hints(cls)
    required = parser.add_argument_group("required settings (flag or --config)")
    for f in dataclasses.fields(cls):
        scalar, is_list = _base_type(hints[f.name])
        meta = f.metadata
        needed = meta["required"] and f.name not in from_config
        if meta["shown"] is not None:
            default = meta["shown"]
        elif isinstance(f.default, tuple):
            default = ",".join(map(str, f.default))
        else:
            default = f.default
        help_text = meta["help"] if meta["required"] else f"{meta['help']} (default: {default})"
        if meta["positional"]:
            parser.add_argument(
                f.name,
                nargs="+" if needed else "*",
                default=argparse.SUPPRESS,
                help=meta["help"],
            )
            continue
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if scalar is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _flag_type(scalar, is_list, auto=meta["check"] == "samples")
            if meta["choices"] and not is_list:
                kwargs["choices"] = meta["choices"]
            elif meta["choices"]:
                kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "},..."
            else:
                kwargs["metavar"] = "A,B,..." if is_list else f.name.upper()
        group = required if needed else parser
        group.add_argument(_flag(f.name), required=needed, **kwargs)


def _config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (read before parsing: it supplies defaults)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _read_config(path: str, command: str) -> dict:
    """The settings of ``command`` in the TOML/YAML file ``path`` (flat keys and its table)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--config {path}: is a directory; give a TOML or YAML file.")
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: cannot read the file ({err}).") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                "or write the file as TOML."
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"--config {path}: not valid YAML{where}: {problem}.") from None
        except RecursionError:
            raise ValueError(f"--config {path}: nested too deeply to be a settings file.") from None
        data = {} if data is None else data
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err}).") from None
        except RecursionError:
            raise ValueError(f"--config {path}: nested too deeply to be a settings file.") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: expected a table of settings; got {type(data).__name__}."
        )
    tables = {k for k, v in data.items() if isinstance(v, dict)}
    unknown = sorted(str(k) for k in tables - set(COMMANDS))
    if unknown:
        raise ValueError(
            f"--config {path}: unknown table(s) {unknown}; tables are named after commands "
            f"({sorted(COMMANDS)})."
        )
    section = data.get(command, {})
    flat = {k: v for k, v in data.items() if k not in tables}
    return {**flat, **section}


def make_config(command: str, values: dict):
    """Build the settings dataclass of ``command`` from a dict, checking names, types and ranges.

    Values are taken as they are (a config file's ``epochs = 1.5`` is refused, not rounded);
    flags arrive already parsed by their argparse ``type``.
    """
    cls = COMMANDS[command][0]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} for `pyrobust {command}`; valid: {sorted(fields)}."
        )
    kwargs = {k: _check_field(v, hints[k], k, fields[k].metadata) for k, v in values.items()}
    for f in fields.values():
        if f.metadata["required"] and kwargs.get(f.name) is None:
            raise ValueError(f"`pyrobust {command}` needs {_flag(f.name)}.")
        if f.name not in kwargs and isinstance(f.default, tuple):
            kwargs[f.name] = list(f.default)
    return cls(**kwargs)


def build_parser(command_from_config: dict[str, set[str]] | None = None) -> argparse.ArgumentParser:
    """The argument parser; settings found in a config file are not required as flags."""
    from_config = command_from_config or {}
    parser = _Parser(
        prog="pyrobust",
        description="Robustness of variational autoencoders as queries on Pyro models.",
        epilog="Run `pyrobust COMMAND --help` for each command's settings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="TOML (or YAML) file of settings; flags override it")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
        _add_flags(p, cls, from_config.get(name, set()))
    return parser


# --------------------------------------------------------------------------------------------
# checks and set-up before any work
# --------------------------------------------------------------------------------------------
def _device(cfg):
    """The checked torch device of ``cfg`` (``--threads`` applied)."""
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(cfg.device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"--device {cfg.device!r} is not a device; use cpu, cuda, cuda:N or mps."
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {cfg.device}: CUDA is not available on this machine; use --device cpu."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"--device {cfg.device}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}."
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {cfg.device}: MPS is not available on this machine.")
    elif dev.type != "cpu":
        raise ValueError(
            f"--device {cfg.device}: pyrobust runs on cpu, cuda, cuda:N or mps; got a "
            f"{dev.type!r} device."
        )
    return dev


def _seed(seed: int) -> None:
    """Seed Python, numpy and torch (``pyro.set_rng_seed``): same seed, same bits."""
    import pyro

    pyro.set_rng_seed(seed)


def _settings(cfg) -> dict:
    return {"cli_command": type(cfg).__name__, **dataclasses.asdict(cfg)}


def _check_new_dir(path: Path, flag: str) -> None:
    """``path`` can be a directory: not a file, and its parents are creatable."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory; choose another path.")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a directory.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path}: the directory {parent} is not writable.")


def _make_dir(path: Path, flag: str) -> Path:
    _check_new_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot create the directory ({err.strerror}).") from None
    return path


def _result_path(cfg: QueryConfig, name: str) -> Path:
    """The checked output file of a query: in an existing, writable directory (a typo in a
    path does not create directories), and replaced only with ``--force``."""
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / f"{name}.nc"
    flag = "--out" if cfg.out else f"--run {cfg.run}:"
    if out.is_dir() and out.suffix.lower() != ".zarr":
        raise ValueError(f"--out {out}: is a directory; give a file name such as {name}.nc.")
    if out.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(
            f"--out {out}: a result file needs one of the extensions {list(RESULT_SUFFIXES)}."
        )
    if out.exists() and not cfg.force:
        raise ValueError(f"{flag} {out} exists; pass --force to replace it, or --out another file.")
    if not out.parent.is_dir():
        raise ValueError(
            f"--out {out}: the directory {out.parent} does not exist; create it first "
            f"(mkdir -p {out.parent})."
        )
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: the directory {out.parent} is not writable.")
    return out


def _save(tree, path: Path, cfg, identity: dict | None = None, quiet: bool = False) -> Path:
    from pyrobust._results import encode_attrs
    from pyrobust.analysis import save

    tree.attrs["cli_settings"] = json.dumps(_settings(cfg))
    for key, value in encode_attrs(identity or {}).items():
        tree.attrs.setdefault(key, value)
    out = save(tree, path)
    if not quiet:
        print(f"wrote {out}")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# train: a run directory written aside and moved into place
# --------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _clean_stale(final: Path) -> None:
    """Remove the temp dirs of earlier ``train`` runs into ``final`` that were killed.

    A run moved aside by a replacement killed half-way (``.../old``, only where directories
    cannot be exchanged atomically) is put back first when ``final`` is missing.
    """
    for p in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        parts = p.name[len(final.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            if (p / "old").is_dir() and not final.exists():
                os.rename(p / "old", final)
                log.info("restored %s, moved aside by a killed run", final)
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed %s, left by a killed run", p)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a new temp file beside ``path`` and rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unable."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _install_run(staging: Path, final: Path) -> None:
    """Move the complete run in ``staging`` to ``final``: at every instant ``final`` is either
    the old run or the new one, never a mix (a replaced old run ends in ``staging``)."""
    if not final.exists():
        os.rename(staging, final)
        return
    if not _exchange(staging, final):
        # Without an atomic exchange: move the old run aside (same temp-name pattern, so a
        # kill between the renames leaves it recoverable and cleaned later), then move in.
        aside = Path(
            tempfile.mkdtemp(
                prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent
            )
        )
        os.rename(final, aside / "old")
        try:
            os.rename(staging, final)
        except BaseException:
            os.rename(aside / "old", final)
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return
    shutil.rmtree(staging, ignore_errors=True)


#: Settings that may differ between a run and its resumption.
_RESUMABLE = {"epochs", "out", "force", "checkpoint_dir", "resume", "threads", "device"}


def _check_resume(cfg: TrainConfig, ckpt: Path) -> None:
    """Record the run's settings in ``ckpt``; on ``--resume``, refuse different ones."""
    record = ckpt / "train.json"
    mine = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE}
    if cfg.resume and record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise ValueError(
                f"--checkpoint-dir {ckpt}: train.json is damaged ({err}); start fresh without "
                "--resume, or use another --checkpoint-dir."
            ) from None
        if not isinstance(saved, dict):
            raise ValueError(f"--checkpoint-dir {ckpt}: train.json is not a table of settings.")
        diff = [k for k in mine if k in saved and saved[k] != mine[k]]
        if diff:
            detail = ", ".join(f"{_flag(k)} {saved[k]!r} there, {mine[k]!r} now" for k in diff)
            raise ValueError(
                f"--resume: the checkpoints in {ckpt} are of another run ({detail}); pass the "
                "same settings (only --epochs may grow), or start fresh without --resume."
            )
    elif not cfg.resume and (ckpt / "last.pt").exists():
        raise ValueError(
            f"--checkpoint-dir {ckpt} holds the checkpoints of an earlier run; pass --resume to "
            "continue it, or choose an empty --checkpoint-dir."
        )
    _write_atomic(record, json.dumps(mine, indent=2))


def cmd_train(cfg: TrainConfig) -> None:
    from pyrobust.analysis.experiment import build_vae, check_dataset, load_dataset, make_objective
    from pyrobust.inference import fit
    from pyrobust.models import save_model

    dev = _device(cfg)
    try:
        check_dataset(cfg.dataset, cfg.n)
    except (ValueError, TypeError) as err:
        raise ValueError(f"--n {cfg.n}: {err}") from None
    final = Path(cfg.out)
    _check_new_dir(final, "--out")
    if final.exists() and any(final.iterdir()) and not cfg.force:
        raise ValueError(
            f"--out {final} exists; pass --force to replace that run (and the results in it), "
            "or choose another --out."
        )
    if cfg.resume and cfg.checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir (the directory holding last.pt).")
    ckpt = None
    if cfg.checkpoint_dir is not None:
        inside = Path(cfg.checkpoint_dir).resolve()
        if inside == final.resolve() or final.resolve() in inside.parents:
            raise ValueError(
                f"--checkpoint-dir {cfg.checkpoint_dir} lies inside --out {final}, which a new run "
                "replaces as a whole; put the checkpoints beside it (e.g. "
                f"{final.parent / (final.name + '-checkpoints')})."
            )
        ckpt = _make_dir(Path(cfg.checkpoint_dir), "--checkpoint-dir")
        _check_resume(cfg, ckpt)
    _make_dir(final.parent, "--out")
    _clean_stale(final)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    )
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0o700 would become the run directory's mode
    try:
        split = load_dataset(cfg.dataset, n=cfg.n, seed=cfg.seed, device=dev)
        _seed(cfg.seed)  # the initial weights: same seed, same network
        vae = build_vae(
            split.input_shape,
            arch=cfg.arch,
            latent_dim=cfg.latent_dim,
            hidden=cfg.hidden,
            likelihood=cfg.likelihood,
            lipschitz=cfg.lipschitz,
        )
        if split.train.shape[0] < cfg.batch_size:
            log.info(
                "--batch-size %d exceeds the %d training images: one batch per epoch",
                cfg.batch_size,
                split.train.shape[0],
            )
        steps = cfg.epochs * -(-split.train.shape[0] // cfg.batch_size)
        elbo = make_objective(
            cfg.objective, beta=cfg.beta, dataset_size=split.train.shape[0], total_steps=steps
        )
        log.info(
            "training %s (%s, %s) on %d %s images for %d epochs",
            cfg.objective,
            cfg.arch,
            cfg.likelihood,
            split.train.shape[0],
            cfg.dataset,
            cfg.epochs,
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
            checkpoint_dir=ckpt,
            resume=cfg.resume,
            progress=_on_terminal(),
        )
        _log_epochs(history)
        save_model(vae, staging / "model.pt")
        record = {**dataclasses.asdict(cfg), "model_sha256": _sha256(staging / "model.pt")}
        (staging / "run.json").write_text(json.dumps(record, indent=2))
        _save(history, staging / "history.nc", cfg, {"run_dir": str(final.resolve())}, quiet=True)
        _install_run(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {final / 'model.pt'}, {final / 'run.json'}, {final / 'history.nc'}")


def _log_epochs(history) -> None:
    if _on_terminal():
        return
    hist = history["history"]
    for name in ("train_loss", "val_loss"):
        if name in hist and hist[name].size:
            log.info(
                "%s per image by epoch: %s", name, " ".join(f"{v:.4g}" for v in hist[name].values)
            )


# --------------------------------------------------------------------------------------------
# queries
# --------------------------------------------------------------------------------------------
def _read_run_json(run: Path) -> dict:
    """The training settings in ``run/run.json``, checked; errors name the file and the fault."""
    path = run / "run.json"
    fix = f"re-create the run with `pyrobust train --out {run} --force`"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--run {run}: cannot read run.json ({err}); {fix}.") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"--run {run}: run.json is damaged, not JSON ({err}); {fix}.") from None
    except RecursionError:
        raise ValueError(f"--run {run}: run.json is damaged, nested too deeply; {fix}.") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--run {run}: run.json is damaged: expected a table of training settings, got "
            f"{type(data).__name__}; {fix}."
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = make_config("train", {k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as err:
        raise ValueError(f"--run {run}: run.json is damaged: {err} {fix}.") from None
    settings = dataclasses.asdict(cfg)
    digest = data.get("model_sha256")
    if digest is not None and not isinstance(digest, str):
        raise ValueError(f"--run {run}: run.json is damaged: model_sha256 is not a string; {fix}.")
    settings["model_sha256"] = digest
    return settings


def _check_run(cfg: QueryConfig) -> dict:
    """The checked training settings of ``cfg.run`` (nothing is loaded or written)."""
    run = Path(cfg.run)
    if not (run / "model.pt").is_file() or not (run / "run.json").is_file():
        raise FileNotFoundError(
            f"--run {run}: expected a run directory with model.pt and run.json, as written by "
            "`pyrobust train --out DIR`."
        )
    train_cfg = _read_run_json(run)
    digest = train_cfg["model_sha256"]
    if digest is not None and _sha256(run / "model.pt") != digest:
        raise ValueError(
            f"--run {run}: model.pt is not the model that run.json describes (its SHA-256 "
            f"differs): the directory mixes two runs; re-create it with `pyrobust train --out "
            f"{run} --force`."
        )
    return train_cfg


def _prepare(cfg: QueryConfig, name: str, needs_factors: bool = False):
    """Check the run and the output, then load: (vae, training settings, split, output path)."""
    from pyrobust.analysis.experiment import load_dataset
    from pyrobust.models import load_model

    train_cfg = _check_run(cfg)
    if needs_factors and train_cfg["dataset"] != "dsprites":
        raise ValueError(
            f"--run {cfg.run} was trained on {train_cfg['dataset']!r}, which has no ground-truth "
            "factors; disentanglement metrics need a dsprites run."
        )
    out = _result_path(cfg, name)
    dev = _device(cfg)
    vae = load_model(Path(cfg.run) / "model.pt", map_location=dev)
    vae.eval()
    split = load_dataset(train_cfg["dataset"], n=train_cfg["n"], seed=train_cfg["seed"], device=dev)
    return vae, train_cfg, split, out


def _inputs(cfg: QueryConfig, split, n: int | None = None):
    n = cfg.n_inputs if n is None else n
    available = split.test.shape[0]
    if n > available:
        raise ValueError(
            f"--n-inputs {n} exceeds the {available} test inputs of run {cfg.run}; pass "
            f"--n-inputs {available} or fewer."
        )
    return split.test[:n]


def _identity(cfg: QueryConfig, train_cfg: dict) -> dict:
    """What produced a query's model: the run directory, its weights' hash and objective."""
    ident = {
        "run_dir": str(Path(cfg.run).resolve()),
        "objective": train_cfg["objective"],
        "beta": train_cfg["beta"],
    }
    if train_cfg.get("model_sha256"):
        ident["model_file_sha256"] = train_cfg["model_sha256"]
    return ident


def _decision_counts(rob):
    """Inputs robust / not robust / undecided at each radius (and eps), as a DataFrame."""
    import numpy as np
    import pandas as pd

    decision = rob["decision"]
    if decision.dtype.kind in "iu":
        values = decision.attrs.get("flag_values", [-1, 0, 1])
        names = decision.attrs.get("flag_meanings", "not_robust undecided robust").split()
        labels = {
            int(v): n.replace("_", " ") for v, n in zip(np.atleast_1d(values), names, strict=False)
        }
    else:
        labels = {s: s for s in ("robust", "not robust", "undecided")}
    other = [d for d in decision.dims if d != "obs_id"]
    counts = {name: (decision == value).sum("obs_id") for value, name in labels.items()}
    table = pd.DataFrame(
        {name: np.ravel(c.values) for name, c in counts.items()},
        index=pd.MultiIndex.from_product([decision[d].values for d in other], names=other)
        if other
        else None,
    )
    order = [c for c in ("robust", "not robust", "undecided") if c in table.columns]
    return table[order + [c for c in table.columns if c not in order]]


def cmd_robustness(cfg: RobustnessConfig) -> None:
    from pyrobust.robustness import r_robustness

    if cfg.tolerance is not None and cfg.num_samples != "auto":
        raise ValueError("--tolerance needs --num-samples auto (sequential decisions).")
    vae, train_cfg, split, out = _prepare(cfg, "robustness")
    x = _inputs(cfg, split)
    log.info("r-robustness of %d inputs, %s draws each", x.shape[0], cfg.num_samples)
    seq = {} if cfg.tolerance is None else {"tolerance": cfg.tolerance}
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
        **seq,
    )
    _save(tree, out, cfg, _identity(cfg, train_cfg))  # saved first: printing never loses it
    rob = tree["robustness"].to_dataset()
    if "decision" in rob:
        print(f"decisions (of {x.shape[0]} inputs) at the {cfg.confidence:g} level:")
        print(_decision_counts(rob).to_string())
    else:
        print(_table(rob))


def cmd_margin(cfg: MarginConfig) -> None:
    from pyrobust.robustness import margin_bound

    vae, train_cfg, split, out = _prepare(cfg, "margin")
    x = _inputs(cfg, split)
    log.info("margin bound of %d inputs", x.shape[0])
    tree = margin_bound(
        vae.model,
        vae.guide,
        x,
        r=cfg.r,
        num_samples=cfg.num_samples,
        norm=cfg.norm,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )
    _save(tree, out, cfg, _identity(cfg, train_cfg))
    print(_table(tree["robustness"].to_dataset()))


def _table(ds, rows: int = 20) -> str:
    """The first rows of a summary group's variables with at most two dims."""
    small = [v for v in ds.data_vars if ds[v].ndim <= 2]
    return ds[small].to_dataframe().head(rows).to_string()


def cmd_attack(cfg: AttackConfig) -> None:
    from pyrobust.robustness import empirical_margin, max_damage_attack

    if cfg.empirical and cfg.r is None:
        raise ValueError("--empirical needs the radius --r of r-robustness.")
    if not cfg.empirical and cfg.num_samples == "auto":
        raise ValueError(
            "--num-samples auto applies to --empirical (sequential verdicts); an attack's "
            "robustness estimate (--r) takes a number of draws, e.g. --num-samples 1000."
        )
    if cfg.tolerance is not None and not (cfg.empirical and cfg.num_samples == "auto"):
        raise ValueError("--tolerance needs --empirical --num-samples auto.")
    name = "empirical_margin" if cfg.empirical else "attack"
    vae, train_cfg, split, out = _prepare(cfg, name)
    x = _inputs(cfg, split)
    log.info("%s of %d inputs", name.replace("_", " "), x.shape[0])
    if cfg.empirical:
        tree = empirical_margin(
            vae.model,
            vae.guide,
            x,
            r=cfg.r,
            norm=cfg.norm,
            steps=cfg.steps,
            restarts=cfg.restarts,
            num_samples=cfg.num_samples,
            seed=cfg.seed,
            **({} if cfg.tolerance is None else {"tolerance": cfg.tolerance}),
        )
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
            num_samples=cfg.num_samples,
            seed=cfg.seed,
        )
    _save(tree, out, cfg, _identity(cfg, train_cfg))
    print(_table(tree["robustness"].to_dataset()))


def cmd_certify(cfg: CertifyConfig) -> None:
    from pyrobust.robustness import certified_margin

    vae, train_cfg, split, out = _prepare(cfg, "certify")
    x = _inputs(cfg, split)
    tree = certified_margin(vae.model, vae.guide, x, r=cfg.r, a=cfg.a, b=cfg.b, c=cfg.c)
    _save(tree, out, cfg, _identity(cfg, train_cfg))
    print(_table(tree["robustness"].to_dataset()))


def cmd_metrics(cfg: MetricsConfig) -> None:
    import torch

    from pyrobust.analysis.experiment import disentanglement

    vae, train_cfg, split, out = _prepare(cfg, "metrics", needs_factors=True)
    n = min(2000, split.test.shape[0]) if cfg.n_inputs is None else cfg.n_inputs
    x = _inputs(cfg, split, n)
    log.info("disentanglement metrics of %d inputs, %d bootstrap replicates", n, cfg.num_bootstrap)
    with torch.no_grad():
        codes, _ = vae.encode(x)
    factors = split.test_factors[:n, 1:]  # the colour factor is constant
    tree = disentanglement(codes, factors, num_bootstrap=cfg.num_bootstrap, seed=cfg.seed)
    _save(tree, out, cfg, _identity(cfg, train_cfg))
    print(tree["metrics"].to_dataset())


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
    _make_dir(Path(cfg.out), "--out")
    out = report(paths, cfg.out)
    print(f"wrote {out}")


def cmd_reproduce(cfg: ReproduceConfig) -> None:
    from pyrobust.analysis.reproduce import reproduce

    dev = _device(cfg)
    _make_dir(Path(cfg.out), "--out")
    reproduce(
        cfg.out,
        quick=cfg.quick,
        datasets=cfg.datasets,
        objectives=cfg.objectives,
        betas=cfg.betas,
        device=dev,
        seed=cfg.seed,
        settings=_settings(cfg),
        engine=cfg.engine,
        address=cfg.address,
    )


def cmd_demo(cfg: DemoConfig) -> None:
    from pyrobust.analysis.demo import run_demo

    dev = _device(cfg)
    _make_dir(Path(cfg.out), "--out")
    result = run_demo(
        cfg.out, epochs=cfg.epochs, r=cfg.r, device=dev, seed=cfg.seed, progress=_on_terminal()
    )
    print(result.summary)


def cmd_audit(cfg: AuditConfig) -> None:
    """``pyrobust audit``: the queries over a whole data set, sharded into one zarr store."""
    import numpy as np
    import torch

    from pyrobust.analysis.experiment import load_dataset
    from pyrobust.robustness.audit import audit

    if cfg.engine == "local":
        ray_only = [
            _flag(k)
            for k in ("address", "workers", "gpus_per_worker")
            if getattr(cfg, k) is not None
        ]
        if ray_only:
            raise ValueError(
                f"{', '.join(ray_only)}: settings of --engine ray; add it or drop them."
            )
    train_cfg = _check_run(cfg)
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "audit.zarr"
    if not out.parent.is_dir():
        raise ValueError(
            f"--out {out}: the directory {out.parent} does not exist; create it first "
            f"(mkdir -p {out.parent})."
        )
    # a Ray worker checks the device on its own node; the local engine checks it here
    device = str(_device(cfg)) if cfg.engine == "local" else cfg.device
    name = cfg.dataset or train_cfg["dataset"]
    if name in DATASETS:
        own = name == train_cfg["dataset"]  # the run's own split: same n and seed as training
        split = load_dataset(
            name, n=train_cfg["n"] if own else None, seed=train_cfg["seed"] if own else cfg.seed
        )
        x = split.test
    elif name.endswith(".npy") and Path(name).is_file():
        x = torch.from_numpy(np.load(name, allow_pickle=False))
    else:
        raise ValueError(
            f"--dataset {name}: expected one of {list(DATASETS)} (its test split) or an existing "
            ".npy file of inputs (n, *event)."
        )
    if cfg.n_inputs is not None:
        if cfg.n_inputs > x.shape[0]:
            raise ValueError(
                f"--n-inputs {cfg.n_inputs} exceeds the {x.shape[0]} inputs of --dataset {name}."
            )
        x = x[: cfg.n_inputs]
    queries = {
        "r_robustness": {"r": cfg.r, "num_samples": cfg.num_samples, "confidence": cfg.confidence}
    }
    if cfg.margin:
        queries["margin_bound"] = {
            "r": cfg.r[0],
            "num_samples": cfg.num_samples,
            "confidence": cfg.confidence,
        }
    log.info(
        "audit of %d inputs in shards of %d on engine %s", x.shape[0], cfg.shard_size, cfg.engine
    )
    try:
        tree = audit(
            Path(cfg.run),
            x,
            queries=queries,
            out=out,
            engine=cfg.engine,
            shard_size=cfg.shard_size,
            seed=cfg.seed,
            address=cfg.address,
            num_workers=cfg.workers,
            num_gpus_per_worker=cfg.gpus_per_worker,
            device=device,
            threads=cfg.threads,
            overwrite=cfg.force,
        )
    except ImportError as err:  # the ray extra is missing: one line, exit status 2
        raise ValueError(str(err)) from None
    except ValueError as err:  # the library's overwrite=True is this command's --force
        raise ValueError(str(err).replace("overwrite=True", "--force")) from err
    done = int(tree["shards_done"].sum())
    print(f"wrote {out}: {done} of {tree.sizes['shard']} shards, {x.shape[0]} inputs")
    rob = tree["r_robustness/robustness"]
    print("mean probability of staying within r, over the inputs:")
    print(rob["probability"].mean("obs_id").to_series().to_string())
    if cfg.num_samples == "auto":
        print(f"sequential decisions: {int(rob['num_draws'].sum()):,} draws in all")


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
    "audit": cmd_audit,
}


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def _on_terminal() -> bool:
    """Progress as tqdm bars (a terminal) or as logging records (a file or a pipe)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which tests and callers may swap)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def _logging_to_stderr():
    """INFO messages of the ``pyrobust`` loggers on stderr while a command runs; the logger is
    left as it was afterwards (``main`` may be called in-process, e.g. by tests)."""
    logger = logging.getLogger("pyrobust")
    level, added = logger.level, None
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        added = _StderrHandler()
        added.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(added)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if added is not None:
            logger.removeHandler(added)
        logger.setLevel(level)


#: How torch's allocators word a failed allocation (CPU: "can't allocate memory"; CUDA:
#: "CUDA out of memory"; also "out of memory" on MPS).
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory")


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = f"missing key {text}"
    line = text.splitlines()[0] if text else type(err).__name__
    return line


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrobust`` console script; returns the exit status.

    Exit status 0 on success, 2 on bad input (one line on stderr), 130 on Ctrl-C.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    debug = "--debug" in argv
    label = f"pyrobust {command}" if command else "pyrobust"
    try:
        config = _config_path(argv) if command else None
        values = _read_config(config, command) if config else {}
        parser = build_parser({command: set(values)} if command else None)
        args = vars(parser.parse_args(argv))
        command, debug = args.pop("command"), args.pop("debug")
        label = f"pyrobust {command}"
        args.pop("config")
        values.update(args)
        cfg = make_config(command, values)
        if isinstance(cfg, Common):
            _device(cfg)  # an unknown or absent device is refused before any work
        with _logging_to_stderr():
            start = time.perf_counter()
            HANDLERS[command](cfg)
            log.info("pyrobust %s: done in %.1f s", command, time.perf_counter() - start)
    except (ValueError, TypeError, OSError, FloatingPointError, KeyError) as err:
        if debug:
            raise
        hint = ""
        if isinstance(err, UsageError):
            hint = f"; see `{label} --help`"
        print(f"{label}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        # Allocation failures (huge --latent-dim, --hidden, --num-samples) are a setting's
        # fault; any other RuntimeError is a bug and keeps its traceback.
        text = str(err)
        if debug or not (
            isinstance(err, MemoryError) or any(m in text.lower() for m in _OUT_OF_MEMORY)
        ):
            raise
        print(
            f"{label}: error: out of memory ({_one_line(err)}); use smaller settings "
            "(--latent-dim, --hidden, --n, --num-samples, --n-inputs).",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
