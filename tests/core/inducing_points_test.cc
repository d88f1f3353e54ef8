// k-means++ seeding and Lloyd steps for the inducing points: the sampling rule against an
// independent implementation, its probabilities on a tiny case, reproducibility, and the
// residual space built on them.
#include "core/inducing_points.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/residual_correlation.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using core::RowMatrix;
using ::testing::HasSubstr;

// k-means++ as the header states it, recomputing every D(x)^2 from all seeds at each step.
std::vector<int64_t> ReferenceSeeds(const RowMatrix& x, int64_t count, uint64_t seed) {
  const int64_t n = x.rows();
  core::SplitMix64 rng(seed);
  std::vector<int64_t> seeds = {static_cast<int64_t>(rng.UniformBelow(n))};
  while (static_cast<int64_t>(seeds.size()) < count) {
    std::vector<double> weight(n);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      double best = std::numeric_limits<double>::infinity();
      for (int64_t s : seeds) {
        double r2 = 0.0;
        for (int64_t t = 0; t < x.cols(); ++t) r2 += (x(i, t) - x(s, t)) * (x(i, t) - x(s, t));
        best = std::min(best, r2);
      }
      weight[i] = best;
      total += best;
    }
    const double u = rng.UniformDouble() * total;
    double running = 0.0;
    int64_t pick = -1;
    for (int64_t i = 0; i < n && (pick < 0 || running <= u); ++i) {
      if (weight[i] == 0.0) continue;
      running += weight[i];
      pick = i;
    }
    seeds.push_back(pick);
  }
  return seeds;
}

TEST(KMeansPlusPlusTest, MatchesTheReferenceAndIsReproducible) {
  tbb::task_arena arena(2);
  for (uint64_t seed : {0ULL, 3ULL, 77ULL}) {
    RowMatrix x = testing::NormalPoints(400, 3, seed + 10);
    testing::AddDuplicates(x, 0.2, seed + 11);
    for (int64_t count : {1, 2, 17, 60}) {
      absl::StatusOr<std::vector<int64_t>> seeds = core::KMeansPlusPlusSeeds(x, count, seed, &arena);
      ASSERT_TRUE(seeds.ok()) << seeds.status();
      EXPECT_EQ(*seeds, ReferenceSeeds(x, count, seed)) << "seed " << seed << " count " << count;
      EXPECT_EQ(*seeds, *core::KMeansPlusPlusSeeds(x, count, seed));  // no arena, same bits
      // Distinct locations.
      for (size_t a = 0; a < seeds->size(); ++a) {
        for (size_t b = 0; b < a; ++b) EXPECT_NE(x.row((*seeds)[a]), x.row((*seeds)[b]));
      }
    }
  }
}

TEST(KMeansPlusPlusTest, DrawsProportionallyToSquaredDistance) {
  // Points 0, 1, 3 on a line. Given the first seed, the second is drawn with probability
  // proportional to the squared distance to it.
  RowMatrix x(3, 1);
  x << 0.0, 1.0, 3.0;
  const double expected[3][3] = {{0, 1.0 / 10, 9.0 / 10}, {1.0 / 5, 0, 4.0 / 5},
                                 {9.0 / 13, 4.0 / 13, 0}};
  int counts[3][3] = {};
  int firsts[3] = {};
  const int trials = 30000;
  for (int seed = 0; seed < trials; ++seed) {
    const std::vector<int64_t> seeds = *core::KMeansPlusPlusSeeds(x, 2, seed);
    ++firsts[seeds[0]];
    ++counts[seeds[0]][seeds[1]];
  }
  for (int a = 0; a < 3; ++a) {
    EXPECT_NEAR(firsts[a], trials / 3.0, 5 * std::sqrt(trials / 3.0));
    for (int b = 0; b < 3; ++b) {
      const double mean = expected[a][b] * firsts[a];
      EXPECT_NEAR(counts[a][b], mean, 5 * std::sqrt(mean + 1)) << a << " -> " << b;
    }
  }
}

TEST(KMeansPlusPlusTest, Errors) {
  RowMatrix x(4, 1);
  x << 1.0, 1.0, 2.0, 2.0;
  for (int64_t count : {0, 3, 5}) {
    const absl::Status status = core::KMeansPlusPlusSeeds(x, count, 0).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << count;
    EXPECT_THAT(std::string(status.message()), HasSubstr("inducing_count"));
  }
  EXPECT_TRUE(core::KMeansPlusPlusSeeds(x, 2, 0).ok());
}

TEST(LloydIterationsTest, MovesCentresToClusterMeans) {
  RowMatrix x(5, 1);
  x << 0.0, 1.0, 2.0, 10.0, 12.0;
  RowMatrix centres(3, 1);
  centres << 0.0, 10.0, 100.0;  // the last one owns nothing and stays
  RowMatrix one = core::LloydIterations(x, centres, 1);
  EXPECT_EQ(one(0, 0), 1.0);
  EXPECT_EQ(one(1, 0), 11.0);
  EXPECT_EQ(one(2, 0), 100.0);
  // Equidistant row (5 between 0 and 10) goes to the smaller centre.
  RowMatrix y(3, 1);
  y << 0.0, 5.0, 10.0;
  RowMatrix two(2, 1);
  two << 0.0, 10.0;
  RowMatrix moved = core::LloydIterations(y, two, 1);
  EXPECT_EQ(moved(0, 0), 2.5);
  EXPECT_EQ(moved(1, 0), 10.0);
  EXPECT_EQ(core::LloydIterations(x, centres, 0), centres);
}

core::ResidualOptions Options(core::InducingMethod method, int lloyd) {
  core::ResidualOptions options;
  options.kernel.type = core::KernelType::kRbf;
  options.kernel.lengthscales = {0.5, 2.0};
  options.inducing_count = 24;
  options.inducing_seed = 4;
  options.inducing_method = method;
  options.lloyd_iterations = lloyd;
  return options;
}

TEST(ResidualSpaceInducingTest, KMeansPlusPlusOnScaledCoordinates) {
  const RowMatrix points = testing::NormalPoints(600, 2, 21);
  auto space = core::ResidualSpace::Create(points, Options(core::InducingMethod::kKMeansPlusPlus, 0));
  ASSERT_TRUE(space.ok()) << space.status();
  RowMatrix scaled = points;
  scaled.col(0) *= 1.0 / 0.5;
  scaled.col(1) *= 1.0 / 2.0;
  std::vector<int64_t> expected = ReferenceSeeds(scaled, 24, 4);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ((*space)->inducing_ids(), expected);
  // Reproducible bit for bit, with and without an arena.
  tbb::task_arena arena(2);
  auto again =
      core::ResidualSpace::Create(points, Options(core::InducingMethod::kKMeansPlusPlus, 0), &arena);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Fingerprint(), (*space)->Fingerprint());

  auto lloyd = core::ResidualSpace::Create(points, Options(core::InducingMethod::kKMeansPlusPlus, 3));
  ASSERT_TRUE(lloyd.ok()) << lloyd.status();
  EXPECT_TRUE((*lloyd)->inducing_ids().empty());
  EXPECT_NE((*lloyd)->Fingerprint(), (*space)->Fingerprint());
  auto lloyd_again =
      core::ResidualSpace::Create(points, Options(core::InducingMethod::kKMeansPlusPlus, 3), &arena);
  EXPECT_EQ((*lloyd_again)->Fingerprint(), (*lloyd)->Fingerprint());
}

TEST(ResidualSpaceInducingTest, Errors) {
  const RowMatrix points = testing::NormalPoints(50, 2, 1);
  core::ResidualOptions options = Options(core::InducingMethod::kKMeansPlusPlus, 0);
  options.inducing_points = RowMatrix(points.topRows(5));
  absl::Status status = core::ResidualSpace::Create(points, options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("inducing_method"));
  options = Options(core::InducingMethod::kKMeansPlusPlus, -1);
  status = core::ResidualSpace::Create(points, options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("lloyd_iterations"));
  RowMatrix few(30, 2);
  for (int64_t i = 0; i < 30; ++i) few.row(i) = points.row(i % 10);
  status = core::ResidualSpace::Create(few, Options(core::InducingMethod::kKMeansPlusPlus, 0)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("distinct"));
}

}  // namespace
}  // namespace rcknn
