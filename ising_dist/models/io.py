"""Self-describing model files, loadable with ``torch.load(weights_only=True)`` (no pickled code).

File content (a dict of primitives and tensors):
    {"format": "ising_dist.model", "version": 1, "config": ModelConfig.to_dict(),
     "state_dict": {name: CPU tensor}, "extra": dict of primitives (epoch, metrics, data file…)}
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .loop import unwrap

FORMAT = "ising_dist.model"
VERSION = 1
_PRIMITIVES = (str, int, float, bool, type(None))


def _check_primitives(value: Any, where: str) -> None:
    if isinstance(value, _PRIMITIVES):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_primitives(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has key {k!r}: keys must be strings")
            _check_primitives(v, f"{where}[{k!r}]")
        return
    raise ValueError(f"{where} = {value!r} is a {type(value).__name__}: extra may hold only "
                     f"str/int/float/bool/None and lists/dicts of them (convert with float(), "
                     f".tolist(), str())")


def save_model(path: str | os.PathLike, model: nn.Module, extra: dict | None = None) -> None:
    """Write model (or a DDP-wrapped one) to path atomically: temp file in the same folder,
    then os.replace, so a reader never sees a half-written file."""
    net = unwrap(model)
    extra = {} if extra is None else extra
    _check_primitives(extra, "extra")
    payload = {"format": FORMAT, "version": VERSION, "config": net.cfg.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
               "extra": extra}
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"  # same folder (so os.replace is atomic); honours umask
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """(model on CPU in eval mode, extra) from a file written by save_model; ValueError for
    anything else (not a torch file, another format, a newer version, mismatched weights)."""
    from . import build_model  # late import: __init__ imports this module

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle/zip errors differ by torch version; all mean "not ours"
        raise ValueError(f"{path} is not an ising_dist model file (torch.load with "
                         f"weights_only=True failed: {type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not an ising_dist model file: expected format={FORMAT!r}, "
                         f"found {found!r}; write model files with ising_dist.models.save_model")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path}: model file version {obj.get('version')!r} is not supported "
                         f"(this code reads version {VERSION}); use the matching ising_dist")
    model = build_model(ModelConfig.from_dict(obj["config"]))
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the saved config: {e}") from e
    return model.eval(), obj.get("extra", {})
