"""Where the training loop meets the outside world: a Ray Train worker, or this process.

``ising_dist.train.train_loop(loop, session)`` is plain PyTorch; everything it needs from
outside goes through its session, so the same loop runs under Ray Train (:class:`RaySession`,
one per DDP worker) and in-process without Ray (:class:`LocalSession`: tests, a notebook).

A session offers:
    rank, world_size      this worker's DDP rank and the number of workers (ints)
    device                the torch.device to train on
    prepare_model(model, ddp_kwargs)   the model on the device, DDP-wrapped when world_size > 1
    restored()            context manager: the checkpoint directory (Path) to continue from
                          after a worker restart, or None
    report(metrics, checkpoint_dir, name)   every rank, once per epoch; rank 0 passes the
                          directory of the epoch's checkpoint, which becomes <run_dir>/<name>
    stop_requested()      True on every rank once :func:`request_stop` was called for the
                          run directory (the same answer on all ranks: they stop together)

A stop is a file in the run directory (:data:`STOP_FILE`), so the driver that receives
SIGTERM can ask workers on any node of the cluster (they share the run directory, which Ray
Train's checkpoints need anyway).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch

STOP_FILE = ".stop_requested"


def request_stop(run_dir) -> None:
    """Ask the run training into ``run_dir`` to stop after the checkpoint of its current
    epoch (any session, any node)."""
    (Path(run_dir) / STOP_FILE).touch()


def clear_stop(run_dir) -> None:
    """Forget a stop request (a run starting or resuming in ``run_dir``)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def _stop_file_seen(run_dir: Path) -> bool:
    return (run_dir / STOP_FILE).exists()


class LocalSession:
    """One worker in this process, no Ray: checkpoints go straight into the run directory
    (the newest ``keep_checkpoints`` are kept, as Ray Train's CheckpointConfig does).

    device: "cpu" or "cuda" (a torch.device string)."""

    rank = 0
    world_size = 1

    def __init__(self, run_dir, keep_checkpoints: int, device: str = "cpu"):
        self.run_dir = Path(run_dir)
        self.keep = int(keep_checkpoints)
        self.device = torch.device(device)

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict) -> torch.nn.Module:
        return model.to(self.device)

    def restored(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(None)   # nothing restarts a local run behind its back

    def report(self, metrics: dict, checkpoint_dir: Optional[Path], name: str) -> None:
        if checkpoint_dir is None:
            return
        dest = self.run_dir / name
        tmp = self.run_dir / f".{name}.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        done = sorted(p for p in self.run_dir.glob("checkpoint_*") if p.is_dir())
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def stop_requested(self) -> bool:
        return _stop_file_seen(self.run_dir)


class RaySession:
    """A Ray Train worker (built inside the worker, by ising_dist.train's Ray entry point).

    Unless ``verbose``, the worker's root logger is set to WARNING: Ray Train logs a
    "Reporting training result …" line (the whole metrics dict) at INFO on every report,
    through a logger named by its file path, which LoggingConfig's level does not reach."""

    def __init__(self, run_dir, verbose: bool = False):
        import ray.train
        import ray.train.torch
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_dir = Path(run_dir)
        if not verbose:
            logging.getLogger().setLevel(logging.WARNING)

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict) -> torch.nn.Module:
        import ray.train.torch
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)

    @contextlib.contextmanager
    def restored(self) -> Iterator[Optional[Path]]:
        import ray.train
        ckpt = ray.train.get_checkpoint()   # set when Ray restores a run or a failed worker
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict, checkpoint_dir: Optional[Path], name: str) -> None:
        import ray.train
        checkpoint = (ray.train.Checkpoint.from_directory(str(checkpoint_dir))
                      if checkpoint_dir is not None else None)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def stop_requested(self) -> bool:
        """Rank 0 reads the stop file; every rank gets its answer (one all-reduce)."""
        import torch.distributed as dist
        seen = self.rank == 0 and _stop_file_seen(self.run_dir)
        if self.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return seen
        flag = torch.tensor([1.0 if seen else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
