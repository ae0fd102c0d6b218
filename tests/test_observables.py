"""Statistical tests of ising_dist.observables.

Tolerances are derived from the known sampling error of each estimator (or
measured from independent repetitions) and are stated next to each check;
all random numbers come from fixed seeds.
"""

import numpy as np
import pytest
from scipy.signal import lfilter

from ising_dist import observables as ob

PHI = 0.9
TAU_AR1 = (1 + PHI) / (2 * (1 - PHI))   # exact tau_int = 9.5
VAR_AR1 = 1 / (1 - PHI**2)              # stationary variance for unit noise


def ar1(n, rng, phi=PHI):
    """Stationary AR(1) x_t = phi x_{t-1} + N(0,1)."""
    x0 = rng.standard_normal() / np.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], rng.standard_normal(n), zi=[phi * x0])[0]


def block_var_ratio(b, phi=PHI):
    """Var(mean of b consecutive AR(1) values) * b / (2 tau Var): < 1 for finite b."""
    s = (1 + phi) / (1 - phi) - 2 * phi * (1 - phi**b) / (b * (1 - phi) ** 2)
    return s / ((1 + phi) / (1 - phi))


# ---------------------------------------------------------------- tau_int
def test_tau_int_ar1():
    x = ar1(200_000, np.random.default_rng(0))
    tau, err, w = ob.tau_int(x)
    assert abs(tau - TAU_AR1) < 3 * err
    assert err / tau < 0.05                              # MS: sqrt((4W+2)/n) ~ 3.4%
    assert w >= 6 * tau and w < 6 * tau + 2               # smallest W >= c tau(W)
    # window truncation bias phi^(W+1)/(1-phi) is negligible at c=6
    assert PHI ** (w + 1) / (1 - PHI) < 0.1 * err


def test_tau_int_iid_and_constant():
    n = 100_000
    tau, err, _ = ob.tau_int(np.random.default_rng(1).standard_normal(n))
    assert abs(tau - 0.5) < 3 * err
    assert ob.tau_int(np.full(1000, 3.7)) == (0.5, 0.0, 0)
    rho = ob.autocorr(np.random.default_rng(2).standard_normal(n))
    assert rho[0] == 1.0 and np.all(np.abs(rho[1:20]) < 4 / np.sqrt(n))


# ---------------------------------------------------------------- binning
def test_binning_error_ar1():
    n = 200_000
    x = ar1(n, np.random.default_rng(3))
    se, b = ob.binning_error(x, return_block=True)
    exact = np.sqrt(2 * TAU_AR1 * VAR_AR1 / n)
    k = n // b
    assert b >= 2 * TAU_AR1
    # tolerance = 3 x statistical error of a K-block estimate, 1/sqrt(2(K-1)),
    # plus the exactly known finite-block deficit at the selected block size
    # (the automatic rule stops once residual correlation is undetectable, so
    # this deficit is of the order of the statistical error, a few %).
    tol = 3 / np.sqrt(2 * (k - 1)) + 1 - np.sqrt(block_var_ratio(b))
    assert abs(se / exact - 1) < tol
    assert abs(se / exact - 1) < 0.10


def test_binning_error_iid():
    n = 100_000
    x = np.random.default_rng(4).normal(2.0, 3.0, n)
    se = ob.binning_error(x)
    exact = 3.0 / np.sqrt(n)
    # even at block size 1 the error-of-error is 1/sqrt(2n); allow coarse levels
    assert abs(se / exact - 1) < 0.10
    assert ob.binning_error(np.ones(64)) == 0.0


# ---------------------------------------------------------------- jackknife
def test_jackknife_identities():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1000)
    # delete-1 bias-corrected variance == unbiased sample variance
    est, _ = ob.jackknife(lambda a, a2: a2 - a * a, x, x * x, block=1)
    assert est == pytest.approx(np.var(x, ddof=1), rel=1e-10)
    # a linear function gives the block-means standard error
    est, err = ob.jackknife(lambda a: a, x, block=50)
    bm = x.reshape(20, 50).mean(1)
    assert est == pytest.approx(x.mean()) and err == pytest.approx(bm.std(ddof=1) / np.sqrt(20))
    assert ob.jackknife(lambda a: a, x, n_blocks=20) == pytest.approx((est, err))
    with pytest.raises(ValueError):
        ob.jackknife(lambda a: a, x, block=1000)


def test_jackknife_ratio_iid_vs_repetitions():
    rng = np.random.default_rng(6)
    R, n = 200, 500
    est, err = np.empty(R), np.empty(R)
    for r in range(R):
        x, y = rng.exponential(2.0, n), rng.uniform(1.0, 3.0, n)
        est[r], err[r] = ob.jackknife(lambda a, b: a / b, x, y, tau=0.5)
    spread = est.std(ddof=1)
    # relative standard error of a sample std from R values: 1/sqrt(2(R-1)) = 5%
    assert abs(err.mean() / spread - 1) < 3 / np.sqrt(2 * (R - 1))
    assert abs(est.mean() - 1.0) < 3 * spread / np.sqrt(R)        # <x>/<y> = 2/2


def test_jackknife_variance_correlated_vs_repetitions():
    rng = np.random.default_rng(7)
    R, n = 200, 20_000
    est, err = np.empty(R), np.empty(R)
    for r in range(R):
        x = ar1(n, rng)
        est[r], err[r] = ob.jackknife(lambda a, a2: a2 - a * a, x, x * x)
    spread = est.std(ddof=1)
    # automatic block = 20 tau: residual bias ~ tau/b ~ 5% in err^2, 2.5% in err
    assert abs(err.mean() / spread - 1) < 3 / np.sqrt(2 * (R - 1)) + 0.025
    # bias-corrected variance is unbiased for correlated data
    assert abs(est.mean() - VAR_AR1) < 3 * spread / np.sqrt(R)


# ---------------------------------------------------------------- thermo
def test_thermo_iid_gaussian():
    rng = np.random.default_rng(8)
    n, L, T, se, sm = 100_000, 16, 3.0, 0.02, 0.05
    N = L * L
    e = rng.normal(-0.8, se, n)
    m = rng.normal(0.0, sm, n)
    out = ob.thermo(e, m, T, L, iid=True)
    assert out["block"] == 1
    for key, exact in [("e", -0.8), ("abs_m", sm * np.sqrt(2 / np.pi)),
                       ("C", N * se**2 / T**2), ("chi", N * sm**2 * (1 - 2 / np.pi) / T),
                       ("U4", 0.0)]:                  # Gaussian m: <m^4> = 3<m^2>^2
        val, err = out[key]
        assert abs(val - exact) < 3 * err, key
    # C error for Gaussian e: C sqrt(2/n); the jackknife error itself scatters by
    # ~3.2/sqrt(n) = 1% relative (4th-moment noise), so 3 sigma = 3%
    assert out["C"][1] == pytest.approx(N * se**2 / T**2 * np.sqrt(2 / n), rel=0.03)
    assert abs(out["tau_e"] - 0.5) < 0.05 and abs(out["tau_abs_m"] - 0.5) < 0.05


def test_thermo_u4_ordered_and_correlated():
    rng = np.random.default_rng(9)
    n = 50_000
    m = rng.choice([-1.0, 1.0], n)
    out = ob.thermo(rng.normal(-2.0, 0.01, n), m, 1.0, 8, iid=True)
    assert out["U4"][0] == pytest.approx(2 / 3, abs=1e-12) and out["U4"][1] < 1e-12
    assert out["chi"][0] == pytest.approx(0.0, abs=1e-9)
    # correlated energy series: block chosen from tau, C consistent with exact Var
    e = -1.0 + 0.01 * ar1(200_000, rng)
    out = ob.thermo(e, rng.normal(0, 0.1, e.size), 2.0, 10)
    assert abs(out["tau_e"] - TAU_AR1) < 1.0
    assert out["block"] >= 20 * out["tau_e"]
    C_exact = 100 * 1e-4 * VAR_AR1 / 4
    assert abs(out["C"][0] - C_exact) < 3 * out["C"][1]


# ---------------------------------------------------------------- configurations
def direct_em(s):
    L = s.shape[0]
    E = 0
    for i in range(L):
        for j in range(L):
            E -= s[i, j] * (s[(i + 1) % L, j] + s[i, (j + 1) % L])
    return E / L**2, s.sum() / L**2


def test_energy_magnetization():
    L = 8
    up = np.ones((2, L, L), np.int8)
    e, m = ob.energy_magnetization(up)
    assert np.all(e == -2.0) and np.all(m == 1.0)
    cb = np.where(np.add.outer(np.arange(L), np.arange(L)) % 2 == 0, 1, -1).astype(np.int8)
    e, m = ob.energy_magnetization(cb[None])
    assert e[0] == 2.0 and m[0] == 0.0
    s = np.random.default_rng(10).choice(np.array([-1, 1], np.int8), (5, 7, 7))
    e, m = ob.energy_magnetization(s)
    ref = np.array([direct_em(x.astype(int)) for x in s])
    np.testing.assert_allclose(np.stack([e, m], 1), ref, atol=1e-14)
    e1, m1 = ob.energy_magnetization(s[0].astype(np.float32))   # single float lattice
    assert (e1, m1) == pytest.approx(tuple(ref[0]))


def test_correlation_function():
    rng = np.random.default_rng(11)
    L, S = 16, 400
    np.testing.assert_allclose(ob.correlation_function(np.ones((3, L, L), np.int8)), 1.0)
    np.testing.assert_allclose(
        ob.correlation_function(np.ones((3, L, L), np.int8), connected=True), 0.0, atol=1e-12)
    s = rng.choice(np.array([-1, 1], np.int8), (S, L, L))
    g = ob.correlation_function(s, chunk=64)
    # matches direct periodic roll products
    ref = [0.5 * np.mean(s * np.roll(s, r, 1)) + 0.5 * np.mean(s * np.roll(s, r, 2))
           for r in range(L // 2 + 1)]
    np.testing.assert_allclose(g, ref, atol=1e-12)
    # i.i.d. spins: products are pairwise uncorrelated, sd = 1/sqrt(2 N S);
    # at r = L/2 every pair is counted twice -> sd = 1/sqrt(N S)
    sd = np.full(L // 2, 1 / np.sqrt(2 * L * L * S))
    sd[-1] *= np.sqrt(2)
    z = g[1:] / sd
    assert g[0] == pytest.approx(1.0)
    assert np.all(np.abs(z) < 4)
    assert abs(np.sum(z**2) - z.size) < 4 * np.sqrt(2 * z.size)     # chi^2 check


def test_correlation_length():
    rng = np.random.default_rng(12)
    assert ob.correlation_length(np.ones((4, 16, 16), np.int8)) == np.inf
    # i.i.d. noise: chi(0)/chi(k_min) = 1 up to relative noise sqrt(2.5/S)
    L, S = 32, 2000
    xi = ob.correlation_length(rng.choice(np.array([-1, 1], np.int8), (S, L, L)))
    bound = np.sqrt(3 * np.sqrt(2.5 / S)) / (2 * np.sin(np.pi / L))
    assert np.isnan(xi) or xi < bound
    # b x b blocks of i.i.d. spins: chi(0) = b^2, chi(k) = sin^2(kb/2)/sin^2(k/2)
    b, R, Sr = 16, 20, 500
    k = 2 * np.pi / L
    exact = np.sqrt(b**2 * np.sin(k / 2) ** 2 / np.sin(k * b / 2) ** 2 - 1) / (2 * np.sin(k / 2))
    coarse = rng.choice(np.array([-1, 1], np.int8), (R * Sr, L // b, L // b))
    s = np.repeat(np.repeat(coarse, b, axis=1), b, axis=2)
    xis = [ob.correlation_length(s[i * Sr:(i + 1) * Sr]) for i in range(R)]
    assert abs(ob.correlation_length(s) - exact) < 3 * np.std(xis, ddof=1) / np.sqrt(R)


def test_wasserstein1():
    a = np.random.default_rng(13).standard_normal(1000)
    assert ob.wasserstein1(a, a + 0.3) == pytest.approx(0.3)
    assert ob.wasserstein1(a, a) == 0.0


def test_short_series_warn_not_crash():
    x = ar1(300, np.random.default_rng(14), phi=0.99)
    with pytest.warns(RuntimeWarning):
        out = ob.thermo(-1 + 0.01 * x, 0.1 * x, 2.0, 8)
    assert out["block"] == 300 // ob.MIN_BLOCKS
    assert all(np.isfinite(out[k]).all() for k in ("e", "abs_m", "C", "chi", "U4"))
    with pytest.warns(RuntimeWarning):
        ob.binning_error(x[:10])            # < 16 blocks at any level
    with pytest.raises(ValueError):
        ob.tau_int([1.0])
