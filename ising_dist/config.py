"""YAML → typed dataclasses → command-line flags, with errors that say what is wrong and how to
fix it.

Every entry point loads its config with :func:`load`: the YAML file, then command-line
overrides; unknown keys, wrong types, values outside a field's choices and bad values are
refused before any work starts. The resolved config is saved into every output
(:func:`to_yaml`).

A config field is declared once, with :func:`option`: its default, its help text, its choices
and whether ``--resume`` may change it. :func:`add_flags` derives an entry point's flags from
those fields (``sample_every`` → ``--sample-every``), :func:`given_flags` reads back the flags
that were given, and :func:`from_dict` checks the choices, so no flag, choice list or help
text is written twice. Plain argparse: ``python -m ising_dist.pt`` starts on every MPI rank,
and a CLI library would add its import time to each.
"""

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and the fix."""


# ---------------------------------------------------------------------------- choice lists
LADDERS = ("geometric", "linear", "adaptive")
WRITERS = ("auto", "gather", "collective")
BACKENDS = ("auto", "native", "numba", "cuda")
ALGORITHMS = ("metropolis", "wolff", "hybrid")
STARTS = ("hot", "cold")


# ---------------------------------------------------------------------------- fields
def option(default=dataclasses.MISSING, help="", *, choices=None, flag=None, cli=True,
           resume=False):
    """A dataclass field with what its command-line flag needs.

    default   the value when neither YAML nor a flag sets it (a list or dict is copied per
              instance); leave it out for a required field (a required flag)
    help      one line for ``--help`` (the default is appended); for a bool, what it turns
              on ("progress lines": the flag of a default-true field says "no progress lines")
    choices   the allowed values (a tuple defined once, e.g. LADDERS): the flag's choices,
              and :func:`from_dict` refuses anything else
    flag      the flag's spelling when it is not ``--name-with-dashes`` (a bool field's flag
              sets the opposite of its default: ``--no-progress``, ``--compile``)
    cli       False: no flag (set through YAML only)
    resume    True: ``--resume`` may change it (:func:`resume_may_change`)
    """
    meta = {"help": help, "choices": choices, "flag": flag, "cli": cli, "resume": resume}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _inner(tp):
    """X of Optional[X]; tp itself otherwise."""
    if typing.get_origin(tp) is typing.Union:
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _default(f):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _flag(f, tp) -> str:
    """The command-line spelling of dataclass field ``f`` of type ``tp``."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    name = f.name.replace("_", "-")
    return f"--no-{name}" if tp is bool and _default(f) is True else f"--{name}"


def add_flags(parser: argparse.ArgumentParser, cls, title: str = "settings") -> None:
    """Add one flag per field of dataclass ``cls`` (fields declared with :func:`option`).

    Every flag defaults to None, "not given", so that a YAML preset keeps its values
    (:func:`given_flags`). ints and floats are checked by argparse (exit code 2, naming the
    flag); a list takes several values or one comma-separated value; a bool field's flag sets
    the opposite of its default."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        tp, default = _inner(hints[f.name]), _default(f)
        text = meta.get("help", "")
        if tp is bool:   # the flag sets the opposite of the default
            group.add_argument(_flag(f, tp), dest=f.name, action="store_const",
                               const=not default, default=None,
                               help=f"{'no ' if default else ''}{text}")
            continue
        kw = {"dest": f.name, "default": None, "metavar": f.name.upper()}
        if default is dataclasses.MISSING:
            kw["required"] = True
        elif default is not None and default != []:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        if typing.get_origin(tp) is list:
            kw["nargs"] = "+"       # numbers are checked by from_dict, which names the field
        elif tp in (int, float):
            kw["type"] = tp
        if meta.get("choices") is not None:
            kw["choices"] = meta["choices"]
            kw.pop("metavar")
        group.add_argument(_flag(f, tp), help=text, **kw)


def given_flags(args: argparse.Namespace, cls) -> dict:
    """{field: value} of the flags of ``cls`` that were given (see :func:`add_flags`)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(value, list) and f.metadata.get("cli", True):
            item = typing.get_args(_inner(typing.get_type_hints(cls)[f.name]))[0]
            if item in (int, float):     # "2.0,2.5" and "2.0 2.5" alike
                value = " ".join(value)
        out[f.name] = value
    return out


def resume_may_change(cls) -> tuple:
    """Names of the fields of ``cls`` that a ``--resume`` may change (``option(resume=True)``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resume"))


# ---------------------------------------------------------------------------- loading
def _coerce(name, value, tp):
    """Check/convert one value against a dataclass field type (int, float, str, bool,
    Optional[...], list[float], list[int])."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: expected a list (e.g. {name}: [1, 2])")
        return [_coerce(f"{name}[{k}]", v, item) for k, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected an integer")
        try:
            out = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected an integer") from None
        if isinstance(value, float) and out != value:
            raise ConfigError(f"{name}={value!r}: expected an integer, not a fraction")
        return out
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected a number") from None
        if not math.isfinite(out):
            raise ConfigError(f"{name}={value!r}: must be a finite number")
        return out
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return str(value)
    return value


def from_dict(cls, data, source="config"):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and bad types.

    A value outside its field's ``choices`` (:func:`option`) is refused; the dataclass may
    define ``validate(self)`` raising ConfigError for other bad values.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are "
                          f"{', '.join(sorted(fields))}")
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
    for name, value in kwargs.items():
        allowed = fields[name].metadata.get("choices")
        if allowed is not None and value is not None and value not in allowed:
            raise ConfigError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file "
                          f"(presets are in configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    return data or {}


def load(cls, path=None, overrides=None):
    """Config from a YAML file (optional) with ``overrides`` (dict, None values ignored)."""
    data = read_yaml(path) if path else {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    return from_dict(cls, data, source=str(path) if path else "config")


def load_saved(cls, run_dir, overrides, producer):
    """The config.yaml that a run of ``producer`` (e.g. "ising_dist.train") saved in run_dir,
    with overrides: how `--resume --out RUN_DIR` continues a run without its preset."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {saved} does not exist; is --out {run_dir} an output "
                          f"directory of {producer}?")
    return load(cls, saved, overrides)


def to_dict(obj):
    return dataclasses.asdict(obj)


def to_yaml(obj):
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


@dataclass
class PTConfig:
    """Parallel-tempering run. Sweeps count lattice sweeps (see ising_dist.engine)."""
    L: int = option(16, "lattice side (even, >= 2)")
    tmin: float = option(1.8, "lowest temperature of a geometric or linear ladder")
    tmax: float = option(3.0, "highest temperature of a geometric or linear ladder")
    replicas: typing.Optional[int] = option(
        None, "R, number of temperatures (default: len(temperatures), else max(8, P) on P MPI "
              "ranks)")
    ladder: str = option("geometric", "temperature ladder", choices=LADDERS)
    temperatures: typing.Optional[list[float]] = option(
        None, "explicit ladder T1,T2,... (ascending)")
    thermalize: int = option(1000, "sweeps before sampling")
    sweeps: int = option(2000, "sweeps after thermalization", resume=True)
    sample_every: int = option(10, "sweeps between stored samples")
    exchange_every: int = option(1, "sweeps between replica-exchange rounds")
    algorithm: str = option("metropolis", "update algorithm", choices=ALGORITHMS)
    n_metropolis: int = option(1, "hybrid: Metropolis sweeps per step")
    n_wolff: int = option(1, "hybrid: Wolff clusters per step")
    seed: int = option(0, "random seed (streams per replica derive from it)")
    out: str = option("runs/pt.h5", "HDF5 output path", resume=True)
    checkpoint_every: int = option(1000, "sweeps between checkpoints", resume=True)
    start: str = option("hot", "initial lattices: random (hot) or all +1 (cold)", choices=STARTS)
    writer: str = option("auto", "who writes the file (see ising_dist.store)", choices=WRITERS,
                         resume=True)
    backend: str = option("auto", "kernels: native (C, built by CMake), numba, auto (native if "
                                  "built), or cuda (an NVIDIA GPU; Metropolis only)",
                          choices=BACKENDS, resume=True)
    adapt_every: int = option(20, "adaptive ladder: exchange rounds between adjustments")
    progress: bool = option(True, "progress lines (rank 0, rate-limited)", resume=True)
    ranks_per_replica: int = option(
        1, "k: MPI ranks that share each replica's lattice, one horizontal strip of L/k rows "
           "each (Metropolis, numba kernels; P ranks form P/k groups, each holding replicas); "
           "a resumed run uses 1 unless given again")

    def validate(self):
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)
        need(self.L >= 2 and self.L % 2 == 0,
             f"L={self.L}: the lattice size must be even and >= 2; use L={max(2, self.L + 1)}")
        if self.temperatures:
            t = self.temperatures
            need(all(x > 0 for x in t), f"temperatures={t}: every temperature must be > 0")
            need(all(a < b for a, b in zip(t, t[1:])),
                 f"temperatures={t}: must be strictly ascending and distinct")
            if self.replicas is None:
                self.replicas = len(t)
            need(self.replicas == len(t),
                 f"replicas={self.replicas} but {len(t)} temperatures were given; "
                 f"drop --replicas or give {self.replicas} temperatures")
            need(self.ladder != "adaptive",
                 "ladder=adaptive moves the temperatures; give tmin/tmax instead of a list")
        else:
            need(self.tmin > 0, f"tmin={self.tmin}: must be > 0")
            need(self.tmin < self.tmax,
                 f"tmin={self.tmin} >= tmax={self.tmax}: tmin must be below tmax")
        if self.replicas is None:
            self.replicas = 8
        need(self.replicas >= 2, f"replicas={self.replicas}: parallel tempering needs >= 2")
        for key in ("sweeps", "sample_every", "exchange_every", "checkpoint_every",
                    "adapt_every", "n_wolff"):
            need(getattr(self, key) >= 1, f"{key}={getattr(self, key)}: must be >= 1")
        for key in ("thermalize", "seed", "n_metropolis"):
            need(getattr(self, key) >= 0, f"{key}={getattr(self, key)}: must be >= 0")
        need(self.algorithm != "hybrid" or self.n_metropolis >= 1,
             "algorithm=hybrid needs n_metropolis >= 1 (or use algorithm=wolff)")
        need(self.sweeps % self.sample_every == 0,
             f"sweeps={self.sweeps} is not a multiple of sample_every={self.sample_every}; "
             f"use sweeps={self.sweeps - self.sweeps % self.sample_every + self.sample_every}")
        need(self.backend != "cuda" or self.algorithm == "metropolis",
             f"algorithm={self.algorithm} with backend=cuda: the CUDA kernels run Metropolis "
             "only; use --algorithm metropolis, or --backend native or numba for "
             f"{self.algorithm}")
        need(bool(self.out), "out is empty: give the HDF5 output path, e.g. --out runs/pt.h5")
        self._validate_strips()

    def _validate_strips(self):
        """Refuse ranks_per_replica values the domain decomposition cannot run
        (ising_dist.domain), naming the fix."""
        k = self.ranks_per_replica
        if k == 1:
            return
        if k < 1:
            raise ConfigError(f"ranks_per_replica={k}: must be >= 1 (1: whole lattices)")
        if self.L % k or self.L // k < 2:
            fits = [d for d in range(1, self.L // 2 + 1) if self.L % d == 0]
            above = [d for d in fits if d >= k] or fits[-1:]
            near = sorted({max(d for d in fits if d <= k), above[0]})
            raise ConfigError(
                f"ranks_per_replica={k} with L={self.L}: each rank takes L/k rows, which "
                f"must be a whole number >= 2; use --ranks-per-replica "
                f"{' or '.join(map(str, near))}, or an L that is a multiple of "
                f"{k * 2 // math.gcd(k, 2)} and >= {2 * k}")
        if self.algorithm != "metropolis":
            raise ConfigError(
                f"algorithm={self.algorithm} with ranks_per_replica={k}: cluster moves across "
                "domains are a later step; use --algorithm metropolis, or "
                "--ranks-per-replica 1 (whole lattices per rank)")
        if self.backend not in ("auto", "numba"):
            raise ConfigError(f"backend={self.backend} with ranks_per_replica={k}: lattice "
                              "strips run on the numba kernels; use --backend numba or auto")
        if self.writer == "collective":
            raise ConfigError(f"writer=collective with ranks_per_replica={k}: strips are "
                              "gathered to one writer; use --writer gather or auto")

    def ladder_temperatures(self):
        """The initial temperature ladder, ascending, float64 [R]."""
        import numpy as np
        if self.temperatures:
            return np.array(self.temperatures, dtype=np.float64)
        if self.ladder == "linear":
            return np.linspace(self.tmin, self.tmax, self.replicas)
        return np.geomspace(self.tmin, self.tmax, self.replicas)  # geometric; adaptive starts here
