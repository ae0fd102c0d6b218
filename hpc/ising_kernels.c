/* Native kernels for the 2D Ising model; see ising_kernels.h for the contract.
 *
 * Why this is faster than the numba kernel while drawing exactly the same random numbers:
 *
 *  1. The random number of a site depends only on (key, sweep, i, j), not on the colour
 *     pass. So each row's L random numbers are hashed ONCE per sweep, in a tight loop over
 *     contiguous counters (8 SplitMix64 lanes per AVX-512 instruction, vpmullq), and reduced
 *     to one byte per site, q = 2·([r < thr0] + [r < thr4] + [r < thr8]) - 2 ∈ {-2, 0, 2, 4}.
 *     The numba kernel hashes every site in both colour passes (2N hashes per sweep) to
 *     stay branch-free.
 *  2. With sh = s·h (h = sum of the four neighbours), ΔE = 2·sh, and "flip iff sh < 0, or
 *     sh == 0 and r < thr0, or sh == 2 and r < thr4, or sh == 4 and r < thr8" is exactly
 *     "flip iff sh <= q" (thr8 <= thr4 <= thr0). The colour update is then a byte-wide,
 *     branch-free loop over 64 sites per instruction, masked to the active colour; ΔE and
 *     ΔM come from vpsadbw and popcounts of the flip mask.
 *  3. The serial sweep (one replica per thread) runs the two colours as a wavefront, row
 *     i of colour 0 then row i-1 of colour 1, so each row is reused while it is in L1.
 *
 * Multi-spin coding (one bit per spin, 64 spins per word) is not used: its speed comes from
 * sharing one random number among the spins of a word (or from cheap generators), which
 * the per-site counter-based stream rules out; with one 64-bit hash per site the hash is the
 * cost, and packing spins into bits would not reduce it.
 */
#include "ising_kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define GAMMA UINT64_C(0x9E3779B97F4A7C15)
#define MIX1 UINT64_C(0xBF58476D1CE4E5B9)
#define MIX2 UINT64_C(0x94D049BB133111EB)

/* Largest L with N < 2^31: site indices fit 32 bits (the packed Wolff entries, int64 math). */
#define ISING_MAX_L 46340

/* Row-parallel sweeps give each thread at least this many sites (a parallel region and
 * two barriers cost microseconds, as long as a sweep of a 64x64 lattice takes). */
static int64_t min_sites_per_thread = 4096;

static inline uint64_t rand64(uint64_t key, uint64_t counter)
{
    uint64_t z = key + (counter + 1u) * GAMMA;
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return z ^ (z >> 31);
}

int ising_abi_version(void) { return ISING_ABI_VERSION; }

int ising_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int64_t ising_set_min_sites_per_thread(int64_t n)
{
    const int64_t old = min_sites_per_thread;
    if (n >= 1)
        min_sites_per_thread = n;
    return old;
}

static int resolve_threads(int n_threads)
{
#ifdef _OPENMP
    return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    (void)n_threads;
    return 1;
#endif
}

/* Threads worth using for a row-parallel sweep of an L×L lattice. */
static int sweep_threads(int nt, int64_t L)
{
    const int64_t useful = (L * L) / min_sites_per_thread;
    if (useful < nt)
        nt = useful < 1 ? 1 : (int)useful;
    return nt < L ? nt : (int)L;
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int bad_size(int64_t L) { return L < 2 || (L & 1) || L > ISING_MAX_L; }

/* Bytes of one thread's padded row buffer (row plus both periodic neighbours). */
static size_t pad_bytes(int64_t L) { return (size_t)L + 2; }

/* ------------------------------------------------------------------ row primitives
 * accept_row: q[j] = 2·([r < thr0] + [r < thr4] + [r < thr8]) - 2, r = top 32 bits of
 * rand64(key, rowbase+j); thr = (thr0, thr4, thr8), nested.
 * colour_row: Metropolis update of the sites of one colour of row i, given q of that row.
 * Two implementations with identical results: AVX-512 intrinsics (64 sites per step, masks
 * for the row tail, so any even L works) and portable C99 that compilers auto-vectorize. */

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    !defined(ISING_PORTABLE)
#include <immintrin.h>

int ising_simd_width(void) { return 512; }

static inline __mmask64 tail_mask(int64_t n) /* lowest min(n, 64) bits */
{
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

/* The comparison r < thr on r = top 32 bits of w = x ^ (x >> 31), x the state after the
 * second multiply. Two vectors of 8 hashes, of the even and of the odd sites of 16, are
 * merged into one vector of their 16 top halves in site order (one masked vpshufd), so each
 * threshold costs one comparison per 16 sites:
 *  - exact form: r = hi32(w), compared with thr < 2^32 (thr = 2^32 accepts every r and is
 *    handled by an all-ones mask);
 *  - when every threshold is even (kernels.metropolis_thresholds makes them even):
 *    r < thr <=> hi32(x) < thr, which saves the last xor-shift.
 *    Proof: r = hi32(w) = hi32(x) ^ (x >> 63) differs from a = hi32(x) at most in bit 0,
 *    so r >> 1 == a >> 1; and for even thr, a < thr <=> (a >> 1) < thr / 2. */
static inline __m512i threshold32(uint64_t thr, uint64_t *always)
{
    *always = thr >> 32 ? ~UINT64_C(0) : 0;
    return _mm512_set1_epi32((int)(uint32_t)thr);
}

static inline void accept_row_impl(int8_t *restrict q, int64_t L, uint64_t key,
                                   uint64_t rowbase, const uint64_t thr[3],
                                   const int even_thresholds)
{
    __m512i step = _mm512_set1_epi64((long long)(16u * GAMMA));
    __m512i gamma = _mm512_set1_epi64((long long)GAMMA);
    /* opaque to the optimiser: gcc otherwise rewrites the running sum z += step into
     * z0 + k·step with a constant broadcast from a general register for every k */
    __asm__("" : "+v"(step), "+v"(gamma));
    const __m512i m1 = _mm512_set1_epi64((long long)MIX1);
    const __m512i m2 = _mm512_set1_epi64((long long)MIX2);
    uint64_t all0, all4, all8;
    const __m512i t0 = threshold32(thr[0], &all0);
    const __m512i t4 = threshold32(thr[1], &all4);
    const __m512i t8 = threshold32(thr[2], &all8);
    const __m512i two = _mm512_set1_epi8(2);
    const __m512i minus_two = _mm512_set1_epi8(-2);
    const uint64_t z0 = key + (rowbase + 1u) * GAMMA;
    /* lane l of z holds key + (rowbase + j + 2l + 1)·γ: the even sites j + 2l of 16 */
    __m512i z = _mm512_set_epi64((long long)(z0 + 14u * GAMMA), (long long)(z0 + 12u * GAMMA),
                                 (long long)(z0 + 10u * GAMMA), (long long)(z0 + 8u * GAMMA),
                                 (long long)(z0 + 6u * GAMMA), (long long)(z0 + 4u * GAMMA),
                                 (long long)(z0 + 2u * GAMMA), (long long)z0);
#define ISING_HASH8(x, z)                                                                \
    do {                                                                                 \
        x = _mm512_xor_si512(z, _mm512_srli_epi64(z, 30));                               \
        x = _mm512_mullo_epi64(x, m1);                                                   \
        x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));                               \
        x = _mm512_mullo_epi64(x, m2);                                                   \
        if (!even_thresholds)                                                            \
            x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));                           \
    } while (0)
#define ISING_ACCEPT16(K)                                                                \
    do {                                                                                 \
        __m512i xa, xb;                                                                  \
        const __m512i zb = _mm512_add_epi64(z, gamma);                                   \
        ISING_HASH8(xa, z);                                                              \
        ISING_HASH8(xb, zb);                                                             \
        z = _mm512_add_epi64(z, step);                                                   \
        /* dword 2l: top half of xa's qword l (site 2l); 2l+1: of xb's (site 2l+1) */     \
        const __m512i r = _mm512_mask_shuffle_epi32(xb, 0x5555, xa, _MM_PERM_DDBB);      \
        a0 |= (uint64_t)_mm512_cmplt_epu32_mask(r, t0) << (16 * (K));                    \
        a4 |= (uint64_t)_mm512_cmplt_epu32_mask(r, t4) << (16 * (K));                    \
        a8 |= (uint64_t)_mm512_cmplt_epu32_mask(r, t8) << (16 * (K));                    \
    } while (0)
    for (int64_t j0 = 0; j0 < L; j0 += 64) {
        uint64_t a0 = all0, a4 = all4, a8 = all8;
        if (L - j0 >= 64) { /* full chunk: fixed trip count, fully unrolled */
            for (int k = 0; k < 4; k++)
                ISING_ACCEPT16(k);
        } else {
            const int nk = (int)((L - j0 + 15) / 16);
            for (int k = 0; k < nk; k++)
                ISING_ACCEPT16(k);
        }
#undef ISING_ACCEPT16
#undef ISING_HASH8
        /* -2 + 2·a0 + 2·a4 + 2·a8 */
        __m512i v = _mm512_mask_add_epi8(minus_two, a0, minus_two, two);
        v = _mm512_add_epi8(v, _mm512_add_epi8(_mm512_maskz_mov_epi8(a4, two),
                                               _mm512_maskz_mov_epi8(a8, two)));
        _mm512_mask_storeu_epi8(q + j0, tail_mask(L - j0), v);
    }
}

static inline void accept_row(int8_t *restrict q, int64_t L, uint64_t key,
                              uint64_t rowbase, const uint64_t thr[3])
{
    if (((thr[0] | thr[1] | thr[2]) & 1) == 0)
        accept_row_impl(q, L, key, rowbase, thr, 1);
    else
        accept_row_impl(q, L, key, rowbase, thr, 0);
}

/* Running Σ_f sh and Σ_f s over flipped sites f, reduced once per sweep, not per row. */
typedef struct {
    __m512i acc;     /* vpsadbw sums of (sh + 4) over flipped sites, 8 lanes */
    int64_t nflip;   /* flipped sites */
    int64_t nneg;    /* flipped sites that were -1 */
} tally;

static inline void tally_init(tally *t)
{
    t->acc = _mm512_setzero_si512();
    t->nflip = t->nneg = 0;
}

static inline void tally_finish(const tally *t, int64_t *esum, int64_t *msum)
{
    *esum += _mm512_reduce_add_epi64(t->acc) - 4 * t->nflip;
    *msum += t->nflip - 2 * t->nneg; /* Σ_f s = (#f with s=+1) - (#f with s=-1) */
}

/* The five int8 vectors of one 64-site chunk -> flips (masked store) and tally. */
static inline void colour_chunk(int8_t *row, __m512i s, __m512i left, __m512i right,
                                __m512i up, __m512i down, __m512i q, __mmask64 active,
                                __m512i *acc, int64_t *nflip, int64_t *nneg)
{
    const __m512i zero = _mm512_setzero_si512();
    const __m512i h = _mm512_add_epi8(_mm512_add_epi8(left, right), _mm512_add_epi8(up, down));
    const __mmask64 neg = _mm512_movepi8_mask(s);             /* s == -1 */
    const __m512i sh = _mm512_mask_sub_epi8(h, neg, zero, h);  /* s·h */
    const __mmask64 f = _mm512_mask_cmple_epi8_mask(active, sh, q);
    _mm512_mask_storeu_epi8(row, f, _mm512_sub_epi8(zero, s));
    /* Σ_f sh = Σ_f (sh + 4) - 4·|f|; the bytes are 0..8, summed by vpsadbw */
    *acc = _mm512_add_epi64(*acc, _mm512_sad_epu8(
        _mm512_maskz_mov_epi8(f, _mm512_add_epi8(sh, _mm512_set1_epi8(4))), zero));
    *nflip += __builtin_popcountll((unsigned long long)f);
    *nneg += __builtin_popcountll((unsigned long long)(f & neg));
}

/* Metropolis update of the sites of one colour of row i: (j & 1) == ((i + colour) & 1).
 * Only flipped sites are stored; the other colour is never written, so threads updating
 * neighbouring rows only ever read bytes that nobody writes in this pass. */
static inline void colour_row(int8_t *spins, int64_t L, int64_t i, int colour,
                              const int8_t *q, int8_t *pad, tally *tl)
{
    int8_t *row = spins + i * L;
    const int8_t *up = spins + (i > 0 ? i - 1 : L - 1) * L;
    const int8_t *down = spins + (i + 1 < L ? i + 1 : 0) * L;
    q += i * L;
    /* bit j of cm set on the active colour; chunks start at multiples of 64 */
    const __mmask64 cm = ((i + colour) & 1) ? UINT64_C(0xAAAAAAAAAAAAAAAA)
                                            : UINT64_C(0x5555555555555555);
    __m512i acc = tl->acc;
    int64_t nflip = 0, nneg = 0;
#ifdef __AVX512VBMI__
    /* Left/right neighbours by byte permutes of the previous, current and next chunks,
     * each loaded before the current one is stored: no row copy, no store-to-load
     * forwarding stalls. Stale (pre-store) neighbour values are exact: a site's left
     * and right neighbours are of the other colour, which this pass never changes. */
    (void)pad;
    const __m512i idx_left = _mm512_add_epi8(_mm512_set_epi8(
        63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42,
        41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20,
        19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi8(63));                           /* j + 63: prev[63], cur[j - 1] */
    const __m512i idx_right = _mm512_sub_epi8(idx_left, _mm512_set1_epi8(62)); /* j + 1 */
    const int8_t first = row[0];
    __m512i prev = _mm512_set1_epi8(row[L - 1]);  /* only its byte 63 is used */
    __m512i cur = _mm512_maskz_loadu_epi8(tail_mask(L), row);
    for (int64_t j0 = 0; j0 < L; j0 += 64) {
        const int64_t n = L - j0;
        const __mmask64 t = tail_mask(n);
        const __m512i next = n > 64 ? _mm512_maskz_loadu_epi8(tail_mask(n - 64), row + j0 + 64)
                                    : _mm512_set1_epi8(first);
        const __m512i left = _mm512_permutex2var_epi8(prev, idx_left, cur);
        __m512i right = _mm512_permutex2var_epi8(cur, idx_right, next);
        if (n < 64)  /* short last chunk: the right neighbour of site L-1 is site 0 */
            right = _mm512_mask_set1_epi8(right, (__mmask64)1 << (n - 1), first);
        colour_chunk(row + j0, cur, left, right, _mm512_maskz_loadu_epi8(t, up + j0),
                     _mm512_maskz_loadu_epi8(t, down + j0), _mm512_maskz_loadu_epi8(t, q + j0),
                     cm & t, &acc, &nflip, &nneg);
        prev = cur;
        cur = next;
    }
#else
    /* pad = row[L-1], row[0..L-1], row[0]: the periodic left/right neighbours */
    const size_t bytes = (size_t)L & (SIZE_MAX >> 1); /* == L; tells gcc it is bounded */
    pad[0] = row[L - 1];
    memcpy(pad + 1, row, bytes);
    pad[L + 1] = row[0];
    for (int64_t j0 = 0; j0 < L; j0 += 64) {
        const __mmask64 t = tail_mask(L - j0);
        colour_chunk(row + j0, _mm512_maskz_loadu_epi8(t, pad + 1 + j0),
                     _mm512_maskz_loadu_epi8(t, pad + j0), _mm512_maskz_loadu_epi8(t, pad + 2 + j0),
                     _mm512_maskz_loadu_epi8(t, up + j0), _mm512_maskz_loadu_epi8(t, down + j0),
                     _mm512_maskz_loadu_epi8(t, q + j0), cm & t, &acc, &nflip, &nneg);
    }
#endif
    tl->acc = acc;
    tl->nflip += nflip;
    tl->nneg += nneg;
}

#else /* portable C99 */

int ising_simd_width(void) { return 0; }

static inline void accept_row(int8_t *restrict q, int64_t L, uint64_t key,
                              uint64_t rowbase, const uint64_t thr[3])
{
    const uint64_t thr0 = thr[0], thr4 = thr[1], thr8 = thr[2];
    uint64_t zj = key + (rowbase + 1u) * GAMMA;
    for (int64_t j = 0; j < L; j++) {
        uint64_t z = zj;
        zj += GAMMA;
        z = (z ^ (z >> 30)) * MIX1;
        z = (z ^ (z >> 27)) * MIX2;
        const uint64_t r = (z ^ (z >> 31)) >> 32;
        q[j] = (int8_t)((((r < thr0) + (r < thr4) + (r < thr8)) << 1) - 2);
    }
}

typedef struct {
    int64_t es, ms; /* Σ_f sh, Σ_f s over flipped sites f */
} tally;

static inline void tally_init(tally *t) { t->es = t->ms = 0; }

static inline void tally_finish(const tally *t, int64_t *esum, int64_t *msum)
{
    *esum += t->es;
    *msum += t->ms;
}

/* Branch-free over the whole padded row, masked to the active colour. Every byte of the row
 * is stored (the other colour with its unchanged value, as the numba kernel does), so in a
 * row-parallel sweep a neighbouring thread may read a byte while it is rewritten with the
 * value it already holds; it only uses bytes of the colour that this pass never changes. */
static inline void colour_row(int8_t *spins, int64_t L, int64_t i, int colour,
                              const int8_t *q, int8_t *pad, tally *tl)
{
    int8_t *restrict row = spins + i * L;
    const int8_t *restrict up = spins + (i > 0 ? i - 1 : L - 1) * L;
    const int8_t *restrict down = spins + (i + 1 < L ? i + 1 : 0) * L;
    const int8_t *restrict qr = q + i * L;
    const int parity = (int)((i + colour) & 1);
    const size_t bytes = (size_t)L & (SIZE_MAX >> 1); /* == L; tells gcc it is bounded */
    pad[0] = row[L - 1];
    memcpy(pad + 1, row, bytes);
    pad[L + 1] = row[0];
    const int8_t *restrict p = pad;
    int32_t es = 0, ms = 0;
    for (int64_t j = 0; j < L; j++) {
        const int8_t s = p[j + 1];
        const int8_t h = (int8_t)(up[j] + down[j] + p[j] + p[j + 2]);
        const int8_t g = (int8_t)(s >> 1);           /* 0 for +1, -1 for -1 */
        const int8_t sh = (int8_t)((h ^ g) - g);     /* s·h */
        const int8_t on = (int8_t)-(int8_t)((int)(j & 1) == parity);
        const int8_t f = (int8_t)(-(int8_t)(sh <= qr[j]) & on);
        row[j] = (int8_t)(s ^ (f & -2));             /* ±1 -> ∓1 where f */
        es += (int8_t)(sh & f);
        ms += (int8_t)(s & f);
    }
    tl->es += es;
    tl->ms += ms;
}
#endif

/* ------------------------------------------------------------------------ sweeps */

/* One sweep by one thread, colours as a wavefront: c0(0), c0(1), [c0(i), c1(i-1)] for
 * i = 2..L-1, c1(L-1), c1(0). c1(i) runs after c0 of both its neighbour rows and before
 * any later c0 reads row i, so the result equals the two-pass sweep exactly.
 * q: int8 [L*L] work array; pad: pad_bytes(L) work bytes. */
static void sweep_serial(int8_t *spins, int64_t L, const uint64_t thr[3],
                         uint64_t key, uint64_t base, int8_t *q, int8_t *pad, tally *tl)
{
    for (int64_t i = 0; i < L; i++) {
        accept_row(q + i * L, L, key, base + (uint64_t)(i * L), thr);
        colour_row(spins, L, i, 0, q, pad, tl);
        if (i >= 2)
            colour_row(spins, L, i - 1, 1, q, pad, tl);
    }
    colour_row(spins, L, L - 1, 1, q, pad, tl);
    colour_row(spins, L, 0, 1, q, pad, tl);
}

/* One sweep, rows over the threads of the enclosing team (call inside a parallel region
 * by all its threads). Pass 1: hash row i and update its colour-0 sites (they depend only
 * on colour-1 sites, which nobody writes in this pass); barrier; pass 2: colour 1. */
static void sweep_team(int8_t *spins, int64_t L, const uint64_t thr[3], uint64_t key,
                       uint64_t base, int8_t *q, int8_t *pad, tally *tl)
{
    int64_t i;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (i = 0; i < L; i++) {
        accept_row(q + i * L, L, key, base + (uint64_t)(i * L), thr);
        colour_row(spins, L, i, 0, q, pad, tl);
    }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (i = 0; i < L; i++)
        colour_row(spins, L, i, 1, q, pad, tl);
}

/* One sweep on nt threads (serial wavefront when nt == 1); pads: nt·pad_bytes(L) bytes.
 * Adds ΔE, ΔM to *de, *dm. */
static void sweep(int8_t *spins, int64_t L, const uint64_t thr[3], uint64_t key,
                  uint64_t base, int8_t *q, int8_t *pads, int nt, int64_t *de, int64_t *dm)
{
    int64_t esum = 0, msum = 0;
    if (nt <= 1) {
        tally tl;
        tally_init(&tl);
        sweep_serial(spins, L, thr, key, base, q, pads, &tl);
        tally_finish(&tl, &esum, &msum);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(+ : esum, msum)
#endif
        {
            tally tl;
            tally_init(&tl);
            sweep_team(spins, L, thr, key, base, q,
                       pads + (size_t)thread_id() * pad_bytes(L), &tl);
            tally_finish(&tl, &esum, &msum);
        }
    }
    *de += 2 * esum;
    *dm -= 2 * msum;
}

/* thr = (thr0, thr4, thr8) must be nested: the one-comparison rule sh <= q needs it. */
static int bad_thresholds(const uint64_t thr[3]) { return thr[2] > thr[1] || thr[1] > thr[0]; }

int ising_metropolis_sweep(int8_t *spins, int64_t L, uint64_t thr0, uint64_t thr4,
                           uint64_t thr8, uint64_t key, int64_t sweep_index, int8_t *scratch,
                           int n_threads, int64_t *de, int64_t *dm)
{
    const uint64_t thr[3] = {thr0, thr4, thr8};
    if (bad_size(L))
        return ISING_EBADSIZE;
    if (sweep_index < 0 || bad_thresholds(thr))
        return ISING_EBADARG;
    const int nt = sweep_threads(resolve_threads(n_threads), L);
    int8_t *pads = malloc((size_t)nt * pad_bytes(L));
    if (!pads)
        return ISING_ENOMEM;
    *de = 0;
    *dm = 0;
    const uint64_t base = (uint64_t)sweep_index * (uint64_t)(L * L);
    sweep(spins, L, thr, key, base, scratch, pads, nt, de, dm);
    free(pads);
    return ISING_OK;
}

/* ------------------------------------------------------------------------------ Wolff
 * The same clusters, grown in the same order with the same random numbers as
 * kernels._wolff_cluster, at a fraction of the cost per flipped spin, in one pass:
 *  - a site joins when the next number of the stream is below padd: those bits are
 *    computed ahead, 64 consecutive counters at a time (SIMD), so a join costs a shift of
 *    a bit window instead of a hash on the critical path of the depth-first growth;
 *  - the lattice itself tells where a site stands: s0 (aligned with the seed, not in the
 *    cluster: the only candidates, one comparison), 0 (joined, on the stack), -s0 (popped
 *    and already flipped, or an anti-aligned outsider); no mark array;
 *  - ΔE without a second pass: at each pop, X counts the neighbours showing -s0. That is
 *    every anti-aligned boundary bond (A) and, from its later-popped end, every bond inside
 *    the cluster once (I); aligned outsiders are never counted. With n sites, 4n = 2I + B
 *    bond ends, B boundary ones, and ΔE = 2·Σ_boundary s0·s = 2(B - 2A) = 8n - 4X;
 *  - stack entries hold the site and its column, (site << 32) | column, so the periodic
 *    neighbours need comparisons, no division. */

#define WOLFF_WINDOW 64

/* Bit k: (rand64(key, c0 + k) >> 32) < padd, for k = 0 … 63. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    !defined(ISING_PORTABLE)
static uint64_t join_bits(uint64_t key, uint64_t c0, uint64_t padd)
{
    if (padd >> 32)
        return ~UINT64_C(0);
    __m512i step = _mm512_set1_epi64((long long)(16u * GAMMA));
    __m512i gamma = _mm512_set1_epi64((long long)GAMMA);
    __asm__("" : "+v"(step), "+v"(gamma)); /* see accept_row_impl */
    const __m512i m1 = _mm512_set1_epi64((long long)MIX1);
    const __m512i m2 = _mm512_set1_epi64((long long)MIX2);
    const __m512i t = _mm512_set1_epi32((int)(uint32_t)padd);
    const uint64_t z0 = key + (c0 + 1u) * GAMMA;
    /* lane l: counter c0 + 2l (even counters of 16; the odd ones are z + γ) */
    __m512i z = _mm512_set_epi64((long long)(z0 + 14u * GAMMA), (long long)(z0 + 12u * GAMMA),
                                 (long long)(z0 + 10u * GAMMA), (long long)(z0 + 8u * GAMMA),
                                 (long long)(z0 + 6u * GAMMA), (long long)(z0 + 4u * GAMMA),
                                 (long long)(z0 + 2u * GAMMA), (long long)z0);
    uint64_t bits = 0;
    for (int k = 0; k < 4; k++) {
        __m512i x[2] = {z, _mm512_add_epi64(z, gamma)};
        for (int h = 0; h < 2; h++) {
            x[h] = _mm512_xor_si512(x[h], _mm512_srli_epi64(x[h], 30));
            x[h] = _mm512_mullo_epi64(x[h], m1);
            x[h] = _mm512_xor_si512(x[h], _mm512_srli_epi64(x[h], 27));
            x[h] = _mm512_mullo_epi64(x[h], m2);
            x[h] = _mm512_xor_si512(x[h], _mm512_srli_epi64(x[h], 31));
        }
        /* top halves in counter order (as in accept_row_impl) */
        const __m512i r = _mm512_mask_shuffle_epi32(x[1], 0x5555, x[0], _MM_PERM_DDBB);
        bits |= (uint64_t)_mm512_cmplt_epu32_mask(r, t) << (16 * k);
        z = _mm512_add_epi64(z, step);
    }
    return bits;
}
#else
static uint64_t join_bits(uint64_t key, uint64_t c0, uint64_t padd)
{
    uint64_t bits = 0;
    for (int k = 0; k < WOLFF_WINDOW; k++)
        bits |= (uint64_t)((rand64(key, c0 + (uint64_t)k) >> 32) < padd) << k;
    return bits;
}
#endif

/* The join bits of counters base … base + 63, refreshed as the stream advances. */
typedef struct {
    uint64_t bits, base, key, padd;
} join_window;

static inline void window_cover(join_window *w, uint64_t c, int ahead)
{
    if (c - w->base > (uint64_t)(WOLFF_WINDOW - ahead)) {
        w->base = c;
        w->bits = join_bits(w->key, c, w->padd);
    }
}

static inline uint64_t pack_site(int64_t site, int64_t col)
{
    return ((uint64_t)site << 32) | (uint64_t)col;
}

/* The four neighbours of the site packed in v, in kernels._neighbours' order (up, down,
 * left, right), as packed entries. */
static inline void wolff_neighbours(uint64_t v, int64_t L, int64_t N, uint64_t nb[4])
{
    const int64_t x = (int64_t)(v >> 32), j = (int64_t)(uint32_t)v;
    nb[0] = pack_site(x >= L ? x - L : x + N - L, j);
    nb[1] = pack_site(x < N - L ? x + L : x - (N - L), j);
    nb[2] = j > 0 ? pack_site(x - 1, j - 1) : pack_site(x + L - 1, L - 1);
    nb[3] = j < L - 1 ? pack_site(x + 1, j + 1) : pack_site(x - (L - 1), 0);
}

/* Grow and flip one Wolff cluster, in the same order and with the same random numbers as
 * kernels._wolff_cluster (its definition is the reference). stack: N + 1 entries (one
 * speculative write past the last). Returns the size. */
static int64_t wolff_cluster(int8_t *flat, int64_t L, join_window *w, uint64_t *counter,
                             uint64_t *stack, int64_t *de, int64_t *dm)
{
    const int64_t N = L * L;
    uint64_t c = *counter;
    const int64_t seed = (int64_t)(((rand64(w->key, c) >> 32) * (uint64_t)N) >> 32);
    c++;
    const int8_t s0 = flat[seed];
    stack[0] = pack_site(seed, seed % L);
    flat[seed] = 0;
    int64_t top = 1, n = 0, x = 0;
    uint64_t nb[4];
    while (top > 0) {
        window_cover(w, c, 4);
        const uint64_t v = stack[--top];
        flat[v >> 32] = (int8_t)-s0;
        n++;
        wolff_neighbours(v, L, N, nb);
        /* Branch-free "if the neighbour is not in the cluster and aligned, draw the next
         * number and join with probability padd": both tests are coin flips that a
         * branch predictor cannot learn. Neighbours that coincide (L = 2) are seen in turn,
         * the second after the first joined, as in the reference. */
        for (int k = 0; k < 4; k++) {
            int8_t *site = flat + (nb[k] >> 32);
            const int8_t value = *site;
            const unsigned draw = (unsigned)(value == s0);
            const unsigned join = draw & (unsigned)(w->bits >> (c - w->base));
            x += value == -s0;
            c += draw;
            *site = (int8_t)(value & (int8_t)(join - 1u)); /* 0 when it joins */
            stack[top] = nb[k];
            top += join;
        }
    }
    *counter = c;
    *de += 8 * n - 4 * x;
    *dm += -2 * (int64_t)s0 * n;
    return n;
}

/* ------------------------------------------------------------------- batched advance */

typedef struct {
    int8_t *q;         /* [N] accept bytes of the current sweep */
    int8_t *pads;      /* [rows · pad_bytes(L)] padded row buffers, one per sweep thread */
    uint64_t *stack;   /* [N + 1] Wolff stack (NULL without Wolff) */
} workspace;

static void free_workspace(workspace *w)
{
    free(w->q);
    free(w->pads);
    free(w->stack);
    memset(w, 0, sizeof *w);
}

static int alloc_workspace(workspace *w, int64_t L, int sweep_nt, int wolff)
{
    const size_t N = (size_t)(L * L);
    memset(w, 0, sizeof *w);
    w->q = malloc(N);
    w->pads = malloc((size_t)sweep_nt * pad_bytes(L));
    if (wolff)
        w->stack = malloc((N + 1) * sizeof *w->stack);
    if (!w->q || !w->pads || (wolff && !w->stack)) {
        free_workspace(w);
        return ISING_ENOMEM;
    }
    return ISING_OK;
}

typedef struct {
    int8_t *spins;
    int64_t L;
    const uint64_t *thr, *padd, *keys, *wkeys;  /* thr [R, 3] */
    uint64_t *counters;
    int64_t sweep0, n_sweeps, n_metropolis;
    const int64_t *n_wolff;
    int64_t *energy, *magnet, *flipped;
} batch;

/* All steps of replica r; Metropolis sweeps on sweep_nt threads (1 inside a replica-
 * parallel region). Same sweep indices and Wolff stream use as kernels.advance_replicas. */
static void advance_one(const batch *b, int64_t r, workspace *w, int sweep_nt)
{
    const int64_t L = b->L, N = L * L;
    int8_t *lat = b->spins + r * N;
    const uint64_t *thr = b->thr + 3 * r;
    int64_t de = 0, dm = 0, nf = 0;
    uint64_t c = b->counters[r];
    join_window jw = {0, c - WOLFF_WINDOW, b->wkeys[r], b->padd[r]}; /* filled on first use */
    for (int64_t t = 0; t < b->n_sweeps; t++) {
        for (int64_t k = 0; k < b->n_metropolis; k++) {
            const uint64_t index = (uint64_t)((b->sweep0 + t) * b->n_metropolis + k);
            sweep(lat, L, thr, b->keys[r], index * (uint64_t)N, w->q, w->pads,
                  sweep_nt, &de, &dm);
        }
        for (int64_t k = 0; k < b->n_wolff[r]; k++)
            nf += wolff_cluster(lat, L, &jw, &c, w->stack, &de, &dm);
    }
    b->counters[r] = c;
    b->energy[r] += de;
    b->magnet[r] += dm;
    b->flipped[r] += nf;
}

/* Replicas 0 … R-1 of b over rnt threads (ws: one workspace each), each replica's sweeps
 * serial. */
static void advance_over_threads(const batch *b, int64_t R, workspace *ws, int rnt)
{
    int64_t r;
#ifdef _OPENMP
#pragma omp parallel for num_threads(rnt) schedule(dynamic, 1)
#endif
    for (r = 0; r < R; r++)
        advance_one(b, r, &ws[thread_id()], 1);
}

int ising_advance_replicas(int8_t *spins, int64_t R, int64_t L, const uint64_t *thr,
                           const uint64_t *padd, const uint64_t *keys, const uint64_t *wkeys,
                           uint64_t *counters, int64_t sweep0, int64_t n_sweeps,
                           int64_t n_metropolis, const int64_t *n_wolff, int64_t *energy,
                           int64_t *magnet, int64_t *flipped, int n_threads)
{
    if (bad_size(L))
        return ISING_EBADSIZE;
    if (R < 0 || n_sweeps < 0 || n_metropolis < 0 || sweep0 < 0)
        return ISING_EBADARG;
    int wolff = 0;
    for (int64_t r = 0; r < R; r++) {
        if (n_wolff[r] < 0 || bad_thresholds(thr + 3 * r))
            return ISING_EBADARG;
        wolff |= n_wolff[r] > 0;
    }
    if (R == 0 || n_sweeps == 0)
        return ISING_OK;
    const batch b = {spins, L, thr, padd, keys, wkeys, counters, sweep0, n_sweeps,
                     n_metropolis, n_wolff, energy, magnet, flipped};
    const int nt = resolve_threads(n_threads);
    int rc = ISING_OK;

    if (R < nt && n_metropolis > 0 && sweep_threads(nt, L) > 1) {
        /* Fewer replicas than threads: replicas in turn, row-parallel sweeps. */
        const int snt = sweep_threads(nt, L);
        workspace w;
        rc = alloc_workspace(&w, L, snt, wolff);
        if (rc == ISING_OK) {
            for (int64_t r = 0; r < R; r++)
                advance_one(&b, r, &w, snt);
            free_workspace(&w);
        }
        return rc;
    }
    /* Replicas over threads, each replica's sweeps serial. Work arrays are allocated up
     * front so that a failure cannot leave some replicas advanced and others not. */
    const int rnt = R < nt ? (int)R : nt;
    workspace *ws = calloc((size_t)rnt, sizeof *ws);
    if (!ws)
        return ISING_ENOMEM;
    for (int k = 0; rc == ISING_OK && k < rnt; k++)
        rc = alloc_workspace(&ws[k], L, 1, wolff);
    if (rc == ISING_OK)
        advance_over_threads(&b, R, ws, rnt);
    for (int k = 0; k < rnt; k++)
        free_workspace(&ws[k]);
    free(ws);
    return rc;
}

/* --------------------------------------------------------------- parallel tempering */
enum { ATTEMPTED, ACCEPTED, WINDOW_ATTEMPTED, WINDOW_ACCEPTED };

/* One exchange round; replica_at int64 [R] is a work array (the inverse of slot_of). */
static void exchange_round(int64_t R, int64_t round_index, uint64_t xkey,
                           const double *beta_slot, const int64_t *energy, int64_t *slot_of,
                           int64_t *exch, int8_t *direction, int64_t *round_trips,
                           int64_t *replica_at)
{
    for (int64_t r = 0; r < R; r++)
        replica_at[slot_of[r]] = r;
    const uint64_t base = (uint64_t)round_index * (uint64_t)R;
    for (int64_t k = round_index % 2; k < R - 1; k += 2) {
        const int64_t a = replica_at[k], b = replica_at[k + 1];
        const double delta = (beta_slot[k] - beta_slot[k + 1]) * (double)(energy[a] - energy[b]);
        const double u = (double)(rand64(xkey, base + (uint64_t)k) >> 11) * 0x1p-53;
        exch[ATTEMPTED * (R - 1) + k]++;
        exch[WINDOW_ATTEMPTED * (R - 1) + k]++;
        if (delta >= 0 || u < exp(delta)) {
            exch[ACCEPTED * (R - 1) + k]++;
            exch[WINDOW_ACCEPTED * (R - 1) + k]++;
            slot_of[a] = k + 1;
            slot_of[b] = k;
            replica_at[k] = b;
            replica_at[k + 1] = a;
        }
    }
    const int64_t bottom = replica_at[0], top = replica_at[R - 1];
    if (direction[bottom] == -1)
        round_trips[bottom]++;
    direction[bottom] = 1;
    if (direction[top] == 1)
        direction[top] = -1;
}

int ising_exchange_round(int64_t R, int64_t round_index, uint64_t xkey, const double *beta_slot,
                         const int64_t *energy, int64_t *slot_of, int64_t *exch,
                         int8_t *direction, int64_t *round_trips)
{
    if (R < 1 || round_index < 0)
        return ISING_EBADARG;
    int64_t *replica_at = malloc((size_t)R * sizeof *replica_at);
    if (!replica_at)
        return ISING_ENOMEM;
    exchange_round(R, round_index, xkey, beta_slot, energy, slot_of, exch, direction,
                   round_trips, replica_at);
    free(replica_at);
    return ISING_OK;
}

/* Site updates in an interval between events below which pt_segment stays on one thread. */
#define ISING_PT_PARALLEL_MIN_WORK (INT64_C(1) << 20)

/* Whether a state and event table can be run: sizes, counts, slots, thresholds, sweeps
 * strictly ascending after sweep0. Sets *wolff when any slot grows Wolff clusters. */
static int check_segment(const ising_pt_state *st, int64_t sweep0, const int64_t *events,
                         int64_t n_events, int has_share, int *wolff)
{
    if (bad_size(st->L))
        return ISING_EBADSIZE;
    const int64_t R = st->R;
    if (R < 1 || st->R_local < 1 || st->id0 < 0 || st->id0 + st->R_local > R || sweep0 < 0 ||
        st->n_metropolis < 0 || n_events < 1 || (st->R_local < R && !has_share))
        return ISING_EBADARG;
    *wolff = 0;
    for (int64_t k = 0; k < R; k++) {
        if (st->nw_slot[k] < 0 || bad_thresholds(st->thr_slot + 3 * k) ||
            st->slot_of[k] < 0 || st->slot_of[k] >= R)
            return ISING_EBADARG;
        *wolff |= st->nw_slot[k] > 0;
    }
    int64_t s = sweep0;
    for (int64_t e = 0; e < n_events; e++) {
        const int64_t *row = events + 3 * e;
        if (row[0] <= s || ((row[1] & ISING_EVENT_EXCHANGE) && row[2] < 0))
            return ISING_EBADARG;
        s = row[0];
    }
    return ISING_OK;
}

/* Sample j of the local replicas into out. */
static void capture_sample(const ising_pt_state *st, int64_t s, const ising_pt_samples *out,
                           int64_t j)
{
    const int64_t N = st->L * st->L, n = st->R_local;
    ising_pack_spins(st->spins, n * N, out->spins + j * n * (N / 4));
    for (int64_t r = 0; r < n; r++) {
        out->energy[j * n + r] = (double)st->energy[r] / (double)N;
        out->magnet[j * n + r] = (double)st->magnet[r] / (double)N;
        out->slot[j * n + r] = st->slot_of[st->id0 + r];
    }
    out->sweep[j] = s;
}

int ising_pt_segment_ranks(const ising_pt_state *st, int64_t sweep0, const int64_t *events,
                           int64_t n_events, ising_share_fn share, void *share_ctx,
                           const ising_pt_samples *out, int64_t *n_out, int n_threads)
{
    *n_out = 0;
    int wolff = 0;
    int rc = check_segment(st, sweep0, events, n_events, share != NULL, &wolff);
    if (rc != ISING_OK)
        return rc;
    const int64_t R = st->R, R_local = st->R_local, id0 = st->id0, N = st->L * st->L;
    const int nt = resolve_threads(n_threads);
    const int rnt = R_local < nt ? (int)R_local : nt;
    /* per-replica parameters of the current slots, rebuilt after every exchange round */
    uint64_t *thr = malloc((size_t)R_local * 3 * sizeof *thr);
    uint64_t *padd = malloc((size_t)R_local * sizeof *padd);
    int64_t *nw = malloc((size_t)R_local * sizeof *nw);
    int64_t *replica_at = malloc((size_t)R * sizeof *replica_at);  /* exchange work array */
    workspace *ws = calloc((size_t)rnt, sizeof *ws);
    rc = (thr && padd && nw && replica_at && ws) ? ISING_OK : ISING_ENOMEM;
    for (int k = 0; rc == ISING_OK && k < rnt; k++)
        rc = alloc_workspace(&ws[k], st->L, 1, wolff);
    int64_t s = sweep0;
    for (int64_t e = 0; rc == ISING_OK && e < n_events; e++) {
        const int64_t nxt = events[3 * e], flags = events[3 * e + 1];
        for (int64_t r = 0; r < R_local; r++) {
            const int64_t k = st->slot_of[id0 + r];
            memcpy(thr + 3 * r, st->thr_slot + 3 * k, 3 * sizeof *thr);
            padd[r] = st->padd_slot[k];
            nw[r] = st->nw_slot[k];
        }
        const batch b = {st->spins, st->L, thr, padd, st->keys, st->wkeys, st->counters, s,
                         nxt - s, st->n_metropolis, nw, st->energy, st->magnet, st->flipped};
        /* a parallel region per interval costs thread wake-ups (tens of microseconds with
         * passive waiting): threads only for intervals with enough work */
        if (rnt == 1 || (nxt - s) * R_local * N * (st->n_metropolis + wolff) <
                            ISING_PT_PARALLEL_MIN_WORK) {
            for (int64_t r = 0; r < R_local; r++)
                advance_one(&b, r, &ws[0], 1);
        } else {
            advance_over_threads(&b, R_local, ws, rnt);
        }
        s = nxt;
        if (flags & ISING_EVENT_EXCHANGE) {
            if (share)
                rc = share(share_ctx, st->energy, st->energy_all);
            if (rc == ISING_OK)
                exchange_round(R, events[3 * e + 2], st->xkey, st->beta_slot,
                               share ? st->energy_all : st->energy, st->slot_of, st->exch,
                               st->direction, st->round_trips, replica_at);
        }
        if (rc == ISING_OK && (flags & ISING_EVENT_SAMPLE)) {
            if (*n_out >= out->capacity) {
                rc = ISING_EBADARG;
                break;
            }
            capture_sample(st, s, out, *n_out);
            *n_out += 1;
        }
    }
    for (int k = 0; ws && k < rnt; k++)
        free_workspace(&ws[k]);
    free(ws);
    free(replica_at);
    free(nw);
    free(padd);
    free(thr);
    return rc;
}

void ising_pack_spins(const int8_t *spins, int64_t n, uint8_t *out)
{
    for (int64_t j = 0; j < n / 4; j++) {
        const int8_t *s = spins + 4 * j;
        out[j] = (uint8_t)(((s[0] + 1) << 6) | ((s[1] + 1) << 4) | ((s[2] + 1) << 2) |
                           (s[3] + 1));
    }
}

int ising_energy_magnetization(const int8_t *spins, int64_t L, int64_t *e, int64_t *m)
{
    if (L < 1)
        return ISING_EBADSIZE;
    int64_t es = 0, ms = 0;
    for (int64_t i = 0; i < L; i++) {
        const int8_t *row = spins + i * L;
        const int8_t *down = spins + (i + 1 < L ? i + 1 : 0) * L;
        int32_t er = 0, mr = 0;
        for (int64_t j = 0; j < L; j++) {
            const int8_t s = row[j];
            er += s * (row[j + 1 < L ? j + 1 : 0] + down[j]);
            mr += s;
        }
        es += er;
        ms += mr;
    }
    *e = -es;
    *m = ms;
    return ISING_OK;
}
