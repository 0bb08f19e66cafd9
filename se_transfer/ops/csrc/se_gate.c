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
 *   w1t  cin x hid, the first FC transposed (row i holds the weights that read channel i);
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

#define SE_GATE_ABI 1

typedef struct {
    const float *w1t;
    const float *b1;
    const float *w2t;
    const float *b2;
    int64_t cin, hid, c;
    int64_t gate; /* 0: sigmoid, 1: tanh, 2: relu */
} se_gate_params;

int se_gate_abi(void) { return SE_GATE_ABI; }

/* This thread's share [*lo, *hi) of 0..len inside a parallel region (all of it outside one), in whole multiples
 * of 16 floats (one 64-byte line) so that no two threads write the same cache line. */
static void thread_range(int64_t len, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = ((len + nt - 1) / nt + 15) / 16 * 16;
    *lo = t * chunk < len ? t * chunk : len;
    *hi = *lo + chunk < len ? *lo + chunk : len;
#else
    *lo = 0;
    *hi = len;
#endif
}

static void squeeze(const float *h, int64_t cin, int64_t hw, int64_t sc, int64_t shw, float *z) {
    if (shw == 1) { /* NCHW: each channel is a contiguous run */
#pragma omp parallel for schedule(static) if (cin * hw >= 32768)
        for (int64_t i = 0; i < cin; ++i) {
            const float *row = h + i * sc;
            /* 32 partial sums (four 8-wide vectors), so the adds do not wait on each other's latency */
            float part[32] = {0.f};
            int64_t k = 0;
            for (; k + 32 <= hw; k += 32)
                for (int j = 0; j < 32; ++j) part[j] += row[k + j];
            for (; k + 8 <= hw; k += 8)
                for (int j = 0; j < 8; ++j) part[j] += row[k + j];
            float acc = 0.f;
            for (; k < hw; ++k) acc += row[k];
            for (int j = 0; j < 32; ++j) acc += part[j];
            z[i] = acc;
        }
    } else if (sc == 1) { /* channels_last: each position is a contiguous run of channels */
        memset(z, 0, sizeof(float) * (size_t)cin);
#pragma omp parallel if (cin * hw >= 32768)
        {
            int64_t i0, i1;
            thread_range(cin, &i0, &i1);
            for (int64_t k = 0; k < hw; ++k) {
                const float *col = h + k * shw;
                for (int64_t i = i0; i < i1; ++i) z[i] += col[i];
            }
        }
    } else {
        for (int64_t i = 0; i < cin; ++i) {
            float acc = 0.f;
            for (int64_t k = 0; k < hw; ++k) acc += h[i * sc + k * shw];
            z[i] = acc;
        }
    }
}

static void excite_one(const se_gate_params *p, const float *z, float inv_hw, float *hid, float *o) {
    const int64_t cin = p->cin, nh = p->hid, c = p->c;
    memset(hid, 0, sizeof(float) * (size_t)nh);
    for (int64_t i = 0; i < cin; ++i) { /* hid += z[i] * (row i of w1t): reads w1t once, in order */
        const float zi = z[i];
        const float *w = p->w1t + i * nh;
        for (int64_t j = 0; j < nh; ++j) hid[j] += zi * w[j];
    }
    for (int64_t j = 0; j < nh; ++j) {
        const float v = hid[j] * inv_hw + p->b1[j];
        hid[j] = v > 0.f ? v : 0.f;
    }
    if (p->b2)
        memcpy(o, p->b2, sizeof(float) * (size_t)c);
    else
        memset(o, 0, sizeof(float) * (size_t)c);
#pragma omp parallel if (nh * c >= 32768)
    {
        int64_t k0, k1;
        thread_range(c, &k0, &k1);
        for (int64_t j = 0; j < nh; ++j) { /* o += hid[j] * (row j of w2t) */
            const float hj = hid[j];
            const float *w = p->w2t + j * c;
            for (int64_t k = k0; k < k1; ++k) o[k] += hj * w[k];
        }
    }
    if (p->gate == 0)
        for (int64_t k = 0; k < c; ++k) o[k] = 1.f / (1.f + expf(-o[k]));
    else if (p->gate == 1)
        for (int64_t k = 0; k < c; ++k) o[k] = tanhf(o[k]);
    else
        for (int64_t k = 0; k < c; ++k) o[k] = o[k] > 0.f ? o[k] : 0.f;
}

/* Returns 0, or -1 when scratch memory could not be had (out is then left unwritten). */
int se_gate_f32(const se_gate_params *p, const float *h, int64_t n, int64_t hw, int64_t sn, int64_t sc, int64_t shw,
                float *out) {
    float stack[4096];
    const int64_t need = p->cin + p->hid;
    float *scratch = need <= 4096 ? stack : (float *)malloc(sizeof(float) * (size_t)need);
    if (!scratch) return -1;
    const float inv_hw = 1.f / (float)hw;
    for (int64_t b = 0; b < n; ++b) {
        squeeze(h + b * sn, p->cin, hw, sc, shw, scratch);
        excite_one(p, scratch, inv_hw, scratch + p->cin, out + b * p->c);
    }
    if (scratch != stack) free(scratch);
    return 0;
}
