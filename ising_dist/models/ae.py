"""Autoencoder: the VAE without sampling of the code and without KL (seed 000: its code is a
linear function of the magnetization). encode returns (code [B, d], None); losses()["kl"] is 0."""
from __future__ import annotations

from .vae import VAE


class AE(VAE):
    """Deterministic code; sampling decodes codes drawn from N(0, 1) or the fitted prior."""

    variational = False
