"""YAML → typed dataclasses, with errors that say what is wrong and how to fix it.

Every entry point loads its config with :func:`load`: the YAML file, then command-line
overrides; unknown keys, wrong types and bad values are refused before any work starts.
The resolved config is saved into every output (:func:`to_yaml`).
"""

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and the fix."""


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

    The dataclass may define ``validate(self)`` raising ConfigError for bad values.
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


LADDERS = ("geometric", "linear", "adaptive")
WRITERS = ("auto", "gather", "collective")
BACKENDS = ("auto", "native", "numba")


@dataclass
class PTConfig:
    """Parallel-tempering run. Sweeps count lattice sweeps (see ising_dist.engine)."""
    L: int = 16
    tmin: float = 1.8
    tmax: float = 3.0
    replicas: typing.Optional[int] = None  # default: len(temperatures), else 8
    ladder: str = "geometric"
    temperatures: typing.Optional[list[float]] = None
    thermalize: int = 1000
    sweeps: int = 2000
    sample_every: int = 10
    exchange_every: int = 1
    algorithm: str = "metropolis"
    n_metropolis: int = 1
    n_wolff: int = 1
    seed: int = 0
    out: str = "runs/pt.h5"
    checkpoint_every: int = 1000
    start: str = "hot"
    writer: str = "auto"
    backend: str = "auto"
    adapt_every: int = 20
    progress: bool = True

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
        need(self.ladder in LADDERS, f"ladder={self.ladder!r}: choose one of {', '.join(LADDERS)}")
        need(self.algorithm in ("metropolis", "wolff", "hybrid"),
             f"algorithm={self.algorithm!r}: choose metropolis, wolff or hybrid")
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
        need(self.start in ("hot", "cold"), f"start={self.start!r}: choose hot or cold")
        need(self.writer in WRITERS, f"writer={self.writer!r}: choose one of {', '.join(WRITERS)}")
        need(self.backend in BACKENDS,
             f"backend={self.backend!r}: choose one of {', '.join(BACKENDS)}")
        need(bool(self.out), "out is empty: give the HDF5 output path, e.g. --out runs/pt.h5")

    def ladder_temperatures(self):
        """The initial temperature ladder, ascending, float64 [R]."""
        import numpy as np
        if self.temperatures:
            return np.array(self.temperatures, dtype=np.float64)
        if self.ladder == "linear":
            return np.linspace(self.tmin, self.tmax, self.replicas)
        return np.geomspace(self.tmin, self.tmax, self.replicas)  # geometric; adaptive starts here
