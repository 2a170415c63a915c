/* The KG models' 1- and 2-hop all-items scoring and full ranking (mmkgrec.models.fused,
 * backend "native"): C the compiler vectorises (cc -O3 -march=native -fopenmp), AVX-512 or
 * AVX2 + FMA intrinsics in the inner loops where the CPU has them, loaded through ctypes. One
 * call covers the users [b_begin, b_end), split over OpenMP threads: the libgomp torch
 * already loaded (same soname), so torch.set_num_threads applies and the kernel reuses torch's
 * thread pool. Every array is float32 / int64, row-major and contiguous.
 *
 * Items are taken LANES at a time, one item per SIMD lane: the tables are stored group-major
 * ([G, ..., LANES], G = ceil(n / LANES), padded), so every feature step is one vector
 * operation over LANES items and an item's score needs no horizontal reduction.
 *
 * Shapes: B users, R relations, I items, K neighbours, d width, L = LANES.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

/* tanh as a clamped rational function: odd degree-13 numerator over even degree-6 denominator
 * (the minimax form Eigen uses for float), within 2e-7 of tanh on the whole line (tested). */
#define TANH_CLAMP 7.90531110763549805f

#define LANES 16

static inline float tanh_rational(float x) {
    x = x > TANH_CLAMP ? TANH_CLAMP : x;
    x = x < -TANH_CLAMP ? -TANH_CLAMP : x;
    const float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}


/* One SIMD vector of VW floats: AVX-512 (VW 16) or AVX2 + FMA (VW 8) where the CPU has them,
 * otherwise no intrinsics (plain loops the compiler vectorises). LANES is a multiple of VW:
 * the vector paths walk a group's LANES items VW at a time. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
#define v_load _mm512_loadu_ps
#define v_store _mm512_storeu_ps
#define v_set1 _mm512_set1_ps
#define v_zero _mm512_setzero_ps
#define v_mul _mm512_mul_ps
#define v_fmadd _mm512_fmadd_ps
#define v_fnmadd _mm512_fnmadd_ps
#define v_min _mm512_min_ps
#define v_max _mm512_max_ps
#define v_add _mm512_add_ps
#define v_rcp _mm512_rcp14_ps /* 14-bit reciprocal estimate */
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
#define v_load _mm256_loadu_ps
#define v_store _mm256_storeu_ps
#define v_set1 _mm256_set1_ps
#define v_zero _mm256_setzero_ps
#define v_mul _mm256_mul_ps
#define v_fmadd _mm256_fmadd_ps
#define v_fnmadd _mm256_fnmadd_ps
#define v_min _mm256_min_ps
#define v_max _mm256_max_ps
#define v_add _mm256_add_ps
#define v_rcp _mm256_rcp_ps /* 12-bit reciprocal estimate */
#endif

#if defined(VW)
/* tanh_rational on VW lanes, the division as a reciprocal estimate plus one Newton step
 * (relative error below 2^-22 before rounding). */
static inline vf tanh_v(vf x) {
    x = v_min(v_max(x, v_set1(-TANH_CLAMP)), v_set1(TANH_CLAMP));
    const vf x2 = v_mul(x, x);
    vf p = v_fmadd(v_set1(-2.76076847742355e-16f), x2, v_set1(2.00018790482477e-13f));
    p = v_fmadd(p, x2, v_set1(-8.60467152213735e-11f));
    p = v_fmadd(p, x2, v_set1(5.12229709037114e-08f));
    p = v_fmadd(p, x2, v_set1(1.48572235717979e-05f));
    p = v_fmadd(p, x2, v_set1(6.37261928875436e-04f));
    p = v_fmadd(p, x2, v_set1(4.89352455891786e-03f));
    vf q = v_fmadd(v_set1(1.19825839466702e-06f), x2, v_set1(1.18534705686654e-04f));
    q = v_fmadd(q, x2, v_set1(2.26843463243900e-03f));
    q = v_fmadd(q, x2, v_set1(4.89352518554385e-03f));
    vf r = v_rcp(q);
    r = v_mul(r, v_fnmadd(q, r, v_set1(2.f)));
    return v_mul(v_mul(x, p), r);
}
#endif

#define USERS 4  /* users per pass over the tables: each table load serves all of them */

#if defined(VW)
#define HALVES (LANES / VW)         /* vectors per group of LANES items */
#define PARTS (HALVES == 1 ? 2 : 1) /* sums per (user, vector): eight FMA chains in flight */

/* dot_one for NU users at once (NU a constant after inlining): rows[v][items[g * L + l]] =
 * sum_c u[v][c] * table[g, c, l]. */
static inline __attribute__((always_inline)) void dot_block(
    const int NU, const float *const *u, int64_t d, const float *table, const int64_t *items,
    int64_t n, float *const *rows) {
    for (int64_t g = 0; g * LANES < n; ++g) {
        const float *t = table + g * d * LANES;
        vf acc[PARTS][USERS][HALVES];
        for (int p = 0; p < PARTS; ++p)
            for (int v = 0; v < NU; ++v)
                for (int h = 0; h < HALVES; ++h) acc[p][v][h] = v_zero();
        int64_t c = 0;
        for (; c + PARTS <= d; c += PARTS)
            for (int p = 0; p < PARTS; ++p) {
                const float *tc = t + (c + p) * LANES;
                vf tv[HALVES];
                for (int h = 0; h < HALVES; ++h) tv[h] = v_load(tc + h * VW);
                for (int v = 0; v < NU; ++v) {
                    const vf a = v_set1(u[v][c + p]);
                    for (int h = 0; h < HALVES; ++h) acc[p][v][h] = v_fmadd(a, tv[h], acc[p][v][h]);
                }
            }
        for (; c < d; ++c)
            for (int v = 0; v < NU; ++v)
                for (int h = 0; h < HALVES; ++h)
                    acc[0][v][h] = v_fmadd(v_set1(u[v][c]), v_load(t + c * LANES + h * VW),
                                           acc[0][v][h]);
        float out[USERS][LANES];
        for (int v = 0; v < NU; ++v)
            for (int h = 0; h < HALVES; ++h) {
                vf sum = acc[0][v][h];
                for (int p = 1; p < PARTS; ++p) sum = v_add(sum, acc[p][v][h]);
                v_store(out[v] + h * VW, sum);
            }
        const int64_t left = n - g * LANES, m = left < LANES ? left : LANES;
        for (int v = 0; v < NU; ++v)
            for (int64_t l = 0; l < m; ++l) rows[v][items[g * LANES + l]] = out[v][l];
    }
}
#endif

#if !defined(VW)
/* row[items[g * L + l]] = sum_c u[c] * table[g, c, l]: the user-independent items
 * (table [G, d, L], items [n], n <= G * L), one user (the build without vector intrinsics). */
static void dot_one(const float *u, int64_t d, const float *table, const int64_t *items,
                    int64_t n, float *row) {
    for (int64_t g = 0; g * LANES < n; ++g) {
        const float *t = table + g * d * LANES;
        float acc[4][LANES] = {{0}};  /* four independent sums: FMA latency, not throughput */
        int64_t c = 0;
        for (; c + 4 <= d; c += 4)
            for (int q = 0; q < 4; ++q) {
                const float uc = u[c + q], *tc = t + (c + q) * LANES;
#pragma omp simd
                for (int l = 0; l < LANES; ++l) acc[q][l] += uc * tc[l];
            }
        for (; c < d; ++c) {
            const float uc = u[c], *tc = t + c * LANES;
#pragma omp simd
            for (int l = 0; l < LANES; ++l) acc[0][l] += uc * tc[l];
        }
        const int64_t left = n - g * LANES, m = left < LANES ? left : LANES;
        for (int64_t l = 0; l < m; ++l)
            row[items[g * LANES + l]] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
}
#endif

/* The user-independent items' scores for nu <= USERS users (see dot_one): one pass over the
 * table for all of them where vector intrinsics are compiled (the table outgrows the L2 cache
 * on real catalogues, so the pass is bound by its loads). */
static void dot_groups(int nu, const float *const *u, int64_t d, const float *table,
                       const int64_t *items, int64_t n, float *const *rows) {
#if defined(VW)
    switch (nu) {
        case 1: dot_block(1, u, d, table, items, n, rows); return;
        case 2: dot_block(2, u, d, table, items, n, rows); return;
        case 3: dot_block(3, u, d, table, items, n, rows); return;
        default: dot_block(4, u, d, table, items, n, rows); return;
    }
#else
    for (int v = 0; v < nu; ++v) dot_one(u[v], d, table, items, n, rows[v]);
#endif
}

/* row[v][items[g * L + l]] = sum_c u[v][c] * tanh(sum_k w_vk * slots[g, k, c, l]) with
 * w_vk = e[v][relations[i, k]] / sum_k e[v][relations[i, k]] for item i = g * L + l and each
 * of the nu <= USERS users v: the user-dependent items (slots [G, K, d, L],
 * relations [G * L, K], items [n]). */
static void kg_groups(int nu, const float *const *e, const float *const *u, int64_t d,
                      const float *slots, const int64_t *relations, const int64_t *items,
                      int64_t n, int64_t k, float *const *row) {
    float w[USERS][k][LANES];
    for (int64_t g = 0; g * LANES < n; ++g) {
        const int64_t *rel = relations + g * LANES * k;
        for (int v = 0; v < nu; ++v) {
            float total[LANES] = {0};
            for (int64_t j = 0; j < k; ++j)
                for (int l = 0; l < LANES; ++l) total[l] += (w[v][j][l] = e[v][rel[l * k + j]]);
            for (int64_t j = 0; j < k; ++j)
#pragma omp simd
                for (int l = 0; l < LANES; ++l) w[v][j][l] /= total[l];
        }
        const float *s = slots + g * k * d * LANES;
        float acc[USERS][LANES] = {{0}};
#if defined(VW)
        for (int v0 = 0; v0 < nu; v0 += 2) {  /* two users per pass over the slots */
            for (int h = 0; h < LANES; h += VW) {  /* VW of the group's LANES items at a time */
                const float *sh = s + h;
                if (nu - v0 >= 2 && k == 4) {  /* the common case, unrolled: weights in registers */
                    const vf w00 = v_load(w[v0][0] + h), w01 = v_load(w[v0][1] + h);
                    const vf w02 = v_load(w[v0][2] + h), w03 = v_load(w[v0][3] + h);
                    const vf w10 = v_load(w[v0 + 1][0] + h), w11 = v_load(w[v0 + 1][1] + h);
                    const vf w12 = v_load(w[v0 + 1][2] + h), w13 = v_load(w[v0 + 1][3] + h);
                    vf sum0 = v_zero(), sum1 = v_zero();
                    const float *s1 = sh + d * LANES, *s2 = sh + 2 * d * LANES;
                    const float *s3 = sh + 3 * d * LANES;
                    for (int64_t c = 0; c < d; ++c) {
                        const vf a = v_load(sh + c * LANES), b = v_load(s1 + c * LANES);
                        const vf e2 = v_load(s2 + c * LANES), f = v_load(s3 + c * LANES);
                        vf pre0 = v_mul(w00, a), pre1 = v_mul(w10, a);
                        pre0 = v_fmadd(w01, b, pre0); pre1 = v_fmadd(w11, b, pre1);
                        pre0 = v_fmadd(w02, e2, pre0); pre1 = v_fmadd(w12, e2, pre1);
                        pre0 = v_fmadd(w03, f, pre0); pre1 = v_fmadd(w13, f, pre1);
                        sum0 = v_fmadd(v_set1(u[v0][c]), tanh_v(pre0), sum0);
                        sum1 = v_fmadd(v_set1(u[v0 + 1][c]), tanh_v(pre1), sum1);
                    }
                    v_store(acc[v0] + h, sum0);
                    v_store(acc[v0 + 1] + h, sum1);
                } else if (nu - v0 >= 2) {
                    vf w0[k], w1[k], sum0 = v_zero(), sum1 = v_zero();
                    for (int64_t j = 0; j < k; ++j) {
                        w0[j] = v_load(w[v0][j] + h);
                        w1[j] = v_load(w[v0 + 1][j] + h);
                    }
                    for (int64_t c = 0; c < d; ++c) {
                        const vf s0 = v_load(sh + c * LANES);
                        vf pre0 = v_mul(w0[0], s0), pre1 = v_mul(w1[0], s0);
                        for (int64_t j = 1; j < k; ++j) {
                            const vf sj = v_load(sh + (j * d + c) * LANES);
                            pre0 = v_fmadd(w0[j], sj, pre0);
                            pre1 = v_fmadd(w1[j], sj, pre1);
                        }
                        sum0 = v_fmadd(v_set1(u[v0][c]), tanh_v(pre0), sum0);
                        sum1 = v_fmadd(v_set1(u[v0 + 1][c]), tanh_v(pre1), sum1);
                    }
                    v_store(acc[v0] + h, sum0);
                    v_store(acc[v0 + 1] + h, sum1);
                } else {
                    vf wv[k], sum = v_zero();
                    for (int64_t j = 0; j < k; ++j) wv[j] = v_load(w[v0][j] + h);
                    for (int64_t c = 0; c < d; ++c) {
                        vf pre = v_mul(wv[0], v_load(sh + c * LANES));
                        for (int64_t j = 1; j < k; ++j)
                            pre = v_fmadd(wv[j], v_load(sh + (j * d + c) * LANES), pre);
                        sum = v_fmadd(v_set1(u[v0][c]), tanh_v(pre), sum);
                    }
                    v_store(acc[v0] + h, sum);
                }
            }
        }
#else
        for (int v = 0; v < nu; ++v)
            for (int64_t c = 0; c < d; ++c) {
                float pre[LANES];
#pragma omp simd
                for (int l = 0; l < LANES; ++l) pre[l] = w[v][0][l] * s[c * LANES + l];
                for (int64_t j = 1; j < k; ++j) {
                    const float *sj = s + (j * d + c) * LANES;
#pragma omp simd
                    for (int l = 0; l < LANES; ++l) pre[l] += w[v][j][l] * sj[l];
                }
                const float uc = u[v][c];
#pragma omp simd
                for (int l = 0; l < LANES; ++l) acc[v][l] += uc * tanh_rational(pre[l]);
            }
#endif
        const int64_t left = n - g * LANES, m = left < LANES ? left : LANES;
        for (int v = 0; v < nu; ++v)
            for (int64_t l = 0; l < m; ++l) row[v][items[g * LANES + l]] = acc[v][l];
    }
}

/* out[n] = the kernel's tanh of x[n] (the vector one where compiled): what the tests compare
 * with torch.tanh and the benchmarks' floor takes as its activation rate (threads from
 * n = 2^16). */
void tanh_values(const float *x, int64_t n, float *out) {
    const int64_t groups = n / LANES;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t g = 0; g < groups; ++g) {
#if defined(VW)
        for (int h = 0; h < LANES; h += VW)
            v_store(out + g * LANES + h, tanh_v(v_load(x + g * LANES + h)));
#else
        for (int l = 0; l < LANES; ++l) out[g * LANES + l] = tanh_rational(x[g * LANES + l]);
#endif
    }
    for (int64_t i = groups * LANES; i < n; ++i) out[i] = tanh_rational(x[i]);
}

/* The arguments every entry point shares: the plan's grouped tables and a block of users. */
#define PLAN_ARGS                                                                             \
    const float *exp_scores, int64_t n_relations, const float *users, int64_t b_begin,         \
        int64_t b_end, int64_t d, const float *const_table, const int64_t *const_items,        \
        int64_t n_const, const float *slots, const int64_t *relations, const int64_t *rows_,   \
        int64_t n_rows, int64_t k
/* The scores of every item for the nu users b, b + 1, ... into rows[0], rows[1], ... */
#define USER_SCORES(b, nu, rows)                                                              \
    do {                                                                                      \
        const float *e_[USERS], *u_[USERS];                                                   \
        for (int v_ = 0; v_ < (nu); ++v_) {                                                   \
            e_[v_] = exp_scores + ((b) + v_) * n_relations;                                    \
            u_[v_] = users + ((b) + v_) * d;                                                   \
        }                                                                                     \
        dot_groups((nu), u_, d, const_table, const_items, n_const, (rows));                   \
        kg_groups((nu), e_, u_, d, slots, relations, rows_, n_rows, k, (rows));               \
    } while (0)

/* This thread's share [begin, end) of [b_begin, b_end), in whole USERS-sized steps. */
#define THREAD_RANGE(begin, end)                                                              \
    const int64_t steps_ = (b_end - b_begin + USERS - 1) / USERS;                             \
    const int64_t nth_ = omp_get_num_threads(), tid_ = omp_get_thread_num();                  \
    const int64_t begin = b_begin + USERS * (steps_ * tid_ / nth_);                           \
    const int64_t end_ = b_begin + USERS * (steps_ * (tid_ + 1) / nth_);                       \
    const int64_t end = end_ < b_end ? end_ : b_end

/* The serial work of one thread (noinline: the compiler optimises it on its own arguments,
 * not on the shared variables of the parallel region). */
static __attribute__((noinline)) void scores_range(PLAN_ARGS, float *out, int64_t out_stride) {
    for (int64_t b = b_begin; b < b_end; b += USERS) {
        const int nu = b_end - b < USERS ? (int)(b_end - b) : USERS;
        float *rows[USERS];
        for (int v = 0; v < nu; ++v) rows[v] = out + (b + v) * out_stride;
        USER_SCORES(b, nu, rows);
    }
}

/* 1 hop: out[b, i] = the score of item i for user b, every item (out [B, stride]). */
void kg_scores_1hop(PLAN_ARGS, float *out, int64_t out_stride) {
#pragma omp parallel
    {
        THREAD_RANGE(begin, end);
        scores_range(exp_scores, n_relations, users, begin, end, d, const_table, const_items,
                     n_const, slots, relations, rows_, n_rows, k, out, out_stride);
    }
}

/* a ranks below b: lower score, or the same score and a higher item id (ties: lower id first) */
static inline int ranks_below(float sa, int64_t ia, float sb, int64_t ib) {
    return sa < sb || (sa == sb && ia > ib);
}

/* Restore the heap (the lowest-ranked entry at the root) below position `at`. */
static void sift_down(float *hs, int64_t *hi, int64_t n, int64_t at) {
    for (;;) {
        int64_t low = at;
        const int64_t l = 2 * at + 1, r = l + 1;
        if (l < n && ranks_below(hs[l], hi[l], hs[low], hi[low])) low = l;
        if (r < n && ranks_below(hs[r], hi[r], hs[low], hi[low])) low = r;
        if (low == at) return;
        const float s = hs[at]; hs[at] = hs[low]; hs[low] = s;
        const int64_t i = hi[at]; hi[at] = hi[low]; hi[low] = i;
        at = low;
    }
}

/* The k-th largest of a[0:n] (1 <= k <= n, no NaN); reorders a (quickselect). */
static float kth_largest(float *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        const float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {  /* descending: >= pivot to the left, <= pivot to the right */
            while (a[i] > pivot) ++i;
            while (a[j] < pivot) --j;
            if (i <= j) { const float t = a[i]; a[i] = a[j]; a[j] = t; ++i; --j; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

/* A value tau with at least k of x[0:n] >= tau: x's first LANES * floor(n / LANES) entries
 * form G = LANES * chunks >= k disjoint groups (lane l of the vectors of chunk j), and tau is
 * the k-th largest group maximum. -inf when n is too short for that. scratch: G floats
 * (G <= max(16 * LANES, k + LANES)). */
static float kth_lower_bound(const float *x, int64_t n, int64_t k, float *scratch) {
    const int64_t vectors = n / LANES, need = (k + LANES - 1) / LANES;
    const int64_t chunks = vectors < 16 ? vectors : (need > 16 ? need : 16);
    if (chunks < need || chunks == 0) return -INFINITY;
    for (int64_t j = 0; j < chunks; ++j) {
        const int64_t v0 = j * (vectors / chunks);
        const int64_t v1 = j == chunks - 1 ? vectors : v0 + vectors / chunks;
        float *m = scratch + j * LANES;
        for (int l = 0; l < LANES; ++l) m[l] = -INFINITY;
        for (int64_t v = v0; v < v1; ++v)
#pragma omp simd
            for (int l = 0; l < LANES; ++l) m[l] = x[v * LANES + l] > m[l] ? x[v * LANES + l] : m[l];
    }
    return kth_largest(scratch, chunks * LANES, k);
}

/* The entries of x[0:n] >= tau, in order: their values into vals, ids[i] (or i when ids is
 * NULL) into out_ids; returns how many. */
static int64_t keep_at_least(const float *x, const int32_t *ids, int64_t n, float tau,
                             float *vals, int32_t *out_ids) {
    int64_t kept = 0, i = 0;
#if defined(__AVX512F__)
    const __m512 t = _mm512_set1_ps(tau);
    __m512i seq = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; i + LANES <= n; i += LANES) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __mmask16 keep = _mm512_cmp_ps_mask(v, t, _CMP_GE_OQ);
        const __m512i id = ids ? _mm512_loadu_si512(ids + i)
                               : _mm512_add_epi32(seq, _mm512_set1_epi32((int32_t)i));
        _mm512_mask_compressstoreu_ps(vals + kept, keep, v);
        _mm512_mask_compressstoreu_epi32(out_ids + kept, keep, id);
        kept += __builtin_popcount(keep);
    }
#elif defined(VW)
    const vf t = v_set1(tau);
    for (; i + VW <= n; i += VW) {  /* most vectors hold no entry >= tau: one test each */
        unsigned keep = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v_load(x + i), t, _CMP_GE_OQ));
        for (; keep; keep &= keep - 1) {
            const int64_t j = i + __builtin_ctz(keep);
            vals[kept] = x[j];
            out_ids[kept++] = ids ? ids[j] : (int32_t)j;
        }
    }
#endif
    for (; i < n; ++i)
        if (x[i] >= tau) { vals[kept] = x[i]; out_ids[kept++] = ids ? ids[i] : (int32_t)i; }
    return kept;
}

/* The k best of row[0:n] (k <= n, no NaN, n < 2^31), best first, into hs / hi: the entries
 * at or above a lower bound of the k-th best, then a bounded heap over those candidates only.
 * vals / ids: scratch of max(n, 16 * LANES, k + LANES) entries each. */
static void top_k(const float *row, int64_t n, int64_t k, float *hs, int64_t *hi, float *vals,
                  int32_t *ids) {
    const int64_t m = keep_at_least(row, NULL, n, kth_lower_bound(row, n, k, vals), vals, ids);
    for (int64_t i = 0; i < k; ++i) { hs[i] = vals[i]; hi[i] = ids[i]; }
    for (int64_t i = k / 2 - 1; i >= 0; --i) sift_down(hs, hi, k, i);
    for (int64_t c = k; c < m; ++c) {  /* ids ascend: an equal score never displaces the root */
        if (vals[c] > hs[0]) { hs[0] = vals[c]; hi[0] = ids[c]; sift_down(hs, hi, k, 0); }
    }
    for (int64_t end = k - 1; end > 0; --end) {  /* heap sort: the lowest-ranked goes last */
        const float s = hs[0]; hs[0] = hs[end]; hs[end] = s;
        const int64_t i = hi[0]; hi[0] = hi[end]; hi[end] = i;
        sift_down(hs, hi, end, 0);
    }
}

/* User b's scores r [n_items] -> its exclusions set to -inf, then the top best (ties: lower
 * item id first) into row b of top_scores / top_items, an item scored -inf as id -1. Returns 1
 * (row b left unset) when a ranked score is NaN, else 0. vals / ids: top_k's scratch. */
static int rank_row(float *r, int64_t b, int64_t n_items, const int64_t *ex_indptr,
                    const int64_t *ex_items, int64_t top, float *top_scores, int64_t *top_items,
                    float *vals, int32_t *ids) {
    for (int64_t x = ex_indptr[b]; x < ex_indptr[b + 1]; ++x) r[ex_items[x]] = -INFINITY;
    int nan = 0;
    for (int64_t i = 0; i < n_items; ++i) nan |= r[i] != r[i];
    if (nan) return 1;
    float *hs = top_scores + b * top;
    int64_t *hi = top_items + b * top;
    top_k(r, n_items, top, hs, hi, vals, ids);
    for (int64_t j = 0; j < top; ++j)
        if (hs[j] == -INFINITY) hi[j] = -1;
    return 0;
}

static __attribute__((noinline)) int64_t rank_range(PLAN_ARGS, int64_t n_items,
                                                     const int64_t *ex_indptr,
                                                     const int64_t *ex_items, int64_t top,
                                                     float *top_scores, int64_t *top_items) {
    const int64_t scratch = n_items + 16 * LANES + top;
    float *row = malloc((size_t)(USERS * n_items) * sizeof(float));
    float *vals = malloc((size_t)scratch * sizeof(float));
    int32_t *ids = malloc((size_t)scratch * sizeof(int32_t));
    int64_t bad = 0;
    if (row == NULL || vals == NULL || ids == NULL) bad = -1;
    for (int64_t b0 = b_begin; b0 < b_end && bad >= 0; b0 += USERS) {
        const int nu = b_end - b0 < USERS ? (int)(b_end - b0) : USERS;
        float *rows[USERS];
        for (int v = 0; v < nu; ++v) rows[v] = row + v * n_items;
        USER_SCORES(b0, nu, rows);
        for (int v = 0; v < nu; ++v) {
            const int64_t b = b0 + v;
            float *r = rows[v];
            bad += rank_row(r, b, n_items, ex_indptr, ex_items, top, top_scores, top_items, vals,
                            ids);
        }
    }
    free(row);
    free(vals);
    free(ids);
    return bad;
}

/* 1 hop, full ranking: every item's score for user b (as kg_scores_1hop), then
 * score[ex_items[ex_indptr[b]:ex_indptr[b + 1]]] = -inf, then the `top` best (ties: lower item
 * id first) into top_scores / top_items [B, top]; an item scored -inf gets the id -1.
 * Returns the number of users with a NaN among their ranked (not excluded) scores (their
 * output rows are left unset), -1 when out of memory. */
int64_t kg_rank_1hop(PLAN_ARGS, int64_t n_items, const int64_t *ex_indptr,
                     const int64_t *ex_items, int64_t top, float *top_scores,
                     int64_t *top_items) {
    int64_t bad = 0, failed = 0;
#pragma omp parallel reduction(+ : bad, failed)
    {
        THREAD_RANGE(begin, end);
        const int64_t got = rank_range(exp_scores, n_relations, users, begin, end, d,
                                       const_table, const_items, n_const, slots, relations,
                                       rows_, n_rows, k, n_items, ex_indptr, ex_items, top,
                                       top_scores, top_items);
        if (got < 0) ++failed; else bad += got;
    }
    return failed ? -1 : bad;
}

/* ---- two hops, one user at a time: everything the user reads stays in cache ---------------- */

enum { ACT_RELU = 0, ACT_TANH = 1, ACT_IDENTITY = 2, ACT_LEAKY_RELU = 3 };

/* Attention weights of one row for one user: w[j] = e[rel[j]] / sum_j e[rel[j]]. */
static inline void row_weights(const float *e, const int64_t *rel, int64_t k, float *w) {
    float total = 0.f;
    for (int64_t j = 0; j < k; ++j) total += (w[j] = e[rel[j]]);
    const float inv = 1.f / total;
    for (int64_t j = 0; j < k; ++j) w[j] *= inv;
}

static inline void activate(float *x, int64_t d, int act) {
    if (act == ACT_RELU) {
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) x[c] = x[c] > 0.f ? x[c] : 0.f;
    } else if (act == ACT_LEAKY_RELU) {
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) x[c] = x[c] > 0.f ? x[c] : 0.01f * x[c];
    } else if (act == ACT_TANH) {
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) x[c] = tanh_rational(x[c]);
    }
}

/* out[r, :] = h[r, :] @ weight_t (h [2, d] two rows, weight_t [d, w], out [2, w]). */
static inline void rows_times(const float *h, int64_t d, const float *weight_t, int64_t w,
                              float *out) {
#if defined(VW)
    if (w == 64) {  /* the common width: 4 * VW columns of both rows at a time, in registers */
        for (int64_t q0 = 0; q0 < 64; q0 += 4 * VW) {
            vf a0 = v_zero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int64_t c = 0; c < d; ++c) {
                const float *wc = weight_t + c * 64 + q0;
                const vf w0 = v_load(wc), w1 = v_load(wc + VW);
                const vf w2 = v_load(wc + 2 * VW), w3 = v_load(wc + 3 * VW);
                const vf x = v_set1(h[c]), y = v_set1(h[d + c]);
                a0 = v_fmadd(x, w0, a0); a1 = v_fmadd(x, w1, a1);
                a2 = v_fmadd(x, w2, a2); a3 = v_fmadd(x, w3, a3);
                b0 = v_fmadd(y, w0, b0); b1 = v_fmadd(y, w1, b1);
                b2 = v_fmadd(y, w2, b2); b3 = v_fmadd(y, w3, b3);
            }
            float *o = out + q0;
            v_store(o, a0); v_store(o + VW, a1); v_store(o + 2 * VW, a2); v_store(o + 3 * VW, a3);
            o += 64;
            v_store(o, b0); v_store(o + VW, b1); v_store(o + 2 * VW, b2); v_store(o + 3 * VW, b3);
        }
        return;
    }
#endif
    for (int r = 0; r < 2; ++r) {
        float *o = out + r * w;
        for (int64_t c = 0; c < w; ++c) o[c] = 0.f;
        for (int64_t c = 0; c < d; ++c) {
            const float x = h[r * d + c], *wc = weight_t + c * w;
#pragma omp simd
            for (int64_t q = 0; q < w; ++q) o[q] += x * wc[q];
        }
    }
}

/* The arguments of the 2-hop entry point and of each thread's share (see two_hop_range). */
#define TWO_HOP_ARGS                                                                          \
    const float *exp_scores, int64_t n_relations, const float *users, int64_t b_begin,         \
        int64_t b_end, int64_t d, const float *const_table, const int64_t *const_items,        \
        int64_t n_const, const int64_t *relations0, const float *slots0, int64_t n0, int act,  \
        const float *shared, int64_t n_shared, const float *weight_t, int64_t w,               \
        const int64_t *neighbors, const int64_t *own, int64_t self_offset, const float *bias,  \
        const int64_t *relations1, const int64_t *items, int64_t n1, int64_t k,                \
        int64_t n_items, float *out, int64_t out_stride, const int64_t *ex_indptr,             \
        const int64_t *ex_items, int64_t top, float *top_scores, int64_t *top_items

/* Two hops for users [b_begin, b_end), one at a time:
 *   round 0: h_i = act(sum_k w_bik slots0[i, k, :]) for the user-dependent entities i;
 *   table = [shared (user-independent rows) ; h @ weight_t]  ([C, w], this thread's buffer);
 *   last round: score[items[i]] = sum_c u[c] tanh(bias[c] + table[own[i], off + c]
 *                                                  + sum_k w_bik table[neighbors[i, k], c]);
 *   the user-independent items as in kg_scores_1hop.
 * exp_scores [B, R], users [B, d], relations0 [n0, K], slots0 [n0, K, d], shared [ns, w],
 * weight_t [d, w], neighbors / relations1 [n1, K], own [n1] (or NULL), items [n1].
 * With top_scores NULL the scores go to out[b, :]; otherwise exclusions and the top best, as
 * kg_rank_1hop (returns the users with a NaN, -1 when out of memory). */
static __attribute__((noinline)) int64_t two_hop_range(TWO_HOP_ARGS) {
    const int ranking = top_scores != NULL;
    const int64_t scratch = n_items + 16 * LANES + top;
    float *table = malloc((size_t)((n_shared + n0 + 1) * w) * sizeof(float));
    float *row = ranking ? malloc((size_t)n_items * sizeof(float)) : NULL;
    float *vals = ranking ? malloc((size_t)scratch * sizeof(float)) : NULL;
    int32_t *ids = ranking ? malloc((size_t)scratch * sizeof(int32_t)) : NULL;
    int64_t bad = 0;
    if (table == NULL || (ranking && (row == NULL || vals == NULL || ids == NULL))) bad = -1;
    if (bad == 0)
        for (int64_t i = 0; i < n_shared * w; ++i) table[i] = shared[i];
    float wt[k], h[2 * d], pre[d];
    for (int64_t b = b_begin; b < b_end && bad >= 0; ++b) {
        const float *e = exp_scores + b * n_relations, *u = users + b * d;
        for (int64_t i = 0; i < n0; i += 2) {  /* round 0, two rows at a time */
            const int64_t m = n0 - i < 2 ? n0 - i : 2;
            for (int64_t r = 0; r < m; ++r) {
                const float *s = slots0 + (i + r) * k * d;
                float *x = h + r * d;
                row_weights(e, relations0 + (i + r) * k, k, wt);
#pragma omp simd
                for (int64_t c = 0; c < d; ++c) x[c] = wt[0] * s[c];
                for (int64_t j = 1; j < k; ++j) {
                    const float *sj = s + j * d, wj = wt[j];
#pragma omp simd
                    for (int64_t c = 0; c < d; ++c) x[c] += wj * sj[c];
                }
                activate(x, d, act);
            }
            if (m == 1)
                for (int64_t c = 0; c < d; ++c) h[d + c] = 0.f;
            /* rows n_shared + i, + 1 (the buffer has one spare row for an odd n0) */
            rows_times(h, d, weight_t, w, table + (n_shared + i) * w);
        }
        float *r = ranking ? row : out + b * out_stride;
        dot_groups(1, &u, d, const_table, const_items, n_const, &r);
        for (int64_t i = 0; i < n1; ++i) {  /* the last round */
            row_weights(e, relations1 + i * k, k, wt);
            if (own != NULL) {
                const float *t = table + own[i] * w + self_offset;
#pragma omp simd
                for (int64_t c = 0; c < d; ++c) pre[c] = bias[c] + t[c];
            } else {
#pragma omp simd
                for (int64_t c = 0; c < d; ++c) pre[c] = bias[c];
            }
            for (int64_t j = 0; j < k; ++j) {
                const float *t = table + neighbors[i * k + j] * w, wj = wt[j];
#pragma omp simd
                for (int64_t c = 0; c < d; ++c) pre[c] += wj * t[c];
            }
            float acc = 0.f;
            int64_t c0 = 0;
#if defined(VW)
            vf sum = v_zero();
            for (; c0 + VW <= d; c0 += VW)
                sum = v_fmadd(v_load(u + c0), tanh_v(v_load(pre + c0)), sum);
            float lanes[VW];
            v_store(lanes, sum);
            for (int l = 0; l < VW; ++l) acc += lanes[l];
#endif
            for (int64_t c = c0; c < d; ++c) acc += u[c] * tanh_rational(pre[c]);
            r[items[i]] = acc;
        }
        if (ranking)
            bad += rank_row(r, b, n_items, ex_indptr, ex_items, top, top_scores, top_items, vals,
                            ids);
    }
    free(table);
    free(row);
    free(vals);
    free(ids);
    return bad;
}

int64_t kg_two_hops(TWO_HOP_ARGS) {
    int64_t bad = 0, failed = 0;
#pragma omp parallel reduction(+ : bad, failed)
    {
        THREAD_RANGE(begin, end);
        const int64_t got = two_hop_range(
            exp_scores, n_relations, users, begin, end, d, const_table, const_items, n_const,
            relations0, slots0, n0, act, shared, n_shared, weight_t, w, neighbors, own,
            self_offset, bias, relations1, items, n1, k, n_items, out, out_stride, ex_indptr,
            ex_items, top, top_scores, top_items);
        if (got < 0) ++failed; else bad += got;
    }
    return failed ? -1 : bad;
}
