// The index file (core/index_file.h) and KnnIndex::Restore over what it holds: on many seeded
// random cases the restored index holds the same tree, passes the invariant checker and answers
// every query bit for bit as the built one; other points or another kernel are DATA_LOSS; a
// checksum-valid file with a structurally broken tree is DATA_LOSS from the structural check;
// byte flips anywhere in a saved index are DATA_LOSS; the gold data set answers as shipped after
// a round trip.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cover_tree.h"
#include "core/index_file.h"
#include "core/knn_index.h"
#include "core/random.h"
#include "core/residual_correlation.h"
#include "core/snapshot_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/testing/index_cases.h"
#include "tests/testing/random_points.h"
#include "tests/testing/shared_data.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

using core::CoverTree;
using core::CoverTreeStorage;
using core::IndexData;
using core::IndexSpec;
using core::KernelType;
using core::KnnIndex;
using core::KnnOptions;
using core::Metric;
using core::QueryBatch;
using core::RowMatrix;
using core::SnapshotKind;
using core::SnapshotReader;
using core::SnapshotWriter;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Cases.

using Case = testing::IndexCase;
using testing::CasePoints;
using testing::CaseSpec;

// The same data on every call (Build and Restore each consume one).
IndexData Data(const Case& c) {
  absl::StatusOr<IndexData> data = testing::CaseData(c);
  EXPECT_TRUE(data.ok()) << data.status();
  return data.ok() ? *std::move(data) : IndexData();
}

std::vector<int64_t> QueryIds(int64_t n, uint64_t seed) { return testing::CaseQueryIds(n, seed, 40); }

RowMatrix QueryPoints(const RowMatrix& stored, uint64_t seed) {
  return testing::CaseQueryPoints(stored, 1.0, seed, 24);
}

// ---------------------------------------------------------------------------------------------
// Files.

absl::Status SaveIndex(const KnnIndex& index, const std::string& path) {
  return core::WriteIndexFile(path, core::IndexFileHeaderOf(index, "owner", 3, 0.75),
                              index.tree().storage());
}

absl::StatusOr<std::unique_ptr<KnnIndex>> RestoreIndex(const IndexSpec& spec, IndexData data,
                                                       const std::string& path,
                                                       tbb::task_arena* arena) {
  absl::StatusOr<core::IndexFileContents> contents = core::ReadIndexFile(path);
  if (!contents.ok()) return contents.status();
  return core::RestoreFromIndexFile(path, *std::move(contents), spec, std::move(data), arena);
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

struct Answer {
  std::vector<int64_t> ids;
  std::vector<double> dists;
  std::vector<int64_t> evaluations;
};

Answer Search(const KnnIndex& index, const QueryBatch& batch, const KnnOptions& options,
              tbb::task_arena* arena) {
  const int64_t nq = core::NumQueries(batch, index.dimension());
  Answer a;
  a.ids.assign(nq * options.k, -7);
  a.dists.assign(nq * options.k, -7.0);
  a.evaluations.assign(nq, -1);
  const absl::Status status = index.Search(batch, options, arena, nullptr, a.ids.data(),
                                           a.dists.data(), nullptr, absl::MakeSpan(a.evaluations));
  EXPECT_TRUE(status.ok()) << status;
  return a;
}

// Bit for bit: the same ids, distances with the same bits (memcmp, so -0.0 != 0.0 and NaN ==
// NaN of the same payload), the same per-query distance evaluations.
void ExpectIdentical(const Answer& built, const Answer& restored, const std::string& what) {
  EXPECT_EQ(built.ids, restored.ids) << what;
  ASSERT_EQ(built.dists.size(), restored.dists.size()) << what;
  EXPECT_EQ(
      std::memcmp(built.dists.data(), restored.dists.data(), built.dists.size() * sizeof(double)),
      0)
      << what << ": distances differ in their bits";
  EXPECT_EQ(built.evaluations, restored.evaluations) << what;
}

// Every saved array the same, bit for bit.
void ExpectSameStorage(const CoverTreeStorage& a, const CoverTreeStorage& b) {
  EXPECT_EQ(std::memcmp(&a.base, &b.base, sizeof(double)), 0);
  std::vector<std::pair<const char*, std::string>> bytes_a, bytes_b;
  auto collect = [](std::vector<std::pair<const char*, std::string>>& out) {
    return [&out](const char* name, const auto& array, auto) {
      out.emplace_back(name, std::string(reinterpret_cast<const char*>(array.data()),
                                         array.size() * sizeof(array[0])));
    };
  };
  CoverTreeStorage::ForEachArray(a, collect(bytes_a));
  CoverTreeStorage::ForEachArray(b, collect(bytes_b));
  ASSERT_EQ(bytes_a.size(), bytes_b.size());
  for (size_t i = 0; i < bytes_a.size(); ++i) {
    EXPECT_TRUE(bytes_a[i].second == bytes_b[i].second) << bytes_a[i].first << " differs";
  }
}

void ExpectSameTree(const CoverTree& a, const CoverTree& b) {
  ASSERT_EQ(a.size(), b.size());
  ExpectSameStorage(a.storage(), b.storage());
}

// The slack of knn_search_test's CheckCase: the default 1e-6, or the rounding of the metric near
// 0 where every residual variance is below the jitter level.
double InvariantSlack(const core::MetricSpace& space, double variance) {
  double slack = 1e-6;
  if (const auto* residual = dynamic_cast<const core::ResidualSpace*>(&space)) {
    const double p_min = residual->p().minCoeff();
    if (p_min < 0.5e-6 * variance) {
      const double m = static_cast<double>(residual->v().cols());
      slack = 2.0 * std::sqrt((m + 16.0) * DBL_EPSILON * variance / p_min);
    }
  }
  return slack;
}

// ---------------------------------------------------------------------------------------------

class IndexSnapshotTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_.Path(name); }

  std::unique_ptr<KnnIndex> Build(const Case& c) {
    absl::StatusOr<std::unique_ptr<KnnIndex>> index =
        KnnIndex::Build(CaseSpec(c), Data(c), &arena_);
    EXPECT_TRUE(index.ok()) << c.name << ": " << index.status();
    return index.ok() ? *std::move(index) : nullptr;
  }

  // Build -> Save -> Restore, then the restored index against the built one.
  void RoundTrip(const Case& c) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<KnnIndex> built = Build(c);
    ASSERT_NE(built, nullptr);
    const std::string path = Path(c.name);
    const absl::Status saved = SaveIndex(*built, path);
    ASSERT_TRUE(saved.ok()) << saved;
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
        RestoreIndex(CaseSpec(c), Data(c), path, &arena_);
    ASSERT_TRUE(restored.ok()) << restored.status();
    const KnnIndex& index = **restored;
    ASSERT_EQ(index.size(), c.n);
    EXPECT_EQ(index.space().Fingerprint(), built->space().Fingerprint());
    EXPECT_EQ(index.timings().factor_seconds, built->timings().factor_seconds);
    EXPECT_EQ(index.timings().tree_seconds, built->timings().tree_seconds);
    ExpectSameTree(built->tree(), index.tree());
    const absl::Status invariants =
        index.tree().CheckInvariants(index.space(), InvariantSlack(index.space(), c.variance));
    EXPECT_TRUE(invariants.ok()) << invariants;

    const std::vector<int64_t> ids = QueryIds(c.n, c.seed + 3);
    QueryBatch by_id;
    by_id.ids = ids;
    for (int64_t k : {int64_t{1}, int64_t{10}, c.n + 2}) {
      for (int mode = 0; mode < 3; ++mode) {
        KnnOptions options;
        options.k = k;
        options.include_self = mode == 1;
        options.predecessor_mode = mode == 2;
        ExpectIdentical(Search(*built, by_id, options, &arena_),
                        Search(index, by_id, options, &arena_),
                        absl::StrCat("by id, k=", k, " mode ", mode));
      }
    }
    if (c.factors_supplied) return;  // no out-of-sample queries without inducing points
    const RowMatrix points = QueryPoints(CasePoints(c), c.seed + 4);
    QueryBatch by_point;
    by_point.points = absl::MakeConstSpan(points.data(), points.size());
    for (int64_t k : {int64_t{1}, int64_t{10}}) {
      KnnOptions options;
      options.k = k;
      ExpectIdentical(Search(*built, by_point, options, &arena_),
                      Search(index, by_point, options, &arena_),
                      absl::StrCat("query points, k=", k));
    }
  }

  tbb::task_arena arena_{2};
  testing::TempDir dir_{"rcknn_index_snapshot"};
};

Case Residual(std::string name, KernelType kernel, double lengthscale, int d, int64_t n, int64_t m,
              double base, uint64_t seed) {
  Case c = testing::ResidualCase(std::move(name), kernel, lengthscale, d, n, m);
  c.base = base;
  c.seed = seed;
  return c;
}

Case Euclidean(std::string name, int d, int64_t n, double base, uint64_t seed) {
  Case c = testing::EuclideanCase(std::move(name), d, n);
  c.base = base;
  c.seed = seed;
  return c;
}

TEST_F(IndexSnapshotTest, ResidualWithComputedFactorsRoundTrips) {
  RoundTrip(Residual("resid_n1", KernelType::kRbf, 1.0, 2, 1, 1, 1.5, 1));
  RoundTrip(Residual("resid_n2", KernelType::kMatern32, 0.7, 2, 2, 2, 2.0, 2));
  RoundTrip(Residual("resid_sparse", KernelType::kRbf, 0.3, 3, 2000, 32, 1.5, 3));
  RoundTrip(Residual("resid_dense", KernelType::kMatern32, 2.0, 2, 3000, 48, 1.3, 4));
  Case ard = Residual("resid_ard", KernelType::kMatern52, 1.0, 4, 1200, 40, 2.0, 5);
  ard.lengthscales = {0.5, 1.5, 1.0, 2.0};
  ard.variance = 2.5;
  RoundTrip(ard);
  Case dup = Residual("resid_duplicates", KernelType::kRbf, 0.8, 2, 900, 24, 1.5, 6);
  dup.duplicates = 0.2;
  RoundTrip(dup);
}

TEST_F(IndexSnapshotTest, ResidualWithSuppliedFactorsRoundTrips) {
  Case a = Residual("supplied_small", KernelType::kRbf, 1.0, 2, 3, 3, 1.5, 11);
  a.factors_supplied = true;
  RoundTrip(a);
  Case b = Residual("supplied", KernelType::kMatern12, 0.5, 3, 1500, 32, 1.3, 12);
  b.factors_supplied = true;
  b.duplicates = 0.05;
  RoundTrip(b);
}

TEST_F(IndexSnapshotTest, EuclideanRoundTrips) {
  RoundTrip(Euclidean("euclid_n1", 3, 1, 2.0, 21));
  RoundTrip(Euclidean("euclid_2000", 3, 2000, 1.3, 22));
  Case dup = Euclidean("euclid_duplicates", 2, 1000, 1.5, 23);
  dup.duplicates = 0.25;
  RoundTrip(dup);
}

// Seeded random settings: metric, kernel, dimension, size (1 to a few thousand), base,
// duplicates and supplied factors all vary.
TEST_F(IndexSnapshotTest, RandomCasesRoundTrip) {
  const KernelType kernels[] = {KernelType::kRbf, KernelType::kMatern12, KernelType::kMatern32,
                                KernelType::kMatern52};
  const double bases[] = {1.3, 1.5, 2.0};
  const int64_t sizes[] = {1, 5, 40, 300, 2500, 17, 800, 2, 1200, 90, 3000, 450};
  core::SplitMix64 rng(31415);
  for (int i = 0; i < 12; ++i) {
    Case c;
    c.metric = i % 4 == 3 ? Metric::kEuclidean : Metric::kResidualCorrelation;
    c.kernel = kernels[rng.UniformBelow(4)];
    c.d = 1 + static_cast<int>(rng.UniformBelow(5));
    c.n = sizes[i];
    c.variance = 0.5 + 2.0 * rng.UniformDouble();
    c.lengthscales = {0.2 + 2.5 * rng.UniformDouble()};
    c.m = std::max<int64_t>(1, std::min<int64_t>(c.n, 8 + 8 * (i % 5)));
    c.base = bases[i % 3];
    c.duplicates = i % 3 == 1 ? 0.1 : 0.0;
    c.factors_supplied = c.metric == Metric::kResidualCorrelation && i % 5 == 2;
    c.seed = 500 + i;
    c.name = absl::StrCat("random_", i, c.metric == Metric::kEuclidean ? "_euclid" : "_resid", "_",
                          core::KernelTypeName(c.kernel), "_d", c.d, "_n", c.n, "_b", c.base,
                          c.factors_supplied ? "_supplied" : "");
    RoundTrip(c);
  }
}

// The factors are recomputed on restore: on another thread count they must come out bit for bit
// the same, or the fingerprint check would refuse every index saved elsewhere.
TEST_F(IndexSnapshotTest, RestoresOnAnotherThreadCount) {
  const Case c = Residual("resid", KernelType::kMatern32, 1.0, 3, 2100, 64, 1.5, 81);
  std::unique_ptr<KnnIndex> built = Build(c);
  ASSERT_NE(built, nullptr);
  const std::string path = Path("index");
  ASSERT_TRUE(SaveIndex(*built, path).ok());
  tbb::task_arena one(1);
  tbb::task_arena three(3);
  for (tbb::task_arena* arena : {&one, &three, static_cast<tbb::task_arena*>(nullptr)}) {
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
        RestoreIndex(CaseSpec(c), Data(c), path, arena);
    ASSERT_TRUE(restored.ok()) << restored.status();
    const std::vector<int64_t> ids = QueryIds(c.n, 82);
    QueryBatch batch;
    batch.ids = ids;
    KnnOptions options;
    options.k = 10;
    ExpectIdentical(Search(*built, batch, options, &arena_),
                    Search(**restored, batch, options, &arena_), "another thread count");
  }
}

// A tree saved over factors that this build computes differently (the fingerprint of V and p
// differs, the points and kernel are the same): given spaces are refused, computed ones get the
// tree built again over the recomputed factors.
TEST_F(IndexSnapshotTest, OtherComputedFactorsRebuildTheTree) {
  Case computed = Residual("computed", KernelType::kRbf, 1.0, 2, 400, 16, 1.5, 71);
  Case supplied = computed;
  supplied.name = "supplied";
  supplied.factors_supplied = true;
  Case euclid = Euclidean("euclid", 2, 400, 1.5, 72);
  for (const Case& c : {computed, supplied, euclid}) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<KnnIndex> built = Build(c);
    ASSERT_NE(built, nullptr);
    const std::string path = Path(c.name);
    core::IndexFileHeader header = core::IndexFileHeaderOf(*built, "owner", 3, 0.75);
    header.space_fingerprint ^= uint64_t{1};
    ASSERT_TRUE(core::WriteIndexFile(path, header, built->tree().storage()).ok());
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
        RestoreIndex(CaseSpec(c), Data(c), path, &arena_);
    if (c.metric == Metric::kEuclidean || c.factors_supplied) {
      EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
      EXPECT_THAT(restored.status().message(), HasSubstr("different metric space"));
      continue;
    }
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_TRUE((*restored)->tree_rebuilt());
    EXPECT_TRUE((*restored)->tree().CheckInvariants((*restored)->space()).ok());
    // Here the factors are in fact the same, so the rebuilt tree is the built one.
    ExpectSameTree(built->tree(), (*restored)->tree());
    const std::vector<int64_t> ids = QueryIds(c.n, 73);
    QueryBatch batch;
    batch.ids = ids;
    KnnOptions options;
    options.k = 10;
    ExpectIdentical(Search(*built, batch, options, &arena_),
                    Search(**restored, batch, options, &arena_), "rebuilt tree");
  }
  // The saved fingerprint itself: an unchanged file adopts its tree.
  const Case c = computed;
  std::unique_ptr<KnnIndex> built = Build(c);
  ASSERT_NE(built, nullptr);
  const std::string path = Path("unchanged");
  ASSERT_TRUE(SaveIndex(*built, path).ok());
  absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
      RestoreIndex(CaseSpec(c), Data(c), path, &arena_);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_FALSE((*restored)->tree_rebuilt());
}

// Points or kernel other than the saved index's: with given spaces the fingerprint refuses the
// tree (DATA_LOSS); with computed factors the tree is built again over the space of the data.
TEST_F(IndexSnapshotTest, OtherPointsOrKernelAreRefusedOrRebuilt) {
  Case computed = Residual("computed", KernelType::kRbf, 1.0, 2, 300, 16, 1.5, 41);
  Case supplied = computed;
  supplied.name = "supplied";
  supplied.factors_supplied = true;
  Case euclid = Euclidean("euclid", 2, 300, 1.5, 42);
  for (const Case& c : {computed, supplied, euclid}) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<KnnIndex> built = Build(c);
    ASSERT_NE(built, nullptr);
    const std::string path = Path(c.name);
    ASSERT_TRUE(SaveIndex(*built, path).ok());
    auto expect_other_space = [&](const IndexSpec& spec, IndexData data, const std::string& what) {
      absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
          RestoreIndex(spec, std::move(data), path, &arena_);
      if (c.metric == Metric::kResidualCorrelation && !c.factors_supplied) {
        ASSERT_TRUE(restored.ok()) << what << ": " << restored.status();
        EXPECT_TRUE((*restored)->tree_rebuilt()) << what;
        EXPECT_TRUE((*restored)->tree().CheckInvariants((*restored)->space()).ok()) << what;
        return;
      }
      EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss)
          << what << ": " << restored.status();
      EXPECT_THAT(restored.status().message(), HasSubstr("different metric space")) << what;
      EXPECT_THAT(restored.status().message(), HasSubstr(path)) << what;
    };
    // One coordinate of one point, by one ulp.
    IndexData moved = Data(c);
    moved.points(123, 1) = std::nextafter(moved.points(123, 1), 1e9);
    expect_other_space(CaseSpec(c), std::move(moved), "one coordinate");
    if (c.factors_supplied) {
      IndexData factors = Data(c);
      factors.factors(7, 3) += 1e-12;
      expect_other_space(CaseSpec(c), std::move(factors), "one factor");
      IndexData variances = Data(c);
      variances.residual_variances(9) *= 1.0 + 1e-12;
      expect_other_space(CaseSpec(c), std::move(variances), "one residual variance");
    }
    if (c.metric == Metric::kResidualCorrelation) {
      // The kernel enters every distance, also with supplied V and p.
      IndexSpec other_variance = CaseSpec(c);
      other_variance.residual.kernel.variance *= 1.5;
      expect_other_space(other_variance, Data(c), "kernel variance");
      IndexSpec other_type = CaseSpec(c);
      other_type.residual.kernel.type = KernelType::kMatern32;
      expect_other_space(other_type, Data(c), "kernel type");
      IndexSpec other_lengthscale = CaseSpec(c);
      other_lengthscale.residual.kernel.lengthscales = {1.25};
      expect_other_space(other_lengthscale, Data(c), "lengthscale");
    }
    // The unchanged data still restores after all that.
    absl::StatusOr<std::unique_ptr<KnnIndex>> again =
        RestoreIndex(CaseSpec(c), Data(c), path, &arena_);
    EXPECT_TRUE(again.ok()) << again.status();
  }
}

TEST_F(IndexSnapshotTest, MismatchedSpecSizeOrKindIsAnError) {
  const Case c = Euclidean("euclid", 2, 200, 1.5, 51);
  std::unique_ptr<KnnIndex> built = Build(c);
  ASSERT_NE(built, nullptr);
  const std::string path = Path("index");
  ASSERT_TRUE(SaveIndex(*built, path).ok());

  IndexSpec other_base = CaseSpec(c);
  other_base.tree.base = 2.0;
  absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
      RestoreIndex(other_base, Data(c), path, &arena_);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
  EXPECT_THAT(restored.status().message(), HasSubstr("base"));

  IndexData fewer = Data(c);
  fewer.points.conservativeResize(199, 2);
  restored = RestoreIndex(CaseSpec(c), std::move(fewer), path, &arena_);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
  EXPECT_THAT(restored.status().message(), HasSubstr("holds 200 points"));

  IndexSpec wrong_dimension = CaseSpec(c);
  wrong_dimension.dimension = 3;
  restored = RestoreIndex(wrong_dimension, Data(c), path, &arena_);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kInvalidArgument) << restored.status();

  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(path, SnapshotKind::kIndexSpec);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << reader.status();
}

// Index files written from doctored arrays (so with a valid checksum): unchanged arrays restore and
// answer as the built index; each structural defect is DATA_LOSS from the structural check.
TEST_F(IndexSnapshotTest, StructurallyBrokenTreeWithValidChecksumIsDataLoss) {
  const Case c = Residual("resid", KernelType::kRbf, 1.0, 2, 400, 16, 1.5, 61);
  std::unique_ptr<KnnIndex> built = Build(c);
  ASSERT_NE(built, nullptr);
  const CoverTreeStorage good = built->tree().storage();
  const int64_t n = good.size();
  ASSERT_GE(good.first_child[1] - good.first_child[0], 2) << "the root needs two children";
  int64_t inner = 1;  // a node below the root with children
  while (inner < n && good.first_child[inner + 1] == good.first_child[inner]) ++inner;
  ASSERT_LT(inner, n) << "no node below the root has children";
  const int64_t grandchild = good.first_child[inner];  // at depth 2 or more

  const std::string path = Path("hand_written");
  auto restore = [&](const CoverTreeStorage& arrays, int64_t index_size = -1) {
    core::IndexFileHeader header = core::IndexFileHeaderOf(*built, "owner", 1, 0.5);
    if (index_size >= 0) header.num_points = index_size;
    EXPECT_TRUE(core::WriteIndexFile(path, header, arrays).ok());
    return RestoreIndex(CaseSpec(c), Data(c), path, &arena_);
  };

  {
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored = restore(good);
    ASSERT_TRUE(restored.ok()) << restored.status();
    ExpectSameTree(built->tree(), (*restored)->tree());
    const std::vector<int64_t> ids = QueryIds(n, 62);
    QueryBatch batch;
    batch.ids = ids;
    KnnOptions options;
    options.k = 10;
    ExpectIdentical(Search(*built, batch, options, &arena_),
                    Search(**restored, batch, options, &arena_), "hand-written");
  }

  struct Defect {
    std::string name;
    std::function<void(CoverTreeStorage&)> apply;
    std::string message;  // a substring of the error
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<Defect> defects = {
      {"an id twice", [](CoverTreeStorage& a) { a.point[2] = a.point[1]; }, "tree: id"},
      {"an id out of range", [n](CoverTreeStorage& a) { a.point[3] = n; }, "tree: id"},
      {"a negative id", [](CoverTreeStorage& a) { a.point[0] = -1; }, "tree: id"},
      {"base 1", [](CoverTreeStorage& a) { a.base = 1.0; }, "tree: base"},
      {"base NaN", [nan](CoverTreeStorage& a) { a.base = nan; }, "tree: base"},
      {"a short level array", [](CoverTreeStorage& a) { a.level.pop_back(); }, "different lengths"},
      {"a short subtree array", [](CoverTreeStorage& a) { a.subtree_min_id.pop_back(); },
       "different lengths"},
      {"a short child offset array", [](CoverTreeStorage& a) { a.first_child.pop_back(); },
       "offset arrays"},
      {"a short ring offset array", [](CoverTreeStorage& a) { a.ring_offset.pop_back(); },
       "offset arrays"},
      {"a child at the level of its parent", [](CoverTreeStorage& a) { a.level[1] = a.level[0]; },
       "level not below"},
      {"a wrong parent", [](CoverTreeStorage& a) { a.parent[1] = 2; }, "wrong parent"},
      {"a root with a parent", [](CoverTreeStorage& a) { a.parent[0] = 0; }, "child ranges"},
      {"children before their parent", [](CoverTreeStorage& a) { a.first_child[1] = 1; }, "child range"},
      {"a child range past the end", [n](CoverTreeStorage& a) { a.first_child[n] = n + 1; },
       "child ranges"},
      {"overlapping child ranges",
       [inner, grandchild](CoverTreeStorage& a) { a.first_child[inner + 1] = grandchild - 1; },
       "child range"},
      {"a NaN max_dist", [nan](CoverTreeStorage& a) { a.max_dist[5] = nan; }, "bad distance bound"},
      {"an infinite max_dist",
       [](CoverTreeStorage& a) { a.max_dist[0] = std::numeric_limits<double>::infinity(); },
       "bad distance bound"},
      {"a negative parent_dist", [](CoverTreeStorage& a) { a.parent_dist[7] = -0.5; },
       "bad distance bound"},
      {"a wrong subtree minimum", [](CoverTreeStorage& a) { a.subtree_min_id[0] += 1; },
       "subtree minimum"},
      {"a ring missing",
       [n](CoverTreeStorage& a) {
         a.ring.pop_back();
         a.ring_offset[n] -= 1;
       },
       "ring count"},
      {"ring offsets past the rings", [n](CoverTreeStorage& a) { a.ring_offset[n] += 1; },
       "ring offsets"},
      {"a ring with lo > hi",
       [grandchild](CoverTreeStorage& a) {
         auto& ring = a.ring[a.ring_offset[grandchild]];
         ring.first = ring.second + 0.25;
       },
       "not an interval"},
      {"a NaN ring", [nan](CoverTreeStorage& a) { a.ring[1].second = nan; }, "not an interval"},
      // A whole, valid tree over fewer points than the index: every array agrees with itself.
      {"a consistent tree over fewer points",
       [](CoverTreeStorage& a) {
         a.point = {0};
         a.level = {0};
         a.max_dist = {0.0};
         a.parent_dist = {0.0};
         a.parent = {-1};
         a.first_child = {1, 1};
         a.subtree_min_id = {0};
         a.ring_offset = {0, 0};
         a.ring.clear();
       },
       "tree"},
      {"empty arrays",
       [](CoverTreeStorage& a) {
         a.point.clear();
         a.level.clear();
         a.max_dist.clear();
         a.parent_dist.clear();
         a.parent.clear();
         a.first_child = {0};
         a.subtree_min_id.clear();
         a.ring_offset = {0};
         a.ring.clear();
       },
       "tree"},
  };
  for (const Defect& defect : defects) {
    CoverTreeStorage broken = good;
    defect.apply(broken);
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored = restore(broken);
    EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss)
        << defect.name << ": " << restored.status();
    EXPECT_THAT(restored.status().message(), HasSubstr(defect.message)) << defect.name;
  }

  // Whole arrays but the wrong index size.
  absl::StatusOr<std::unique_ptr<KnnIndex>> restored = restore(good, n + 1);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
  EXPECT_THAT(restored.status().message(), HasSubstr("the tree holds"));
}

// The payload of a good file re-wrapped with a valid checksum but a defect the arrays cannot
// express: bytes after the last field, and a ring array (the last field) of odd length.
TEST_F(IndexSnapshotTest, PayloadDefectsWithValidChecksumAreDataLoss) {
  const Case c = Euclidean("euclid", 2, 300, 1.5, 65);
  std::unique_ptr<KnnIndex> built = Build(c);
  ASSERT_NE(built, nullptr);
  const std::string path = Path("good");
  ASSERT_TRUE(SaveIndex(*built, path).ok());
  const std::string payload = testing::ReadBytes(path).substr(core::kSnapshotHeaderBytes);
  const std::string bad = Path("bad");
  auto restore = [&](const std::string& bytes) {
    {
      absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
          SnapshotWriter::Create(bad, SnapshotKind::kTree);
      EXPECT_TRUE(writer.ok());
      (*writer)->Write(bytes.data(), bytes.size());
      EXPECT_TRUE((*writer)->Commit().ok());
    }
    return RestoreIndex(CaseSpec(c), Data(c), bad, &arena_);
  };
  ASSERT_TRUE(restore(payload).ok());

  absl::StatusOr<std::unique_ptr<KnnIndex>> restored = restore(payload + std::string(4, '\0'));
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
  EXPECT_THAT(restored.status().message(), HasSubstr("left unread"));

  const size_t rings = built->tree().storage().ring.size();
  const size_t count_at = payload.size() - rings * 2 * sizeof(double) - sizeof(uint64_t);
  std::string odd = payload;
  uint64_t count = 0;
  std::memcpy(&count, odd.data() + count_at, sizeof(count));
  ASSERT_EQ(count, 2 * rings);
  ++count;
  std::memcpy(odd.data() + count_at, &count, sizeof(count));
  const double extra = 0.5;
  odd.append(reinterpret_cast<const char*>(&extra), sizeof(extra));
  restored = restore(odd);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << restored.status();
  EXPECT_THAT(restored.status().message(), HasSubstr("odd length"));
}

// Raw little-endian float64 values, `columns` per row.
RowMatrix ReadRows(const std::string& path, int64_t columns) {
  const std::string bytes = testing::ReadBytes(path);
  const int64_t values = static_cast<int64_t>(bytes.size() / sizeof(double));
  EXPECT_TRUE(values > 0 && values % columns == 0) << path;
  RowMatrix rows(values / columns, columns);
  std::memcpy(rows.data(), bytes.data(), values * sizeof(double));
  return rows;
}

// Index files that the server wrote before the format had one owner (tests/data/data_dir_v1,
// written by rcknn-server at format version 1; its points beside it): read back, each restores
// over its points (the fingerprint matches) with a tree that passes the invariant checker, so
// every field is read where it was written; written again from what was read, the file comes
// out byte for byte the same.
TEST_F(IndexSnapshotTest, FormatVersion1FilesRestoreAndRewriteByteForByte) {
  const std::string dir = testing::DefaultDataDir() + "/data_dir_v1/";
  for (const std::string id : {"euclid", "supplied"}) {
    SCOPED_TRACE(id);
    const bool supplied = id == "supplied";
    IndexSpec spec;
    IndexData data;
    if (supplied) {
      spec.metric = Metric::kResidualCorrelation;
      spec.dimension = 2;
      spec.factors_supplied = true;
      spec.residual.kernel.type = KernelType::kMatern32;
      spec.residual.kernel.variance = 1.5;
      spec.residual.kernel.lengthscales = {0.5};
      data.points = ReadRows(dir + "supplied.points.f64", 2);
      data.factors = ReadRows(dir + "supplied.factors.f64", 6);
      data.residual_variances = ReadRows(dir + "supplied.variances.f64", 1).col(0);
    } else {
      spec.metric = Metric::kEuclidean;
      spec.dimension = 3;
      data.points = ReadRows(dir + "euclid.points.f64", 3);
    }
    const int64_t n = data.points.rows();
    const std::string original = dir + "indexes/" + id + "/tree.rcknn";
    absl::StatusOr<core::IndexFileContents> contents = core::ReadIndexFile(original);
    ASSERT_TRUE(contents.ok()) << contents.status();
    const core::IndexFileHeader header = contents->header;
    const CoverTreeStorage storage = contents->tree.storage();
    EXPECT_EQ(header.owner, id);
    EXPECT_EQ(header.uploads, 1);
    EXPECT_EQ(header.num_points, n);
    spec.tree.base = storage.base;
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
        core::RestoreFromIndexFile(original, *std::move(contents), spec, std::move(data), &arena_);
    ASSERT_TRUE(restored.ok()) << restored.status();
    const absl::Status invariants = (*restored)->tree().CheckInvariants((*restored)->space());
    EXPECT_TRUE(invariants.ok()) << invariants;

    const std::string again = Path(id);
    ASSERT_TRUE(core::WriteIndexFile(again, header, storage).ok());
    const std::string before = testing::ReadBytes(original);
    ASSERT_FALSE(before.empty());
    EXPECT_TRUE(testing::ReadBytes(again) == before) << "the rewritten file differs";
  }
}

// Every header byte and ~200 payload bytes, each flipped two ways: never OK, never a crash.
TEST_F(IndexSnapshotTest, ByteFlipsInASavedIndexAreDataLoss) {
  Case c = Residual("resid", KernelType::kMatern32, 1.0, 2, 300, 16, 1.5, 71);
  c.duplicates = 0.05;
  std::unique_ptr<KnnIndex> built = Build(c);
  ASSERT_NE(built, nullptr);
  const std::string path = Path("index");
  ASSERT_TRUE(SaveIndex(*built, path).ok());
  const std::string good = testing::ReadBytes(path);
  std::vector<size_t> positions;
  for (size_t pos = 0; pos < static_cast<size_t>(core::kSnapshotHeaderBytes); ++pos) {
    positions.push_back(pos);
  }
  // The index fields and the tree's scalars, then random positions.
  for (size_t pos = 48; pos < 48 + 64 && pos < good.size(); ++pos) positions.push_back(pos);
  core::SplitMix64 rng(72);
  for (int i = 0; i < 200; ++i) {
    positions.push_back(core::kSnapshotHeaderBytes +
                        rng.UniformBelow(good.size() - core::kSnapshotHeaderBytes));
  }
  positions.push_back(good.size() - 1);
  const std::string bad = Path("flipped");
  for (size_t pos : positions) {
    for (unsigned mask : {0x01u, 0xffu}) {
      std::string bytes = good;
      bytes[pos] = static_cast<char>(bytes[pos] ^ mask);
      EXPECT_TRUE(testing::WriteBytes(bad, bytes)) << bad;
      absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
          RestoreIndex(CaseSpec(c), Data(c), bad, &arena_);
      EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss)
          << "byte " << pos << " ^ " << mask << " of " << good.size() << ": " << restored.status();
    }
  }
  // Truncations, a few.
  for (size_t length :
       {size_t{0}, size_t{47}, size_t{48}, size_t{100}, good.size() / 2, good.size() - 1}) {
    EXPECT_TRUE(testing::WriteBytes(bad, good.substr(0, length))) << bad;
    absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
        RestoreIndex(CaseSpec(c), Data(c), bad, &arena_);
    EXPECT_EQ(restored.status().code(), absl::StatusCode::kDataLoss)
        << "length " << length << ": " << restored.status();
  }
}

// The gold data set: built, saved and restored, the restored index answers the shipped queries
// as shipped (docs/design.md section 3) and bit for bit as the built one, in both modes.
TEST_F(IndexSnapshotTest, GoldRoundTripAnswersAsShipped) {
  absl::StatusOr<testing::Dataset> set = testing::LoadDataset(testing::DefaultDataDir(), "gold");
  ASSERT_TRUE(set.ok()) << set.status();
  absl::StatusOr<std::unique_ptr<KnnIndex>> built =
      KnnIndex::Build(set->Spec(), set->Data(), &arena_);
  ASSERT_TRUE(built.ok()) << built.status();
  const std::string path = Path("gold");
  ASSERT_TRUE(SaveIndex(**built, path).ok());
  absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
      RestoreIndex(set->Spec(), set->Data(), path, &arena_);
  ASSERT_TRUE(restored.ok()) << restored.status();
  const KnnIndex& index = **restored;
  ExpectSameTree((*built)->tree(), index.tree());

  QueryBatch batch;
  batch.ids = set->query_ids;
  const int64_t nq = static_cast<int64_t>(set->query_ids.size());
  const core::PointRows rows = index.space().Gather(set->query_ids);
  for (bool pred : {false, true}) {
    SCOPED_TRACE(pred ? "predecessor mode" : "plain");
    KnnOptions options;
    options.k = set->k;
    options.predecessor_mode = pred;
    const Answer got = Search(index, batch, options, &arena_);
    ExpectIdentical(Search(**built, batch, options, &arena_), got, "gold");
    const std::vector<double>& ref = pred ? set->pred_dists : set->knn_dists;
    int failures = 0;
    for (int64_t q = 0; q < nq && failures < 5; ++q) {
      const std::string diff =
          testing::CompareRow(index.space(), rows, q, set->query_ids[q], options,
                              &got.ids[q * set->k], &got.dists[q * set->k], &ref[q * set->k]);
      if (!diff.empty()) {
        ++failures;
        ADD_FAILURE() << "query " << q << " (id " << set->query_ids[q] << "): " << diff;
      }
    }
  }
}

}  // namespace
}  // namespace rcknn
