/* The fused embedding backward for Adagrad, one pass over the touched rows.
 *
 * The batch's ids are grouped by row (sorted): unique row rows[i] has the ids
 * segments[i] .. segments[i+1] - 1, id k belonging to bag bags[k] with factor scales[k] (1 when
 * scales is NULL). grad: the pooled output's gradient as a table, bag b's at row b ([*, D]).
 * Per unique row r, with G = sum_k scales[k] * grad[bags[k]] (in the ids' sorted order):
 *   state[r] += G * G;  weight[r] -= lr * G / (sqrt(state[r]) + eps)   (element-wise),
 * the update torch.optim.Adagrad makes on a sparse gradient. Rows are split over OpenMP threads;
 * each row is owned by one thread, so the result does not depend on the schedule. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

int adagrad_rows(const int64_t *rows, const int64_t *segments, const int64_t *bags, const float *scales,
                 int64_t num_unique, const float *grad, int64_t dim, float *weight, float *state, float lr,
                 float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < num_unique; ++i) {
        float g[dim];
        for (int64_t d = 0; d < dim; ++d) g[d] = 0.0f;
        for (int64_t k = segments[i]; k < segments[i + 1]; ++k) {
            const float *src = grad + bags[k] * dim, scale = scales == NULL ? 1.0f : scales[k];
            for (int64_t d = 0; d < dim; ++d) g[d] += scale * src[d];
        }
        float *w = weight + rows[i] * dim, *s = state + rows[i] * dim;
        for (int64_t d = 0; d < dim; ++d) {
            s[d] += g[d] * g[d];
            w[d] -= lr * g[d] / (sqrtf(s[d]) + eps);
        }
    }
    return 0;
}

/* The same update for bags of one id each (id i is bag i, of row rows[i]), grouped by row
 * with a stable counting sort instead of a comparison sort: ids of a row are summed in
 * ascending order, as after the stable sort above, so both give the same result.
 * grad: bag i's gradient row starts at grad + (i / group) * group_stride + (i % group) * item_stride
 * (floats), e.g. a [G, group, D] view. The scatter pass stores each id's gradient offset, and
 * the update prefetches the rows AHEAD ids ahead (the gradient is read in row order, so at
 * random). Returns 1 when scratch memory cannot be allocated, 2 for a row outside
 * [0, num_rows). */
#define AHEAD 16

int adagrad_single(const int64_t *rows, int64_t count, int64_t num_rows, const float *grad, int64_t group,
                   int64_t group_stride, int64_t item_stride, int64_t dim, float *weight, float *state,
                   float lr, float eps, int threads) {
    int64_t *ends = calloc(num_rows > 0 ? num_rows : 1, sizeof(int64_t));
    int64_t *source = malloc((count > 0 ? count : 1) * sizeof(int64_t));
    if (ends == NULL || source == NULL) {
        free(ends);
        free(source);
        return 1;
    }
    for (int64_t i = 0; i < count; ++i) {
        if (rows[i] < 0 || rows[i] >= num_rows) {
            free(ends);
            free(source);
            return 2;
        }
        ends[rows[i]]++;
    }
    for (int64_t r = 1; r < num_rows; ++r) ends[r] += ends[r - 1];
    /* cursor of row r = its start = ends[r - 1]: shift by one row while scattering */
    for (int64_t r = num_rows - 1; r > 0; --r) ends[r] = ends[r - 1];
    if (num_rows > 0) ends[0] = 0;
    for (int64_t i = 0, q = 0, p = 0; i < count; ++i) {
        source[ends[rows[i]]++] = q * group_stride + p * item_stride;
        if (++p == group) {
            p = 0;
            ++q;
        }
    }
    /* now row r's ids are source[r ? ends[r - 1] : 0 .. ends[r]) */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < num_rows; ++r) {
        int64_t begin = r ? ends[r - 1] : 0, end = ends[r];
        if (begin == end) continue;
        float g[dim];
        for (int64_t d = 0; d < dim; ++d) g[d] = 0.0f;
        for (int64_t k = begin; k < end; ++k) {
            if (k + AHEAD < count) __builtin_prefetch(grad + source[k + AHEAD]);
            const float *src = grad + source[k];
            for (int64_t d = 0; d < dim; ++d) g[d] += src[d];
        }
        float *w = weight + r * dim, *s = state + r * dim;
        for (int64_t d = 0; d < dim; ++d) {
            s[d] += g[d] * g[d];
            w[d] -= lr * g[d] / (sqrtf(s[d]) + eps);
        }
    }
    free(ends);
    free(source);
    return 0;
}
