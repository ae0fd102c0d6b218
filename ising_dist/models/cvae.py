"""Conditional VAE: the VAE with T / t_scale fed to encoder and decoder (cfg.family == "cvae").

Conditioning lives in the network bodies (nets.py, cond=cfg.conditional); this class only names
the family. sample(n, T) needs T (scalar or [n])."""
from __future__ import annotations

from .vae import VAE


class CVAE(VAE):
    """VAE conditional on temperature."""

    variational = True
