/* Self-contained check of the native kernels (no Python needed): the vectorized sweeps
 * against a site-by-site reference written straight from the numba kernel's definition,
 * for several L (including ones that are not multiples of 64), thread counts, temperatures
 * and keys; incremental (E, M) totals against recomputation; the batched advance against
 * a site-by-site reference of every algorithm (Metropolis, Wolff, hybrid) on 1 to 4 threads;
 * the tempering segment against its event table; every algorithm against exact enumeration
 * at L = 2 and 4; and the error codes.
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
 * site (i, j) of sweep t uses r = rand64(key, t·N + i·L + j) >> 32 and flips when
 * sh = s·h < 0, or r < thr[0], thr[1], thr[2] for sh = 0, 2, 4. */
static void ref_sweep(int8_t *s, int64_t L, const uint64_t thr[3], uint64_t key,
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
                if (sh < 0 || r < thr[sh / 2]) {
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

/* kernels.metropolis_thresholds: 2·floor(a(ΔE)·2^31) for ΔE = 0, 4, 8 */
static void thresholds(double beta, uint64_t thr[3])
{
    thr[0] = 2 * (uint64_t)floor(fmax(15.0 / 16.0, exp(-4.0 * beta)) * 2147483648.0);
    thr[1] = 2 * (uint64_t)floor(exp(-4.0 * beta) * 2147483648.0);
    thr[2] = 2 * (uint64_t)floor(exp(-8.0 * beta) * 2147483648.0);
}

static void test_sweep_matches_reference(void)
{
    const int64_t sizes[] = {2, 4, 6, 8, 10, 16, 62, 64, 66, 126, 128, 130, 200, 256};
    /* 0: thresholds 2^32 (accept all); 1e-12: just below; 0.05: thr0 = thr4 */
    const double betas[] = {0.0, 1e-12, 0.05, 0.3, 0.4406868, 1.0, 30.0};
    const int threads[] = {1, 2, 3};
    /* odd: the thresholds made odd (where < 2^32), which takes the exact-comparison path */
    const int odd[] = {0, 1};
    ising_set_min_sites_per_thread(1); /* thread even the smallest lattices */
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++) {
        const int64_t L = sizes[a], N = L * L;
        int8_t *x = malloc((size_t)N), *y = malloc((size_t)N), *scratch = malloc((size_t)N);
        for (size_t b = 0; b < sizeof betas / sizeof *betas; b++)
            for (size_t c = 0; c < 2 * sizeof threads / sizeof *threads; c++) {
                uint64_t thr[3];
                thresholds(betas[b], thr);
                for (int k = 0; k < 3 && odd[c % 2]; k++)
                    thr[k] |= thr[k] >> 32 ? 0 : 1;
                const uint64_t key = rand64(L, b * 7 + c);
                random_lattice(x, N, key ^ 1u);
                memcpy(y, x, (size_t)N);
                int64_t e0, m0;
                ising_energy_magnetization(x, L, &e0, &m0);
                int64_t E = e0, M = m0;
                for (int64_t t = 0; t < 12; t++) {
                    int64_t rde = 0, rdm = 0, de = -1, dm = -1;
                    ref_sweep(x, L, thr, key, 1000 + t, &rde, &rdm);
                    const int rc = ising_metropolis_sweep(y, L, thr[0], thr[1], thr[2], key,
                                                          1000 + t, scratch, threads[c / 2],
                                                          &de, &dm);
                    CHECK(rc == ISING_OK, "rc %d", rc);
                    CHECK(memcmp(x, y, (size_t)N) == 0,
                          "lattice L=%lld beta=%g nt=%d odd=%d t=%lld", (long long)L, betas[b],
                          threads[c / 2], odd[c % 2], (long long)t);
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

/* Thresholds at a site's own uniform r, where the kernel's shortcut (comparing without the
 * hash's last xor-shift, for even thresholds) and the exact comparison could differ: for
 * each position j of row 0 (every SIMD lane, and a tail) a key with r >= 2^31 at site j,
 * all three thresholds r | 1 (odd: the exact path must decide) and r & ~1 (even: the
 * shortcut), a sweep of the all-up lattice (every site has sh = 4 >= 0) against the
 * reference. */
static void test_thresholds_at_a_uniform(void)
{
    const int64_t L = 66, N = L * L;
    int8_t *x = malloc((size_t)N), *y = malloc((size_t)N), *scratch = malloc((size_t)N);
    for (int64_t j = 0; j < L; j++)
        for (int parity = 0; parity < 2; parity++) {
            uint64_t key = (uint64_t)j, r;
            while ((r = rand64(key, (uint64_t)j) >> 32) < (UINT64_C(1) << 31))
                key += 1000;
            const uint64_t t = parity ? r | 1 : r & ~UINT64_C(1);
            const uint64_t thr[3] = {t, t, t};
            memset(x, 1, (size_t)N);
            memset(y, 1, (size_t)N);
            int64_t rde = 0, rdm = 0, de, dm;
            ref_sweep(x, L, thr, key, 0, &rde, &rdm);
            CHECK(ising_metropolis_sweep(y, L, t, t, t, key, 0, scratch, 1, &de, &dm) ==
                      ISING_OK && memcmp(x, y, (size_t)N) == 0,
                  "threshold %s at the uniform of site %lld", parity ? "r | 1" : "r & ~1",
                  (long long)j);
        }
    free(x);
    free(y);
    free(scratch);
}

/* kernels._wolff_cluster, one step at a time from its definition: the seed is site
 * floor(r·N / 2^32) of the next number r of the stream; the cluster grows depth-first from a
 * stack, looking at the neighbours up, down, left, right of the site last pushed; a
 * neighbour outside the cluster and aligned with the seed draws the next number and joins
 * when it is below padd. Flips the cluster and returns its size. */
static int64_t ref_wolff(int8_t *s, int64_t L, uint64_t padd, uint64_t key, uint64_t *counter)
{
    const int64_t N = L * L;
    int64_t *stack = malloc((size_t)N * sizeof *stack);
    char *in = calloc((size_t)N, 1);
    uint64_t c = *counter;
    const int64_t seed = (int64_t)(((rand64(key, c++) >> 32) * (uint64_t)N) >> 32);
    const int8_t s0 = s[seed];
    int64_t top = 0, n = 1;
    stack[top++] = seed;
    in[seed] = 1;
    while (top > 0) {
        const int64_t x = stack[--top], i = x / L, j = x % L;
        const int64_t nb[4] = {((i + L - 1) % L) * L + j, ((i + 1) % L) * L + j,
                               i * L + (j + L - 1) % L, i * L + (j + 1) % L};
        for (int k = 0; k < 4; k++)
            if (!in[nb[k]] && s[nb[k]] == s0 && (rand64(key, c++) >> 32) < padd) {
                in[nb[k]] = 1;
                stack[top++] = nb[k];
                n++;
            }
    }
    for (int64_t x = 0; x < N; x++)
        if (in[x])
            s[x] = (int8_t)-s0;
    free(stack);
    free(in);
    *counter = c;
    return n;
}

/* kernels.advance_replicas from the references: replica r does n_sweeps steps of
 * n_metropolis sweeps (indices (sweep0 + t)·n_metropolis + k) then nw[r] clusters. */
static void ref_advance(int8_t *s, int64_t R, int64_t L, const uint64_t *thr,
                        const uint64_t *padd, const uint64_t *keys, const uint64_t *wkeys,
                        uint64_t *counters, int64_t sweep0, int64_t n_sweeps,
                        int64_t n_metropolis, const int64_t *nw, int64_t *flipped)
{
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = 0; t < n_sweeps; t++) {
            int64_t de = 0, dm = 0;
            for (int64_t k = 0; k < n_metropolis; k++)
                ref_sweep(s + r * L * L, L, thr + 3 * r, keys[r],
                          (sweep0 + t) * n_metropolis + k, &de, &dm);
            for (int64_t k = 0; k < nw[r]; k++)
                flipped[r] += ref_wolff(s + r * L * L, L, padd[r], wkeys[r], &counters[r]);
        }
}

static uint64_t wolff_threshold(double beta)
{
    return (uint64_t)floor(-expm1(-2.0 * beta) * 4294967296.0);
}

/* Parameters of R replicas at inverse temperatures beta: Metropolis thresholds thr [R, 3],
 * Wolff thresholds padd [R], stream keys rand64(key_seed, r) and rand64(wkey_seed, r). */
static void replica_params(int R, const double *beta, uint64_t key_seed, uint64_t wkey_seed,
                           uint64_t *thr, uint64_t *padd, uint64_t *keys, uint64_t *wkeys)
{
    for (int r = 0; r < R; r++) {
        thresholds(beta[r], thr + 3 * r);
        padd[r] = wolff_threshold(beta[r]);
        keys[r] = rand64(key_seed, (uint64_t)r);
        wkeys[r] = rand64(wkey_seed, (uint64_t)r);
    }
}

/* Batched advance (Metropolis, Wolff, hybrid) on 1 to 4 threads (replica-parallel and
 * row-parallel paths) against the references: lattices, Wolff stream counters and flipped
 * spins identical, incremental (E, M) totals equal to recomputed ones. */
static void test_advance(void)
{
    enum { R = 3 };
    const int64_t L = 18, N = L * L;
    const double betas[R] = {0.3, 0.44, 0.6};
    uint64_t thr[3 * R], padd[R], keys[R], wkeys[R];
    replica_params(R, betas, 99, 77, thr, padd, keys, wkeys);
    int8_t *start = malloc(R * N), *ref = malloc(R * N), *s = malloc(R * N);
    random_lattice(start, R * N, 5);
    const char *names[3] = {"metropolis", "wolff", "hybrid"};
    const int64_t n_metropolis[3] = {2, 0, 1};
    const int64_t n_wolff[3][R] = {{0, 0, 0}, {3, 2, 5}, {3, 0, 5}};
    for (int algo = 0; algo < 3; algo++) {
        const int64_t *nw = n_wolff[algo];
        memcpy(ref, start, R * N);
        uint64_t ref_c[R] = {0, 10, 20};
        int64_t ref_f[R] = {0, 0, 0};
        ref_advance(ref, R, L, thr, padd, keys, wkeys, ref_c, 7, 20, n_metropolis[algo], nw,
                    ref_f);
        for (int nt = 1; nt <= 4; nt++) {
            memcpy(s, start, R * N);
            int64_t e[R], m[R], f[R] = {0, 0, 0};
            uint64_t c[R] = {0, 10, 20};
            for (int r = 0; r < R; r++)
                ising_energy_magnetization(s + r * N, L, &e[r], &m[r]);
            const int rc = ising_advance_replicas(s, R, L, thr, padd, keys, wkeys, c, 7, 20,
                                                  n_metropolis[algo], nw, e, m, f, nt);
            CHECK(rc == ISING_OK, "rc %d", rc);
            CHECK(memcmp(s, ref, R * N) == 0, "%s on %d threads: lattices differ from the "
                  "reference", names[algo], nt);
            for (int r = 0; r < R; r++) {
                int64_t e1, m1;
                ising_energy_magnetization(s + r * N, L, &e1, &m1);
                CHECK(e1 == e[r] && m1 == m[r], "%s totals r=%d", names[algo], r);
                CHECK(f[r] == ref_f[r], "%s r=%d: %lld flipped spins, reference %lld",
                      names[algo], r, (long long)f[r], (long long)ref_f[r]);
                CHECK(c[r] == ref_c[r], "%s r=%d: Wolff counter %llu, reference %llu",
                      names[algo], r, (unsigned long long)c[r], (unsigned long long)ref_c[r]);
            }
        }
    }
    free(start);
    free(ref);
    free(s);
}

/* Exact <e> and <|m|> per spin at temperature T by enumerating the 2^(L·L) states. */
/* The tempering segment follows its event table: rows (4, EXCHANGE|SAMPLE, round 3),
 * (6, SAMPLE), (9, nothing) equal advancing 4 sweeps, an exchange round 3, a sample, 2
 * sweeps, a sample, 3 sweeps, each replica at its slot's parameters; on 1 and 3 threads.
 * A table that is not ascending, empty, or needs more samples than the capacity is
 * refused. */
static void test_pt_segment_follows_the_event_table(void)
{
    enum { R = 3, CAP = 2 };
    const int64_t L = 6, N = L * L, n_metropolis = 1;
    double beta[R] = {0.6, 0.5, 0.4};
    uint64_t thr[3 * R], padd[R], keys[R], wkeys[R];
    const int64_t nw[R] = {1, 2, 1};
    replica_params(R, beta, 11, 12, thr, padd, keys, wkeys);
    int8_t *start = malloc(R * N), *ref = malloc(R * N), *s = malloc(R * N);
    random_lattice(start, R * N, 3);
    /* the reference: advance, exchange_round and sample called in turn */
    memcpy(ref, start, R * N);
    int64_t slot_ref[R] = {2, 0, 1}, exch_ref[4 * (R - 1)] = {0}, trips_ref[R] = {0};
    int64_t e_ref[R], m_ref[R], f_ref[R] = {0}, sample_slot[CAP][R];
    int8_t dir_ref[R] = {0};
    uint64_t c_ref[R] = {0};
    for (int r = 0; r < R; r++)
        ising_energy_magnetization(ref + r * N, L, &e_ref[r], &m_ref[r]);
    const int64_t stops[3] = {4, 6, 9};
    int64_t from = 0;
    for (int k = 0; k < 3; k++) {
        uint64_t t[3 * R], p[R];
        int64_t w[R];
        for (int r = 0; r < R; r++) {
            memcpy(t + 3 * r, thr + 3 * slot_ref[r], sizeof(uint64_t) * 3);
            p[r] = padd[slot_ref[r]];
            w[r] = nw[slot_ref[r]];
        }
        ising_advance_replicas(ref, R, L, t, p, keys, wkeys, c_ref, from, stops[k] - from,
                               n_metropolis, w, e_ref, m_ref, f_ref, 1);
        from = stops[k];
        if (k == 0)
            ising_exchange_round(R, 3, 99, beta, e_ref, slot_ref, exch_ref, dir_ref, trips_ref);
        if (k < 2)
            memcpy(sample_slot[k], slot_ref, sizeof slot_ref);
    }
    const int64_t events[3][3] = {{4, ISING_EVENT_EXCHANGE | ISING_EVENT_SAMPLE, 3},
                                  {6, ISING_EVENT_SAMPLE, 0}, {9, 0, 0}};
    for (int nt = 1; nt <= 3; nt += 2) {
        memcpy(s, start, R * N);
        int64_t slot_of[R] = {2, 0, 1}, exch[4 * (R - 1)] = {0}, trips[R] = {0};
        int64_t e[R], m[R], f[R] = {0}, out_slot[CAP * R], out_sweep[CAP], n_out = -1;
        int8_t dir[R] = {0};
        uint64_t c[R] = {0};
        uint8_t out_spins[CAP * R * 9];
        double out_e[CAP * R], out_m[CAP * R];
        for (int r = 0; r < R; r++)
            ising_energy_magnetization(s + r * N, L, &e[r], &m[r]);
        ising_pt_state st = {L, R, R, 0, s, keys, wkeys, c, e, m, f, thr, padd, nw, beta,
                             n_metropolis, 99, slot_of, exch, dir, trips, NULL};
        ising_pt_samples out = {out_spins, out_e, out_m, out_slot, out_sweep, CAP};
        int rc = ising_pt_segment_ranks(&st, 0, &events[0][0], 3, NULL, NULL, &out, &n_out, nt);
        CHECK(rc == ISING_OK && n_out == 2, "rc %d, %lld samples", rc, (long long)n_out);
        CHECK(memcmp(s, ref, R * N) == 0, "%d threads: lattices differ from the reference", nt);
        CHECK(memcmp(slot_of, slot_ref, sizeof slot_of) == 0 &&
              memcmp(exch, exch_ref, sizeof exch) == 0 && exch[0] + exch[1] == 1,
              "%d threads: exchange state differs from the reference", nt);
        CHECK(out_sweep[0] == 4 && out_sweep[1] == 6 &&
              memcmp(out_slot, sample_slot, sizeof out_slot) == 0,
              "%d threads: samples at sweeps %lld, %lld", nt, (long long)out_sweep[0],
              (long long)out_sweep[1]);
        for (int r = 0; r < R; r++)
            CHECK(e[r] == e_ref[r] && m[r] == m_ref[r] && c[r] == c_ref[r],
                  "%d threads: totals or Wolff counter of replica %d", nt, r);
        /* refused: not ascending after sweep0, empty, a sample beyond the capacity */
        rc = ising_pt_segment_ranks(&st, 4, &events[0][0], 3, NULL, NULL, &out, &n_out, nt);
        CHECK(rc == ISING_EBADARG, "a table starting at sweep0: rc %d", rc);
        rc = ising_pt_segment_ranks(&st, 0, &events[0][0], 0, NULL, NULL, &out, &n_out, nt);
        CHECK(rc == ISING_EBADARG, "an empty table: rc %d", rc);
        out.capacity = 1;
        rc = ising_pt_segment_ranks(&st, 9, &events[0][0], 3, NULL, NULL, &out, &n_out, nt);
        CHECK(rc == ISING_EBADARG, "sweeps before sweep0: rc %d", rc);
        const int64_t later[3][3] = {{14, ISING_EVENT_SAMPLE, 0}, {16, ISING_EVENT_SAMPLE, 0},
                                     {19, 0, 0}};
        rc = ising_pt_segment_ranks(&st, 9, &later[0][0], 3, NULL, NULL, &out, &n_out, nt);
        CHECK(rc == ISING_EBADARG && n_out == 1, "two samples, room for one: rc %d", rc);
    }
    free(start);
    free(ref);
    free(s);
}

static void exact_means(int64_t L, double T, double *e, double *am)
{
    const int64_t N = L * L;
    int8_t s[16];
    double z = 0, se = 0, sm = 0, e0 = -2.0 * (double)N;
    for (int64_t state = 0; state < (INT64_C(1) << N); state++) {
        for (int64_t k = 0; k < N; k++)
            s[k] = (state >> k) & 1 ? 1 : -1;
        int64_t E, M;
        ising_energy_magnetization(s, L, &E, &M);
        const double w = exp(-((double)E - e0) / T);
        z += w;
        se += w * (double)E;
        sm += w * fabs((double)M);
    }
    *e = se / z / (double)N;
    *am = sm / z / (double)N;
}

/* Every algorithm at L = 2 and 4 against exact enumeration: R independent replicas (hot
 * starts), 200 steps to equilibrate, then the mean over 2000 steps of e and |m| per
 * replica; the mean over replicas within 4σ of the exact value, σ the standard error
 * from the spread of the replica means (independent replicas: no autocorrelation model). */
static void test_exact_small_lattices(void)
{
    enum { R = 64, STEPS = 2000 };
    const double temps[2] = {1.5, 3.0};
    const char *names[3] = {"metropolis", "wolff", "hybrid"};
    const int64_t n_metropolis[3] = {1, 0, 1};
    for (int64_t L = 2; L <= 4; L += 2) {
        const int64_t N = L * L;
        int8_t *s = malloc(R * N);
        for (int t = 0; t < 2; t++) {
            const double beta = 1.0 / temps[t];
            double e_exact, m_exact;
            exact_means(L, temps[t], &e_exact, &m_exact);
            uint64_t thr[3 * R], padd[R], keys[R], wkeys[R];
            for (int r = 0; r < R; r++) {
                thresholds(beta, thr + 3 * r);
                padd[r] = wolff_threshold(beta);
                keys[r] = rand64(1234 + (uint64_t)L, (uint64_t)r);
                wkeys[r] = rand64(4321 + (uint64_t)L, (uint64_t)r);
            }
            for (int algo = 0; algo < 3; algo++) {
                int64_t nw[R], e[R], m[R], f[R] = {0};
                uint64_t c[R] = {0};
                double mean_e[R] = {0}, mean_m[R] = {0};
                random_lattice(s, R * N, 99 + (uint64_t)(10 * L + t));
                for (int r = 0; r < R; r++) {
                    nw[r] = algo == 0 ? 0 : 1;
                    ising_energy_magnetization(s + r * N, L, &e[r], &m[r]);
                }
                int rc = ising_advance_replicas(s, R, L, thr, padd, keys, wkeys, c, 0, 200,
                                                n_metropolis[algo], nw, e, m, f, 1);
                for (int64_t k = 0; rc == ISING_OK && k < STEPS; k++) {
                    rc = ising_advance_replicas(s, R, L, thr, padd, keys, wkeys, c, 200 + k, 1,
                                                n_metropolis[algo], nw, e, m, f, 1);
                    for (int r = 0; r < R; r++) {
                        mean_e[r] += (double)e[r] / (double)(N * STEPS);
                        mean_m[r] += fabs((double)m[r]) / (double)(N * STEPS);
                    }
                }
                CHECK(rc == ISING_OK, "rc %d", rc);
                const double *means[2] = {mean_e, mean_m};
                const double exact[2] = {e_exact, m_exact};
                for (int q = 0; q < 2; q++) {
                    double a = 0, a2 = 0;
                    for (int r = 0; r < R; r++) {
                        a += means[q][r] / R;
                        a2 += means[q][r] * means[q][r] / R;
                    }
                    const double err = sqrt((a2 - a * a) / (R - 1));
                    CHECK(fabs(a - exact[q]) < 4 * err && err < 0.01,
                          "%s L=%lld T=%g: <%s> = %.5f +- %.5f, exact %.5f", names[algo],
                          (long long)L, temps[t], q ? "|m|" : "e", a, err, exact[q]);
                }
            }
        }
        free(s);
    }
}

static void test_errors(void)
{
    int8_t s[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, scratch[9];
    int64_t de, dm;
    CHECK(ising_metropolis_sweep(s, 3, 0, 0, 0, 1, 0, scratch, 1, &de, &dm) == ISING_EBADSIZE,
          "odd L accepted");
    CHECK(ising_metropolis_sweep(s, 0, 0, 0, 0, 1, 0, scratch, 1, &de, &dm) == ISING_EBADSIZE,
          "L=0 accepted");
    CHECK(ising_metropolis_sweep(s, 2, 0, 0, 0, 1, -1, scratch, 1, &de, &dm) == ISING_EBADARG,
          "negative sweep accepted");
    CHECK(ising_metropolis_sweep(s, 2, 2, 1, 2, 1, 0, scratch, 1, &de, &dm) == ISING_EBADARG,
          "thr8 > thr4 accepted");
    CHECK(ising_metropolis_sweep(s, 2, 1, 2, 0, 1, 0, scratch, 1, &de, &dm) == ISING_EBADARG,
          "thr4 > thr0 accepted");
    uint64_t thr[3] = {0, 0, 0}, u = 0, c = 0;
    int64_t nw = -1, e = 0, m = 0, f = 0;
    CHECK(ising_advance_replicas(s, 1, 2, thr, &u, &u, &u, &c, 0, 1, 1, &nw, &e, &m, &f, 1) ==
              ISING_EBADARG, "negative n_wolff accepted");
    nw = 0;
    CHECK(ising_advance_replicas(s, 1, 2, thr, &u, &u, &u, &c, 0, 1, 0, &nw, &e, &m, &f, 1) ==
              ISING_OK, "no-op step refused");
    /* all +1, beta huge: nothing flips, nothing changes */
    CHECK(ising_metropolis_sweep(s, 2, 0, 0, 0, 1, 0, scratch, 1, &de, &dm) == ISING_OK &&
              de == 0 && dm == 0 && s[0] == 1 && s[3] == 1, "ground state moved");
}

int main(void)
{
    printf("native kernels: ABI %d, SIMD width %d, %d OpenMP threads\n", ising_abi_version(),
           ising_simd_width(), ising_max_threads());
    test_errors();
    test_sweep_matches_reference();
    test_thresholds_at_a_uniform();
    test_advance();
    test_pt_segment_follows_the_event_table();
    test_exact_small_lattices();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all native kernel checks passed\n");
    return 0;
}
