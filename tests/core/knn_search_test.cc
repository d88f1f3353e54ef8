// Exact k-NN on many seeded random cases: TreeKnnSearch (through KnnIndex::Search and directly,
// as a pure walk, with the default fall-back and as a pure scan) and BruteForceKnn against a
// naive oracle, compared by the rule of docs/design.md section 3; determinism across thread counts;
// traversal counters; errors, cancellation and deadlines.
#include "core/knn_search.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/brute_force_knn.h"
#include "core/euclidean_space.h"
#include "core/knn_index.h"
#include "core/random.h"
#include "core/residual_correlation.h"
#include "core/search_planner.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/testing/index_cases.h"
#include "tests/testing/random_points.h"
#include "tests/testing/shared_data.h"

namespace rcknn {
namespace {

using core::IndexData;
using core::IndexSpec;
using core::KernelType;
using core::KnnIndex;
using core::KnnOptions;
using core::Metric;
using core::MetricSpace;
using core::PointRows;
using core::QueryBatch;
using core::RowMatrix;
using core::TraversalStats;
using core::TreeSearchOptions;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTol = 1e-6;  // docs/design.md section 3

// ---------------------------------------------------------------------------------------------
// The oracle.

// Distances from every query row to every stored point, each pair through RowToIds alone.
RowMatrix AllDistances(const MetricSpace& space, const PointRows& rows) {
  const int64_t n = space.size();
  RowMatrix d(rows.size(), n);
  for (int64_t q = 0; q < rows.size(); ++q) {
    for (int64_t j = 0; j < n; ++j) space.RowToIds(rows, q, absl::MakeConstSpan(&j, 1), &d(q, j));
  }
  return d;
}

// The k nearest by (distance, id) with the rules of docs/design.md section 3 applied here by hand:
// a query by id excludes itself unless include_self; predecessor mode keeps only ids below the
// query's; missing results are -1 / +inf.
// An out-of-sample query with an id bound keeps only ids below it.
void NaiveKnn(const RowMatrix& dist, int64_t q, int64_t query_id, const KnnOptions& options,
              int64_t* ids, double* dists,
              int64_t id_bound = std::numeric_limits<int64_t>::max()) {
  std::vector<std::pair<double, int64_t>> candidates;
  for (int64_t j = 0; j < dist.cols(); ++j) {
    if (query_id < 0 && j >= id_bound) continue;
    if (query_id >= 0) {
      if (options.predecessor_mode && j >= query_id) continue;
      if (!options.predecessor_mode && !options.include_self && j == query_id) continue;
    }
    candidates.emplace_back(dist(q, j), j);
  }
  std::sort(candidates.begin(), candidates.end());
  for (int64_t r = 0; r < options.k; ++r) {
    const bool have = r < static_cast<int64_t>(candidates.size());
    ids[r] = have ? candidates[r].second : -1;
    dists[r] = have ? candidates[r].first : kInf;
  }
}

struct Answer {
  std::vector<int64_t> ids;
  std::vector<double> dists;
  TraversalStats stats;
  std::vector<int64_t> per_query;
};

Answer Oracle(const RowMatrix& dist, absl::Span<const int64_t> query_ids,
              const KnnOptions& options, absl::Span<const int64_t> id_bounds = {}) {
  const int64_t nq = dist.rows();
  Answer a;
  a.ids.resize(nq * options.k);
  a.dists.resize(nq * options.k);
  for (int64_t q = 0; q < nq; ++q) {
    NaiveKnn(dist, q, query_ids.empty() ? -1 : query_ids[q], options, &a.ids[q * options.k],
             &a.dists[q * options.k],
             id_bounds.empty() ? std::numeric_limits<int64_t>::max() : id_bounds[q]);
  }
  return a;
}

// Checks every row of `got` against the oracle with testing::CompareRow (the rule of
// docs/design.md section 3), and that each row is ascending by (distance, id).
void ExpectMatchesOracle(const std::string& path, const MetricSpace& space, const PointRows& rows,
                         absl::Span<const int64_t> query_ids, const KnnOptions& options,
                         const Answer& got, const Answer& oracle) {
  const int64_t k = options.k;
  int failures = 0;
  for (int64_t q = 0; q < rows.size(); ++q) {
    const int64_t query_id = query_ids.empty() ? -1 : query_ids[q];
    const int64_t* ids = &got.ids[q * k];
    const double* dists = &got.dists[q * k];
    const double* ref = &oracle.dists[q * k];
    std::string diff =
        testing::CompareRow(space, rows, q, query_id, options, ids, dists, ref, kTol);
    for (int64_t r = 1; diff.empty() && r < k; ++r) {
      const auto prev = std::make_pair(dists[r - 1], ids[r - 1]);
      const auto next = std::make_pair(dists[r], ids[r]);
      if (ids[r] >= 0 && !(prev < next)) {
        diff = absl::StrCat("ranks ", r - 1, " and ", r, " not ascending by (distance, id)");
      }
    }
    if (!diff.empty() && ++failures <= 3) {
      ADD_FAILURE() << path << " k=" << k << " include_self=" << options.include_self
                    << " predecessor=" << options.predecessor_mode << " query " << q << " (id "
                    << query_id << "): " << diff;
    }
  }
  EXPECT_EQ(failures, 0) << path << ": rows that differ from the oracle";
}

// ---------------------------------------------------------------------------------------------
// Cases.

using SearchCase = testing::IndexCase;
using testing::CasePoints;
using testing::CaseSpec;

std::unique_ptr<KnnIndex> BuildIndex(const SearchCase& c, tbb::task_arena* arena) {
  absl::StatusOr<IndexData> data = testing::CaseData(c);
  EXPECT_TRUE(data.ok()) << data.status();
  if (!data.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(CaseSpec(c), *std::move(data), arena);
  EXPECT_TRUE(index.ok()) << index.status();
  return index.ok() ? *std::move(index) : nullptr;
}

std::vector<int64_t> QueryIds(int64_t n, uint64_t seed, int64_t count) {
  return testing::CaseQueryIds(n, seed, count);
}

RowMatrix QueryPoints(const RowMatrix& stored, double scale, uint64_t seed, int64_t count) {
  return testing::CaseQueryPoints(stored, scale, seed, count);
}

enum class Path {
  kIndexSearch,
  kBruteForce,
  kPureWalk,
  kProductWalk,
  kPureScan,
  kBlocks,
  kScanFractionOne
};

std::string PathName(Path path) {
  switch (path) {
    case Path::kIndexSearch:
      return "KnnIndex::Search";
    case Path::kBruteForce:
      return "BruteForceKnn";
    case Path::kPureWalk:
      return "TreeKnnSearch(walk)";
    case Path::kProductWalk:
      return "TreeKnnSearch(walk, root product)";
    case Path::kPureScan:
      return "TreeKnnSearch(scan)";
    case Path::kBlocks:
      return "TreeKnnSearch(blocks)";
    case Path::kScanFractionOne:
      return "TreeKnnSearch(scan_fraction=1)";
  }
  return "";
}

absl::Status RunSearch(const KnnIndex& index, Path path, const QueryBatch& batch,
                       const KnnOptions& options, tbb::task_arena* arena, Answer& out,
                       const core::Cancellation* cancellation = nullptr) {
  const int64_t nq = core::NumQueries(batch, index.dimension());
  const int64_t size = std::max<int64_t>(0, nq * options.k);
  out.ids.assign(size, -7);
  out.dists.assign(size, -7.0);
  out.per_query.assign(nq, -1);
  out.stats = TraversalStats();
  TreeSearchOptions search;
  switch (path) {
    case Path::kIndexSearch:
      return index.Search(batch, options, arena, cancellation, out.ids.data(), out.dists.data(),
                          &out.stats, absl::MakeSpan(out.per_query));
    case Path::kBruteForce:
      return core::BruteForceKnn(index.space(), batch, options, arena, cancellation, out.ids.data(),
                                 out.dists.data(), &out.stats);
    case Path::kPureWalk:
      search.strategy = core::SearchStrategy::kWalk;
      search.min_product_batch = std::numeric_limits<int64_t>::max();
      break;
    case Path::kProductWalk:
      // Every batch, the smallest too, with the products, below the root too.
      search.strategy = core::SearchStrategy::kWalk;
      search.min_product_batch = 1;
      search.product_depth = 2;
      break;
    case Path::kPureScan:
      search.strategy = core::SearchStrategy::kScan;
      break;
    case Path::kBlocks:
      // Small blocks and leaves, so that the small test batches and sets exercise every branch.
      search.strategy = core::SearchStrategy::kBlocks;
      search.block.block_size = 16;
      search.block.min_block_queries = 1;
      search.block.leaf_size = 8;
      break;
    case Path::kScanFractionOne:
      search.scan_fraction = 1.0;
      break;
  }
  return core::TreeKnnSearch({&index.tree(), &index.space(), search, arena, cancellation}, batch,
                             options,
                             {out.ids.data(), out.dists.data(), &out.stats,
                              absl::MakeSpan(out.per_query)});
}

constexpr Path kAllPaths[] = {Path::kIndexSearch, Path::kBruteForce, Path::kPureWalk,
                              Path::kProductWalk, Path::kPureScan, Path::kBlocks};

// Every path and option set for one case, against the oracle.
void CheckCase(const SearchCase& c, tbb::task_arena& arena) {
  SCOPED_TRACE(c.name);
  std::unique_ptr<KnnIndex> index = BuildIndex(c, &arena);
  ASSERT_NE(index, nullptr);
  const MetricSpace& space = index->space();
  ASSERT_EQ(index->size(), c.n);
  ASSERT_EQ(index->dimension(), c.d);
  // The tree stores distances measured by matrix products; CheckInvariants re-measures them
  // with RowToIds. Its default slack, the 1e-6 of docs/design.md, holds while residual variances stay
  // above about jitter * s2 (those of the inducing points themselves). Where every point is
  // below that (random case 16: all p ~ 3e-7, points 1e-3 apart in 1-D), distances near 0 are
  // rounding noise of size sqrt(e) (e the rounding of rho), and the check can only use that.
  double slack = kTol;
  if (const auto* residual = dynamic_cast<const core::ResidualSpace*>(&space)) {
    const double p_min = residual->p().minCoeff();
    if (p_min < 0.5e-6 * c.variance) {
      const double m = static_cast<double>(residual->v().cols());
      slack = 2.0 * std::sqrt((m + 16.0) * DBL_EPSILON * c.variance / p_min);
    }
  }
  const absl::Status tree_ok = index->tree().CheckInvariants(space, slack);
  EXPECT_TRUE(tree_ok.ok()) << tree_ok;

  // Queries by id.
  const std::vector<int64_t> ids = QueryIds(c.n, c.seed + 3, 40);
  const PointRows id_rows = space.Gather(ids);
  const RowMatrix id_dist = AllDistances(space, id_rows);
  QueryBatch by_id;
  by_id.ids = ids;
  for (int64_t k : c.ks) {
    for (int mode = 0; mode < 4; ++mode) {
      KnnOptions options;
      options.k = k;
      options.include_self = mode & 1;
      options.predecessor_mode = mode & 2;
      const Answer oracle = Oracle(id_dist, ids, options);
      for (Path path : kAllPaths) {
        Answer got;
        const absl::Status status = RunSearch(*index, path, by_id, options, &arena, got);
        ASSERT_TRUE(status.ok()) << PathName(path) << ": " << status;
        ExpectMatchesOracle(PathName(path), space, id_rows, ids, options, got, oracle);
      }
    }
  }

  // Out-of-sample points (not possible with supplied factors: no inducing points).
  if (c.factors_supplied) return;
  const RowMatrix points = QueryPoints(CasePoints(c), c.scale, c.seed + 4, 24);
  absl::StatusOr<PointRows> point_rows = space.Prepare(points.data(), points.rows());
  ASSERT_TRUE(point_rows.ok()) << point_rows.status();
  const RowMatrix point_dist = AllDistances(space, *point_rows);
  QueryBatch by_point;
  by_point.points = absl::MakeConstSpan(points.data(), points.size());
  for (int64_t k : c.ks) {
    KnnOptions options;
    options.k = k;
    const Answer oracle = Oracle(point_dist, {}, options);
    for (Path path : kAllPaths) {
      Answer got;
      const absl::Status status = RunSearch(*index, path, by_point, options, &arena, got);
      ASSERT_TRUE(status.ok()) << PathName(path) << ": " << status;
      ExpectMatchesOracle(PathName(path) + " (query points)", space, *point_rows, {}, options, got,
                          oracle);
    }
  }

  // The same points with a bound on candidate ids each (what a shard of a sharded index is
  // asked): none, everything, and bounds across the id range, the edges included.
  std::vector<int64_t> bounds(points.rows());
  core::SplitMix64 rng(c.seed + 5);
  for (int64_t q = 0; q < points.rows(); ++q) {
    const int64_t edges[] = {0, -3, 1, c.n, c.n + 5, c.n - 1, c.n / 2};
    bounds[q] = q < 7 ? edges[q] : static_cast<int64_t>(rng.UniformBelow(c.n + 1));
  }
  by_point.id_bounds = bounds;
  for (int64_t k : c.ks) {
    KnnOptions options;
    options.k = k;
    const Answer oracle = Oracle(point_dist, {}, options, bounds);
    for (Path path : kAllPaths) {
      Answer got;
      const absl::Status status = RunSearch(*index, path, by_point, options, &arena, got);
      ASSERT_TRUE(status.ok()) << PathName(path) << ": " << status;
      ExpectMatchesOracle(PathName(path) + " (query points, id bounds)", space, *point_rows, {},
                          options, got, oracle);
      for (int64_t q = 0; q < points.rows(); ++q) {
        for (int64_t r = 0; r < k; ++r) {
          const int64_t id = got.ids[q * k + r];
          if (id >= 0) {
            ASSERT_LT(id, bounds[q]) << PathName(path) << " query " << q << " rank " << r;
          }
          // A row is padded exactly where fewer than k ids lie below the bound.
          ASSERT_EQ(id < 0, r >= std::clamp<int64_t>(bounds[q], 0, c.n))
              << PathName(path) << " query " << q << " rank " << r;
        }
      }
    }
  }
}

SearchCase Residual(std::string name, KernelType kernel, double lengthscale, int d, int64_t n,
                    int64_t m) {
  return testing::ResidualCase(std::move(name), kernel, lengthscale, d, n, m);
}

SearchCase Euclidean(std::string name, int d, int64_t n) {
  return testing::EuclideanCase(std::move(name), d, n);
}

class KnnSearchTest : public ::testing::Test {
 protected:
  tbb::task_arena arena_{2};
};

// Sparse relative to the inducing points: short lengthscales, few inducing points, so almost
// all correlations are tiny and the k-th distances are large.
TEST_F(KnnSearchTest, SparseRegime) {
  SearchCase a = Residual("sparse_rbf_3d", KernelType::kRbf, 0.3, 3, 2000, 32);
  a.ks = {1, 10, 50};
  CheckCase(a, arena_);
  SearchCase b = Residual("sparse_matern12_2d", KernelType::kMatern12, 0.1, 2, 1500, 16);
  b.variance = 2.5;
  b.seed = 2;
  CheckCase(b, arena_);
  SearchCase c = Residual("sparse_matern52_ard_5d", KernelType::kMatern52, 1.0, 5, 1200, 64);
  c.lengthscales = {0.3, 0.5, 0.4, 0.6, 0.35};
  c.seed = 3;
  CheckCase(c, arena_);
}

// Dense relative to the inducing points: long lengthscales and many points per inducing point,
// where neighbours sit at small distances and the tree prunes.
TEST_F(KnnSearchTest, DenseRegime) {
  SearchCase a = Residual("dense_rbf_2d", KernelType::kRbf, 2.0, 2, 3000, 32);
  a.ks = {1, 10, 30};
  a.seed = 4;
  CheckCase(a, arena_);
  SearchCase b = Residual("dense_matern32_2d_5000", KernelType::kMatern32, 1.0, 2, 5000, 64);
  b.variance = 1.5;
  b.seed = 5;
  CheckCase(b, arena_);
  SearchCase c = Residual("dense_matern12_1d", KernelType::kMatern12, 3.0, 1, 2000, 8);
  c.seed = 6;
  CheckCase(c, arena_);
  SearchCase d = Residual("dense_matern52_ard_3d", KernelType::kMatern52, 1.0, 3, 2500, 40);
  d.lengthscales = {1.5, 3.0, 2.0};
  d.base = 2.0;
  d.seed = 7;
  CheckCase(d, arena_);
}

// Seeded random settings: every kernel, d = 1..8, isotropic and ARD lengthscales, several tree
// bases, sizes from 1 to 3000, k up to more than n.
TEST_F(KnnSearchTest, RandomCases) {
  const KernelType kernels[] = {KernelType::kRbf, KernelType::kMatern12, KernelType::kMatern32,
                                KernelType::kMatern52};
  const double bases[] = {1.3, 1.5, 2.0, 3.0};
  const int64_t sizes[] = {1,   2,    5,   40, 300,  900,  3000, 150, 1200, 60,  2000, 500,
                           700, 4000, 250, 17, 5000, 1000, 80,   3,   1500, 400, 2500, 9};
  core::SplitMix64 rng(2718);
  for (int i = 0; i < 24; ++i) {
    SearchCase c;
    c.d = 1 + i % 8;
    c.n = sizes[i];
    c.kernel = kernels[i % 4];
    c.variance = 0.5 + 2.0 * rng.UniformDouble();
    c.lengthscales.clear();
    const bool ard = i % 3 == 1 && c.d > 1;
    for (int t = 0; t < (ard ? c.d : 1); ++t) {
      c.lengthscales.push_back(0.2 + 2.5 * rng.UniformDouble());
    }
    c.m = std::max<int64_t>(1, std::min<int64_t>(c.n, 8 + 8 * (i % 6)));
    c.base = bases[i % 4];
    c.duplicates = i % 4 == 2 ? 0.05 : 0.0;
    c.ks = {1, std::max<int64_t>(1, c.n / 7), c.n + 3};
    c.seed = 100 + i;
    c.name = absl::StrCat("random_", i, "_", core::KernelTypeName(c.kernel), "_d", c.d, "_n", c.n,
                          "_m", c.m, ard ? "_ard" : "", "_b", c.base);
    CheckCase(c, arena_);
  }
}

// Every point below the jitter level: 5000 points in 1-D, 40 inducing points, p ~ 3e-7
// everywhere (the settings of random case 16 below). Distances near 0 then carry rounding noise
// of up to sqrt(e) ~ 1e-5..1e-4 (e the rounding of rho), above kPruneSlack = 1e-6, so lower bounds
// built from small distances (a query close to an ancestor; rings of d(y, ancestor)) are only
// as good as the rounding. The pure walk must still return every true neighbour, with the root
// product too (whose distances carry that rounding).
TEST_F(KnnSearchTest, ExtremeDenseRegimeWalkIsExact) {
  SearchCase c = Residual("extreme_dense_rbf_1d", KernelType::kRbf, 0.898079635630108, 1, 5000, 40);
  c.variance = 1.4951146865495117;
  c.base = 1.3;
  c.seed = 116;
  std::unique_ptr<KnnIndex> index = BuildIndex(c, &arena_);
  ASSERT_NE(index, nullptr);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < c.n; i += 9) ids.push_back(i);
  const PointRows rows = index->space().Gather(ids);
  const RowMatrix dist = AllDistances(index->space(), rows);
  QueryBatch batch;
  batch.ids = ids;
  for (int64_t k : {10, 30, 100, 300, 714}) {
    KnnOptions options;
    options.k = k;
    for (Path path : {Path::kPureWalk, Path::kProductWalk}) {
      Answer got;
      ASSERT_TRUE(RunSearch(*index, path, batch, options, &arena_, got).ok());
      ExpectMatchesOracle(PathName(path), index->space(), rows, ids, options, got,
                          Oracle(dist, ids, options));
    }
  }
}

TEST_F(KnnSearchTest, TinySetsAndKBeyondN) {
  for (int64_t n : {1, 2, 3, 7}) {
    SearchCase r = Residual(absl::StrCat("resid_n", n), KernelType::kMatern32, 0.7, 2, n, n);
    r.ks = {1, n, n + 1, 3 * n + 5};
    r.seed = 20 + n;
    CheckCase(r, arena_);
    SearchCase e = Euclidean(absl::StrCat("euclid_n", n), 3, n);
    e.ks = r.ks;
    e.seed = 30 + n;
    CheckCase(e, arena_);
  }
}

// Exact duplicates and coincident points (a coarse grid makes many points share a location).
// Kept to the sparse regime and Euclidean space here; duplicates where residual variances are
// small are covered by residual_correlation_test (ExactDuplicatesAreAtDistanceZeroOnEveryPath).
TEST_F(KnnSearchTest, DuplicatesAndCoincidentPoints) {
  SearchCase a = Residual("resid_duplicates", KernelType::kRbf, 0.3, 2, 1500, 32);
  a.duplicates = 0.2;
  a.ks = {1, 5, 20};
  a.seed = 40;
  CheckCase(a, arena_);
  SearchCase b = Residual("resid_grid", KernelType::kMatern12, 0.2, 2, 800, 32);
  b.grid = 0.25;
  b.seed = 41;
  CheckCase(b, arena_);
  SearchCase c = Euclidean("euclid_grid_2d", 2, 1500);
  c.grid = 0.5;
  c.ks = {1, 10, 60};
  c.seed = 42;
  CheckCase(c, arena_);
  SearchCase d = Euclidean("euclid_duplicates_4d", 4, 2000);
  d.duplicates = 0.3;
  d.seed = 43;
  CheckCase(d, arena_);
}

TEST_F(KnnSearchTest, SuppliedFactors) {
  SearchCase a = Residual("factors_sparse", KernelType::kRbf, 0.3, 3, 1500, 32);
  a.factors_supplied = true;
  a.seed = 50;
  CheckCase(a, arena_);
  SearchCase b = Residual("factors_dense", KernelType::kMatern32, 2.0, 2, 2000, 24);
  b.factors_supplied = true;
  b.ks = {1, 15};
  b.seed = 51;
  CheckCase(b, arena_);
}

TEST_F(KnnSearchTest, EuclideanMetric) {
  for (int d = 1; d <= 8; ++d) {
    SearchCase c = Euclidean(absl::StrCat("euclid_d", d), d, 400 + 500 * (d % 4));
    c.base = d % 2 == 0 ? 2.0 : 1.3;
    c.ks = {1, 8, 40};
    c.seed = 60 + d;
    CheckCase(c, arena_);
  }
}

TEST_F(KnnSearchTest, AllPointsIdentical) {
  for (Metric metric : {Metric::kEuclidean, Metric::kResidualCorrelation}) {
    SearchCase c;
    c.name = metric == Metric::kEuclidean ? "identical_euclid" : "identical_resid";
    c.metric = metric;
    c.n = 300;
    c.d = 2;
    c.scale = 0.0;  // every coordinate 0
    c.m = 1;
    c.ks = {1, 10, 301};
    CheckCase(c, arena_);
  }
}

// With integer coordinates in Euclidean space every distance is exact, so ties are exact too
// and the ids themselves must follow the (distance, id) order on every path.
TEST_F(KnnSearchTest, TiesGoToTheSmallerId) {
  const int64_t n = 1200;
  RowMatrix points = testing::NormalPoints(n, 2, 70, 3.0);
  testing::SnapToGrid(points, 1.0);
  IndexSpec spec;
  spec.metric = Metric::kEuclidean;
  spec.dimension = 2;
  IndexData data;
  data.points = points;
  absl::StatusOr<std::unique_ptr<KnnIndex>> index = KnnIndex::Build(spec, data, &arena_);
  ASSERT_TRUE(index.ok()) << index.status();
  const std::vector<int64_t> ids = QueryIds(n, 71, 100);
  const RowMatrix dist = AllDistances((*index)->space(), (*index)->space().Gather(ids));
  QueryBatch batch;
  batch.ids = ids;
  for (int mode = 0; mode < 3; ++mode) {
    KnnOptions options;
    options.k = 25;
    options.include_self = mode == 1;
    options.predecessor_mode = mode == 2;
    const Answer oracle = Oracle(dist, ids, options);
    for (Path path : kAllPaths) {
      Answer got;
      ASSERT_TRUE(RunSearch(**index, path, batch, options, &arena_, got).ok());
      EXPECT_EQ(got.ids, oracle.ids) << PathName(path) << " mode " << mode;
      EXPECT_EQ(got.dists, oracle.dists) << PathName(path) << " mode " << mode;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Determinism.

// KnnIndex stores its space in the tree's depth-first order (MetricSpace layout). Every
// subtree is one contiguous range of positions, and every path answers with the user's ids, the
// same bits as the brute force over a space built from the same data and never moved.
TEST_F(KnnSearchTest, TreeOrderLayoutKeepsUserIds) {
  std::vector<SearchCase> cases = {
      Residual("layout_dense", KernelType::kRbf, 2.0, 2, 3000, 32),
      Residual("layout_sparse", KernelType::kMatern32, 0.3, 3, 1500, 16),
      Euclidean("layout_euclidean", 3, 2000),
  };
  cases[0].duplicates = 0.05;
  cases.push_back(Residual("layout_supplied", KernelType::kRbf, 1.0, 2, 1200, 24));
  cases.back().factors_supplied = true;
  for (const SearchCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<KnnIndex> index = BuildIndex(c, &arena_);
    ASSERT_NE(index, nullptr);
    const MetricSpace& space = index->space();
    const core::CoverTree& tree = index->tree();
    ASSERT_TRUE(space.has_layout());
    for (int64_t node = 0; node < tree.size(); ++node) {
      const absl::Span<const int64_t> ids = tree.subtree_ids(node);
      for (size_t t = 0; t < ids.size(); ++t) {
        ASSERT_EQ(space.position_of(ids[t]), tree.preorder(node) + static_cast<int64_t>(t))
            << "node " << node << ": its subtree is not one contiguous range";
      }
    }
    // The same data, never moved.
    absl::StatusOr<IndexData> data = testing::CaseData(c);
    ASSERT_TRUE(data.ok()) << data.status();
    const IndexSpec spec = CaseSpec(c);
    absl::StatusOr<std::unique_ptr<MetricSpace>> plain;
    if (c.metric == Metric::kEuclidean) {
      plain = core::EuclideanSpace::Create(data->points);
    } else if (c.factors_supplied) {
      plain = core::ResidualSpace::FromFactors(data->points, spec.residual.kernel, data->factors,
                                               data->residual_variances);
    } else {
      plain = core::ResidualSpace::Create(data->points, spec.residual);
    }
    ASSERT_TRUE(plain.ok()) << plain.status();
    ASSERT_FALSE((*plain)->has_layout());
    EXPECT_EQ((*plain)->Fingerprint(), space.Fingerprint());
    // A tree built over the moved space is the one built over the plain space.
    absl::StatusOr<core::CoverTree> again = core::CoverTree::Build(space, spec.tree, &arena_);
    absl::StatusOr<core::CoverTree> fresh = core::CoverTree::Build(**plain, spec.tree, &arena_);
    ASSERT_TRUE(again.ok() && fresh.ok());
    for (int64_t node = 0; node < c.n; ++node) {
      ASSERT_EQ(again->point(node), fresh->point(node)) << "node " << node;
      ASSERT_EQ(again->max_dist(node), fresh->max_dist(node)) << "node " << node;
    }
    std::vector<int64_t> ids = QueryIds(c.n, c.seed + 9, 60);
    for (int64_t i = 0; i < c.n; i += c.n / 20) ids.push_back(i);
    QueryBatch batch;
    batch.ids = ids;
    for (bool predecessor : {false, true}) {
      KnnOptions options;
      options.k = 10;
      options.predecessor_mode = predecessor;
      const int64_t nq = static_cast<int64_t>(ids.size());
      std::vector<int64_t> want_ids(nq * options.k);
      std::vector<double> want(nq * options.k);
      ASSERT_TRUE(core::BruteForceKnn(**plain, batch, options, &arena_, nullptr, want_ids.data(),
                                      want.data())
                      .ok());
      for (Path path : kAllPaths) {
        Answer got;
        ASSERT_TRUE(RunSearch(*index, path, batch, options, &arena_, got).ok());
        for (int64_t e = 0; e < nq * options.k; ++e) {
          ASSERT_EQ(got.ids[e], want_ids[e])
              << PathName(path) << " predecessor=" << predecessor << " query id " << ids[e / 10];
          ASSERT_EQ(std::memcmp(&got.dists[e], &want[e], sizeof(double)), 0)
              << PathName(path) << " query id " << ids[e / 10] << ": " << got.dists[e] << " vs "
              << want[e];
        }
      }
    }
  }
}

TEST_F(KnnSearchTest, BitIdenticalOnOneAndTwoThreads) {
  tbb::task_arena one(1);
  std::vector<SearchCase> cases = {
      Residual("sparse", KernelType::kRbf, 0.3, 3, 2000, 32),
      Residual("dense", KernelType::kMatern32, 1.5, 2, 3000, 48),
      Euclidean("euclid", 3, 3000),
  };
  cases[0].duplicates = 0.05;
  for (const SearchCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<KnnIndex> a = BuildIndex(c, &one);
    std::unique_ptr<KnnIndex> b = BuildIndex(c, &arena_);
    ASSERT_TRUE(a && b);
    // Many queries: several chunks, probes and scan blocks.
    const std::vector<int64_t> ids = QueryIds(c.n, 80, 300);
    const RowMatrix points = QueryPoints(CasePoints(c), 1.0, 81, 150);
    for (int mode = 0; mode < 4; ++mode) {
      KnnOptions options;
      options.k = 17;
      options.include_self = mode == 1;
      options.predecessor_mode = mode == 2;
      QueryBatch batch;
      if (mode == 3) {
        batch.points = absl::MakeConstSpan(points.data(), points.size());
      } else {
        batch.ids = ids;
      }
      for (Path path : kAllPaths) {
        SCOPED_TRACE(::testing::Message() << PathName(path) << " mode " << mode);
        // x: built and searched on one thread; y, z: built on two, searched on one and on two;
        // w: searched on two again.
        Answer x, y, z, w;
        ASSERT_TRUE(RunSearch(*a, path, batch, options, &one, x).ok());
        ASSERT_TRUE(RunSearch(*b, path, batch, options, &one, y).ok());
        ASSERT_TRUE(RunSearch(*b, path, batch, options, &arena_, z).ok());
        ASSERT_TRUE(RunSearch(*b, path, batch, options, &arena_, w).ok());
        const size_t bytes = x.dists.size() * sizeof(double);
        EXPECT_EQ(y.ids, z.ids) << "search on one vs two threads";
        EXPECT_EQ(std::memcmp(y.dists.data(), z.dists.data(), bytes), 0)
            << "search on one vs two threads";
        EXPECT_EQ(z.ids, w.ids) << "repeated search";
        EXPECT_EQ(std::memcmp(z.dists.data(), w.dists.data(), bytes), 0) << "repeated search";
        EXPECT_EQ(x.ids, z.ids) << "build and search on one vs two threads";
        EXPECT_EQ(std::memcmp(x.dists.data(), z.dists.data(), bytes), 0)
            << "build and search on one vs two threads";
        EXPECT_EQ(y.stats.distance_evaluations, z.stats.distance_evaluations);
        EXPECT_EQ(y.per_query, z.per_query);
      }
    }
  }
}

// docs/design.md section 3: the same query gets the same bits in every batch, whatever the
// request split, the other queries, the path (walk, scan, brute force) and the thread count. The
// reference is each query alone through KnnIndex::Search; it must also equal the oracle.
TEST_F(KnnSearchTest, AnswersDoNotDependOnTheBatch) {
  tbb::task_arena one(1);
  std::vector<SearchCase> cases = {
      Residual("sparse", KernelType::kRbf, 0.3, 3, 2000, 32),
      Residual("dense", KernelType::kMatern32, 1.5, 2, 3000, 48),
      Residual("gridded", KernelType::kMatern12, 0.4, 2, 1500, 24),
      Euclidean("euclid", 3, 2500),
  };
  cases[0].duplicates = 0.05;
  cases[2].grid = 0.1;
  for (const SearchCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<KnnIndex> index = BuildIndex(c, &arena_);
    ASSERT_NE(index, nullptr);
    const std::vector<int64_t> ids = QueryIds(c.n, 110, 90);
    const std::vector<int64_t> crowd_ids = QueryIds(c.n, 111, 200);
    const RowMatrix points = QueryPoints(CasePoints(c), 1.0, 112, 60);
    const RowMatrix crowd_points = QueryPoints(CasePoints(c), 3.0, 113, 150);
    for (int mode = 0; mode < 4; ++mode) {
      KnnOptions options;
      options.k = 12;
      options.include_self = mode == 1;
      options.predecessor_mode = mode == 2;
      const bool by_point = mode == 3;
      const int64_t nq = by_point ? points.rows() : static_cast<int64_t>(ids.size());
      const int d = c.d;
      // The batch of queries `list` of this mode (indices into ids / points), then `crowd` others.
      auto batch_of = [&](const std::vector<int64_t>& list, bool crowd, std::vector<int64_t>& id_store,
                          std::vector<double>& point_store) {
        id_store.clear();
        point_store.clear();
        for (int64_t q : list) {
          if (by_point) {
            point_store.insert(point_store.end(), points.row(q).data(), points.row(q).data() + d);
          } else {
            id_store.push_back(ids[q]);
          }
        }
        if (crowd) {
          if (by_point) {
            point_store.insert(point_store.end(), crowd_points.data(),
                               crowd_points.data() + crowd_points.size());
          } else {
            id_store.insert(id_store.end(), crowd_ids.begin(), crowd_ids.end());
          }
        }
        QueryBatch batch;
        if (by_point) {
          batch.points = point_store;
        } else {
          batch.ids = id_store;
        }
        return batch;
      };
      // Reference: every query alone.
      std::vector<int64_t> ref_ids(nq * options.k);
      std::vector<double> ref_dists(nq * options.k);
      std::vector<int64_t> id_store;
      std::vector<double> point_store;
      for (int64_t q = 0; q < nq; ++q) {
        Answer alone;
        ASSERT_TRUE(RunSearch(*index, Path::kIndexSearch, batch_of({q}, false, id_store, point_store),
                              options, &arena_, alone)
                        .ok());
        std::copy(alone.ids.begin(), alone.ids.end(), ref_ids.begin() + q * options.k);
        std::copy(alone.dists.begin(), alone.dists.end(), ref_dists.begin() + q * options.k);
      }
      {
        const PointRows rows =
            by_point ? *index->space().Prepare(points.data(), points.rows()) : index->space().Gather(ids);
        Answer ref;
        ref.ids = ref_ids;
        ref.dists = ref_dists;
        ExpectMatchesOracle("alone", index->space(), rows, by_point ? std::vector<int64_t>() : ids,
                            options, ref, Oracle(AllDistances(index->space(), rows),
                                                 by_point ? std::vector<int64_t>() : ids, options));
      }
      std::vector<int64_t> forward(nq), backward(nq);
      std::iota(forward.begin(), forward.end(), 0);
      std::reverse_copy(forward.begin(), forward.end(), backward.begin());
      for (Path path : kAllPaths) {
        for (tbb::task_arena* arena : {&one, &arena_}) {
          SCOPED_TRACE(::testing::Message() << PathName(path) << " mode " << mode << " threads "
                                            << arena->max_concurrency());
          auto expect_rows = [&](const char* what, const std::vector<int64_t>& list,
                                 const Answer& got) {
            for (size_t r = 0; r < list.size(); ++r) {
              const int64_t q = list[r];
              const bool same_ids = std::equal(ref_ids.begin() + q * options.k,
                                               ref_ids.begin() + (q + 1) * options.k,
                                               got.ids.begin() + r * options.k);
              const bool same_bits =
                  std::memcmp(&ref_dists[q * options.k], &got.dists[r * options.k],
                              options.k * sizeof(double)) == 0;
              EXPECT_TRUE(same_ids && same_bits) << what << ": query " << q;
              if (!(same_ids && same_bits)) return;
            }
          };
          Answer whole, reversed, crowded;
          ASSERT_TRUE(RunSearch(*index, path, batch_of(forward, false, id_store, point_store),
                                options, arena, whole)
                          .ok());
          expect_rows("whole batch", forward, whole);
          ASSERT_TRUE(RunSearch(*index, path, batch_of(backward, false, id_store, point_store),
                                options, arena, reversed)
                          .ok());
          expect_rows("reversed batch", backward, reversed);
          ASSERT_TRUE(RunSearch(*index, path, batch_of(forward, true, id_store, point_store),
                                options, arena, crowded)
                          .ok());
          expect_rows("among other queries", forward, crowded);
          for (int64_t first = 0; first < nq; first += 7) {
            std::vector<int64_t> slice;
            for (int64_t q = first; q < std::min(nq, first + 7); ++q) slice.push_back(q);
            Answer part;
            ASSERT_TRUE(RunSearch(*index, path, batch_of(slice, false, id_store, point_store),
                                  options, arena, part)
                            .ok());
            expect_rows("slices of 7", slice, part);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Counters.

// The path must have answered between min_scanned and max_scanned queries by the scan.
void ExpectSaneStats(const std::string& what, const Answer& got, int64_t nq, int64_t min_scanned,
                     int64_t max_scanned, bool has_per_query) {
  SCOPED_TRACE(what);
  EXPECT_EQ(got.stats.queries, nq);
  EXPECT_GT(got.stats.distance_evaluations, 0);
  EXPECT_GE(got.stats.brute_force_queries, min_scanned);
  EXPECT_LE(got.stats.brute_force_queries, max_scanned);
  if (!has_per_query) return;
  int64_t sum = 0;
  for (int64_t e : got.per_query) {
    // Zero only for a query without candidates (id 0 in predecessor mode, which a scan skips);
    // the callers check each path's lower bound per query.
    EXPECT_GE(e, 0);
    sum += e;
  }
  EXPECT_EQ(sum, got.stats.distance_evaluations);
}

TEST_F(KnnSearchTest, TraversalStatsAreSane) {
  SearchCase dense = Residual("dense", KernelType::kRbf, 1.5, 2, 5000, 32);
  dense.seed = 90;
  std::unique_ptr<KnnIndex> index = BuildIndex(dense, &arena_);
  ASSERT_NE(index, nullptr);
  const int64_t n = dense.n;
  const std::vector<int64_t> ids = QueryIds(n, 91, 64);
  const int64_t nq = static_cast<int64_t>(ids.size());
  QueryBatch batch;
  batch.ids = ids;
  for (bool pred : {false, true}) {
    SCOPED_TRACE(pred ? "predecessor" : "plain");
    KnnOptions options;
    options.k = 20;
    options.predecessor_mode = pred;
    Answer walk, scan, search, brute;
    ASSERT_TRUE(RunSearch(*index, Path::kPureWalk, batch, options, &arena_, walk).ok());
    ASSERT_TRUE(RunSearch(*index, Path::kPureScan, batch, options, &arena_, scan).ok());
    ASSERT_TRUE(RunSearch(*index, Path::kIndexSearch, batch, options, &arena_, search).ok());
    ASSERT_TRUE(RunSearch(*index, Path::kBruteForce, batch, options, &arena_, brute).ok());
    // Dense: the default search walks most plain queries; in predecessor mode it may scan those
    // with small ids, whose walk budget is small.
    ExpectSaneStats("walk", walk, nq, 0, 0, true);
    ExpectSaneStats("scan", scan, nq, nq, nq, true);
    ExpectSaneStats("search", search, nq, 0, pred ? nq : nq / 8, true);
    ExpectSaneStats("brute force", brute, nq, nq, nq, false);
    Answer blocks;
    ASSERT_TRUE(RunSearch(*index, Path::kBlocks, batch, options, &arena_, blocks).ok());
    ExpectSaneStats("blocks", blocks, nq, 0, 0, true);
    EXPECT_GT(blocks.stats.nodes_visited, 0);
    EXPECT_GT(blocks.stats.pruned_by_bound, 0);
    EXPECT_GT(walk.stats.nodes_visited, 0);
    EXPECT_GT(walk.stats.heap_pushes, 0);
    EXPECT_GT(walk.stats.pruned_by_bound, 0);
    if (pred) {
      EXPECT_GT(walk.stats.pruned_by_predecessor, 0);
    }
    for (int64_t q = 0; q < nq; ++q) {
      // A walk evaluates each node at most once. A scan evaluates every candidate (all points,
      // or the ids below the query's), then its k best again, canonically.
      EXPECT_LE(walk.per_query[q], n) << q;
      const int64_t candidates = pred ? ids[q] : n;
      EXPECT_GE(scan.per_query[q], candidates + std::min(candidates, options.k)) << q;
      EXPECT_LE(scan.per_query[q], n + candidates) << q;
    }
    // In the dense regime the bounds prune: a walk evaluates a small part of the points.
    const double mean_walk = static_cast<double>(walk.stats.distance_evaluations) / nq;
    EXPECT_LT(mean_walk, 0.25 * n);
  }
}

// TopK (knn_query.h: its own sifts and a cached threshold) against sorting every offer: the k
// least (distance, id) pairs, ties broken by id, repeated distances and repeated offers, the
// threshold after every offer and what Offer returns.
TEST(TopKTest, KeepsTheKLeastPairs) {
  core::SplitMix64 rng(77);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t k = 1 + static_cast<int64_t>(rng.Next() % 40);
    const int64_t offers = static_cast<int64_t>(rng.Next() % 120);
    core::TopK top(k);
    std::vector<std::pair<double, int64_t>> all;
    for (int64_t o = 0; o < offers; ++o) {
      // Few distinct distances and ids, so that ties and repeats are common.
      const double distance = static_cast<double>(rng.Next() % 16) / 8.0;
      const int64_t id = static_cast<int64_t>(rng.Next() % 50);
      std::vector<std::pair<double, int64_t>> before = all;
      std::sort(before.begin(), before.end());
      const bool enters = static_cast<int64_t>(before.size()) < k ||
                          std::make_pair(distance, id) < before[k - 1];
      EXPECT_EQ(top.Offer(distance, id), enters) << trial << " " << o;
      all.emplace_back(distance, id);
      std::sort(all.begin(), all.end());
      const double expected_threshold = static_cast<int64_t>(all.size()) < k
                                            ? std::numeric_limits<double>::infinity()
                                            : all[k - 1].first;
      EXPECT_EQ(top.threshold(), expected_threshold) << trial << " " << o;
    }
    std::vector<int64_t> ids(k);
    std::vector<double> distances(k);
    top.Write(ids.data(), distances.data());
    for (int64_t r = 0; r < k; ++r) {
      const bool have = r < static_cast<int64_t>(all.size());
      EXPECT_EQ(ids[r], have ? all[r].second : -1) << trial << " " << r;
      EXPECT_EQ(distances[r], have ? all[r].first : std::numeric_limits<double>::infinity())
          << trial << " " << r;
    }
  }
}

// The planner's rule (search_planner.h) on its own.
TEST(SearchPlannerTest, Rule) {
  core::TreeSearchOptions options;
  EXPECT_EQ(options.min_block_batch, std::numeric_limits<int64_t>::max()) << "blocks off by default";
  options.min_block_batch = 512;
  core::BatchFacts facts;
  facts.queries = 1000;
  facts.probes = 16;
  facts.probes_walked = 7;
  EXPECT_EQ(core::PlanBatch(facts, options), core::BatchPath::kScan) << "most probes fell back";
  facts.probes_walked = 8;
  EXPECT_EQ(core::PlanBatch(facts, options), core::BatchPath::kBlocks);
  facts.queries = options.min_block_batch - 1;
  EXPECT_EQ(core::PlanBatch(facts, options), core::BatchPath::kWalk) << "small batch";
  facts.queries = 1000;
  facts.by_id = false;
  EXPECT_EQ(core::PlanBatch(facts, options), core::BatchPath::kWalk) << "query points";
  options.scan_fraction = 0.0;
  facts.by_id = true;
  EXPECT_EQ(core::PlanBatch(facts, options), core::BatchPath::kScan) << "scan_fraction 0";
  options = core::TreeSearchOptions();
  EXPECT_TRUE(core::ScanOutright(options.scan_candidates_below, options));
  EXPECT_FALSE(core::ScanOutright(options.scan_candidates_below + 1, options));
  options.scan_fraction = 1.0;
  EXPECT_FALSE(core::ScanOutright(0, options)) << "scan_fraction 1 never scans";
}

// The planner through KnnIndex::Search, both directions: a sparse case (short lengthscale, few
// inducing points: the bounds do not prune) must scan, a dense one must walk, and a large dense
// batch by id must take the block traversal when min_block_batch allows it.
TEST_F(KnnSearchTest, PlannerScansSparseAndWalksDense) {
  KnnOptions options;
  options.k = 10;
  SearchCase sparse = Residual("sparse", KernelType::kRbf, 0.3, 3, 4000, 32);
  std::unique_ptr<KnnIndex> sparse_index = BuildIndex(sparse, &arena_);
  ASSERT_NE(sparse_index, nullptr);
  QueryBatch batch;
  const std::vector<int64_t> ids = QueryIds(sparse.n, 120, 64);
  batch.ids = ids;
  Answer got;
  ASSERT_TRUE(RunSearch(*sparse_index, Path::kIndexSearch, batch, options, &arena_, got).ok());
  EXPECT_EQ(got.stats.brute_force_queries, static_cast<int64_t>(ids.size()))
      << "sparse: the batch must be scanned";

  SearchCase dense = Residual("dense", KernelType::kRbf, 1.5, 2, 5000, 32);
  dense.seed = 121;
  std::unique_ptr<KnnIndex> dense_index = BuildIndex(dense, &arena_);
  ASSERT_NE(dense_index, nullptr);
  const std::vector<int64_t> few = QueryIds(dense.n, 122, 64);
  batch.ids = few;
  ASSERT_TRUE(RunSearch(*dense_index, Path::kIndexSearch, batch, options, &arena_, got).ok());
  EXPECT_LE(got.stats.brute_force_queries, 64 / 8) << "dense: the batch must walk";
  EXPECT_GT(got.stats.nodes_visited, 0);
  EXPECT_LT(got.stats.distance_evaluations, 64 * dense.n / 4);

  std::vector<int64_t> many(dense.n);
  std::iota(many.begin(), many.end(), 0);
  batch.ids = many;
  core::TreeSearchOptions search;
  search.min_block_batch = 512;
  got = Answer();
  got.ids.resize(dense.n * options.k);
  got.dists.resize(dense.n * options.k);
  ASSERT_TRUE(core::TreeKnnSearch({&dense_index->tree(), &dense_index->space(), search, &arena_,
                                   nullptr},
                                  batch, options,
                                  {got.ids.data(), got.dists.data(), &got.stats, {}})
                  .ok());
  EXPECT_GT(got.stats.block_queries, dense.n / 2) << "dense, large batch: the block traversal";
  EXPECT_LT(got.stats.brute_force_queries, dense.n / 20);
  EXPECT_LT(got.stats.distance_evaluations, dense.n * dense.n / 5);
  search.min_block_batch = dense.n + 1;
  got.stats = TraversalStats();
  ASSERT_TRUE(core::TreeKnnSearch({&dense_index->tree(), &dense_index->space(), search, &arena_,
                                   nullptr},
                                  batch, options,
                                  {got.ids.data(), got.dists.data(), &got.stats, {}})
                  .ok());
  EXPECT_EQ(got.stats.block_queries, 0) << "below min_block_batch";
}

// search_planner.h: scan_fraction "1 or more: never scan", also in predecessor mode, where a
// walk evaluates ancestors of its candidates whose ids may be larger than the query's, so a
// budget of scan_fraction times the candidates would not be enough for queries with small ids.
TEST_F(KnnSearchTest, ScanFractionOneNeverFallsBack) {
  SearchCase c = Residual("dense", KernelType::kRbf, 1.5, 2, 3000, 32);
  c.seed = 95;
  std::unique_ptr<KnnIndex> index = BuildIndex(c, &arena_);
  ASSERT_NE(index, nullptr);
  const std::vector<int64_t> ids = QueryIds(c.n, 96, 64);
  QueryBatch batch;
  batch.ids = ids;
  for (bool pred : {false, true}) {
    KnnOptions options;
    options.k = 10;
    options.predecessor_mode = pred;
    Answer walk;
    ASSERT_TRUE(RunSearch(*index, Path::kScanFractionOne, batch, options, &arena_, walk).ok());
    EXPECT_EQ(walk.stats.brute_force_queries, 0) << (pred ? "predecessor" : "plain");
  }
}

TEST_F(KnnSearchTest, StatsAreAddedTo) {
  SearchCase c = Euclidean("euclid", 2, 500);
  std::unique_ptr<KnnIndex> index = BuildIndex(c, &arena_);
  ASSERT_NE(index, nullptr);
  const std::vector<int64_t> ids = QueryIds(c.n, 1, 10);
  QueryBatch batch;
  batch.ids = ids;
  KnnOptions options;
  std::vector<int64_t> out_ids(ids.size() * options.k);
  std::vector<double> out_dists(ids.size() * options.k);
  TraversalStats once, twice;
  ASSERT_TRUE(
      index->Search(batch, options, &arena_, nullptr, out_ids.data(), out_dists.data(), &once)
          .ok());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        index->Search(batch, options, &arena_, nullptr, out_ids.data(), out_dists.data(), &twice)
            .ok());
  }
  EXPECT_EQ(twice.queries, 2 * once.queries);
  EXPECT_EQ(twice.distance_evaluations, 2 * once.distance_evaluations);
}

// ---------------------------------------------------------------------------------------------
// Errors.

class KnnErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SearchCase c = Residual("errors", KernelType::kRbf, 0.5, 3, 300, 16);
    index_ = BuildIndex(c, &arena_);
    ASSERT_NE(index_, nullptr);
  }

  // The status of every search path for one batch; all must agree.
  std::vector<absl::Status> Statuses(const QueryBatch& batch, const KnnOptions& options,
                                     const core::Cancellation* cancellation = nullptr) {
    std::vector<absl::Status> statuses;
    for (Path path : kAllPaths) {
      Answer out;
      statuses.push_back(RunSearch(*index_, path, batch, options, &arena_, out, cancellation));
    }
    return statuses;
  }

  void ExpectAll(const QueryBatch& batch, const KnnOptions& options, absl::StatusCode code,
                 const std::string& field, const core::Cancellation* cancellation = nullptr) {
    const std::vector<absl::Status> statuses = Statuses(batch, options, cancellation);
    for (size_t i = 0; i < statuses.size(); ++i) {
      EXPECT_EQ(statuses[i].code(), code) << PathName(kAllPaths[i]) << ": " << statuses[i];
      EXPECT_NE(statuses[i].message().find(field), std::string::npos)
          << PathName(kAllPaths[i]) << ": message does not name " << field << ": " << statuses[i];
    }
  }

  tbb::task_arena arena_{2};
  std::unique_ptr<KnnIndex> index_;
  const std::vector<int64_t> good_ids_ = {0, 5, 299};
  const std::vector<double> good_points_ = {0.1, 0.2, 0.3, -1.0, 0.5, 2.0};
};

TEST_F(KnnErrorTest, BadK) {
  QueryBatch batch;
  batch.ids = good_ids_;
  for (int64_t k : {0, -1, -100}) {
    KnnOptions options;
    options.k = k;
    ExpectAll(batch, options, absl::StatusCode::kInvalidArgument, "k");
  }
}

TEST_F(KnnErrorTest, IdsOutOfRange) {
  for (int64_t bad : {int64_t{-1}, int64_t{300}, int64_t{1} << 40}) {
    const std::vector<int64_t> ids = {0, bad, 1};
    QueryBatch batch;
    batch.ids = ids;
    ExpectAll(batch, KnnOptions(), absl::StatusCode::kInvalidArgument, "query_ids");
  }
}

TEST_F(KnnErrorTest, IdOnlyOptionsWithQueryPoints) {
  QueryBatch batch;
  batch.points = good_points_;
  KnnOptions pred;
  pred.predecessor_mode = true;
  ExpectAll(batch, pred, absl::StatusCode::kInvalidArgument, "predecessor_mode");
  KnnOptions self;
  self.include_self = true;
  ExpectAll(batch, self, absl::StatusCode::kInvalidArgument, "include_self");
}

TEST_F(KnnErrorTest, BadQueryPoints) {
  const std::vector<double> ragged = {0.1, 0.2, 0.3, 0.4};  // dimension 3
  QueryBatch batch;
  batch.points = ragged;
  ExpectAll(batch, KnnOptions(), absl::StatusCode::kInvalidArgument, "query_points");
  for (double bad : {std::nan(""), kInf, -kInf}) {
    std::vector<double> points = good_points_;
    points[4] = bad;
    QueryBatch b;
    b.points = points;
    ExpectAll(b, KnnOptions(), absl::StatusCode::kInvalidArgument, "query_points");
  }
}

TEST_F(KnnErrorTest, IdBoundsNeedOnePerQueryPoint) {
  const std::vector<int64_t> one = {5};
  const std::vector<int64_t> three = {5, 6, 7};
  QueryBatch points;
  points.points = good_points_;  // two points of dimension 3
  points.id_bounds = one;
  ExpectAll(points, KnnOptions(), absl::StatusCode::kInvalidArgument, "id_bounds");
  points.id_bounds = three;
  ExpectAll(points, KnnOptions(), absl::StatusCode::kInvalidArgument, "id_bounds");
  QueryBatch ids;
  ids.ids = good_ids_;
  ids.id_bounds = three;
  ExpectAll(ids, KnnOptions(), absl::StatusCode::kInvalidArgument, "id_bounds");
}

TEST_F(KnnErrorTest, BothIdsAndPoints) {
  QueryBatch batch;
  batch.ids = good_ids_;
  batch.points = good_points_;
  ExpectAll(batch, KnnOptions(), absl::StatusCode::kInvalidArgument, "query_ids");
}

// knn_query.h: ValidateQuery is INVALID_ARGUMENT for "both or neither of ids and points"; a
// batch with neither is an error, not zero queries.
TEST_F(KnnErrorTest, NeitherIdsNorPointsIsInvalidArgument) {
  ExpectAll(QueryBatch(), KnnOptions(), absl::StatusCode::kInvalidArgument, "query_");
}

TEST_F(KnnErrorTest, CancelledAndExpired) {
  QueryBatch by_id;
  by_id.ids = good_ids_;
  QueryBatch by_point;
  by_point.points = good_points_;
  core::Cancellation cancelled;
  cancelled.Cancel();
  core::Cancellation expired(absl::Now() - absl::Seconds(1));
  for (const QueryBatch* batch : {&by_id, &by_point}) {
    ExpectAll(*batch, KnnOptions(), absl::StatusCode::kCancelled, "", &cancelled);
    ExpectAll(*batch, KnnOptions(), absl::StatusCode::kDeadlineExceeded, "", &expired);
  }
  // A deadline in the future lets the search finish.
  core::Cancellation later(absl::Now() + absl::Hours(1));
  ExpectAll(by_id, KnnOptions(), absl::StatusCode::kOk, "", &later);
}

TEST_F(KnnErrorTest, QueryPointsNeedInducingPoints) {
  SearchCase c = Residual("factors", KernelType::kRbf, 0.5, 3, 300, 16);
  c.factors_supplied = true;
  index_ = BuildIndex(c, &arena_);
  ASSERT_NE(index_, nullptr);
  QueryBatch batch;
  batch.points = good_points_;
  ExpectAll(batch, KnnOptions(), absl::StatusCode::kFailedPrecondition, "query_points");
  // Queries by id work.
  QueryBatch by_id;
  by_id.ids = good_ids_;
  ExpectAll(by_id, KnnOptions(), absl::StatusCode::kOk, "");
}

TEST_F(KnnErrorTest, TreeOfAnotherSpace) {
  SearchCase c = Residual("other", KernelType::kRbf, 0.5, 3, 200, 16);
  std::unique_ptr<KnnIndex> other = BuildIndex(c, &arena_);
  ASSERT_NE(other, nullptr);
  QueryBatch batch;
  batch.ids = good_ids_;
  KnnOptions options;
  std::vector<int64_t> ids(3 * options.k);
  std::vector<double> dists(3 * options.k);
  const absl::Status status =
      core::TreeKnnSearch({&other->tree(), &index_->space(), TreeSearchOptions(), &arena_, nullptr},
                          batch, options, {ids.data(), dists.data(), nullptr, {}});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  std::vector<int64_t> too_short(2);
  const absl::Status bad_span = core::TreeKnnSearch(
      {&index_->tree(), &index_->space(), TreeSearchOptions(), &arena_, nullptr}, batch, options,
      {ids.data(), dists.data(), nullptr, absl::MakeSpan(too_short)});
  EXPECT_EQ(bad_span.code(), absl::StatusCode::kInvalidArgument) << bad_span;
}

// ---------------------------------------------------------------------------------------------
// KnnIndex::Build.

absl::Status BuildStatus(const IndexSpec& spec, IndexData data,
                         const core::Cancellation* cancellation = nullptr) {
  return KnnIndex::Build(spec, std::move(data), nullptr, cancellation).status();
}

void ExpectBuildError(const IndexSpec& spec, const IndexData& data, absl::StatusCode code,
                      const std::string& field) {
  const absl::Status status = BuildStatus(spec, data);
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(status.message().find(field), std::string::npos)
      << "message does not name " << field << ": " << status;
}

TEST(KnnIndexBuildTest, ValidatesSpecAndData) {
  SearchCase c = Residual("build", KernelType::kRbf, 0.5, 3, 100, 8);
  const IndexSpec spec = CaseSpec(c);
  IndexData data;
  data.points = CasePoints(c);
  EXPECT_TRUE(BuildStatus(spec, data).ok());

  IndexSpec zero_dimension = spec;
  zero_dimension.dimension = 0;
  ExpectBuildError(zero_dimension, data, absl::StatusCode::kInvalidArgument, "dimension");
  IndexSpec wrong_dimension = spec;
  wrong_dimension.dimension = 2;
  ExpectBuildError(wrong_dimension, data, absl::StatusCode::kInvalidArgument, "points");
  IndexSpec unknown_metric = spec;
  unknown_metric.metric = static_cast<Metric>(17);
  ExpectBuildError(unknown_metric, data, absl::StatusCode::kInvalidArgument, "metric");
  IndexSpec bad_kernel = spec;
  bad_kernel.residual.kernel.variance = -1.0;
  ExpectBuildError(bad_kernel, data, absl::StatusCode::kInvalidArgument, "variance");
  IndexSpec bad_base = spec;
  bad_base.tree.base = 1.0;
  ExpectBuildError(bad_base, data, absl::StatusCode::kInvalidArgument, "base");
  IndexSpec bad_m = spec;
  bad_m.residual.inducing_count = 101;
  ExpectBuildError(bad_m, data, absl::StatusCode::kInvalidArgument, "inducing_count");

  for (Metric metric : {Metric::kResidualCorrelation, Metric::kEuclidean}) {
    IndexSpec s = spec;
    s.metric = metric;
    IndexData nan = data;
    nan.points(50, 1) = std::nan("");
    ExpectBuildError(s, nan, absl::StatusCode::kInvalidArgument, "points");
    IndexData empty;
    empty.points = RowMatrix(0, 3);
    ExpectBuildError(s, empty, absl::StatusCode::kInvalidArgument, "points");
  }

  // Supplied factors of the wrong shape or with bad variances.
  IndexSpec factors = spec;
  factors.factors_supplied = true;
  IndexData with_factors = data;
  with_factors.factors = testing::NormalPoints(100, 5, 1, 0.1);
  with_factors.residual_variances = Eigen::VectorXd::Constant(100, 0.5);
  EXPECT_TRUE(BuildStatus(factors, with_factors).ok());
  IndexData short_factors = with_factors;
  short_factors.factors = testing::NormalPoints(99, 5, 1, 0.1);
  ExpectBuildError(factors, short_factors, absl::StatusCode::kInvalidArgument, "factors");
  IndexData no_factors = data;
  ExpectBuildError(factors, no_factors, absl::StatusCode::kInvalidArgument, "factors");
  IndexData bad_p = with_factors;
  bad_p.residual_variances[10] = 0.0;
  ExpectBuildError(factors, bad_p, absl::StatusCode::kInvalidArgument, "residual_variances");

  // A singular kernel matrix: two identical explicit inducing points and no jitter.
  IndexSpec singular = spec;
  singular.residual.jitter = 0.0;
  RowMatrix inducing = testing::NormalPoints(2, 3, 9);
  inducing.row(1) = inducing.row(0);
  singular.residual.inducing_points = inducing;
  ExpectBuildError(singular, data, absl::StatusCode::kFailedPrecondition, "positive definite");
}

TEST(KnnIndexBuildTest, CancelledAndExpired) {
  SearchCase c = Residual("build", KernelType::kRbf, 0.5, 3, 500, 8);
  IndexData data;
  data.points = CasePoints(c);
  core::Cancellation cancelled;
  cancelled.Cancel();
  EXPECT_EQ(BuildStatus(CaseSpec(c), data, &cancelled).code(), absl::StatusCode::kCancelled);
  core::Cancellation expired(absl::Now() - absl::Seconds(1));
  EXPECT_EQ(BuildStatus(CaseSpec(c), data, &expired).code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(KnnIndexBuildTest, AccessorsAndProgress) {
  for (Metric metric : {Metric::kResidualCorrelation, Metric::kEuclidean}) {
    SearchCase c = Residual("build", KernelType::kMatern32, 0.5, 3, 2000, 32);
    c.metric = metric;
    IndexData data;
    data.points = CasePoints(c);
    std::vector<double> seen;
    tbb::task_arena one(1);
    absl::StatusOr<std::unique_ptr<KnnIndex>> index =
        KnnIndex::Build(CaseSpec(c), data, &one, nullptr, [&](double f) { seen.push_back(f); });
    ASSERT_TRUE(index.ok()) << index.status();
    EXPECT_EQ((*index)->size(), c.n);
    EXPECT_EQ((*index)->dimension(), c.d);
    EXPECT_EQ((*index)->spec().metric, metric);
    EXPECT_GT((*index)->memory_bytes(), 0);
    EXPECT_GE((*index)->timings().tree_seconds, 0.0);
    EXPECT_GE((*index)->timings().factor_seconds, 0.0);
    EXPECT_TRUE((*index)->tree().CheckInvariants((*index)->space()).ok());
    ASSERT_FALSE(seen.empty());
    for (double f : seen) {
      EXPECT_GE(f, 0.0);
      EXPECT_LE(f, 1.0);
    }
    EXPECT_EQ(seen.back(), 1.0);
  }
}

}  // namespace
}  // namespace rcknn
