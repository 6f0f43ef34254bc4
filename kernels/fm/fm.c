/* Factorization-machine terms over field vectors, one pass over the fields each way, with the
 * field vectors optionally assembled in the same pass.
 *
 * The fields of sample b are S sparse-feature vectors (read with strides: row b*sb + f*sf)
 * followed by Nd numeric fields x_bn * w_n (value times the feature's vector), F = S + Nd in
 * all, each of D floats. u: [F, D] first-order vectors.
 * Forward:  total[b] = sum_f v_bf,
 *   out[b] = sum_f <u_f, v_bf> + 0.5 * (|total[b]|^2 - sum_f |v_bf|^2),
 *   and fields[b] = the F vectors, contiguous [B, F, D] (may be NULL when Nd == 0).
 * Backward, fields contiguous [B, F, D], g[b] = d loss / d out[b]:
 *   grad_fields[b, f] += g[b] * (u_f + total[b] - v_bf)   (added in place to what is there),
 *   grad_u[f] = sum_b g[b] * v_bf,
 *   grad_w[n] = sum_b x_bn * grad_fields[b, S + n]   (after the addition; when Nd > 0).
 * Samples are split over OpenMP threads (static schedule); reductions over the batch go
 * through per-thread partial sums added in thread order. Sums over d are kept per lane so the
 * compiler vectorizes them without reassociating. Both return 0, or -1 when out of memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

int fm_forward(const float *sparse, int64_t sb, int64_t sf, const float *dense, const float *w, const float *u,
               int64_t batch, int64_t num_sparse, int64_t num_dense, int64_t dim, float *fields, float *out,
               float *total, int threads) {
    const int64_t num_fields = num_sparse + num_dense;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
        float *s = total + b * dim;
        float squares[dim], linear[dim];
        for (int64_t d = 0; d < dim; ++d) s[d] = squares[d] = linear[d] = 0.0f;
        for (int64_t f = 0; f < num_sparse; ++f) {
            const float *vf = sparse + b * sb + f * sf, *uf = u + f * dim;
            if (fields != NULL) memcpy(fields + (b * num_fields + f) * dim, vf, (size_t)dim * sizeof(float));
            for (int64_t d = 0; d < dim; ++d) {
                s[d] += vf[d];
                squares[d] += vf[d] * vf[d];
                linear[d] += uf[d] * vf[d];
            }
        }
        for (int64_t n = 0; n < num_dense; ++n) {
            const float x = dense[b * num_dense + n], *wn = w + n * dim, *uf = u + (num_sparse + n) * dim;
            float *vf = fields + (b * num_fields + num_sparse + n) * dim;
            for (int64_t d = 0; d < dim; ++d) {
                vf[d] = x * wn[d];
                s[d] += vf[d];
                squares[d] += vf[d] * vf[d];
                linear[d] += uf[d] * vf[d];
            }
        }
        float result = 0.0f;
        for (int64_t d = 0; d < dim; ++d) result += linear[d] + 0.5f * (s[d] * s[d] - squares[d]);
        out[b] = result;
    }
    return 0;
}

int fm_backward(const float *fields, const float *dense, const float *u, const float *total, const float *g,
                int64_t batch, int64_t num_sparse, int64_t num_dense, int64_t dim, const float *grad_in,
                float *grad_fields, float *grad_u, float *grad_w, int threads) {
    const int64_t num_fields = num_sparse + num_dense, width = num_fields * dim, wide = width + num_dense * dim;
    float *partial = calloc((size_t)threads * (size_t)wide, sizeof(float));
    if (partial == NULL) return -1;
#pragma omp parallel num_threads(threads)
    {
        float *mine_u = partial + (int64_t)omp_get_thread_num() * wide, *mine_w = mine_u + width;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < batch; ++b) {
            const float *v = fields + b * width, *s = total + b * dim;
            float *gv = grad_fields + b * width;
            const float gb = g[b];
            for (int64_t f = 0; f < num_fields; ++f) {
                const float *vf = v + f * dim, *uf = u + f * dim;
                const float *inf = grad_in == NULL ? NULL : grad_in + b * width + f * dim;
                float *gf = gv + f * dim, *mf = mine_u + f * dim;
                for (int64_t d = 0; d < dim; ++d) {
                    gf[d] = (inf == NULL ? 0.0f : inf[d]) + gb * (uf[d] + s[d] - vf[d]);
                    mf[d] += gb * vf[d];
                }
            }
            for (int64_t n = 0; n < num_dense; ++n) {
                const float x = dense[b * num_dense + n], *gf = gv + (num_sparse + n) * dim;
                float *mw = mine_w + n * dim;
                for (int64_t d = 0; d < dim; ++d) mw[d] += x * gf[d];
            }
        }
    }
    memset(grad_u, 0, (size_t)width * sizeof(float));
    if (num_dense > 0) memset(grad_w, 0, (size_t)(num_dense * dim) * sizeof(float));
    for (int t = 0; t < threads; ++t) {
        const float *mine_u = partial + t * wide, *mine_w = mine_u + width;
        for (int64_t i = 0; i < width; ++i) grad_u[i] += mine_u[i];
        for (int64_t i = 0; i < num_dense * dim; ++i) grad_w[i] += mine_w[i];
    }
    free(partial);
    return 0;
}
