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
