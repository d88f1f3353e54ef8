// The production scan (BlockedScan) against a naive oracle, bit for bit: seeded random cases
// with and without the tree-order layout, predecessor mode, include_self, id bounds, k above n,
// ties (duplicates, grids), tiny n, batches of 1 to several query blocks and lists that skip
// queries; and the "Within" evaluations it is built on.
#include "core/blocked_scan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/brute_force_knn.h"
#include "core/euclidean_space.h"
#include "core/knn_index.h"
#include "core/random.h"
#include "core/residual_correlation.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/core/scan_oracle.h"
#include "tests/testing/index_cases.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using core::KnnOptions;
using core::MetricSpace;
using core::PointRows;
using core::QueryBatch;
using core::RowMatrix;
using testing::AllDistances;
using testing::NaiveKnn;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kNoBound = std::numeric_limits<int64_t>::max();

struct ScanCase {
  std::string name;
  testing::IndexCase index;
  bool layout;  // through KnnIndex (tree order) or the bare space (positions = ids)
};

std::vector<ScanCase> Cases() {
  std::vector<ScanCase> cases;
  auto add = [&](testing::IndexCase c, bool layout) {
    cases.push_back({absl::StrCat(c.name, layout ? "/tree_order" : "/by_id"), c, layout});
  };
  for (bool layout : {true, false}) {
    add(testing::ResidualCase("rbf_sparse", core::KernelType::kRbf, 0.3, 3, 800, 40), layout);
    testing::IndexCase dense = testing::ResidualCase("m52_dense", core::KernelType::kMatern52,
                                                     2.0, 2, 600, 24);
    dense.duplicates = 0.1;
    add(dense, layout);
    testing::IndexCase grid = testing::ResidualCase("rbf_grid", core::KernelType::kRbf, 1.0, 2,
                                                    500, 16);
    grid.grid = 0.5;  // many coincident points: ties everywhere
    add(grid, layout);
    add(testing::ResidualCase("tiny", core::KernelType::kRbf, 1.0, 2, 3, 2), layout);
    add(testing::EuclideanCase("euclid", 3, 700), layout);
    add(testing::EuclideanCase("euclid_tiny", 2, 1), layout);
  }
  return cases;
}

// Runs BlockedScan over `list` of `batch` on two threads; rows not listed stay at -2.
void Scan(const MetricSpace& space, const QueryBatch& batch, const std::vector<int64_t>& list,
          const KnnOptions& options, int64_t nq, std::vector<int64_t>& ids,
          std::vector<double>& dists, core::TraversalStats& stats) {
  ids.assign(nq * options.k, -2);
  dists.assign(nq * options.k, -2.0);
  tbb::task_arena arena(2);
  absl::Status status;
  arena.execute([&] {
    status = core::BlockedScan(space, batch, list, options, nullptr, ids.data(), dists.data(),
                               stats);
  });
  ASSERT_TRUE(status.ok()) << status;
}

// Every listed query's row equals the naive answer bit for bit; unlisted rows are untouched.
void ExpectNaive(const RowMatrix& dist, const PointRows& rows, const QueryBatch& batch,
                 const std::vector<int64_t>& list, const KnnOptions& options,
                 const std::vector<int64_t>& ids, const std::vector<double>& dists) {
  std::vector<char> listed(rows.size(), 0);
  for (int64_t q : list) listed[q] = 1;
  std::vector<int64_t> want_ids(options.k);
  std::vector<double> want_dists(options.k);
  int64_t failures = 0;
  for (int64_t q = 0; q < rows.size() && failures < 3; ++q) {
    const int64_t* got_ids = &ids[q * options.k];
    const double* got_dists = &dists[q * options.k];
    if (!listed[q]) {
      EXPECT_EQ(got_ids[0], -2) << "query " << q << " was not listed";
      continue;
    }
    NaiveKnn(dist, q, rows.ids[q], options, batch.IdBound(q), want_ids.data(),
             want_dists.data());
    for (int64_t r = 0; r < options.k; ++r) {
      if (got_ids[r] != want_ids[r] || !(got_dists[r] == want_dists[r])) {
        ADD_FAILURE() << "query " << q << " (id " << rows.ids[q] << ") rank " << r << ": got ("
                      << got_ids[r] << ", " << got_dists[r] << "), want (" << want_ids[r]
                      << ", " << want_dists[r] << ")";
        ++failures;
        break;
      }
    }
  }
}

TEST(BlockedScanTest, EqualsTheNaiveOracleBitForBit) {
  for (const ScanCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const testing::BuiltSpace built = testing::BuildSpace(c.index, c.layout);
    const MetricSpace& space = built.get();
    const int64_t n = space.size();
    // Batches of one query, of less than a block and of several blocks (with repeats).
    for (int64_t nq : {int64_t{1}, int64_t{37}, int64_t{300}}) {
      core::SplitMix64 rng(static_cast<uint64_t>(nq * 31 + n));
      std::vector<int64_t> query_ids(nq);
      for (int64_t q = 0; q < nq; ++q) query_ids[q] = static_cast<int64_t>(rng.Next() % n);
      query_ids[0] = n - 1;
      const PointRows rows = space.Gather(query_ids);
      const RowMatrix dist = AllDistances(space, rows);
      // Every query, and every third one (the rest of the batch untouched).
      std::vector<int64_t> all(nq), some;
      std::iota(all.begin(), all.end(), 0);
      for (int64_t q = 0; q < nq; q += 3) some.push_back(q);
      for (int64_t k : {int64_t{1}, int64_t{7}, n + 5}) {
        for (int mode = 0; mode < 3; ++mode) {
          KnnOptions options;
          options.k = k;
          options.predecessor_mode = mode == 1;
          options.include_self = mode == 2;
          SCOPED_TRACE(absl::StrCat("nq ", nq, " k ", k, " mode ", mode));
          QueryBatch batch;
          batch.ids = query_ids;
          for (const std::vector<int64_t>* list : {&all, &some}) {
            std::vector<int64_t> ids;
            std::vector<double> dists;
            core::TraversalStats stats;
            Scan(space, batch, *list, options, nq, ids, dists, stats);
            ExpectNaive(dist, rows, batch, *list, options, ids, dists);
            EXPECT_EQ(stats.brute_force_queries, static_cast<int64_t>(list->size()));
          }
        }
      }
    }
  }
}

TEST(BlockedScanTest, OutOfSamplePointsWithIdBounds) {
  for (const ScanCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    if (c.index.factors_supplied) continue;
    const testing::BuiltSpace built = testing::BuildSpace(c.index, c.layout);
    const MetricSpace& space = built.get();
    const int64_t n = space.size();
    const int64_t nq = 300;
    const RowMatrix points = testing::CaseQueryPoints(space.points(), 1.0, 5, nq);
    std::vector<int64_t> bounds(nq);
    core::SplitMix64 rng(9);
    for (int64_t q = 0; q < nq; ++q) bounds[q] = static_cast<int64_t>(rng.Next() % (n + 2)) - 1;
    absl::StatusOr<PointRows> rows = space.Prepare(points.data(), nq);
    ASSERT_TRUE(rows.ok()) << rows.status();
    const RowMatrix dist = AllDistances(space, *rows);
    std::vector<int64_t> all(nq);
    std::iota(all.begin(), all.end(), 0);
    for (bool bounded : {false, true}) {
      KnnOptions options;
      options.k = 9;
      QueryBatch batch;
      batch.points = absl::MakeConstSpan(points.data(), points.size());
      if (bounded) batch.id_bounds = bounds;
      std::vector<int64_t> ids;
      std::vector<double> dists;
      core::TraversalStats stats;
      Scan(space, batch, all, options, nq, ids, dists, stats);
      ExpectNaive(dist, *rows, batch, all, options, ids, dists);
    }
  }
}

// Where the scan splits the candidates of a few queries over tasks, and where it does not, the
// answers are the oracle's too: BruteForceKnn on the same queries, bit for bit.
TEST(BlockedScanTest, SameBitsAsBruteForceOnLargerSets) {
  testing::IndexCase c = testing::ResidualCase("rbf", core::KernelType::kRbf, 0.4, 3, 20000, 32);
  absl::StatusOr<core::IndexData> data = testing::CaseData(c);
  ASSERT_TRUE(data.ok());
  auto index = core::KnnIndex::Build(testing::CaseSpec(c), *std::move(data));
  ASSERT_TRUE(index.ok()) << index.status();
  const MetricSpace& space = (*index)->space();
  for (int64_t nq : {int64_t{3}, int64_t{600}}) {
    std::vector<int64_t> query_ids(nq);
    for (int64_t q = 0; q < nq; ++q) query_ids[q] = (q * 7919 + 13) % space.size();
    std::vector<int64_t> all(nq);
    std::iota(all.begin(), all.end(), 0);
    for (bool predecessor : {false, true}) {
      KnnOptions options;
      options.k = 20;
      options.predecessor_mode = predecessor;
      QueryBatch batch;
      batch.ids = query_ids;
      std::vector<int64_t> ids, want_ids(nq * options.k);
      std::vector<double> dists, want_dists(nq * options.k);
      core::TraversalStats stats;
      Scan(space, batch, all, options, nq, ids, dists, stats);
      ASSERT_TRUE(core::BruteForceKnn(space, batch, options, nullptr, nullptr, want_ids.data(),
                                      want_dists.data())
                      .ok());
      EXPECT_EQ(ids, want_ids) << "nq " << nq << " predecessor " << predecessor;
      for (size_t r = 0; r < dists.size(); ++r) {
        ASSERT_EQ(dists[r], want_dists[r]) << "entry " << r;
      }
    }
  }
}

// RowsToRangeWithin / RowsToRowsWithin: a pair at most its row's limit comes back with a value
// within RoundingBound of the canonical one; a pair above it as that value or +inf.
TEST(BlockedScanTest, WithinKeepsEveryPairUnderTheLimit) {
  for (const ScanCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const testing::BuiltSpace built = testing::BuildSpace(c.index, c.layout);
    const MetricSpace& space = built.get();
    const int64_t n = space.size();
    const int64_t nr = std::min<int64_t>(n, 20);
    std::vector<int64_t> row_ids(nr);
    for (int64_t i = 0; i < nr; ++i) row_ids[i] = (i * 37) % n;
    const PointRows rows = space.Gather(row_ids);
    std::vector<int64_t> all_ids(n);
    std::iota(all_ids.begin(), all_ids.end(), 0);
    const PointRows stored = space.Gather(all_ids);
    std::vector<double> limits(nr);
    for (int64_t i = 0; i < nr; ++i) limits[i] = i == 0 ? kInf : 0.05 * static_cast<double>(i);
    std::vector<double> range(nr * n), by_rows(nr * n), by_ids(nr * n);
    space.RowsToRangeWithin(rows, 0, nr, 0, n, limits.data(), range.data());
    space.RowsToRowsWithin(rows, 0, nr, stored, 0, n, limits.data(), by_rows.data());
    // Against ids (packed from their positions): the same bits as against the gathered rows,
    // also for rows [2, nr) alone and the ids in another order.
    space.RowsToIdsWithin(rows, 0, nr, all_ids, limits.data(), by_ids.data(),
                          [](int64_t, int64_t) {});
    ASSERT_EQ(by_ids, by_rows);
    if (nr > 2) {
      std::vector<int64_t> reversed(all_ids.rbegin(), all_ids.rend());
      std::vector<double> part((nr - 2) * n);
      space.RowsToIdsWithin(rows, 2, nr - 2, reversed, limits.data() + 2, part.data(),
                            [](int64_t, int64_t) {});
      for (int64_t i = 2; i < nr; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          ASSERT_EQ(part[(i - 2) * n + j], by_rows[i * n + n - 1 - j]) << "row " << i;
        }
      }
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < nr; ++i) {
      const double bound = space.RoundingBound(rows, i);
      for (int64_t p = 0; p < n; ++p) {
        const int64_t id = space.id_at(p);
        double canonical;
        space.RowToIds(rows, i, absl::MakeConstSpan(&id, 1), &canonical);
        for (const double got : {range[i * n + p], by_rows[i * n + id]}) {
          if (canonical + bound <= limits[i]) {
            ASSERT_LE(std::fabs(got - canonical), bound) << "row " << i << " id " << id;
            ++kept;
          } else if (got != kInf) {
            ASSERT_LE(std::fabs(got - canonical), bound) << "row " << i << " id " << id;
          }
        }
      }
    }
    EXPECT_GT(kept, 0);
  }
}

}  // namespace
}  // namespace rcknn
