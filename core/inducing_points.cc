#include "core/inducing_points.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "core/random.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace rcknn::core {
namespace {

constexpr int64_t kGrain = 4096;

template <typename F>
void RunIn(tbb::task_arena* arena, F&& body) {
  if (arena != nullptr) {
    arena->execute(std::forward<F>(body));
  } else {
    body();
  }
}

double SquaredDistance(const double* a, const double* b, int64_t d) {
  double r2 = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    const double diff = a[t] - b[t];
    r2 += diff * diff;
  }
  return r2;
}

}  // namespace

std::string InducingMethodName(InducingMethod method) {
  switch (method) {
    case InducingMethod::kUniform:
      return "uniform";
    case InducingMethod::kKMeansPlusPlus:
      return "kmeans++";
  }
  return "unknown";
}

absl::StatusOr<std::vector<int64_t>> KMeansPlusPlusSeeds(const RowMatrix& scaled, int64_t count,
                                                         uint64_t seed, tbb::task_arena* arena) {
  const int64_t n = scaled.rows();
  const int64_t d = scaled.cols();
  if (count < 1 || count > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("inducing_count must be in [1, n = ", n, "], got ", count));
  }
  SplitMix64 rng(seed);
  std::vector<int64_t> seeds;
  seeds.reserve(count);
  seeds.push_back(static_cast<int64_t>(rng.UniformBelow(static_cast<uint64_t>(n))));
  std::vector<double> d2(n, std::numeric_limits<double>::infinity());
  while (true) {
    const double* centre = scaled.row(seeds.back()).data();
    RunIn(arena, [&] {
      tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kGrain), [&](const auto& range) {
        for (int64_t i = range.begin(); i != range.end(); ++i) {
          d2[i] = std::min(d2[i], SquaredDistance(scaled.row(i).data(), centre, d));
        }
      });
    });
    if (static_cast<int64_t>(seeds.size()) == count) break;
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += d2[i];
    if (!(total > 0.0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inducing_count: the points have only ", seeds.size(),
          " distinct locations, fewer than the ", count, " inducing points asked for"));
    }
    const double u = rng.UniformDouble() * total;
    // The first row whose running sum exceeds u; rounding can leave u at the total, and then
    // the last row with positive weight is taken.
    int64_t pick = -1;
    double running = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      if (d2[i] <= 0.0) continue;
      running += d2[i];
      pick = i;
      if (running > u) break;
    }
    seeds.push_back(pick);
  }
  return seeds;
}

RowMatrix LloydIterations(const RowMatrix& scaled, RowMatrix centres, int iterations,
                          tbb::task_arena* arena) {
  const int64_t n = scaled.rows();
  const int64_t d = scaled.cols();
  const int64_t m = centres.rows();
  std::vector<int64_t> owner(n);
  for (int iteration = 0; iteration < iterations; ++iteration) {
    RunIn(arena, [&] {
      tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kGrain), [&](const auto& range) {
        for (int64_t i = range.begin(); i != range.end(); ++i) {
          int64_t best = 0;
          double best_r2 = std::numeric_limits<double>::infinity();
          for (int64_t c = 0; c < m; ++c) {
            const double r2 = SquaredDistance(scaled.row(i).data(), centres.row(c).data(), d);
            if (r2 < best_r2) {
              best_r2 = r2;
              best = c;
            }
          }
          owner[i] = best;
        }
      });
    });
    RowMatrix sums = RowMatrix::Zero(m, d);
    std::vector<int64_t> sizes(m, 0);
    for (int64_t i = 0; i < n; ++i) {
      sums.row(owner[i]) += scaled.row(i);
      ++sizes[owner[i]];
    }
    for (int64_t c = 0; c < m; ++c) {
      if (sizes[c] > 0) centres.row(c) = sums.row(c) / static_cast<double>(sizes[c]);
    }
  }
  return centres;
}

}  // namespace rcknn::core
