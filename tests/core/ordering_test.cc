// Orderings: permutation checks, the seeded random ordering, the range search they are built on,
// and both maximin orderings against an independent brute-force implementation (every step
// recomputes every candidate's distance to the chosen set; ties by id).
#include "core/ordering.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/brute_force_knn.h"
#include "core/cover_tree_range_search.h"
#include "core/euclidean_space.h"
#include "core/knn_index.h"
#include "core/knn_search.h"
#include "core/random.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/index_cases.h"
#include "tests/testing/random_points.h"
#include "tests/testing/shared_data.h"

namespace rcknn {
namespace {

using core::CoverTree;
using core::KnnIndex;
using core::MetricSpace;
using core::OrderingMethod;
using core::OrderingRequest;
using core::RowMatrix;
using ::testing::HasSubstr;

// d(c, j) exactly as the ordering's contract says it is evaluated.
double Distance(const MetricSpace& space, int64_t c, int64_t j) {
  const core::PointRows rows = space.Gather(absl::MakeConstSpan(&c, 1));
  double d;
  space.RowToIds(rows, 0, absl::MakeConstSpan(&j, 1), &d);
  return d;
}

// The maximin ordering by its definition, O(n^2) distance evaluations.
std::vector<int64_t> BruteForceMaximin(const MetricSpace& space, int64_t first) {
  const int64_t n = space.size();
  std::vector<double> nearest(n, std::numeric_limits<double>::infinity());
  std::vector<bool> chosen(n, false);
  std::vector<int64_t> order;
  for (int64_t r = 0; r < n; ++r) {
    int64_t pick = first;
    if (r > 0) {
      pick = -1;
      for (int64_t j = 0; j < n; ++j) {
        if (chosen[j]) continue;
        if (pick < 0 || nearest[j] > nearest[pick]) pick = j;  // ascending j: ties keep the smaller
      }
    }
    chosen[pick] = true;
    order.push_back(pick);
    for (int64_t j = 0; j < n; ++j) {
      if (!chosen[j]) nearest[j] = std::min(nearest[j], Distance(space, pick, j));
    }
  }
  return order;
}

// The maximin property of `order` at every step: the point taken at rank r has the largest
// distance to ranks < r among all later points, and no later point with an equal distance has a
// smaller id. Returns "" or the first violation.
std::string CheckMaximinProperty(const MetricSpace& space, const std::vector<int64_t>& order) {
  const int64_t n = space.size();
  std::vector<double> nearest(n, std::numeric_limits<double>::infinity());
  for (int64_t r = 0; r + 1 < n; ++r) {
    for (int64_t s = r + 1; s < n; ++s) {
      nearest[order[s]] = std::min(nearest[order[s]], Distance(space, order[r], order[s]));
    }
    const int64_t taken = order[r + 1];
    for (int64_t s = r + 2; s < n; ++s) {
      const int64_t other = order[s];
      if (nearest[other] > nearest[taken] ||
          (nearest[other] == nearest[taken] && other < taken)) {
        return "rank " + std::to_string(r + 1) + ": took id " + std::to_string(taken) +
               " at distance " + std::to_string(nearest[taken]) + " but id " +
               std::to_string(other) + " is at " + std::to_string(nearest[other]);
      }
    }
  }
  return "";
}

TEST(RanksTest, InvertsAPermutation) {
  const std::vector<int64_t> permutation = {2, 0, 3, 1};
  absl::StatusOr<std::vector<int64_t>> rank = core::Ranks(permutation, 4);
  ASSERT_TRUE(rank.ok()) << rank.status();
  EXPECT_EQ(*rank, (std::vector<int64_t>{1, 3, 0, 2}));
}

TEST(RanksTest, RejectsWhatIsNotAPermutation) {
  const std::vector<std::vector<int64_t>> bad = {
      {0, 1, 2},        // too short
      {0, 1, 2, 3, 0},  // too long
      {0, 1, 1, 3},     // duplicate (2 missing)
      {0, 1, 2, 4},     // out of range
      {0, -1, 2, 3},    // negative
  };
  for (const auto& permutation : bad) {
    const absl::Status status = core::Ranks(permutation, 4).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("permutation"));
  }
}

// Fisher-Yates as RandomPermutation's contract states it, written out independently.
std::vector<int64_t> ReferenceShuffle(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  core::SplitMix64 rng(seed);
  for (int64_t t = n - 1; t >= 1; --t) {
    const uint64_t j = rng.UniformBelow(static_cast<uint64_t>(t + 1));
    const int64_t tmp = p[t];
    p[t] = p[j];
    p[j] = tmp;
  }
  return p;
}

TEST(RandomPermutationTest, IsTheSeededShuffleAndReproducible) {
  for (uint64_t seed : {0ULL, 1ULL, 12345ULL}) {
    const std::vector<int64_t> p = core::RandomPermutation(1000, seed);
    EXPECT_TRUE(core::Ranks(p, 1000).ok());
    EXPECT_EQ(p, ReferenceShuffle(1000, seed));
    EXPECT_EQ(p, core::RandomPermutation(1000, seed));
  }
  EXPECT_NE(core::RandomPermutation(1000, 1), core::RandomPermutation(1000, 2));
  EXPECT_EQ(core::RandomPermutation(1, 7), std::vector<int64_t>{0});
}

TEST(RandomPermutationTest, AllPermutationsOfThreeAboutEquallyLikely) {
  std::vector<int> counts(6, 0);
  const int trials = 6000;
  for (int seed = 0; seed < trials; ++seed) {
    const std::vector<int64_t> p = core::RandomPermutation(3, seed);
    counts[p[0] * 2 + (p[1] > p[2] ? 1 : 0)]++;
  }
  for (int c : counts) EXPECT_NEAR(c, trials / 6, 5 * std::sqrt(trials / 6.0)) << c;
}

TEST(NearestToCentroidTest, TiesGoToTheSmallerRow) {
  RowMatrix points(4, 2);
  points << 3, 0, -1, 0, 1, 0, -3, 0;
  EXPECT_EQ(core::NearestToCentroid(points), 1);
  RowMatrix random = testing::NormalPoints(200, 3, 5);
  const Eigen::RowVectorXd mean = random.colwise().mean();
  int64_t best = 0;
  for (int64_t i = 1; i < 200; ++i) {
    if ((random.row(i) - mean).squaredNorm() < (random.row(best) - mean).squaredNorm()) best = i;
  }
  EXPECT_EQ(core::NearestToCentroid(random), best);
}

std::unique_ptr<KnnIndex> BuildCase(const testing::IndexCase& c) {
  absl::StatusOr<core::IndexData> data = testing::CaseData(c);
  EXPECT_TRUE(data.ok()) << data.status();
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(testing::CaseSpec(c), std::move(*data));
  EXPECT_TRUE(index.ok()) << index.status();
  return std::move(*index);
}

std::vector<testing::IndexCase> Cases() {
  std::vector<testing::IndexCase> cases;
  cases.push_back(testing::ResidualCase("rbf", core::KernelType::kRbf, 0.7, 2, 300, 16));
  cases.push_back(testing::ResidualCase("matern32_3d", core::KernelType::kMatern32, 1.0, 3, 250, 24));
  cases.push_back(testing::ResidualCase("matern12", core::KernelType::kMatern12, 0.3, 2, 250, 8));
  testing::IndexCase dup = testing::ResidualCase("dup", core::KernelType::kRbf, 0.5, 2, 250, 16);
  dup.duplicates = 0.1;
  cases.push_back(dup);
  testing::IndexCase ard = testing::ResidualCase("ard", core::KernelType::kMatern52, 1.0, 2, 250, 16);
  ard.lengthscales = {0.4, 2.0};
  cases.push_back(ard);
  testing::IndexCase grid = testing::EuclideanCase("grid", 2, 300);
  grid.grid = 0.5;  // many exact ties and coincident points
  cases.push_back(grid);
  cases.push_back(testing::EuclideanCase("euclid3", 3, 300));
  testing::IndexCase supplied = testing::ResidualCase("supplied", core::KernelType::kRbf, 0.8, 2, 200, 12);
  supplied.factors_supplied = true;
  cases.push_back(supplied);
  return cases;
}

TEST(CoverTreeRangeSearchTest, FindsEveryPointWithinTheRadius) {
  for (const testing::IndexCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const std::unique_ptr<KnnIndex> index = BuildCase(c);
    const MetricSpace& space = index->space();
    core::RangeSearchScratch scratch;
    for (int64_t q : {int64_t{0}, space.size() / 2, space.size() - 1}) {
      for (double radius : {0.0, 0.1, 0.4, 0.8, 2.0}) {
        const core::PointRows rows = space.Gather(absl::MakeConstSpan(&q, 1));
        std::vector<int64_t> found;
        core::CoverTreeRangeSearch(
            index->tree(), space, rows, 0, [&](int64_t) { return radius; },
            [&](int64_t id, double d) {
              EXPECT_EQ(d, Distance(space, q, id));
              if (d <= radius) found.push_back(id);
            },
            scratch);
        std::sort(found.begin(), found.end());
        std::vector<int64_t> expected;
        for (int64_t j = 0; j < space.size(); ++j) {
          if (Distance(space, q, j) <= radius) expected.push_back(j);
        }
        EXPECT_EQ(found, expected) << "query " << q << " radius " << radius;
      }
    }
  }
}

TEST(MaximinOrderingTest, ResidualMaximinEqualsBruteForceAndHasTheProperty) {
  for (const testing::IndexCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const std::unique_ptr<KnnIndex> index = BuildCase(c);
    OrderingRequest request;
    request.method = c.metric == core::Metric::kEuclidean ? OrderingMethod::kMaximinEuclidean
                                                          : OrderingMethod::kMaximinResidual;
    absl::StatusOr<std::vector<int64_t>> order = core::ComputeOrdering(*index, request);
    ASSERT_TRUE(order.ok()) << order.status();
    ASSERT_TRUE(core::Ranks(*order, index->size()).ok());
    absl::StatusOr<RowMatrix> scaled = core::ScaledCoordinates(index->space());
    ASSERT_TRUE(scaled.ok());
    EXPECT_EQ((*order)[0], core::NearestToCentroid(*scaled));
    EXPECT_EQ(*order, BruteForceMaximin(index->space(), (*order)[0]));
    EXPECT_EQ(CheckMaximinProperty(index->space(), *order), "");
  }
}

TEST(MaximinOrderingTest, EuclideanMaximinIsInLengthscaleScaledCoordinates) {
  for (const testing::IndexCase& c : Cases()) {
    if (c.metric != core::Metric::kResidualCorrelation) continue;
    SCOPED_TRACE(c.name);
    const std::unique_ptr<KnnIndex> index = BuildCase(c);
    // Scaled by hand, as Kernel::Scale does (times the inverse lengthscale).
    const RowMatrix points = testing::CasePoints(c);
    RowMatrix scaled(points.rows(), points.cols());
    for (int64_t i = 0; i < points.rows(); ++i) {
      for (int64_t t = 0; t < points.cols(); ++t) {
        const double l = c.lengthscales.size() == 1 ? c.lengthscales[0] : c.lengthscales[t];
        scaled(i, t) = points(i, t) * (1.0 / l);
      }
    }
    absl::StatusOr<RowMatrix> from_space = core::ScaledCoordinates(index->space());
    ASSERT_TRUE(from_space.ok());
    ASSERT_EQ(*from_space, scaled);
    absl::StatusOr<std::unique_ptr<core::EuclideanSpace>> space =
        core::EuclideanSpace::Create(scaled);
    ASSERT_TRUE(space.ok());
    OrderingRequest request;
    request.method = OrderingMethod::kMaximinEuclidean;
    absl::StatusOr<std::vector<int64_t>> order = core::ComputeOrdering(*index, request);
    ASSERT_TRUE(order.ok()) << order.status();
    EXPECT_EQ(*order, BruteForceMaximin(**space, core::NearestToCentroid(scaled)));
    EXPECT_EQ(CheckMaximinProperty(**space, *order), "");
  }
}

TEST(MaximinOrderingTest, IndependentOfTheTreeBase) {
  testing::IndexCase c = testing::ResidualCase("rbf", core::KernelType::kRbf, 0.6, 2, 300, 16);
  std::vector<int64_t> first;
  for (double base : {1.3, 1.5, 2.0}) {
    c.base = base;
    const std::unique_ptr<KnnIndex> index = BuildCase(c);
    OrderingRequest request;
    request.method = OrderingMethod::kMaximinResidual;
    absl::StatusOr<std::vector<int64_t>> order = core::ComputeOrdering(*index, request);
    ASSERT_TRUE(order.ok());
    if (first.empty()) first = *order;
    EXPECT_EQ(*order, first) << "base " << base;
  }
}

TEST(ComputeOrderingTest, SuppliedAndRandomAndErrors) {
  const std::unique_ptr<KnnIndex> residual =
      BuildCase(testing::ResidualCase("rbf", core::KernelType::kRbf, 0.7, 2, 50, 8));
  const std::unique_ptr<KnnIndex> euclidean = BuildCase(testing::EuclideanCase("e", 2, 50));
  OrderingRequest request;
  request.method = OrderingMethod::kSupplied;
  request.permutation = core::RandomPermutation(50, 3);
  absl::StatusOr<std::vector<int64_t>> order = core::ComputeOrdering(*residual, request);
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(*order, request.permutation);
  request.permutation[7] = request.permutation[8];
  EXPECT_EQ(core::ComputeOrdering(*residual, request).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.permutation.pop_back();
  EXPECT_EQ(core::ComputeOrdering(*residual, request).status().code(),
            absl::StatusCode::kInvalidArgument);

  request.method = OrderingMethod::kRandom;
  EXPECT_EQ(core::ComputeOrdering(*residual, request).status().code(),
            absl::StatusCode::kInvalidArgument);  // a permutation with a computed method
  request.permutation.clear();
  request.seed = 9;
  order = core::ComputeOrdering(*residual, request);
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(*order, core::RandomPermutation(50, 9));

  request.method = OrderingMethod::kMaximinResidual;
  const absl::Status status = core::ComputeOrdering(*euclidean, request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("method"));
}

TEST(IndexOrderingTest, RanksAndSubtreeMinimumRanks) {
  const std::unique_ptr<KnnIndex> index =
      BuildCase(testing::ResidualCase("rbf", core::KernelType::kRbf, 0.7, 2, 200, 8));
  const CoverTree& tree = index->tree();
  const std::vector<int64_t> permutation = core::RandomPermutation(200, 5);
  absl::StatusOr<core::IndexOrdering> ordering = core::IndexOrdering::Create(tree, permutation);
  ASSERT_TRUE(ordering.ok()) << ordering.status();
  EXPECT_EQ(ordering->permutation(), permutation);
  for (int64_t r = 0; r < 200; ++r) EXPECT_EQ(ordering->rank()[permutation[r]], r);
  // The minimum over each node's subtree, found by walking up from every node.
  std::vector<int64_t> expected(200, std::numeric_limits<int64_t>::max());
  for (int64_t node = 0; node < 200; ++node) {
    const int64_t rank = ordering->rank()[tree.point(node)];
    for (int64_t a = node; a >= 0; a = tree.parent(a)) expected[a] = std::min(expected[a], rank);
  }
  EXPECT_EQ(ordering->subtree_min_rank(), expected);
  EXPECT_EQ(core::IndexOrdering::Create(tree, {0, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComputeOrderingTest, HonoursCancellation) {
  const std::unique_ptr<KnnIndex> index =
      BuildCase(testing::ResidualCase("rbf", core::KernelType::kRbf, 0.7, 2, 100, 8));
  core::Cancellation cancellation;
  cancellation.Cancel();
  OrderingRequest request;
  request.method = OrderingMethod::kMaximinResidual;
  EXPECT_EQ(core::ComputeOrdering(*index, request, nullptr, &cancellation).status().code(),
            absl::StatusCode::kCancelled);
}

// The k nearest points earlier than `query` in `rank`, by (distance, id), from every
// distance evaluated one by one: written without the search library's filters.
void NaivePredecessors(const MetricSpace& space, const std::vector<int64_t>& rank, int64_t query,
                       int64_t k, int64_t* ids, double* dists) {
  std::vector<std::pair<double, int64_t>> all;
  for (int64_t j = 0; j < space.size(); ++j) {
    if (rank[j] < rank[query]) all.emplace_back(Distance(space, query, j), j);
  }
  std::sort(all.begin(), all.end());
  for (int64_t t = 0; t < k; ++t) {
    const bool have = t < static_cast<int64_t>(all.size());
    ids[t] = have ? all[t].second : -1;
    dists[t] = have ? all[t].first : std::numeric_limits<double>::infinity();
  }
}

TEST(PredecessorUnderOrderingTest, EveryPathEqualsTheBruteForceUnderTheOrdering) {
  tbb::task_arena arena(2);
  for (const testing::IndexCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const std::unique_ptr<KnnIndex> index = BuildCase(c);
    const MetricSpace& space = index->space();
    const int64_t n = space.size();
    std::vector<int64_t> reversed(n);
    for (int64_t i = 0; i < n; ++i) reversed[i] = n - 1 - i;
    OrderingRequest maximin;
    maximin.method = c.metric == core::Metric::kEuclidean ? OrderingMethod::kMaximinEuclidean
                                                          : OrderingMethod::kMaximinResidual;
    const std::vector<std::pair<std::string, std::vector<int64_t>>> orderings = {
        {"random", core::RandomPermutation(n, 11)},
        {"reversed", reversed},
        {"maximin", *core::ComputeOrdering(*index, maximin)}};
    std::vector<int64_t> query_ids(n);
    for (int64_t i = 0; i < n; ++i) query_ids[i] = i;
    core::QueryBatch batch;
    batch.ids = query_ids;
    const core::PointRows rows = space.Gather(query_ids);
    for (const auto& [name, permutation] : orderings) {
      absl::StatusOr<core::IndexOrdering> ordering =
          core::IndexOrdering::Create(index->tree(), permutation);
      ASSERT_TRUE(ordering.ok());
      for (int64_t k : {int64_t{1}, int64_t{10}}) {
        core::KnnOptions options;
        options.k = k;
        options.predecessor_mode = true;
        options.rank = ordering->rank();
        options.subtree_min_rank = ordering->subtree_min_rank();
        std::vector<int64_t> ref_ids(n * k);
        std::vector<double> ref_dists(n * k);
        for (int64_t q = 0; q < n; ++q) {
          NaivePredecessors(space, ordering->rank(), q, k, &ref_ids[q * k], &ref_dists[q * k]);
        }
        // The index's search, the walk that never falls back, the scan, and the brute force.
        for (int path = 0; path < 4; ++path) {
          SCOPED_TRACE(::testing::Message() << name << " k=" << k << " path=" << path);
          std::vector<int64_t> ids(n * k);
          std::vector<double> dists(n * k);
          core::TreeSearchOptions search;
          search.scan_fraction = path == 1 ? 1.0 : 0.0;
          absl::Status status;
          if (path == 0) {
            status = index->Search(batch, options, &arena, nullptr, ids.data(), dists.data());
          } else if (path <= 2) {
            status = core::TreeKnnSearch({&index->tree(), &space, search, &arena, nullptr},
                                         batch, options,
                                         {ids.data(), dists.data(), nullptr, {}});
          } else {
            status = core::BruteForceKnn(space, batch, options, &arena, nullptr, ids.data(),
                                         dists.data());
          }
          ASSERT_TRUE(status.ok()) << status;
          int failures = 0;
          for (int64_t q = 0; q < n && failures < 3; ++q) {
            const std::string diff =
                testing::CompareRow(space, rows, q, q, options, &ids[q * k], &dists[q * k],
                                    &ref_dists[q * k]);
            if (!diff.empty()) {
              ++failures;
              ADD_FAILURE() << "query " << q << " (rank " << ordering->rank()[q] << "): " << diff;
            }
          }
        }
      }
    }
  }
}

TEST(PredecessorUnderOrderingTest, IdentityOrderingIsPlainPredecessorMode) {
  const std::unique_ptr<KnnIndex> index =
      BuildCase(testing::ResidualCase("rbf", core::KernelType::kRbf, 0.7, 2, 300, 16));
  const int64_t n = index->size();
  std::vector<int64_t> identity(n);
  for (int64_t i = 0; i < n; ++i) identity[i] = i;
  absl::StatusOr<core::IndexOrdering> ordering = core::IndexOrdering::Create(index->tree(), identity);
  ASSERT_TRUE(ordering.ok());
  core::QueryBatch batch;
  batch.ids = identity;
  core::KnnOptions plain;
  plain.k = 7;
  plain.predecessor_mode = true;
  core::KnnOptions ranked = plain;
  ranked.rank = ordering->rank();
  ranked.subtree_min_rank = ordering->subtree_min_rank();
  std::vector<int64_t> ids_a(n * 7), ids_b(n * 7);
  std::vector<double> d_a(n * 7), d_b(n * 7);
  ASSERT_TRUE(index->Search(batch, plain, nullptr, nullptr, ids_a.data(), d_a.data()).ok());
  ASSERT_TRUE(index->Search(batch, ranked, nullptr, nullptr, ids_b.data(), d_b.data()).ok());
  EXPECT_EQ(ids_a, ids_b);
  EXPECT_EQ(d_a, d_b);
}

TEST(PredecessorUnderOrderingTest, RanksAreValidated) {
  const std::unique_ptr<KnnIndex> index =
      BuildCase(testing::ResidualCase("rbf", core::KernelType::kRbf, 0.7, 2, 50, 8));
  absl::StatusOr<core::IndexOrdering> ordering =
      core::IndexOrdering::Create(index->tree(), core::RandomPermutation(50, 1));
  ASSERT_TRUE(ordering.ok());
  const std::vector<int64_t> query = {3};
  core::QueryBatch batch;
  batch.ids = query;
  core::KnnOptions options;
  options.k = 3;
  options.rank = ordering->rank();
  options.subtree_min_rank = ordering->subtree_min_rank();
  std::vector<int64_t> ids(3);
  std::vector<double> dists(3);
  EXPECT_EQ(index->Search(batch, options, nullptr, nullptr, ids.data(), dists.data()).code(),
            absl::StatusCode::kInvalidArgument);  // without predecessor_mode
  options.predecessor_mode = true;
  options.subtree_min_rank = options.subtree_min_rank.subspan(1);
  EXPECT_EQ(index->Search(batch, options, nullptr, nullptr, ids.data(), dists.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rcknn
