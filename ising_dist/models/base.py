"""What every family shares: the config, temperature handling, and logits → ±1 spins."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .config import SAMPLE_MODES, ModelConfig

TLike = Union[None, float, torch.Tensor]


class GenerativeModel(nn.Module):
    """Base of all families; see ``ising_dist.models`` for the interface."""

    kind: str = ""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def temperatures(self, T: TLike, n: int) -> Optional[torch.Tensor]:
        """T as a float32 [n] tensor on the model's device (scalar broadcast); None stays None."""
        if T is None:
            return None
        t = torch.as_tensor(T, dtype=torch.float32, device=self.device)
        if t.ndim == 0:
            return t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"T has shape {tuple(t.shape)}: pass a scalar or a tensor of "
                             f"shape [{n}]")
        return t

    def to_spins(self, logits: torch.Tensor, mode: Optional[str],
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Logits [n, L, L] → int8 ±1 [n, L, L], by Bernoulli draw or by sign (p > 0.5)."""
        mode = self.cfg.sample_mode if mode is None else mode
        if mode not in SAMPLE_MODES:
            raise ValueError(f"mode={mode!r}: must be one of {list(SAMPLE_MODES)}")
        if mode == "sign":
            up = logits > 0
        else:
            up = torch.bernoulli(torch.sigmoid(logits), generator=generator).bool()
        return torch.where(up, 1, -1).to(torch.int8)

    def randn(self, n: int, d: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Standard normal [n, d] on the model's device."""
        return torch.randn(n, d, generator=generator, device=self.device)
