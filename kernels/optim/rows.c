/* Per-row work of the embedding backward: the fused Adagrad update and the per-row gradient
 * sums of the sparse-gradient path.
 *
 * The pooled output's gradient is read in place, whatever its layout: bag b's gradient row
 * starts at grad + (b / group) * group_stride + (b % group) * item_stride (floats), e.g. a
 * [G, group, D] view, or a [N, D] table with group = N and group_stride = 0.
 *
 * adagrad_rows: the fused embedding backward for Adagrad, one pass over the touched rows.
 * The batch's ids are grouped by row (sorted): unique row rows[i] has the ids
 * segments[i] .. segments[i+1] - 1, id k belonging to bag bags[k] with factor scales[k] (1 when
 * scales is NULL). Per unique row r, with G = sum_k scales[k] * grad(bags[k]) (in the ids'
 * sorted order):
 *   state[r] += G * G;  weight[r] -= lr * G / (sqrt(state[r]) + eps)   (element-wise),
 * the update torch.optim.Adagrad makes on a sparse gradient. Rows are split over OpenMP threads;
 * each row is owned by one thread, so the result does not depend on the schedule. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

static inline int64_t bag_offset(int64_t bag, int64_t group, int64_t group_stride, int64_t item_stride) {
    return (bag / group) * group_stride + (bag % group) * item_stride;
}

int adagrad_rows(const int64_t *rows, const int64_t *segments, const int64_t *bags, const float *scales,
                 int64_t num_unique, const float *grad, int64_t group, int64_t group_stride, int64_t item_stride,
                 int64_t dim, float *weight, float *state, float lr, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < num_unique; ++i) {
        float g[dim];
        for (int64_t d = 0; d < dim; ++d) g[d] = 0.0f;
        for (int64_t k = segments[i]; k < segments[i + 1]; ++k) {
            const float *src = grad + bag_offset(bags[k], group, group_stride, item_stride);
            const float scale = scales == NULL ? 1.0f : scales[k];
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

/* Bags of one id each (id i is bag i, of row rows[i]) are grouped by row with a stable
 * counting sort over the table's rows instead of a comparison sort, so the ids of a row are
 * summed in ascending order, as after a stable sort. The scatter pass stores each id's
 * gradient offset (walking the layout without a division), and the sums prefetch the rows
 * AHEAD ids ahead (the gradient is read in row order, so at random).
 * Status: 1 when scratch memory cannot be allocated, 2 for a row outside [0, num_rows). */

#define AHEAD 16

typedef struct {
    int64_t *ends;   /* row r's ids are source[r ? ends[r - 1] : 0 .. ends[r]) */
    int64_t *source; /* gradient offset of each id, grouped by row */
} Grouped;

static void release(Grouped *grouped) {
    free(grouped->ends);
    free(grouped->source);
}

static int group_single(const int64_t *rows, int64_t count, int64_t num_rows, int64_t group, int64_t group_stride,
                        int64_t item_stride, Grouped *out) {
    out->ends = calloc(num_rows > 0 ? num_rows : 1, sizeof(int64_t));
    out->source = malloc((count > 0 ? count : 1) * sizeof(int64_t));
    if (out->ends == NULL || out->source == NULL) {
        release(out);
        return 1;
    }
    int64_t *ends = out->ends;
    for (int64_t i = 0; i < count; ++i) {
        if (rows[i] < 0 || rows[i] >= num_rows) {
            release(out);
            return 2;
        }
        ends[rows[i]]++;
    }
    for (int64_t r = 1; r < num_rows; ++r) ends[r] += ends[r - 1];
    for (int64_t r = num_rows - 1; r > 0; --r) ends[r] = ends[r - 1]; /* cursor of row r: its start */
    if (num_rows > 0) ends[0] = 0;
    for (int64_t i = 0, q = 0, p = 0; i < count; ++i) {
        out->source[ends[rows[i]]++] = q * group_stride + p * item_stride;
        if (++p == group) {
            p = 0;
            ++q;
        }
    }
    return 0;
}

/* g[0 .. dim) = sum of the gradient rows source[begin .. end). */
static void sum_rows(const float *grad, const int64_t *source, int64_t begin, int64_t end, int64_t count,
                     int64_t dim, float *g) {
    for (int64_t d = 0; d < dim; ++d) g[d] = 0.0f;
    for (int64_t k = begin; k < end; ++k) {
        if (k + AHEAD < count) __builtin_prefetch(grad + source[k + AHEAD]);
        const float *src = grad + source[k];
        for (int64_t d = 0; d < dim; ++d) g[d] += src[d];
    }
}

/* adagrad_single: the adagrad_rows update for single-id bags; bit-identical to it. */
int adagrad_single(const int64_t *rows, int64_t count, int64_t num_rows, const float *grad, int64_t group,
                   int64_t group_stride, int64_t item_stride, int64_t dim, float *weight, float *state,
                   float lr, float eps, int threads) {
    Grouped grouped;
    int status = group_single(rows, count, num_rows, group, group_stride, item_stride, &grouped);
    if (status != 0) return status;
    const int64_t *ends = grouped.ends;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < num_rows; ++r) {
        int64_t begin = r ? ends[r - 1] : 0, end = ends[r];
        if (begin == end) continue;
        float g[dim];
        sum_rows(grad, grouped.source, begin, end, count, dim, g);
        float *w = weight + r * dim, *s = state + r * dim;
        for (int64_t d = 0; d < dim; ++d) {
            s[d] += g[d] * g[d];
            w[d] -= lr * g[d] / (sqrtf(s[d]) + eps);
        }
    }
    release(&grouped);
    return 0;
}

/* segment_sum_single: the gradient of each distinct row of single-id bags, for a coalesced
 * sparse gradient: writes the distinct rows, ascending, to unique[0 .. U) and their summed
 * gradients to sums[U, dim] (both sized for count rows); *num_unique = U. */
int segment_sum_single(const int64_t *rows, int64_t count, int64_t num_rows, const float *grad, int64_t group,
                       int64_t group_stride, int64_t item_stride, int64_t dim, int64_t *unique, float *sums,
                       int64_t *num_unique, int threads) {
    Grouped grouped;
    int status = group_single(rows, count, num_rows, group, group_stride, item_stride, &grouped);
    if (status != 0) return status;
    const int64_t *ends = grouped.ends;
    int64_t u = 0;
    for (int64_t r = 0; r < num_rows; ++r)
        if (ends[r] != (r ? ends[r - 1] : 0)) unique[u++] = r;
    *num_unique = u;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < u; ++i) {
        int64_t r = unique[i];
        sum_rows(grad, grouped.source, r ? ends[r - 1] : 0, ends[r], count, dim, sums + i * dim);
    }
    release(&grouped);
    return 0;
}

/* adagrad_sparse: the Adagrad update of a coalesced sparse gradient, rows[num] strictly
 * increasing with their gradients values[num, dim], of a [num_rows, dim] table: the same
 * per-row rule as adagrad_rows. Status 2 for a row outside [0, num_rows), 3 when the rows are
 * not strictly increasing (coalesce the gradient first). */
int adagrad_sparse(const int64_t *rows, const float *values, int64_t num, int64_t num_rows, int64_t dim,
                   float *weight, float *state, float lr, float eps, int threads) {
    for (int64_t i = 0; i < num; ++i) {
        if (rows[i] < 0 || rows[i] >= num_rows) return 2;
        if (i > 0 && rows[i] <= rows[i - 1]) return 3;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < num; ++i) {
        const float *g = values + i * dim;
        float *w = weight + rows[i] * dim, *s = state + rows[i] * dim;
        for (int64_t d = 0; d < dim; ++d) {
            s[d] += g[d] * g[d];
            w[d] -= lr * g[d] / (sqrtf(s[d]) + eps);
        }
    }
    return 0;
}
