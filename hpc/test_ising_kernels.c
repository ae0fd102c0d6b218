/* Self-contained check of the native kernels (no Python needed): the vectorized sweeps
 * against a site-by-site reference written straight from the numba kernel's definition,
 * for several L (including ones that are not multiples of 64), thread counts, temperatures
 * and keys; incremental (E, M) totals against recomputation; the batched advance against
 * single sweeps and across thread counts (Metropolis, Wolff, hybrid); and the error codes.
 * Exit status 0 on success; prints the first mismatch otherwise. */
#include "ising_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                  \
            fputc('\n', stderr);                           \
            failures++;                                    \
        }                                                  \
    } while (0)

static uint64_t rand64(uint64_t key, uint64_t counter)
{
    uint64_t z = key + (counter + 1u) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* kernels.metropolis_sweep, one site at a time: colour c = sites with (i + j) % 2 == c;
 * site (i, j) of sweep t uses rand64(key, t·N + i·L + j) >> 32. */
static void ref_sweep(int8_t *s, int64_t L, uint64_t thr4, uint64_t thr8, uint64_t key,
                      int64_t sweep, int64_t *de, int64_t *dm)
{
    const uint64_t base = (uint64_t)sweep * (uint64_t)(L * L);
    for (int c = 0; c < 2; c++)
        for (int64_t i = 0; i < L; i++)
            for (int64_t j = 0; j < L; j++) {
                if (((i + j) & 1) != c)
                    continue;
                const int sp = s[i * L + j];
                const int h = s[((i + L - 1) % L) * L + j] + s[((i + 1) % L) * L + j] +
                              s[i * L + (j + L - 1) % L] + s[i * L + (j + 1) % L];
                const int sh = sp * h;
                const uint64_t r = rand64(key, base + (uint64_t)(i * L + j)) >> 32;
                if (sh <= 0 || r < (sh == 2 ? thr4 : thr8)) {
                    s[i * L + j] = (int8_t)-sp;
                    *de += 2 * sh;
                    *dm -= 2 * sp;
                }
            }
}

static void random_lattice(int8_t *s, int64_t n, uint64_t seed)
{
    for (int64_t k = 0; k < n; k++)
        s[k] = (rand64(seed, (uint64_t)k) >> 63) ? 1 : -1;
}

static void thresholds(double beta, uint64_t thr[2])
{
    thr[0] = (uint64_t)floor(exp(-4.0 * beta) * 4294967296.0);
    thr[1] = (uint64_t)floor(exp(-8.0 * beta) * 4294967296.0);
}

static void test_sweep_matches_reference(void)
{
    const int64_t sizes[] = {2, 4, 6, 8, 10, 16, 62, 64, 66, 126, 128, 130, 200, 256};
    /* 1e-12: thresholds 2^32 (accept all); 0.05: above 2^31 (exact comparison path) */
    const double betas[] = {1e-12, 0.05, 0.3, 0.4406868, 1.0, 30.0};
    const int threads[] = {1, 2, 3};
    ising_set_min_sites_per_thread(1); /* thread even the smallest lattices */
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++) {
        const int64_t L = sizes[a], N = L * L;
        int8_t *x = malloc((size_t)N), *y = malloc((size_t)N), *scratch = malloc((size_t)N);
        for (size_t b = 0; b < sizeof betas / sizeof *betas; b++)
            for (size_t c = 0; c < sizeof threads / sizeof *threads; c++) {
                uint64_t thr[2];
                thresholds(betas[b], thr);
                const uint64_t key = rand64(L, b * 7 + c);
                random_lattice(x, N, key ^ 1u);
                memcpy(y, x, (size_t)N);
                int64_t e0, m0;
                ising_energy_magnetization(x, L, &e0, &m0);
                int64_t E = e0, M = m0;
                for (int64_t t = 0; t < 12; t++) {
                    int64_t rde = 0, rdm = 0, de = -1, dm = -1;
                    ref_sweep(x, L, thr[0], thr[1], key, 1000 + t, &rde, &rdm);
                    const int rc = ising_metropolis_sweep(y, L, thr[0], thr[1], key, 1000 + t,
                                                          scratch, threads[c], &de, &dm);
                    CHECK(rc == ISING_OK, "rc %d", rc);
                    CHECK(memcmp(x, y, (size_t)N) == 0, "lattice L=%lld beta=%g nt=%d t=%lld",
                          (long long)L, betas[b], threads[c], (long long)t);
                    CHECK(de == rde && dm == rdm, "dE/dM L=%lld: %lld %lld vs %lld %lld",
                          (long long)L, (long long)de, (long long)dm, (long long)rde,
                          (long long)rdm);
                    E += de;
                    M += dm;
                    if (failures)
                        goto done;
                }
                ising_energy_magnetization(y, L, &e0, &m0);
                CHECK(E == e0 && M == m0, "totals L=%lld", (long long)L);
            }
    done:
        free(x);
        free(y);
        free(scratch);
        if (failures)
            break;
    }
    ising_set_min_sites_per_thread(4096);
}

/* Batched advance: the Metropolis part against single sweeps, and hybrid results
 * identical for 1, 2 and 3 threads (replica-parallel and row-parallel paths). */
static void test_advance(void)
{
    enum { R = 3 };
    const int64_t L = 18, N = L * L;
    const double betas[R] = {0.3, 0.44, 0.6};
    uint64_t thr[2 * R], padd[R], keys[R], wkeys[R];
    for (int r = 0; r < R; r++) {
        thresholds(betas[r], thr + 2 * r);
        padd[r] = (uint64_t)floor(-expm1(-2.0 * betas[r]) * 4294967296.0);
        keys[r] = rand64(99, (uint64_t)r);
        wkeys[r] = rand64(77, (uint64_t)r);
    }
    int8_t *start = malloc(R * N), *ref = malloc(R * N), *scratch = malloc(N);
    random_lattice(start, R * N, 5);

    /* metropolis only: equals n_sweeps single sweeps with indices (sweep0 + t)·2 + k */
    memcpy(ref, start, R * N);
    int64_t nw0[R] = {0};
    for (int r = 0; r < R; r++) {
        for (int64_t t = 0; t < 5; t++)
            for (int64_t k = 0; k < 2; k++) {
                int64_t de, dm;
                ising_metropolis_sweep(ref + r * N, L, thr[2 * r], thr[2 * r + 1], keys[r],
                                       (7 + t) * 2 + k, scratch, 1, &de, &dm);
            }
    }
    for (int nt = 1; nt <= 4; nt++) {
        int8_t *s = malloc(R * N);
        memcpy(s, start, R * N);
        int64_t e[R], m[R], f[R] = {0};
        for (int r = 0; r < R; r++)
            ising_energy_magnetization(s + r * N, L, &e[r], &m[r]);
        uint64_t c[R] = {0};
        const int rc = ising_advance_replicas(s, R, L, thr, padd, keys, wkeys, c, 7, 5, 2, nw0,
                                              e, m, f, nt);
        CHECK(rc == ISING_OK, "rc %d", rc);
        CHECK(memcmp(s, ref, R * N) == 0, "advance (metropolis) differs, nt=%d", nt);
        for (int r = 0; r < R; r++) {
            int64_t e1, m1;
            ising_energy_magnetization(s + r * N, L, &e1, &m1);
            CHECK(e1 == e[r] && m1 == m[r], "advance totals r=%d", r);
        }
        free(s);
    }

    /* hybrid and wolff: same result on 1..4 threads; totals and counters consistent */
    const int64_t nws[R] = {3, 0, 5};
    for (int algo = 0; algo < 2; algo++) {
        int8_t *first = NULL;
        uint64_t first_c[R];
        for (int nt = 1; nt <= 4; nt++) {
            int8_t *s = malloc(R * N);
            memcpy(s, start, R * N);
            int64_t e[R], m[R], f[R] = {0};
            uint64_t c[R] = {0, 10, 20};
            for (int r = 0; r < R; r++)
                ising_energy_magnetization(s + r * N, L, &e[r], &m[r]);
            const int64_t nm = algo == 0 ? 1 : 0;
            const int64_t nw[R] = {nws[0], algo == 0 ? 0 : 2, nws[2]};
            const int rc = ising_advance_replicas(s, R, L, thr, padd, keys, wkeys, c, 3, 20, nm,
                                                  nw, e, m, f, nt);
            CHECK(rc == ISING_OK, "rc %d", rc);
            for (int r = 0; r < R; r++) {
                int64_t e1, m1;
                ising_energy_magnetization(s + r * N, L, &e1, &m1);
                CHECK(e1 == e[r] && m1 == m[r], "wolff totals algo=%d r=%d", algo, r);
                CHECK(f[r] >= 20 * nw[r], "flipped count r=%d", r);
                CHECK((nw[r] == 0) == (c[r] == (uint64_t)(10 * r)), "counter r=%d", r);
            }
            if (!first) {
                first = s;
                memcpy(first_c, c, sizeof c);
            } else {
                CHECK(memcmp(first, s, R * N) == 0, "algo %d differs on %d threads", algo, nt);
                CHECK(memcmp(first_c, c, sizeof c) == 0, "counters differ on %d threads", nt);
                free(s);
            }
        }
        free(first);
    }
    free(start);
    free(ref);
    free(scratch);
}

static void test_errors(void)
{
    int8_t s[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, scratch[9];
    int64_t de, dm;
    CHECK(ising_metropolis_sweep(s, 3, 0, 0, 1, 0, scratch, 1, &de, &dm) == ISING_EBADSIZE,
          "odd L accepted");
    CHECK(ising_metropolis_sweep(s, 0, 0, 0, 1, 0, scratch, 1, &de, &dm) == ISING_EBADSIZE,
          "L=0 accepted");
    CHECK(ising_metropolis_sweep(s, 2, 0, 0, 1, -1, scratch, 1, &de, &dm) == ISING_EBADARG,
          "negative sweep accepted");
    CHECK(ising_metropolis_sweep(s, 2, 1, 2, 1, 0, scratch, 1, &de, &dm) == ISING_EBADARG,
          "thr8 > thr4 accepted");
    uint64_t thr[2] = {0, 0}, u = 0, c = 0;
    int64_t nw = -1, e = 0, m = 0, f = 0;
    CHECK(ising_advance_replicas(s, 1, 2, thr, &u, &u, &u, &c, 0, 1, 1, &nw, &e, &m, &f, 1) ==
              ISING_EBADARG, "negative n_wolff accepted");
    nw = 0;
    CHECK(ising_advance_replicas(s, 1, 2, thr, &u, &u, &u, &c, 0, 1, 0, &nw, &e, &m, &f, 1) ==
              ISING_OK, "no-op step refused");
    /* all +1, beta huge: nothing flips, nothing changes */
    CHECK(ising_metropolis_sweep(s, 2, 0, 0, 1, 0, scratch, 1, &de, &dm) == ISING_OK &&
              de == 0 && dm == 0 && s[0] == 1 && s[3] == 1, "ground state moved");
}

int main(void)
{
    printf("native kernels: ABI %d, SIMD width %d, %d OpenMP threads\n", ising_abi_version(),
           ising_simd_width(), ising_max_threads());
    test_errors();
    test_sweep_matches_reference();
    test_advance();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all native kernel checks passed\n");
    return 0;
}
