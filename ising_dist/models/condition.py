"""What a model keeps about its training temperatures (ModelConfig.ladder).

- ``ladder_index``: which training temperature a requested T is (one RBM per temperature, the
  ACGAN's class labels, the |m| tables), with an error naming the ladder when it is none.
- ``MagnetizationTable``: the distribution of |m| at each training temperature, counted from
  the training batches, so that a model conditioned on (T, |m|) (seed 000's "generate with T
  and M", ModelConfig.condition_m) draws |m| from the MCMC distribution at T when only T is
  given. Stored as buffers, so it travels in the model file.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

T_MATCH = 1e-6   # relative tolerance of a temperature match (float32 labels vs float64 ladder)


def ladder_index(ladder: torch.Tensor, T: torch.Tensor, why: str) -> torch.Tensor:
    """Index int64 [n] into ``ladder`` (float [K], ascending) of each temperature in T [n].

    Raises ValueError naming the first T that is not a ladder temperature (relative tolerance
    1e-6) and ``why`` the model needs one."""
    if ladder.numel() == 0:
        raise ValueError(f"the model has no training temperatures (ladder=[]): {why}; train "
                         f"it with python -m ising_dist.train (which fills model.ladder from "
                         f"the data) or set model.ladder")
    t = T.to(ladder.device, torch.float64).reshape(-1)
    gap = (t[:, None] - ladder[None, :].double()).abs()
    k = gap.argmin(dim=1)
    bad = gap.gather(1, k[:, None]).squeeze(1) > T_MATCH * t.abs()
    if bool(bad.any()):
        shown = ", ".join(f"{v:.6g}" for v in ladder.tolist())
        raise ValueError(f"T={t[bad][0].item():.6g} is not a training temperature of this "
                         f"model ({shown}): {why}; ask for one of those temperatures")
    return k


def abs_m_level(x: torch.Tensor) -> torch.Tensor:
    """|Σ s| level j int64 [B] of lattices x [B, L, L] in {0, 1}: |Σ s| = 2j + (N mod 2),
    j = 0 … N // 2 (s = 2x − 1, N = L²)."""
    n = x[0].numel()
    total = (2 * x.flatten(1).sum(1) - n).abs().round().long()
    return (total - n % 2) // 2


class MagnetizationTable(nn.Module):
    """Histogram of |m| per training temperature: buffers ladder float64 [K] and counts
    float64 [K, N // 2 + 1] (column j: |m| = (2j + N mod 2) / N).

    ``observe`` adds training batches (loop.train_epoch calls it on every batch, so the counts
    grow with the epochs in proportion; under DDP the saved table is rank 0's share of the
    data, a sample of the same distribution). ``draw`` samples |m| at temperatures T."""

    def __init__(self, ladder: list[float], L: int):
        super().__init__()
        self.n_sites = L * L
        self.register_buffer("ladder", torch.tensor(ladder, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(len(ladder), self.n_sites // 2 + 1,
                                                   dtype=torch.float64))

    def levels(self) -> torch.Tensor:
        """|m| of each column, float32 [N // 2 + 1]."""
        j = torch.arange(self.counts.shape[1], device=self.counts.device)
        return ((2 * j + self.n_sites % 2) / self.n_sites).float()

    @torch.no_grad()
    def observe(self, x: torch.Tensor, T: torch.Tensor) -> None:
        """Count lattices x [B, L, L] in {0, 1} at temperatures T [B] (ladder temperatures)."""
        k = ladder_index(self.ladder, T, "the |m| table counts training temperatures only")
        flat = k * self.counts.shape[1] + abs_m_level(x).to(k.device)
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))

    @torch.no_grad()
    def draw(self, T: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """|m| float32 [n] drawn from the table's distribution at each T [n]."""
        k = ladder_index(self.ladder, T, "|m| is drawn from the MCMC distribution of |m| "
                                         "stored for each training temperature")
        rows = self.counts[k]
        empty = rows.sum(1) == 0
        if bool(empty.any()):
            raise ValueError(f"no |m| has been counted at T={T[empty][0].item():.6g}: the model "
                             f"was not trained on that temperature (the table fills during "
                             f"training)")
        j = torch.multinomial(rows, 1, generator=generator).squeeze(1)
        return self.levels()[j]

    def mean(self) -> torch.Tensor:
        """⟨|m|⟩ of the table at each ladder temperature, float64 [K]."""
        levels = self.levels().double()
        return (self.counts * levels).sum(1) / self.counts.sum(1).clamp_min(1)


def make_condition(model, T, n: int, x: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """The condition a conditional model's networks take, for n lattices:

    - T None → None; T scalar or [n] → temperatures float32 [n] (``model.temperatures``);
    - with model.cfg.condition_m: (T, |m|) float32 [n, 2], |m| of the lattices x [n, L, L] in
      {0, 1} when given, else drawn from ``model.m_table`` at T (a training temperature);
    - a [n, 2] tensor is taken as (T, |m|) already (condition_m models only)."""
    if isinstance(T, torch.Tensor) and T.ndim == 2:
        if not model.cfg.condition_m or T.shape != (n, 2):
            raise ValueError(f"a condition of shape {tuple(T.shape)} needs condition_m=true and "
                             f"shape [{n}, 2] (T, |m|); pass temperatures as a scalar or [{n}]")
        return T.to(model.device, torch.float32)
    t = model.temperatures(T, n)
    if t is None or not model.cfg.condition_m:
        return t
    if x is not None:
        m = (2 * x.flatten(1) - 1).mean(1).abs().to(t.dtype)
    else:
        m = model.m_table.draw(t, generator).to(t.device)
    return torch.stack([t, m], dim=1)
