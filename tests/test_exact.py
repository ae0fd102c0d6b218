"""Tests of the exact oracles in ising_dist.exact: enumeration, Kaufman (finite L), Onsager."""

import time

import numpy as np
import pytest

from ising_dist import exact as ex

T_GRID = [0.5, 1.0, 1.5, 2.0, 2.269185, 2.6, 3.5, 10.0]


def _enum_log_z(L, T):
    E, _, g = ex.enumerate_lattice(L)
    E0 = E.min()
    return np.log(np.sum(g * np.exp(-(E - E0) / T))) - E0 / T


# ----------------------------------------------------------------------------- enumeration
@pytest.mark.parametrize("L", [2, 3, 4])
def test_enumeration_counts_and_ground_state(L):
    N = L * L
    E, M, g = ex.enumerate_lattice(L)
    assert E.dtype == M.dtype == g.dtype == np.int64
    assert g.sum() == 2 ** N
    assert E.min() == -2 * N
    ground = E == -2 * N
    assert g[ground].sum() == 2 and sorted(M[ground]) == [-N, N]
    assert np.all(np.abs(M) <= N) and len(set(zip(E, M))) == len(E)
    # spin-flip symmetry g(E, M) = g(E, -M)
    d = dict(zip(zip(E, M), g))
    assert all(d[(e, -m)] == n for (e, m), n in d.items())
    if L > 2:   # one flipped spin breaks its 4 bonds: 2N states at E = -2N + 8, |M| = N - 2
        first = E == -2 * N + 8
        assert g[first].sum() == 2 * N and set(np.abs(M[first])) == {N - 2}


def test_enumeration_L4_is_fast():
    ex._dos.cache_clear()
    t = time.perf_counter()
    ex.enumerate_lattice(4)
    assert time.perf_counter() - t < 1.0


def test_exact_distribution_and_moments():
    L, T, N = 4, 2.3, 16
    E, A, p = ex.exact_distribution(L, T)
    assert E.shape == A.shape == p.shape and np.all(A >= 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-14) and np.all(p > 0)
    mo = ex.exact_moments(L, T)
    assert mo["e"] == pytest.approx(p @ E / N, abs=1e-14)
    assert mo["abs_m"] == pytest.approx(p @ A / N, abs=1e-14)
    assert mo["m2"] == pytest.approx(p @ (A / N) ** 2, abs=1e-14)
    assert mo["m4"] == pytest.approx(p @ (A / N) ** 4, abs=1e-14)
    assert mo["c"] == pytest.approx(N * (mo["e2"] - mo["e"] ** 2) / T ** 2, abs=1e-12)
    assert mo["chi"] == pytest.approx(N * (mo["m2"] - mo["abs_m"] ** 2) / T, abs=1e-12)
    # low T: ground state; array input keeps its shape
    low = ex.exact_moments(L, [0.05, 0.1])
    assert low["e"].shape == (2,)
    np.testing.assert_allclose(low["e"], -2.0, atol=1e-12)
    np.testing.assert_allclose(low["abs_m"], 1.0, atol=1e-12)
    # c equals dE/dT per spin (central difference)
    h = 1e-5
    e_pm = ex.exact_moments(L, [T + h, T - h])["e"]
    assert mo["c"] == pytest.approx((e_pm[0] - e_pm[1]) / (2 * h), rel=1e-7)


# ----------------------------------------------------------------------------- Kaufman
@pytest.mark.parametrize("L", [2, 3, 4])
def test_kaufman_matches_enumeration(L):
    """Same bond convention (right+down neighbours, doubled bonds at L=2) on both sides."""
    T = np.array(T_GRID + [ex.TC])
    mo = ex.exact_moments(L, T)
    np.testing.assert_allclose(ex.kaufman_energy(T, L), mo["e"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ex.kaufman_specific_heat(T, L), mo["c"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ex.kaufman_log_z(T, L), [_enum_log_z(L, t) for t in T],
                               rtol=1e-13, atol=0)


def _mp_log_z(K, L):
    """Independent high-precision Kaufman ln Z (mpmath), γ_0 = 2(K - K*) signed."""
    import mpmath as mp
    Ks = -mp.log(mp.tanh(K)) / 2
    gam = [2 * (K - Ks)] + [mp.acosh(mp.cosh(2 * K) * mp.cosh(2 * Ks) - mp.cos(mp.pi * k / L))
                            for k in range(1, 2 * L)]
    P = lambda f, gs: mp.fprod([2 * f(L * x / 2) for x in gs])  # noqa: E731
    odd, even = gam[1::2], gam[0::2]
    Z = (P(mp.cosh, odd) + P(mp.sinh, odd) + P(mp.cosh, even) + P(mp.sinh, even)) / 2
    return mp.log(Z * (2 * mp.sinh(2 * K)) ** (mp.mpf(L * L) / 2))


@pytest.mark.parametrize("L", [6, 128])
def test_kaufman_derivatives_match_mpmath(L):
    mp = pytest.importorskip("mpmath")
    T = np.array([0.5, 1.0, 2.0, ex.TC, 2.3, 2.6, 10.0])
    e, c, lz = ex.kaufman_energy(T, L), ex.kaufman_specific_heat(T, L), ex.kaufman_log_z(T, L)
    with mp.workdps(40):
        for i, t in enumerate(T):
            K, N = 1 / mp.mpf(t), L * L
            f = lambda k: _mp_log_z(k, L)  # noqa: E731
            assert lz[i] == pytest.approx(float(f(K)), rel=1e-14)
            assert e[i] == pytest.approx(float(-mp.diff(f, K) / N), rel=1e-12)
            assert c[i] == pytest.approx(float(mp.diff(f, K, 2) * K ** 2 / N), rel=1e-10)


def _transfer_matrix_e_c(L, T):
    """Energy and specific heat per spin of the L×L periodic lattice from the row-to-row
    transfer matrix (Kramers & Wannier, Phys. Rev. 60, 252 (1941)), an oracle independent
    of Kaufman's: with 2^L row states a, b, Z = Tr(M^L), M_ab = exp(-β W_ab),
    W_ab = -Σ_j a_j a_{j+1} - Σ_j a_j b_j (the bonds to the right inside row a and down to
    row b, this module's convention). The β-derivatives of M^L come from powers of the block
    matrix B = [[M, M', M''/2], [0, M, M'], [0, 0, M]] (M' = -W∘M, M'' = W²∘M): the top
    row of B^L is M^L, (M^L)', (M^L)''/2. Then e = -Z'/(N Z), c = β² (Z''/Z - (Z'/Z)²)/N."""
    n = 2 ** L
    rows = 2 * ((np.arange(n)[:, None] >> np.arange(L)) & 1) - 1           # [n, L] of ±1
    W = -(rows * np.roll(rows, -1, axis=1)).sum(1)[:, None] - rows @ rows.T
    beta = 1.0 / T
    M = np.exp(-beta * W)
    B = np.zeros((3 * n, 3 * n))
    for i, block in enumerate((M, -W * M, W ** 2 * M / 2)):
        for j in range(3 - i):
            B[j * n:(j + 1) * n, (i + j) * n:(i + j + 1) * n] = block
    P = np.linalg.matrix_power(B, L)
    Z, Z1, Z2 = (np.trace(P[:n, i * n:(i + 1) * n]) for i in range(3))
    N = L * L
    return -Z1 / (N * Z), beta ** 2 * (2 * Z2 / Z - (Z1 / Z) ** 2) / N


@pytest.mark.parametrize("T", [1.5, ex.TC, 3.0])
def test_kaufman_matches_transfer_matrix_at_l6(T):
    """Kaufman's e and c at L = 6 against the transfer matrix (2^6 row states), which
    shares no formula with them."""
    e, c = _transfer_matrix_e_c(6, T)
    assert ex.kaufman_energy(T, 6) == pytest.approx(e, rel=1e-11)
    assert ex.kaufman_specific_heat(T, 6) == pytest.approx(c, rel=1e-9)
    # the oracle itself against enumeration where that is possible (L = 4)
    mo = ex.exact_moments(4, T)
    assert _transfer_matrix_e_c(4, T) == pytest.approx((mo["e"], mo["c"]), rel=1e-11)


def test_kaufman_smooth_through_gamma0_zero():
    """At T = Tc (float) γ_0 ≈ 0 and Z_4 changes sign; results must be finite and smooth."""
    T = ex.TC * np.array([1 - 1e-9, 1.0, 1 + 1e-9])
    for L in (2, 16, 256):
        for f in (ex.kaufman_energy, ex.kaufman_specific_heat, ex.kaufman_log_z):
            v = f(T, L)
            assert np.all(np.isfinite(v))
            assert abs(v[0] - 2 * v[1] + v[2]) < 1e-10 * abs(v[1])   # no kink or jump


def test_kaufman_approaches_onsager():
    for T in (2.0, 3.0):
        assert abs(ex.kaufman_energy(T, 128) - ex.onsager_energy(T)) < 1e-3
    for T in (1.5, 2.0, 3.0, 5.0):
        assert abs(ex.kaufman_specific_heat(T, 128) - ex.onsager_specific_heat(T)) < 1e-3
    # at Tc, c_L grows like A0 ln L with A0 = (2/π) ln²(1+√2) (Ferdinand & Fisher 1969)
    c = ex.kaufman_specific_heat(ex.TC, 512), ex.kaufman_specific_heat(ex.TC, 1024)
    assert (c[1] - c[0]) / np.log(2) == pytest.approx(2 / np.pi * np.log1p(np.sqrt(2)) ** 2,
                                                      rel=2e-3)
    # and e_L(Tc) -> -√2
    assert abs(ex.kaufman_energy(ex.TC, 1024) + np.sqrt(2)) < 1e-3


def test_kaufman_shapes():
    assert isinstance(ex.kaufman_energy(2.0, 8), float)
    for f in (ex.kaufman_energy, ex.kaufman_specific_heat, ex.kaufman_log_z):
        assert f(np.linspace(0.5, 10, 7), 8).shape == (7,)
    # vectorised call agrees with scalar calls
    T = np.array([0.7, 2.2, 4.0])
    np.testing.assert_array_equal(ex.kaufman_specific_heat(T, 32),
                                  [ex.kaufman_specific_heat(t, 32) for t in T])


# ----------------------------------------------------------------------------- Onsager
def test_onsager_known_values():
    assert ex.TC == pytest.approx(2.269185314213022, rel=1e-15)
    assert ex.onsager_energy(ex.TC) == pytest.approx(-np.sqrt(2), abs=1e-12)
    m_formula = (1 - np.sinh(2 / 2.0) ** -4) ** 0.125
    assert ex.onsager_magnetization(2.0) == pytest.approx(m_formula, rel=1e-15)
    assert ex.onsager_magnetization(2.0) == pytest.approx(0.911319, abs=1e-6)
    np.testing.assert_array_equal(ex.onsager_magnetization([ex.TC, 2.5, 10.0]), 0.0)
    assert ex.onsager_magnetization(0.5) == pytest.approx(1.0, abs=1e-6)
    assert ex.onsager_energy(0.3) == pytest.approx(-2.0, abs=1e-9)
    # high-T series ln Z/N = ln 2 + 2 ln cosh β + t^4 + O(t^6), t = tanh β
    t = np.tanh(1 / 50)
    assert ex.onsager_energy(50.0) == pytest.approx(-2 * t - 4 * t ** 3, abs=1e-7)


def test_onsager_specific_heat_is_derivative_of_energy():
    T = np.array([0.8, 1.5, 2.0, 2.2, 2.35, 3.0, 6.0])
    h = 1e-5
    dEdT = (ex.onsager_energy(T + h) - ex.onsager_energy(T - h)) / (2 * h)
    np.testing.assert_allclose(ex.onsager_specific_heat(T), dEdT, rtol=1e-7)


def test_onsager_specific_heat_diverges_at_tc():
    eps = np.array([-1e-6, -1e-9, 1e-9, 1e-6])
    c = ex.onsager_specific_heat(ex.TC * (1 + eps))
    assert np.all(np.isfinite(c)) and np.all(c > 6)
    # c ≈ -A0 ln|1 - T/Tc| + const on both sides, A0 = (2/π) ln²(1+√2)
    A0 = 2 / np.pi * np.log1p(np.sqrt(2)) ** 2
    assert (c[1] - c[0]) / np.log(1e3) == pytest.approx(A0, rel=1e-3)
    assert (c[2] - c[3]) / np.log(1e3) == pytest.approx(A0, rel=1e-3)
    c_tc = ex.onsager_specific_heat(ex.TC)
    assert np.isinf(c_tc) or c_tc > 10
    assert isinstance(ex.onsager_energy(2.0), float)
    assert ex.onsager_energy([1.0, 2.0]).shape == (2,)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("f", [ex.kaufman_energy, ex.kaufman_specific_heat, ex.kaufman_log_z])
@pytest.mark.parametrize("T, text", [(0.0, "T=0.0"), (-1.5, "T=-1.5"), (np.nan, "T=nan"),
                                     (np.inf, "T=inf"), ([1.0, -2.0], "T=-2.0")])
def test_bad_temperature_kaufman(f, T, text):
    with pytest.raises(ValueError, match=text):
        f(T, 4)


@pytest.mark.parametrize("f", [ex.onsager_energy, ex.onsager_specific_heat,
                               ex.onsager_magnetization])
def test_bad_temperature_onsager(f):
    with pytest.raises(ValueError, match="T=-1.0"):
        f(-1.0)
    with pytest.raises(ValueError, match="T=nan"):
        f([2.0, np.nan])


def test_bad_lattice_size():
    for L, text in [(1, "L=1"), (0, "L=0"), (2.5, "L=2.5"), (True, "L=True")]:
        with pytest.raises(ValueError, match=text):
            ex.kaufman_energy(2.0, L)
        with pytest.raises(ValueError, match=text):
            ex.enumerate_lattice(L)
    with pytest.raises(ValueError, match="L=5.*kaufman"):
        ex.enumerate_lattice(5)
    with pytest.raises(ValueError, match="L=6"):
        ex.exact_moments(6, 2.0)
    with pytest.raises(ValueError, match="T=0.0"):
        ex.exact_moments(4, 0.0)
    with pytest.raises(ValueError, match="T='hot'"):
        ex.kaufman_energy("hot", 4)
    with pytest.raises(ValueError, match="1-D"):
        ex.onsager_energy(np.ones((2, 2)))
    with pytest.raises(ValueError, match="scalar"):
        ex.exact_distribution(4, [1.0, 2.0])
