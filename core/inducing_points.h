// Choosing inducing points on the lengthscale-scaled coordinates: k-means++ seeding (Arthur &
// Vassilvitskii 2007, GPBoost's default for VIF models) and Lloyd iterations that move the seeds
// to the means of their clusters. Seeded and reproducible: the same coordinates, count, seed and
// iterations give the same bits on every machine and at every thread count (random numbers come
// from SplitMix64; every sum is taken sequentially in id order).
#ifndef RCKNN_CORE_INDUCING_POINTS_H_
#define RCKNN_CORE_INDUCING_POINTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/metric_space.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

enum class InducingMethod {
  kUniform,        // `count` distinct data points drawn uniformly (SampleDistinct)
  kKMeansPlusPlus  // k-means++ seeds, then Lloyd iterations
};

std::string InducingMethodName(InducingMethod method);

// Lloyd iterations after k-means++ seeding unless the spec says otherwise. Zero keeps the
// inducing points on data points: docs/gp-loop.md compares the residual variances both ways.
inline constexpr int kDefaultLloydIterations = 0;

// k-means++ seeding of `count` rows of `scaled` (n x d): with rng = SplitMix64(seed), the first
// seed is row rng.UniformBelow(n); each next seed is drawn with probability proportional to
// D(x)^2, the squared Euclidean distance from x to the nearest seed so far: u =
// rng.UniformDouble() * sum_j D(j)^2 (sums in row order), and the seed is the first row whose
// running sum exceeds u. Returns the seeds in the order drawn (distinct rows, never two at the
// same location). INVALID_ARGUMENT "inducing_count" when count < 1, count > n, or the points
// have fewer than `count` distinct locations. Runs the distance updates on `arena` if given.
absl::StatusOr<std::vector<int64_t>> KMeansPlusPlusSeeds(const RowMatrix& scaled, int64_t count,
                                                         uint64_t seed,
                                                         tbb::task_arena* arena = nullptr);

// `iterations` Lloyd steps from `centres` (m x d) over `scaled`: each row goes to its nearest
// centre (ties to the smaller centre), each centre moves to the mean of its rows (summed in row
// order); a centre with no rows stays. Returns the final centres.
RowMatrix LloydIterations(const RowMatrix& scaled, RowMatrix centres, int iterations,
                          tbb::task_arena* arena = nullptr);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_INDUCING_POINTS_H_
