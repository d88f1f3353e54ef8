// The production scan's edge shapes, from an independent reviewer's side: PackedProducts against
// an emulation of its documented summation order on every shape class of its blocking (rows % 6,
// columns % 8, depth % 256, depth below a vector, one row or column), on buffers that end exactly
// where the last row ends (so a sanitizer build sees any read or write past them); and
// BlockedScan on spaces whose sizes straddle its tiles (n and ids around 512), depths around the
// kernel's chunk (m = 1 .. 300), d = 1, k up to and past n, predecessor mode (ids near 0 and
// n - 1, an ordering), include_self, id bounds for points, each query's answer equal bit for bit
// to a naive oracle and to itself in other batches, request splits and thread counts.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/blocked_scan.h"
#include "core/euclidean_space.h"
#include "core/knn_index.h"
#include "core/ordering.h"
#include "core/packed_product.h"
#include "core/random.h"
#include "core/residual_correlation.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/core/scan_oracle.h"
#include "tests/testing/index_cases.h"

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

// ---------------------------------------------------------------------------------------------
// PackedProducts

// The order packed_product.h documents: chunks of 256 of the depth, each a chain from zero (fused
// multiply-adds where the target has them), the chunks' sums added in order.
double DocumentedOrder(const double* a, const double* b, int64_t depth) {
  constexpr int64_t kChunk = 256;
  double total = 0.0;
  for (int64_t k0 = 0; k0 < depth; k0 += kChunk) {
    double s = 0.0;
    for (int64_t t = k0; t < std::min(depth, k0 + kChunk); ++t) {
#if defined(__AVX2__) && defined(__FMA__)
      s = std::fma(a[t], b[t], s);
#else
      s += a[t] * b[t];
#endif
    }
    total = k0 == 0 ? s : total + s;
  }
  return total;
}

// Values of mixed magnitude and sign, so that a different summation order shows in the bits.
std::vector<double> Values(int64_t count, core::SplitMix64& rng) {
  std::vector<double> v(count);
  for (double& x : v) x = rng.Normal() * std::ldexp(1.0, static_cast<int>(rng.UniformBelow(9)) - 4);
  return v;
}

bool SameBits(double x, double y) { return std::memcmp(&x, &y, sizeof(double)) == 0; }

TEST(ScanShapesTest, PackedProductsFollowTheDocumentedOrderOnEveryShape) {
  core::SplitMix64 rng(17);
  const int64_t depths[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 255, 256, 257, 300, 511, 512, 513};
  const int64_t rows[] = {1, 2, 5, 6, 7, 11, 12, 13, 71, 72, 73, 79};
  const int64_t cols[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33};
  int64_t checked = 0;
  for (int64_t depth : depths) {
    for (int64_t na : rows) {
      // Two column counts per (depth, rows), drawn: the cross product of all three is slow under
      // a sanitizer and adds nothing the draws do not.
      for (int draw = 0; draw < 2; ++draw) {
        const int64_t nb = cols[rng.UniformBelow(std::size(cols))];
        const int64_t lda = depth + static_cast<int64_t>(rng.UniformBelow(3));
        const int64_t ldb = depth + static_cast<int64_t>(rng.UniformBelow(3));
        const int64_t ldo = nb + static_cast<int64_t>(rng.UniformBelow(3));
        SCOPED_TRACE(absl::StrCat("depth ", depth, " na ", na, " nb ", nb, " lda ", lda, " ldb ",
                                  ldb, " ldo ", ldo));
        // Each buffer ends where its last row does: no slack for a read or write past it.
        const std::vector<double> a = Values((na - 1) * lda + depth, rng);
        const std::vector<double> b = Values((nb - 1) * ldb + depth, rng);
        std::vector<double> out((na - 1) * ldo + nb, -7.0);
        // B's rows also through pointers: reversed, with one row twice.
        std::vector<const double*> b_rows(nb);
        std::vector<int64_t> b_of(nb);
        for (int64_t j = 0; j < nb; ++j) {
          b_of[j] = j == nb - 1 && nb > 1 ? 0 : nb - 1 - j;
          b_rows[j] = b.data() + b_of[j] * ldb;
        }
        std::vector<double> gathered((na - 1) * ldo + nb, -7.0);
        int64_t next = 0;
        core::PackedProducts(a.data(), lda, na, b.data(), ldb, nb, depth, out.data(), ldo);
        core::PackedProducts(
            a.data(), lda, na, b_rows.data(), nb, depth, gathered.data(), ldo,
            [&](int64_t first, int64_t end) {
              // Ascending, contiguous groups; each row final when handed over.
              ASSERT_EQ(first, next);
              ASSERT_GT(end, first);
              ASSERT_LE(end, na);
              for (int64_t i = first; i < end; ++i) {
                for (int64_t j = 0; j < nb; ++j) {
                  ASSERT_TRUE(SameBits(gathered[i * ldo + j],
                                       DocumentedOrder(a.data() + i * lda,
                                                       b.data() + b_of[j] * ldb, depth)))
                      << "gathered entry " << i << "," << j;
                }
              }
              next = end;
            });
        EXPECT_EQ(next, na);
        for (int64_t i = 0; i < na; ++i) {
          for (int64_t j = 0; j < ldo && i * ldo + j < static_cast<int64_t>(out.size()); ++j) {
            if (j >= nb) {
              ASSERT_EQ(out[i * ldo + j], -7.0) << "padding " << i << "," << j << " written";
              ASSERT_EQ(gathered[i * ldo + j], -7.0) << "padding " << i << "," << j;
              continue;
            }
            const double want =
                DocumentedOrder(a.data() + i * lda, b.data() + j * ldb, depth);
            ASSERT_TRUE(SameBits(out[i * ldo + j], want))
                << "entry " << i << "," << j << ": " << out[i * ldo + j] << " vs " << want;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
}

// The scratch is per thread and grows and shrinks its use between calls: a small call after a
// large one (stale panels past the small one's end) gives the same bits as on a fresh thread.
TEST(ScanShapesTest, PackedProductsIgnoreStaleScratch) {
  core::SplitMix64 rng(5);
  const std::vector<double> big_a = Values(150 * 600, rng), big_b = Values(70 * 600, rng);
  std::vector<double> big_out(150 * 70);
  const std::vector<double> a = Values(7 * 9, rng), b = Values(5 * 9, rng);
  std::vector<double> before(7 * 5), after(7 * 5);
  core::PackedProducts(a.data(), 9, 7, b.data(), 9, 5, 9, before.data(), 5);
  core::PackedProducts(big_a.data(), 600, 150, big_b.data(), 600, 70, 600, big_out.data(), 70);
  core::PackedProducts(a.data(), 9, 7, b.data(), 9, 5, 9, after.data(), 5);
  EXPECT_EQ(0, std::memcmp(before.data(), after.data(), before.size() * sizeof(double)));
}

// ---------------------------------------------------------------------------------------------
// BlockedScan

struct Shape {
  std::string name;
  testing::IndexCase index;
  bool layout;  // through KnnIndex (tree order) or the bare space (positions = ids)
};

std::vector<Shape> Shapes() {
  std::vector<Shape> shapes;
  auto add = [&](testing::IndexCase c, bool layout) {
    shapes.push_back({absl::StrCat(c.name, layout ? "/tree_order" : "/by_id"), c, layout});
  };
  using core::KernelType;
  // d = 1 and m = 1: depth 1, below one vector of the kernel.
  add(testing::ResidualCase("d1_m1", KernelType::kRbf, 0.5, 1, 45, 1), false);
  add(testing::ResidualCase("d1_m1", KernelType::kRbf, 0.5, 1, 45, 1), true);
  // n = 2, and n = 7 with m = n (every point an inducing point).
  add(testing::ResidualCase("n2", KernelType::kMatern32, 1.0, 2, 2, 2), true);
  add(testing::ResidualCase("n7_m7", KernelType::kRbf, 1.0, 2, 7, 7), false);
  // n around a tile (512), depths around a vector and around the chunk.
  add(testing::ResidualCase("n511_m7", KernelType::kMatern52, 0.7, 3, 511, 7), true);
  add(testing::ResidualCase("n512_m8", KernelType::kRbf, 0.6, 2, 512, 8), false);
  testing::IndexCase n513 = testing::ResidualCase("n513_m9_dup", KernelType::kRbf, 0.6, 2, 513, 9);
  n513.duplicates = 0.15;  // ties at equal distance across tile edges
  add(n513, true);
  add(testing::ResidualCase("n600_m257", KernelType::kRbf, 0.8, 2, 600, 257), true);
  add(testing::ResidualCase("n700_m300", KernelType::kMatern12, 1.5, 4, 700, 300), false);
  testing::IndexCase supplied =
      testing::ResidualCase("n1030_m13_supplied", KernelType::kMatern32, 0.5, 3, 1030, 13);
  supplied.factors_supplied = true;
  supplied.duplicates = 0.05;
  add(supplied, true);
  testing::IndexCase grid = testing::ResidualCase("n1100_grid", KernelType::kRbf, 1.0, 2, 1100, 16);
  grid.grid = 0.5;
  add(grid, true);
  // Enough points (over 2 x 4096) that few queries split the candidates over tasks.
  add(testing::ResidualCase("n8300_m3", KernelType::kRbf, 0.3, 2, 8300, 3), true);
  add(testing::EuclideanCase("euclid_d1_n513", 1, 513), true);
  return shapes;
}

// Query ids: both ends, the tile edges that exist, random ones and a repeat.
std::vector<int64_t> QueryIds(int64_t n, uint64_t seed) {
  std::vector<int64_t> ids;
  for (int64_t id : {int64_t{0}, int64_t{1}, int64_t{2}, n - 2, n - 1, int64_t{511}, int64_t{512},
                     int64_t{513}, int64_t{1023}, int64_t{1024}, int64_t{4096}, int64_t{4097}}) {
    if (id >= 0 && id < n) ids.push_back(id);
  }
  core::SplitMix64 rng(seed);
  for (int i = 0; i < 12; ++i) ids.push_back(static_cast<int64_t>(rng.UniformBelow(n)));
  ids.push_back(ids[ids.size() / 2]);
  std::vector<int64_t> shuffled = ids;
  for (size_t i = shuffled.size(); i > 1; --i) {
    std::swap(shuffled[i - 1], shuffled[rng.UniformBelow(i)]);
  }
  return shuffled;
}

struct Answer {
  std::vector<int64_t> ids;
  std::vector<double> dists;
};

// BlockedScan over `list` on `threads` threads; rows not listed keep -2. Also checks that the
// per-query evaluation counts add up to the total.
void Scan(const MetricSpace& space, const QueryBatch& batch, const std::vector<int64_t>& list,
          const KnnOptions& options, int64_t nq, int threads, Answer& answer) {
  ASSERT_TRUE(core::ValidateQuery(batch, options, space.size(), space.dimension()).ok());
  if (answer.ids.empty()) {
    answer.ids.assign(nq * options.k, -2);
    answer.dists.assign(nq * options.k, -2.0);
  }
  std::vector<int64_t> evaluations(nq, 0);
  core::TraversalStats stats;
  tbb::task_arena arena(threads);
  absl::Status status;
  arena.execute([&] {
    status = core::BlockedScan(space, batch, list, options, nullptr, answer.ids.data(),
                               answer.dists.data(), stats, absl::MakeSpan(evaluations));
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::accumulate(evaluations.begin(), evaluations.end(), int64_t{0}),
            stats.distance_evaluations);
  EXPECT_EQ(stats.brute_force_queries, static_cast<int64_t>(list.size()));
}

// Row q of `got` equals the oracle's, ids and distance bits.
void ExpectRow(const Answer& got, int64_t q, const int64_t* want_ids, const double* want_dists,
               int64_t k, const std::string& what) {
  for (int64_t r = 0; r < k; ++r) {
    const int64_t id = got.ids[q * k + r];
    const double d = got.dists[q * k + r];
    if (id != want_ids[r] || !SameBits(d, want_dists[r])) {
      ADD_FAILURE() << what << ": query " << q << " rank " << r << ": got (" << id << ", " << d
                    << "), want (" << want_ids[r] << ", " << want_dists[r] << ")";
      return;
    }
  }
}

// Every query of `batch` answered by the full batch on 2 threads, alone on 1 thread, and in a
// random split of the batch into three requests over shuffled lists on 1 and 2 threads: each the
// oracle's answer bit for bit.
void CheckBatch(const MetricSpace& space, const QueryBatch& batch, const PointRows& rows,
                const RowMatrix& dist, const KnnOptions& options, uint64_t seed) {
  const int64_t nq = rows.size();
  const int64_t k = options.k;
  std::vector<int64_t> want_ids(nq * k);
  std::vector<double> want_dists(nq * k);
  for (int64_t q = 0; q < nq; ++q) {
    NaiveKnn(dist, q, rows.ids[q], options, batch.IdBound(q), &want_ids[q * k],
             &want_dists[q * k]);
  }
  std::vector<int64_t> all(nq);
  std::iota(all.begin(), all.end(), 0);
  Answer full;
  Scan(space, batch, all, options, nq, 2, full);
  for (int64_t q = 0; q < nq; ++q) {
    ExpectRow(full, q, &want_ids[q * k], &want_dists[q * k], k, "full batch");
  }
  Answer alone;
  for (int64_t q = 0; q < nq; ++q) {
    Scan(space, batch, {q}, options, nq, 1, alone);
  }
  core::SplitMix64 rng(seed);
  std::vector<int64_t> shuffled = all;
  for (size_t i = shuffled.size(); i > 1; --i) {
    std::swap(shuffled[i - 1], shuffled[rng.UniformBelow(i)]);
  }
  const size_t cut1 = rng.UniformBelow(shuffled.size() + 1);
  const size_t cut2 = cut1 + rng.UniformBelow(shuffled.size() - cut1 + 1);
  for (int threads : {1, 2}) {
    Answer split;
    Scan(space, batch, {shuffled.begin(), shuffled.begin() + cut1}, options, nq, threads, split);
    Scan(space, batch, {shuffled.begin() + cut1, shuffled.begin() + cut2}, options, nq, threads,
         split);
    Scan(space, batch, {shuffled.begin() + cut2, shuffled.end()}, options, nq, threads, split);
    for (int64_t q = 0; q < nq; ++q) {
      ExpectRow(split, q, &want_ids[q * k], &want_dists[q * k], k,
                absl::StrCat("split on ", threads, " threads"));
    }
  }
  for (int64_t q = 0; q < nq; ++q) {
    ExpectRow(alone, q, &want_ids[q * k], &want_dists[q * k], k, "alone");
  }
  // Bit identity between the runs (already implied by the oracle; stated for the record).
  EXPECT_EQ(0, std::memcmp(full.dists.data(), alone.dists.data(), nq * k * sizeof(double)));
}

std::vector<int64_t> Ks(int64_t n) {
  std::vector<int64_t> ks = {1, 3, n - 1, n, n + 2};
  ks.erase(std::remove_if(ks.begin(), ks.end(), [](int64_t k) { return k < 1; }), ks.end());
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  // Large k on large n costs the oracle nothing but the scan's candidate sets a lot: one of them.
  if (n > 1200) ks = {1, 7, 40};
  return ks;
}

TEST(ScanShapesTest, QueriesByIdAreTheOraclesWhateverTheBatch) {
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.name);
    const testing::BuiltSpace built = testing::BuildSpace(s.index, s.layout);
    const MetricSpace& space = built.get();
    const int64_t n = space.size();
    const std::vector<int64_t> query_ids = QueryIds(n, static_cast<uint64_t>(n) * 7 + 1);
    const PointRows rows = space.Gather(query_ids);
    const RowMatrix dist = AllDistances(space, rows);
    QueryBatch batch;
    batch.ids = query_ids;
    // An ordering (predecessor mode by rank): a random permutation; with a tree, its bounds.
    std::vector<int64_t> permutation(n);
    std::iota(permutation.begin(), permutation.end(), 0);
    core::SplitMix64 rng(static_cast<uint64_t>(n) + 3);
    for (int64_t i = n; i > 1; --i) std::swap(permutation[i - 1], permutation[rng.UniformBelow(i)]);
    std::vector<int64_t> rank(n), subtree_min_rank(n, 0);
    for (int64_t r = 0; r < n; ++r) rank[permutation[r]] = r;
    std::optional<core::IndexOrdering> ordering;
    if (built.index) {
      absl::StatusOr<core::IndexOrdering> created =
          core::IndexOrdering::Create(built.index->tree(), permutation);
      ASSERT_TRUE(created.ok()) << created.status();
      ordering = *std::move(created);
      subtree_min_rank = ordering->subtree_min_rank();
    }
    for (int64_t k : Ks(n)) {
      for (int mode = 0; mode < 4; ++mode) {
        SCOPED_TRACE(absl::StrCat("k ", k, " mode ", mode));
        KnnOptions options;
        options.k = k;
        options.include_self = mode == 1;
        options.predecessor_mode = mode >= 2;
        if (mode == 3) {
          options.rank = rank;
          options.subtree_min_rank = subtree_min_rank;
        }
        CheckBatch(space, batch, rows, dist, options, static_cast<uint64_t>(k * 4 + mode));
        // The index's own search (tree, planner, scan fall-back) on 1 and 2 threads: the same.
        if (!built.index || ::testing::Test::HasFailure()) continue;
        std::vector<int64_t> want_ids(rows.size() * k), got_ids(rows.size() * k);
        std::vector<double> want_dists(rows.size() * k), got_dists(rows.size() * k);
        for (int64_t q = 0; q < rows.size(); ++q) {
          NaiveKnn(dist, q, rows.ids[q], options, batch.IdBound(q), &want_ids[q * k],
                   &want_dists[q * k]);
        }
        for (int threads : {1, 2}) {
          tbb::task_arena arena(threads);
          ASSERT_TRUE(built.index
                          ->Search(batch, options, &arena, nullptr, got_ids.data(),
                                   got_dists.data())
                          .ok());
          EXPECT_EQ(got_ids, want_ids) << "index search on " << threads << " threads";
          EXPECT_EQ(0, std::memcmp(got_dists.data(), want_dists.data(),
                                   want_dists.size() * sizeof(double)))
              << "index search on " << threads << " threads";
        }
      }
    }
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(ScanShapesTest, PointsWithIdBoundsAreTheOraclesWhateverTheBatch) {
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.name);
    if (s.index.factors_supplied) continue;  // no out-of-sample queries
    const testing::BuiltSpace built = testing::BuildSpace(s.index, s.layout);
    const MetricSpace& space = built.get();
    const int64_t n = space.size();
    // Normal points, copies of stored ones (distance 0 by coincidence), one far away.
    const int64_t nq = 26;
    const RowMatrix points = testing::CaseQueryPoints(space.points(), 1.0, 11, nq);
    absl::StatusOr<PointRows> rows = space.Prepare(points.data(), nq);
    ASSERT_TRUE(rows.ok()) << rows.status();
    const RowMatrix dist = AllDistances(space, *rows);
    // Bounds around 0, the tile edges and n.
    std::vector<int64_t> bounds;
    core::SplitMix64 rng(static_cast<uint64_t>(n));
    const int64_t edges[] = {-1, 0, 1, 2, 511, 512, 513, n - 1, n, n + 1,
                             std::numeric_limits<int64_t>::max()};
    for (int64_t q = 0; q < nq; ++q) {
      bounds.push_back(q < static_cast<int64_t>(std::size(edges))
                           ? edges[q]
                           : static_cast<int64_t>(rng.UniformBelow(n + 2)));
    }
    for (bool bounded : {false, true}) {
      for (int64_t k : Ks(n)) {
        SCOPED_TRACE(absl::StrCat("bounded ", bounded, " k ", k));
        KnnOptions options;
        options.k = k;
        QueryBatch batch;
        batch.points = absl::MakeConstSpan(points.data(), points.size());
        if (bounded) batch.id_bounds = bounds;
        CheckBatch(space, batch, *rows, dist, options, static_cast<uint64_t>(k + bounded));
      }
    }
    if (::testing::Test::HasFailure()) return;
  }
}

// RowsToIdsWithin (packed from positions) against RowsToRowsWithin on the gathered rows: the same
// bits for any id list (repeats, unsorted, a single id) and any first row, at depths on both
// sides of the chunk.
TEST(ScanShapesTest, RowsToIdsWithinIsTheGatheredProductBitForBit) {
  for (int64_t m : {1, 5, 256, 257}) {
    testing::IndexCase c = testing::ResidualCase("ids", core::KernelType::kRbf, 0.7, 2, 600, m);
    absl::StatusOr<core::IndexData> data = testing::CaseData(c);
    ASSERT_TRUE(data.ok());
    auto index = core::KnnIndex::Build(testing::CaseSpec(c), *std::move(data));
    ASSERT_TRUE(index.ok()) << index.status();
    const MetricSpace& space = (*index)->space();
    core::SplitMix64 rng(static_cast<uint64_t>(m));
    std::vector<int64_t> row_ids(23);
    for (int64_t& id : row_ids) id = static_cast<int64_t>(rng.UniformBelow(space.size()));
    const PointRows rows = space.Gather(row_ids);
    std::vector<double> limits(rows.size());
    for (size_t i = 0; i < limits.size(); ++i) limits[i] = i % 3 == 0 ? kInf : 0.1 * (i % 7);
    for (int64_t count : {1, 7, 8, 9, 512, 513}) {
      std::vector<int64_t> ids(count);
      for (int64_t& id : ids) id = static_cast<int64_t>(rng.UniformBelow(space.size()));
      if (count > 2) ids[count - 1] = ids[0];
      const PointRows gathered = space.Gather(ids);
      for (int64_t first : {int64_t{0}, int64_t{5}, int64_t{22}}) {
        const int64_t num = rows.size() - first;
        std::vector<double> want(num * count), got(num * count);
        space.RowsToRowsWithin(rows, first, num, gathered, 0, count, limits.data() + first,
                               want.data());
        std::vector<char> ready(num, 0);
        space.RowsToIdsWithin(rows, first, num, ids, limits.data() + first, got.data(),
                              [&](int64_t b, int64_t e) {
                                for (int64_t i = b; i < e; ++i) ++ready[i];
                              });
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(double)))
            << "m " << m << " count " << count << " first " << first;
        EXPECT_EQ(std::count(ready.begin(), ready.end(), 1), num) << "each row ready once";
      }
    }
  }
}

}  // namespace
}  // namespace rcknn
