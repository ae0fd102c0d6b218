"""RBM family against exact answers: F(v) by summing the hidden units, AIS ln Z and the
validation NLL against the sum over all 2^16 visible configurations at L = 4, Gibbs samples
against the exact RBM distribution at L = 2, CD and PCD learning, files and errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from ising_dist.models import ModelConfig, build_model, evaluate_epoch, load_model, save_model
from ising_dist.models import train_epoch


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def rbm(L=4, hidden=8, ladder=(2.0, 3.0), std=None, **kw):
    """An RBM; with std, weights N(0, std²) and biases N(0, (std/2)²) (a rough landscape)."""
    model = build_model(ModelConfig(family="rbm", L=L, latent_dim=hidden, ladder=list(ladder),
                                    **kw))
    if std is not None:
        with torch.no_grad():
            model.W.normal_(0, std)
            model.b.normal_(0, std / 2)
            model.c.normal_(0, std / 2)
    return model


def all_visible(N: int) -> torch.Tensor:
    """Every {0,1} configuration of N sites, float64 [2^N, N]."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=N)), dtype=torch.float64)


def exact_log_p_star(model, k: int, v: torch.Tensor) -> torch.Tensor:
    """ln Σ_h e^{−E(v,h)} of RBM k in float64, the hidden units summed one by one:
    b·v + Σ_j ln(1 + e^{c_j + (vW)_j})."""
    W, b, c = model.W[k].double(), model.b[k].double(), model.c[k].double()
    return v @ b + torch.log1p(torch.exp(c + v @ W)).sum(1)


def two_mode(n, L, flip, g):
    """{0,1} lattices [n, L, L]: all up or all down (equal odds), each site flipped w.p. flip."""
    up = torch.randint(0, 2, (n, 1, 1), generator=g).float()
    return (up + (torch.rand(n, L, L, generator=g) < flip).float()) % 2


# ---------------------------------------------------------------------- energies
def test_free_energy_is_the_hidden_units_summed_out():
    """F(v) = −ln Σ_h exp(−E(v, h)), E = −b·v − c·h − vᵀWh, summed over all 2^H hidden states
    directly (H = 5)."""
    model = rbm(L=2, hidden=5, std=1.0)
    v = all_visible(4)
    h = all_visible(5)
    for k, T in enumerate((2.0, 3.0)):
        W, b, c = model.W[k].double(), model.b[k].double(), model.c[k].double()
        neg_E = (v @ b)[:, None] + (h @ c)[None, :] + v @ W @ h.T          # [16, 32]
        want = -torch.logsumexp(neg_E, dim=1)
        got = model.free_energy(v.float().reshape(16, 2, 2), T)
        assert got.dtype == torch.float32 and got.shape == (16,)
        assert torch.allclose(got.double(), want, atol=1e-4)


# ---------------------------------------------------------------------- AIS
@pytest.mark.parametrize("std", [0.5, 1.5])
def test_ais_log_partition_matches_the_exact_sum_at_L4(std):
    """ln Z of each temperature's RBM (L = 4, N = 16 visible, H = 8 hidden) by AIS (200 runs,
    1000 steps) against the exact ln Σ_v e^{−F(v)} over all 2^16 visible configurations.
    Agreement within 4 standard errors (plus the estimator's known low bias, err²/2), and the
    error itself small (measured: 0.002–0.02 nats), so the check has teeth."""
    model = rbm(L=4, hidden=8, std=std)
    log_z, err = model.log_partition(runs=200, steps=1000,
                                     generator=torch.Generator().manual_seed(1))
    assert log_z.dtype == torch.float64 and log_z.shape == err.shape == (2,)
    v = all_visible(16)
    for k in range(2):
        exact = torch.logsumexp(exact_log_p_star(model, k, v), 0).item()
        assert 0 < err[k] < 0.1, err
        assert abs(log_z[k].item() - exact) < 4 * err[k].item() + err[k].item() ** 2, \
            (k, log_z[k].item(), exact, err[k].item())


def test_validation_nll_is_the_exact_negative_log_likelihood_per_spin():
    """evaluate_epoch of an RBM reports nll = ⟨F(v) + ln Z⟩ / N with ln Z from AIS: at L = 4
    it must match −⟨ln p(v)⟩ / N computed with the exact Z, within its reported error."""
    model = rbm(L=4, hidden=8, std=1.0, ais_runs=200, ais_steps=1000)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 2, (96, 4, 4), generator=g).float()
    T = torch.cat([torch.full((48,), 2.0), torch.full((48,), 3.0)])
    torch.manual_seed(3)
    out = evaluate_epoch(model, [(x[:64], T[:64]), (x[64:], T[64:])], "cpu")
    assert {"cd", "free_energy", "recon", "total", "nll", "nll_err"} <= set(out)
    v = all_visible(16)
    flat = x.reshape(96, 16).double()
    nll = 0.0
    for k in range(2):
        log_z = torch.logsumexp(exact_log_p_star(model, k, v), 0)
        rows = slice(48 * k, 48 * (k + 1))
        nll += -(exact_log_p_star(model, k, flat[rows]) - log_z).sum().item()
    nll /= 96 * 16
    assert 0 < out["nll_err"] < 0.01
    assert abs(out["nll"] - nll) < 4 * out["nll_err"] + 1e-5, (out["nll"], nll)


# ---------------------------------------------------------------------- Gibbs sampling
@pytest.mark.parametrize("chains", [20000, 1000])
def test_gibbs_samples_follow_the_exact_rbm_distribution_at_L2(chains):
    """20000 samples at L = 2 (16 visible states, H = 3, rough weights): every state's frequency
    within 4.5 sigma of p(v) = e^{−F(v)} / Z (exact sum). chains=20000: one sample per chain
    after the burn-in; chains=1000: 20 samples per chain, thinned by 10 steps."""
    model = rbm(L=2, hidden=3, std=1.5, gibbs_burn_in=100, gibbs_thin=10, gibbs_chains=chains)
    n = 20000
    spins = model.sample(n, 3.0, generator=torch.Generator().manual_seed(4))
    assert spins.dtype == torch.int8 and spins.shape == (n, 2, 2)
    v = all_visible(4)
    p = torch.softmax(exact_log_p_star(model, 1, v), 0)
    code = ((spins.reshape(n, 4) > 0).long() * torch.tensor([8, 4, 2, 1])).sum(1)
    freq = torch.bincount(code, minlength=16).double() / n
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4.5 * sigma + 1e-12).all(), torch.stack([freq, p], 1)


def test_sample_modes_and_temperatures():
    """Sign mode thresholds the last p(v|h) at ½; a [n] T samples each row at its own RBM."""
    model = rbm(L=4, hidden=8, ladder=(1.5, 4.0))
    with torch.no_grad():          # RBM 0 pushes every site up, RBM 1 every site down
        model.b[0].fill_(4.0)
        model.b[1].fill_(-4.0)
    T = torch.tensor([1.5, 4.0] * 50)
    s = model.sample(100, T, mode="sign")
    assert (s[0::2] == 1).all() and (s[1::2] == -1).all()
    b = model.sample(100, T, generator=torch.Generator().manual_seed(1))
    assert (b[0::2] == 1).float().mean() > 0.9 and (b[1::2] == -1).float().mean() > 0.9


# ---------------------------------------------------------------------- learning
def toy_ladder(g):
    """Two temperatures of toy data (L = 8): ordered two-mode lattices at T = 1.5 (<|m|> ≈ 0.9)
    and fair coins at T = 4 (<|m|> ≈ 0.1)."""
    n, L = 256, 8
    x = torch.cat([two_mode(n, L, 0.05, g), two_mode(n, L, 0.5, g)])
    T = torch.cat([torch.full((n,), 1.5), torch.full((n,), 4.0)])
    return x, T


def train_toy(model, x, T, epochs, lr, g):
    opts = model.configure_optimizers(lr)
    for _ in range(epochs):
        idx = torch.randperm(len(x), generator=g)
        train_epoch(model, [(x[idx[i:i + 32]], T[idx[i:i + 32]])
                            for i in range(0, len(x), 32)], opts, "cpu")


def test_cd1_learns_an_ordered_and_a_disordered_temperature():
    """CD-1, 15 epochs: Gibbs samples ordered at T = 1.5 and disordered at T = 4 (measured
    <|m|> 0.84 and 0.10 against the data's 0.90 and 0.10)."""
    g = torch.Generator().manual_seed(1)
    x, T = toy_ladder(g)
    model = rbm(L=8, hidden=32, ladder=(1.5, 4.0), gibbs_burn_in=200)
    train_toy(model, x, T, 15, 1e-2, g)
    gen = torch.Generator().manual_seed(2)
    low = model.sample(400, 1.5, generator=gen).float().mean((1, 2)).abs().mean()
    high = model.sample(400, 4.0, generator=gen).float().mean((1, 2)).abs().mean()
    assert low > 0.75 and high < 0.2, (low, high)


def test_pcd_moves_its_chains_and_lowers_the_validation_nll():
    """PCD-1, 15 epochs: the persistent chains move (CD's do not exist between batches) and the
    AIS validation NLL per spin falls from ln 2 (measured 0.693 → 0.593; the data's entropy
    is ≈ 0.45)."""
    g = torch.Generator().manual_seed(1)
    x, T = toy_ladder(g)
    model = rbm(L=8, hidden=16, ladder=(1.5, 4.0), persistent=True, pcd_chains=32,
                ais_runs=32, ais_steps=300)
    val = [(x[i::8], T[i::8]) for i in range(2)]
    before = evaluate_epoch(model, val, "cpu")["nll"]
    chains = model.chains.clone()
    train_toy(model, x, T, 15, 1e-2, g)
    assert not torch.equal(model.chains, chains)
    after = evaluate_epoch(model, val, "cpu")["nll"]
    assert before == pytest.approx(math.log(2), abs=0.01)
    assert after < before - 0.05, (before, after)


# ---------------------------------------------------------------------- files and errors
def test_save_load_keeps_weights_and_persistent_chains(tmp_path):
    model = rbm(L=4, hidden=8, std=0.5, persistent=True, pcd_chains=16)
    x, T = torch.randint(0, 2, (32, 4, 4)).float(), torch.full((32,), 2.0)
    train_epoch(model, [(x, T)], model.configure_optimizers(1e-2), "cpu")
    save_model(tmp_path / "rbm.pt", model, {"epoch": 1})
    loaded, _ = load_model(tmp_path / "rbm.pt")
    assert loaded.cfg == model.cfg and loaded.cfg.ladder == [2.0, 3.0]
    assert torch.equal(loaded.chains, model.chains) and torch.equal(loaded.W, model.W)
    s1 = model.sample(20, 3.0, generator=torch.Generator().manual_seed(5))
    s2 = loaded.sample(20, 3.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2)


def test_rbm_errors_name_the_problem():
    model = rbm(L=4, hidden=4, ladder=(2.0, 3.0))
    with pytest.raises(ValueError, match=r"T=2\.5 is not a training temperature.*2, 3"):
        model.sample(4, 2.5)
    with pytest.raises(ValueError, match="pass T"):
        model.sample(4)
    with pytest.raises(ValueError, match="prior='fitted'"):
        model.sample(4, 2.0, prior="fitted")
    with pytest.raises(NotImplementedError, match="no encoder"):
        model.encode(torch.zeros(2, 4, 4), 2.0)
    with pytest.raises(ValueError, match="model.ladder is empty"):
        build_model(ModelConfig(family="rbm", L=4))
    with pytest.raises(ValueError, match=r"cd_k=0: CD-k needs k ≥ 1"):
        ModelConfig(family="rbm", L=4, cd_k=0)
    with pytest.raises(ValueError, match="persistent='yes'"):
        ModelConfig(family="rbm", L=4, persistent="yes")
    with pytest.raises(ValueError, match="ladder="):
        ModelConfig(family="rbm", L=4, ladder=[3.0, 2.0])
    # one temperature: T may be left out
    single = rbm(L=4, hidden=4, ladder=(2.0,))
    assert single.sample(3).shape == (3, 4, 4)
