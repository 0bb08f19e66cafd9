/*
 * The excitation of an SE block for CPU inference, in one call: gate(W2 relu(W1 mean_hw(h) + b1) + b2).
 *
 * At batch 1 on a CPU every PyTorch op between two convolutions costs tens of microseconds (its code and metadata
 * have been evicted by the convolution), and the textbook excitation is five of them (squeeze, FC, ReLU, FC, gate).
 * This file does all five in one pass over h and one over each weight matrix; se_transfer/ops/cpu_gate.py compiles
 * it with the system C compiler on first use and calls it through ctypes (no Python headers, no torch headers).
 * Built with -fopenmp (where torch's own runtime is libgomp) the squeeze and the second FC split their output
 * channels over torch's OpenMP threads; every output element is summed in the same order whatever the thread count.
 *
 * Layout (float32, all weights contiguous):
 *   h    n x cin x hw with element strides (sn, sc, shw): contiguous NCHW has shw == 1, channels_last has sc == 1;
 *   w1   hid x cin, the first FC (row j holds the weights of hidden unit j);
 *   b1   hid;
 *   w2t  hid x c, the second FC transposed;
 *   b2   c, or NULL;
 *   out  n x c, contiguous.
 * The mean is folded into the first FC (sum, then scale by 1/hw), as in SEModule.producer_excitation.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SE_GATE_ABI 3

typedef struct {
    const float *w1;
    const float *b1;
    const float *w2t;
    const float *b2;
    int64_t cin, hid, c;
    int64_t gate; /* 0: sigmoid, 1: tanh, 2: relu */
} se_gate_params;

int se_gate_abi(void) { return SE_GATE_ABI; }

/* This thread's share [*lo, *hi) of 0..len when a team splits the work (all of it otherwise), in whole multiples
 * of 16 floats (one 64-byte line) so that no two threads write the same cache line. */
static void thread_range(int64_t len, int team, int64_t *lo, int64_t *hi) {
    *lo = 0;
    *hi = len;
#ifdef _OPENMP
    if (team) {
        const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t chunk = ((len + nt - 1) / nt + 15) / 16 * 16;
        *lo = t * chunk < len ? t * chunk : len;
        *hi = *lo + chunk < len ? *lo + chunk : len;
    }
#else
    (void)team;
#endif
}

static float sum_run(const float *x, int64_t len) {
    float part[32] = {0.f};
    int64_t k = 0;
    for (; k + 32 <= len; k += 32)
        for (int j = 0; j < 32; ++j) part[j] += x[k + j];
    for (; k + 8 <= len; k += 8)
        for (int j = 0; j < 8; ++j) part[j] += x[k + j];
    float acc = 0.f;
    for (; k < len; ++k) acc += x[k];
    for (int j = 0; j < 32; ++j) acc += part[j];
    return acc;
}

static float dot(const float *a, const float *b, int64_t len) {
    float part[32] = {0.f};
    int64_t k = 0;
    for (; k + 32 <= len; k += 32)
        for (int j = 0; j < 32; ++j) part[j] += a[k + j] * b[k + j];
    for (; k + 8 <= len; k += 8)
        for (int j = 0; j < 8; ++j) part[j] += a[k + j] * b[k + j];
    float acc = 0.f;
    for (; k < len; ++k) acc += a[k] * b[k];
    for (int j = 0; j < 32; ++j) acc += part[j];
    return acc;
}

static inline float apply_gate(float v, int64_t gate) {
    if (gate == 0) return 1.f / (1.f + expf(-v));
    if (gate == 1) return tanhf(v);
    return v > 0.f ? v : 0.f;
}

/* One sample. With team != 0 every thread of the enclosing parallel region calls this and the three phases are
 * split over the threads: the squeeze (over channels), the first FC with its ReLU (over hidden units: dot products
 * with the rows of w1), the second FC with the gate (over output channels: rows of w2t accumulated into a slice of
 * the output). With team == 0 the calling thread does it all. Either way each output is computed by one thread in
 * the same order, so the result does not depend on the thread count. */
static void excite_one(const se_gate_params *p, const float *h, int64_t hw, int64_t sc, int64_t shw, float inv_hw,
                       int team, float *z, float *hid, float *o) {
    const int64_t cin = p->cin, nh = p->hid, c = p->c;
    int64_t lo, hi;
    thread_range(cin, team, &lo, &hi);
    if (shw == 1) { /* NCHW: each channel is a contiguous run */
        for (int64_t i = lo; i < hi; ++i) z[i] = sum_run(h + i * sc, hw);
    } else if (sc == 1) { /* channels_last: each position is a contiguous run of channels */
        for (int64_t i = lo; i < hi; ++i) z[i] = 0.f;
        for (int64_t k = 0; k < hw; ++k) {
            const float *col = h + k * shw;
            for (int64_t i = lo; i < hi; ++i) z[i] += col[i];
        }
    } else {
        for (int64_t i = lo; i < hi; ++i) {
            float acc = 0.f;
            for (int64_t k = 0; k < hw; ++k) acc += h[i * sc + k * shw];
            z[i] = acc;
        }
    }
    if (team) {
#pragma omp barrier
    }
    thread_range(nh, team, &lo, &hi);
    for (int64_t j = lo; j < hi; ++j) {
        const float v = dot(p->w1 + j * cin, z, cin) * inv_hw + p->b1[j];
        hid[j] = v > 0.f ? v : 0.f;
    }
    if (team) {
#pragma omp barrier
    }
    thread_range(c, team, &lo, &hi);
    if (lo < hi) {
        if (p->b2)
            memcpy(o + lo, p->b2 + lo, sizeof(float) * (size_t)(hi - lo));
        else
            memset(o + lo, 0, sizeof(float) * (size_t)(hi - lo));
        for (int64_t j = 0; j < nh; ++j) {
            const float hj = hid[j];
            const float *w = p->w2t + j * c;
            for (int64_t k = lo; k < hi; ++k) o[k] += hj * w[k];
        }
        for (int64_t k = lo; k < hi; ++k) o[k] = apply_gate(o[k], p->gate);
    }
}

/* Returns 0, or -1 when scratch memory could not be had (out is then left unwritten). nthreads: how many threads
 * may work (torch.get_num_threads(), passed in because OpenMP's own default differs between threads). A batch of
 * at least nthreads samples is split over the samples; a smaller one (batch 1) splits each sample over the team,
 * once its squeeze or its weights are big enough to pay for it (about 64 KB). */
int se_gate_f32(const se_gate_params *p, const float *h, int64_t n, int64_t hw, int64_t sn, int64_t sc, int64_t shw,
                float *out, int64_t nthreads) {
    const int64_t need = p->cin + p->hid;
    const int64_t work = p->cin * hw + p->hid * (p->cin + p->c);
    const float inv_hw = 1.f / (float)hw;
    int nt = nthreads < 1 ? 1 : (int)nthreads;
    if (n < nt) { /* fewer samples than threads: a team per sample (one thread where the work is small) */
        if (work < 16384) nt = 1;
        float stack[4096];
        float *scratch = need <= 4096 ? stack : (float *)malloc(sizeof(float) * (size_t)need);
        if (!scratch) return -1;
        for (int64_t b = 0; b < n; ++b) {
#pragma omp parallel num_threads(nt) if (nt > 1)
            excite_one(p, h + b * sn, hw, sc, shw, inv_hw, nt > 1, scratch, scratch + p->cin, out + b * p->c);
        }
        if (scratch != stack) free(scratch);
        return 0;
    }
    if (n * work < 16384) nt = 1; /* else each thread takes whole samples, with its own scratch */
    float *scratch = (float *)malloc(sizeof(float) * (size_t)(need * nt));
    if (!scratch) return -1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *z = scratch + (int64_t)t * need;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < n; ++b)
            excite_one(p, h + b * sn, hw, sc, shw, inv_hw, 0, z, z + p->cin, out + b * p->c);
    }
    free(scratch);
    return 0;
}
