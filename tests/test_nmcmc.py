"""Neural MCMC (ising_dist.nmcmc): exact by construction, checked against exact enumeration
(L = 4) and Kaufman (L = 16 at Tc); the CLI's file read back by h5py, the training data reader
and h5ls; the refusals a user meets.

Exactness is tested with χ² on the (E, |M|) classes of the chain against the enumerated
Boltzmann distribution. The chain's samples are correlated, so the χ² is divided by 2τ, τ the
largest τ_int of the chain's energy, |m| and class indicators (an effective-sample count; this
only makes the test conservative), and every test requires n ≥ 50 τ so it cannot pass on a
chain that barely moved."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import stats

from ising_dist import exact, nmcmc
from ising_dist import observables as obs
from ising_dist.data import inspect, make_datasets
from ising_dist.models import ModelConfig, build_model, save_model

ROOT = Path(__file__).resolve().parents[1]
TEMPS = (1.5, 2.269, 3.5)
P_MIN = 1e-3                 # "p not absurd": a correct sampler fails 1 run in 1000


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread_per_module):
    """One torch thread for the module's tests and fixtures (tests/conftest.py)."""


# ------------------------------------------------------------------------------ helpers
class TiltedBoltzmann(torch.nn.Module):
    """An exact stand-in proposal at L = 4: q(x) = exp(−E(x)/T_q) / Z(T_q), sampled by
    enumerating all 2^16 states. Far from uniform and (for T_q ≠ T) from the target, with a
    bounded weight ratio, so the chain mixes fast and any error in how q enters shows."""

    kind = "exact"

    def __init__(self, T_q: float, L: int = 4):
        super().__init__()
        self.cfg = ModelConfig(family="vae", L=L)   # only .L, .family, .conditional are read
        N = L * L
        states = np.arange(2 ** N, dtype=np.int64)
        s = (2 * ((states[:, None] >> np.arange(N)) & 1) - 1).astype(np.int8).reshape(-1, L, L)
        e, _ = obs.energy_magnetization(s)
        logw = -e * N / T_q
        self.states = torch.from_numpy(s)
        self.log_q = torch.from_numpy(logw - np.logaddexp.reduce(logw))

    def sample(self, n, T=None, generator=None):
        idx = torch.multinomial(self.log_q.exp(), n, replacement=True, generator=generator)
        return self.states[idx], self.log_q[idx]


def chi2_exact(e, m, L: int, T: float, min_expected: float = 5.0):
    """(p-value, τ used, classes) of the chain's (E, |M|) histogram against enumeration.

    Classes whose expected effective count n·p/(2τ) is below min_expected are pooled into one.
    τ: the largest τ_int of the chain's e, |m| and of each kept class indicator."""
    E, A, p = exact.exact_distribution(L, T)
    N = L * L
    key_exact = (E + 2 * N) * (N + 1) + A
    key = (np.rint(e * N).astype(np.int64) + 2 * N) * (N + 1) + np.rint(np.abs(m) * N).astype(
        np.int64)
    cls = np.searchsorted(key_exact, key)
    assert np.all(key_exact[cls] == key), "a chain state has an impossible (E, |M|)"
    n = len(e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tau = max(obs.tau_int(e)[0], obs.tau_int(np.abs(m))[0])
        keep = np.flatnonzero(n * p / (2 * tau) >= min_expected)
        tau = max([tau] + [obs.tau_int((cls == c).astype(float))[0] for c in keep])
    keep = np.flatnonzero(n * p / (2 * tau) >= min_expected)
    counts = np.bincount(cls, minlength=len(p)).astype(float)
    rest = np.setdiff1d(np.arange(len(p)), keep)
    obs_c = np.append(counts[keep], counts[rest].sum()) if rest.size else counts[keep]
    exp_c = n * (np.append(p[keep], p[rest].sum()) if rest.size else p[keep])
    ok = exp_c > 0
    x2 = np.sum((obs_c[ok] - exp_c[ok]) ** 2 / exp_c[ok]) / (2 * tau)
    dof = ok.sum() - 1
    return float(stats.chi2.sf(x2, dof)), float(tau), int(dof + 1)


def assert_exact(res, L, T, label, min_taus=50):
    p, tau, k = chi2_exact(res["e"], res["m"], L, T)
    n = len(res["e"])
    msg = (f"{label} T={T}: p={p:.2g}, tau={tau:.1f}, n/tau={n / tau:.0f}, classes={k}, "
           f"acceptance={res['acceptance']:.4f}")
    assert res["acceptance"] > 0 and n >= min_taus * tau, "chain barely moved: " + msg
    assert k >= 2, "nothing to compare: " + msg
    assert p > P_MIN, msg
    return p


def run_one(model, T, steps, k=1, batch=4096, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return nmcmc.run_chains(nmcmc.proposal_for(model, k), [T], steps, batch=batch,
                                burn_in=2000, seed=seed)[0]


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("T", TEMPS)
def test_chain_is_exact_with_a_wrong_but_known_proposal(T):
    """q = Boltzmann at 1.4 T: the chain must still give the distribution at T, and ln Z of
    the importance weights the exact one (small batches: the chain crosses many batch
    boundaries, carrying its state over)."""
    L = 4
    res = run_one(TiltedBoltzmann(1.4 * T), T, 60000, batch=777, seed=3)
    assert_exact(res, L, T, "tilted")
    # q alone is far off: the same χ² on raw proposals fails
    p_raw, _, _ = chi2_exact(res["proposal_e"], res["proposal_m"], L, T)
    assert p_raw < 1e-6
    lnz = exact.kaufman_log_z(T, L)
    assert abs(res["ln_z"] - lnz) < 4 * res["ln_z_error"], (res["ln_z"], lnz, res["ln_z_error"])
    assert 0 < res["ln_z_error"] < 0.02
    assert abs(res["free_energy_exact"] + T * lnz / L ** 2) < 1e-12


class _Replay:
    """A proposal that hands out a fixed stream of configurations and ln q, whatever the
    batch size: the chain must not depend on how the stream is cut into batches."""
    name, k, L = "replay", 1, 4

    def __init__(self, n, seed=0):
        rng = np.random.default_rng(seed)
        self.spins = (2 * rng.integers(0, 2, (n, 4, 4)) - 1).astype(np.int8)
        self.log_q = rng.normal(-11.0, 0.5, n)
        self.at = 0

    def draw(self, n, T, generator):
        a, self.at = self.at, self.at + n
        return self.spins[a:self.at], self.log_q[a:self.at]


def test_batching_does_not_change_the_chain():
    """Drawing in batches and running the chain through them in order is one chain: cutting
    the same proposals into batches of 7 or of 1000 gives the same states and acceptances."""
    out = []
    for batch in (7, 1000):
        res = nmcmc.run_chains(_Replay(3000), [8.0], 2000, batch=batch, burn_in=1000, seed=9)[0]
        out.append(res)
    a, b = out
    assert a["accepted"] == b["accepted"] > 300
    for key in ("e", "m", "log_w"):
        assert np.array_equal(a[key], b[key]), key


def test_importance_sampling_figures():
    """ESS (Kish), ln Z and its delta-method error from known weights."""
    w = np.array([1.0, 1.0, 2.0, 4.0])
    out = nmcmc.importance_sampling(np.log(w), 2.0, 4)
    ess = w.sum() ** 2 / (w ** 2).sum()
    assert out["ess_fraction"] == pytest.approx(ess / 4)
    assert out["ln_z"] == pytest.approx(math.log(w.mean()))
    assert out["ln_z_error"] == pytest.approx(math.sqrt(w.var() / 4) / w.mean())
    assert out["free_energy"] == pytest.approx(-2.0 * math.log(w.mean()) / 16)


def test_stuck_chain_has_infinite_tau():
    e = np.full(100, -2.0)
    st = nmcmc.chain_statistics(e, np.ones(100), np.zeros(100), 0, 2.0, 4)
    assert st["acceptance"] == 0 and st["tau_int"] == math.inf


# An untrained model is near uniform: at T = 1.5 the chain holds a ground state for ~10⁵
# proposals at a time (a uniform q proposes one with probability 2⁻¹⁵), so these chains are
# long and the bar is 20 τ_int (the PixelCNN body is exercised at L = 16 below and by the CLI).
UNTRAINED_STEPS = (3_000_000, 600_000, 200_000)


@pytest.mark.validation
def test_untrained_autoregressive_proposal_is_exact():
    """An untrained (near-uniform) MADE: acceptance is tiny at low T, the chain long, the
    answer exact."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="autoregressive", body="made", L=4,
                                    ar_hidden=[32])).eval()
    for T, steps in zip(TEMPS, UNTRAINED_STEPS):
        assert_exact(run_one(model, T, steps, batch=16384, seed=1), 4, T, "made",
                     min_taus=20)


@pytest.mark.validation
def test_untrained_vae_pseudo_marginal_is_exact():
    """Pseudo-marginal MH with an untrained VAE (q̂ from K = 2 codes)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="vae", L=4, hidden=[32], latent_dim=2)).eval()
    for T, steps in zip(TEMPS, UNTRAINED_STEPS):
        assert_exact(run_one(model, T, steps, k=2, batch=16384, seed=2), 4, T, "vae",
                     min_taus=20)


# ------------------------------------------------------------------------------ the CLI
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ising_dist.nmcmc", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _run_dir(tmp_path, name, **cfg):
    d = tmp_path / name
    d.mkdir()
    torch.manual_seed(0)
    save_model(d / "model.pt", build_model(ModelConfig(**cfg)))
    return d


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    return _run_dir(tmp_path_factory.mktemp("nmcmc"), "ar", family="autoregressive", L=4,
                    body="made", ar_hidden=[16])


def test_cli_writes_a_run_file_that_readers_take(ar_run, tmp_path):
    out = tmp_path / "nm.h5"
    res = _cli("--model", ar_run, "--temperatures", "3.5,2.5", "--steps", 3000, "--batch", 1000,
               "--out", out, "--seed", 5, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "F exact" in res.stdout and not out.with_name("nm.h5.partial").exists()
    with h5py.File(out, "r") as f:
        assert f.attrs["schema_version"] == 1 and f.attrs["L"] == 4 and f.attrs["seed"] == 5
        assert f.attrs["sweeps_done"] == 3000 and "nmcmc" in f.attrs["config"]
        assert list(f["temperatures"][()]) == [2.5, 3.5]
        spins = f["spins"][()]
        assert spins.dtype == np.int8 and spins.shape == (2, 3000, 4, 4)
        assert set(np.unique(spins)) == {-1, 1}
        e, m = obs.energy_magnetization(spins)
        assert np.array_equal(e, f["energy"][()]) and np.array_equal(m, f["magnetization"][()])
        assert list(f["sweep"][:3]) == [1, 2, 3]
        g = f["nmcmc"]
        for k in nmcmc.SUMMARY_KEYS:
            assert g[k].shape == (2,)
        assert g["log_weight"].shape == (2, 3000)
        assert 0 < g["acceptance"][1] < 1 and g.attrs["proposal"] == "exact"
        # the same seed gives the same chain: streams are per (seed, temperature row)
    back = nmcmc.read_results(out)
    assert back["per_temperature"][0]["T"] == 2.5 and back["attrs"]["family"] == "autoregressive"
    info = inspect(out)                                     # the training data reader
    assert info.L == 4 and info.n_samples == 3000
    sets, _ = make_datasets(out, val_fraction=0.1, test_fraction=0.1)
    x, T = sets["train"][0]
    assert x.shape == (4, 4) and float(T) == 2.5
    if shutil.which("h5ls"):
        ls = subprocess.run(["h5ls", "-r", str(out)], capture_output=True, text=True)
        assert ls.returncode == 0 and "/nmcmc/acceptance" in ls.stdout, ls.stderr
    # reproducible
    out2 = tmp_path / "nm2.h5"
    assert nmcmc.main([str(a) for a in ("--model", ar_run, "--temperatures", "3.5,2.5",
                                         "--steps", 3000, "--batch", 1000, "--out", out2,
                                         "--seed", 5, "--quiet")]) == 0
    with h5py.File(out, "r") as a, h5py.File(out2, "r") as b:
        assert np.array_equal(a["spins"][()], b["spins"][()])


def _refused(res, *words):
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


def _main_refuses(capsys, argv, *words):
    """In-process CLI (no interpreter start per case): exit code 2 and an error: message."""
    assert nmcmc.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_cli_refusals(ar_run, tmp_path, capsys):
    gan = _run_dir(tmp_path, "gan", family="dcgan", L=4, arch="mlp", hidden=[8])
    ae = _run_dir(tmp_path, "ae", family="ae", L=4, hidden=[8])
    out = tmp_path / "x.h5"
    base = ["--steps", 100, "--out", out, "--quiet"]
    # one real interpreter: the exit status and stderr as a user sees them
    _refused(_cli("--model", gan, "--temperatures", "2", *base), "GAN", "no density")
    for argv, words in (
            (["--model", ae, "--temperatures", "2"], ["no likelihood"]),
            (["--model", ar_run, "--temperatures", "2", "--L", 8], ["L=4", "--L 8"]),
            (["--model", ar_run, "--temperatures", "2,-1"], ["T=-1"]),
            (["--model", ar_run, "--temperatures", "0"], ["T=0"]),
            (["--model", ar_run, "--temperatures", "two"], ["'two'"]),
            (["--model", tmp_path / "nothing", "--temperatures", "2"], ["does not exist"]),
            (["--model", tmp_path, "--temperatures", "2"], ["without model.pt"]),
            (["--model", ar_run, "--temperatures", "2", "--k", 0], ["--k 0"])):
        _main_refuses(capsys, argv + base, *words)
    _main_refuses(capsys, ["--model", ar_run, "--temperatures", "2", "--steps", 1, "--out", out],
                  "--steps 1")
    assert not out.exists()
    out.write_bytes(b"keep me")
    _main_refuses(capsys, ["--model", ar_run, "--temperatures", "2"] + base, "exists",
                  "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert nmcmc.main([str(a) for a in ["--model", ar_run, "--temperatures", "2", *base,
                                        "--overwrite"]]) == 0
    assert h5py.is_hdf5(out)


def test_cli_refuses_an_output_another_run_writes(ar_run, tmp_path, capsys):
    from ising_dist.runlock import RunLock
    out = tmp_path / "busy.h5"
    with RunLock.acquire(out, role="nmcmc"):
        _main_refuses(capsys, ["--model", ar_run, "--temperatures", "2", "--steps", 100,
                               "--out", out, "--quiet"], "in use")
    assert not out.exists()


def test_vae_cli_pseudo_marginal(tmp_path):
    vae = _run_dir(tmp_path, "cvae", family="cvae", L=4, hidden=[16])
    out = tmp_path / "v.h5"
    assert nmcmc.main([str(a) for a in ("--model", vae, "--temperatures", "3", "--steps", 500,
                                         "--k", 3, "--out", out, "--quiet")]) == 0
    with h5py.File(out, "r") as f:
        assert f["nmcmc"].attrs["proposal"] == "pseudo-marginal" and f["nmcmc"].attrs["k"] == 3


# ------------------------------------------------------------------------------ L = 16 at Tc
@pytest.mark.validation
def test_trained_van_proposal_matches_kaufman_at_tc():
    """A short VAN training (PixelCNN, Z2, L = 16, T = Tc; a few minutes on one core) makes a
    proposal good enough for a chain that moves: its ⟨e⟩ and F = −T ln Z/N agree with
    Kaufman's within 3σ, with acceptance ≥ 5% and a chain of at least 30 τ_int, so the error
    bars are real."""
    from ising_dist.models.loop import train_variational_epoch
    L, T = 16, exact.TC
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="autoregressive", body="pixelcnn", L=L, z2=True,
                                    objective="variational", temperature=T, ar_channels=16,
                                    ar_blocks=2, van_batch=256, van_steps=25,
                                    beta_anneal=2.4))           # epochs of β annealing
    opt = model.configure_optimizers(2e-3)
    for epoch in range(8):
        train_variational_epoch(model, opt, epoch, "cpu")
    model.eval()
    res = run_one(model, T, 20000, batch=1024, seed=4)
    n, tau = len(res["e"]), res["tau_int"]
    th = obs.thermo(res["e"], res["m"], T, L, tau=tau)
    e_exact = exact.kaufman_energy(T, L)
    msg = (f"acceptance {res['acceptance']:.3f}, tau {tau:.1f}, n/tau {n / tau:.0f}, ESS/n "
           f"{res['ess_fraction']:.4f}, <e> {th['e'][0]:.5f} ± {th['e'][1]:.5f} (Kaufman "
           f"{e_exact:.5f}), F {res['free_energy']:.6f} ± {res['free_energy_error']:.6f} "
           f"(Kaufman {res['free_energy_exact']:.6f})")
    assert res["acceptance"] >= 0.05 and n >= 30 * tau, msg
    assert abs(th["e"][0] - e_exact) < 3 * th["e"][1], msg
    assert abs(res["free_energy"] - res["free_energy_exact"]) < 3 * res["free_energy_error"], msg
    # the error bars are small enough to mean something: F to 1e-3 J, e to 0.03 J per spin
    assert res["free_energy_error"] < 1e-3 and th["e"][1] < 0.03, msg


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_judges_nmcmc_and_prices_it(tmp_path, ar_run):
    """evaluate with an nmcmc file: the chain's observables against MCMC and exact, its cost
    against Metropolis and Wolff of the same run; the raw samples of an untrained model are
    labelled biased and get no speed-up; the report shows the section."""
    from ising_dist.judge import driver
    pt = tmp_path / "pt.h5"
    res = subprocess.run([sys.executable, "-m", "ising_dist.pt", "--L", "4", "--replicas", "3",
                          "--tmin", "3.5", "--tmax", "6.0", "--thermalize", "500", "--sweeps",
                          "4000", "--sample-every", "2", "--seed", "2", "--no-progress",
                          "--out", str(pt)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    with h5py.File(pt, "r") as f:
        temps = f["temperatures"][()]
    nm = tmp_path / "nm.h5"
    ladder = ",".join(repr(float(t)) for t in temps)
    assert nmcmc.main(["--model", str(ar_run), "--temperatures", ladder,
                       "--steps", "20000", "--batch", "4096", "--out", str(nm), "--quiet"]) == 0
    out = tmp_path / "report"
    metrics = driver.run(pt, ar_run, out, 1000, progress=None, cost=True, cost_sweeps=300,
                         nmcmc_file=nm)
    sec = metrics["nmcmc"]
    assert sec["proposal"] == "exact" and len(sec["per_temperature"]) == 3
    for j, c in zip(sec["per_temperature"], sec["cost"]):
        assert j["mcmc"] is not None and j["z_mcmc"]["e"] is not None
        assert j["reliable"], j
        assert j["max_abs_z"] < 4.5, j          # 10 comparisons per T: ~4σ worst case
        assert c["s_per_effective"] == pytest.approx(
            c["s_per_proposal"] * max(1.0, 2 * j["tau_int"]))
        assert c["metropolis_s_per_effective"] > 0 and c["wolff_s_per_effective"] > 0
        assert c["best_mcmc"] in ("metropolis", "wolff")
    # raw samples of an untrained model are biased: no speed-up figure
    rows = metrics["cost"]["per_temperature"]
    assert any(r["biased"] for r in rows)
    assert all(r["speedup_vs_best_mcmc"] is None for r in rows if r["biased"])
    page = (out / "index.html").read_text()
    assert "Neural MCMC" in page and "nmcmc.png" in metrics["pictures"]
    assert (out / "nmcmc.png").is_file()


def test_judge_flags_a_chain_too_short_for_its_proposal():
    """reliable needs the chain to be ≥ 30 τ_int long and the weights' ESS ≥ 100: a series
    whose τ_int looks fine but whose weights are dominated by a few proposals is flagged,
    and so is a chain that never moved."""
    from ising_dist.judge import neural_mcmc
    rng = np.random.default_rng(0)
    n, L, T = 20000, 4, 3.0
    e = rng.choice([-2.0, -1.5, -1.0], n)
    m = rng.choice([-1.0, 0.5, 1.0], n)

    def judged(log_w, accepted=n // 3):
        r = {"T": T, "e": e, "m": m, "log_w": log_w, "accepted": accepted}
        r.update(nmcmc.chain_statistics(e, m, log_w, accepted, T, L))
        j, = neural_mcmc.judge([r], L)
        return r, j

    r, j = judged(rng.normal(0, 0.5, n))                 # i.i.d. chain, flat weights
    assert r["tau_int"] < 1 and r["ess_fraction"] * n > 1000 and j["reliable"]
    heavy = rng.normal(0, 0.5, n)
    heavy[:20] += 12                                      # 20 proposals carry the weight
    r, j = judged(heavy)
    assert r["tau_int"] < 1 and r["ess_fraction"] * n < neural_mcmc.MIN_ESS
    assert not j["reliable"]
    r, j = judged(rng.normal(0, 0.5, n), accepted=0)     # never moved
    assert r["tau_int"] == math.inf and not j["reliable"] and j["tau_int"] is None


# ------------------------------------------------------------------------------ --device
NO_GPU = "needs a CUDA device: torch.cuda.is_available() is False (no GPU or a CPU build of torch)"


def test_device_refusals(ar_run, tmp_path, capsys, monkeypatch):
    """--device names cpu, cuda or cuda:N; cuda where torch sees no CUDA device, or an index
    past the last one, is refused with exit 2 before the model is read or --out written."""
    out = tmp_path / "d.h5"
    base = ["--model", ar_run, "--temperatures", "2", "--steps", 100, "--out", out, "--quiet"]
    _refused(_cli(*base, "--device", "tpu"), "--device 'tpu'", "cpu, cuda or cuda:N")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "cpu:0"):
        _main_refuses(capsys, base + ["--device", bad], repr(bad), "cuda:N")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dev in ("cuda", "cuda:0"):
        _main_refuses(capsys, base + ["--device", dev], f"device={dev}: torch sees no CUDA "
                      f"device here (torch.cuda.is_available() is False); use --device cpu, "
                      f"or install a CUDA build of torch on a GPU machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _main_refuses(capsys, base + ["--device", "cuda:2"], "device=cuda:2", "2 CUDA device(s)",
                  "cuda:0 … cuda:1")
    assert not out.exists() and not out.with_name("d.h5.partial").exists()


def _nmcmc_file(ar_run, out, *extra) -> dict:
    """An nmcmc run of ar_run at two temperatures: (spins, log weights, config, attrs)."""
    assert nmcmc.main([str(a) for a in ("--model", ar_run, "--temperatures", "3.5,2.5",
                                         "--steps", 400, "--batch", 128, "--burn-in", 64,
                                         "--seed", 3, "--out", out, "--quiet", *extra)]) == 0
    back = nmcmc.read_results(out)
    with h5py.File(out, "r") as f:
        spins = f["spins"][()]
    return {"spins": spins, "log_w": np.stack([r["log_w"] for r in back["per_temperature"]]),
            "config": back["config"], "attrs": back["attrs"]}


def test_explicit_cpu_device_gives_the_default_chains(ar_run, tmp_path):
    default = _nmcmc_file(ar_run, tmp_path / "a.h5")
    cpu = _nmcmc_file(ar_run, tmp_path / "b.h5", "--device", "cpu")
    assert np.array_equal(default["spins"], cpu["spins"])
    assert np.array_equal(default["log_w"], cpu["log_w"])
    assert default["config"]["device"] == cpu["config"]["device"] == "cpu"
    assert default["attrs"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cuda_proposals_are_the_models_and_the_cli_runs_on_the_gpu(ar_run, tmp_path):
    """On a GPU: an exact proposal drawn on cuda carries the ln q that the same model computes
    on the CPU for those spins (so the MH weights are right), the pseudo-marginal proposal
    draws there with a generator on the device, and the CLI writes its file with
    device=cuda; its chains differ from the cpu run's (other random streams)."""
    model, _ = nmcmc.load_proposal_model(ar_run)
    cpu_model, _ = nmcmc.load_proposal_model(ar_run)
    prop = nmcmc.proposal_for(model.to("cuda"))
    assert prop.device.type == "cuda"
    g, _ = nmcmc._streams(0, 0, prop.device)
    spins, log_q = prop.draw(512, 2.5, g)
    assert spins.dtype == np.int8 and spins.shape == (512, 4, 4) and log_q.dtype == np.float64
    with torch.no_grad():
        ref = cpu_model.log_prob(torch.from_numpy(spins)).double().numpy()
    np.testing.assert_allclose(log_q, ref, rtol=0, atol=1e-4)
    vae = build_model(ModelConfig(family="vae", L=4, hidden=[16])).eval().to("cuda")
    res = nmcmc.run_chains(nmcmc.proposal_for(vae, 2), [3.0], 256, batch=128, burn_in=0)
    assert res[0]["e"].shape == (256,) and np.isfinite(res[0]["log_w"]).all()
    gpu = _nmcmc_file(ar_run, tmp_path / "g.h5", "--device", "cuda")
    cpu = _nmcmc_file(ar_run, tmp_path / "c.h5")
    assert gpu["config"]["device"] == "cuda" and gpu["attrs"]["device"] == "cuda"
    assert gpu["spins"].shape == cpu["spins"].shape
    assert not np.array_equal(gpu["spins"], cpu["spins"])
