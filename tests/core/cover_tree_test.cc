// CoverTree::Build on many seeded random point sets: the invariants of cover_tree.h, checked both
// by CoverTree::CheckInvariants and by an independent checker written here; independence of the
// thread count; errors.
#include "core/cover_tree.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/euclidean_space.h"
#include "core/random.h"
#include "core/residual_correlation.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using core::CoverTree;
using core::CoverTreeOptions;
using core::KernelType;
using core::MetricSpace;
using core::RowMatrix;

constexpr double kSlack = 1e-6;

double Dist(const MetricSpace& space, int64_t a, int64_t b) {
  const core::PointRows rows = space.Gather({a});
  double d;
  space.RowToIds(rows, 0, absl::MakeConstSpan(&b, 1), &d);
  return d;
}

// The invariants of cover_tree.h, from the public accessors only, measuring every distance anew.
// Returns "" or the first violation.
std::string IndependentCheck(const CoverTree& tree, const MetricSpace& space) {
  const int64_t n = tree.size();
  if (n != space.size()) return "size differs from the space";
  if (n == 0) return "empty tree";
  // Layout: node 0 is the root, children ranges are contiguous, in node order, and cover
  // 1..n-1 exactly once; every stored id appears once.
  if (tree.first_child(0) != 1) return "children of the root do not start at node 1";
  std::vector<int64_t> parent(n, -1);
  int64_t expected_first = 1;
  for (int64_t node = 0; node < n; ++node) {
    if (tree.first_child(node) != expected_first) {
      return absl::StrCat("node ", node, ": children start at ", tree.first_child(node),
                          ", expected ", expected_first);
    }
    if (tree.end_child(node) < tree.first_child(node)) return absl::StrCat("node ", node);
    for (int64_t c = tree.first_child(node); c < tree.end_child(node); ++c) {
      if (c <= node) return absl::StrCat("child ", c, " of node ", node, " is not after it");
      parent[c] = node;
    }
    expected_first = tree.end_child(node);
  }
  if (expected_first != n) return "children do not cover every node";
  std::vector<char> seen(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = tree.point(node);
    if (id < 0 || id >= n || seen[id]) return absl::StrCat("id ", id, " at node ", node);
    seen[id] = 1;
  }
  if (tree.points(0, n).size() != static_cast<size_t>(n)) return "points() span";

  const double base = tree.base();
  for (int64_t node = 1; node < n; ++node) {
    const int64_t p = parent[node];
    const double d = Dist(space, tree.point(p), tree.point(node));
    if (std::abs(d - tree.parent_dist(node)) > kSlack) {
      return absl::StrCat("node ", node, ": parent_dist ", tree.parent_dist(node), ", measured ",
                          d);
    }
    if (tree.level(node) == CoverTree::kDuplicateLevel) {
      if (d > kSlack) return absl::StrCat("duplicate node ", node, " at distance ", d);
      continue;
    }
    if (tree.level(node) >= tree.level(p)) {
      return absl::StrCat("node ", node, " level ", tree.level(node), " not below parent's ",
                          tree.level(p));
    }
    if (d > std::pow(base, tree.level(node) + 1) + kSlack) {
      return absl::StrCat("covering: node ", node, " is ", d, " from its parent");
    }
    if (d <= std::pow(base, tree.level(node)) - kSlack) {
      return absl::StrCat("separation: node ", node, " is ", d, " from its parent");
    }
  }
  // Separation between every two children of one parent at one level (not only neighbours in
  // the child order).
  for (int64_t node = 0; node < n; ++node) {
    for (int64_t a = tree.first_child(node); a < tree.end_child(node); ++a) {
      if (tree.level(a) == CoverTree::kDuplicateLevel) continue;
      for (int64_t b = a + 1; b < tree.end_child(node); ++b) {
        if (tree.level(b) != tree.level(a)) continue;
        const double d = Dist(space, tree.point(a), tree.point(b));
        if (d <= std::pow(base, tree.level(a)) - kSlack) {
          return absl::StrCat("separation: siblings ", a, " and ", b, " are ", d, " apart");
        }
      }
    }
  }
  // max_dist and subtree_min_id against every descendant.
  std::vector<double> max_seen(n, 0.0);
  std::vector<int64_t> min_id(n);
  for (int64_t node = 0; node < n; ++node) min_id[node] = tree.point(node);
  for (int64_t node = 1; node < n; ++node) {
    for (int64_t a = parent[node]; a >= 0; a = parent[a]) {
      max_seen[a] = std::max(max_seen[a], Dist(space, tree.point(a), tree.point(node)));
      min_id[a] = std::min(min_id[a], tree.point(node));
    }
  }
  for (int64_t node = 0; node < n; ++node) {
    if (max_seen[node] > tree.max_dist(node) + kSlack) {
      return absl::StrCat("node ", node, ": a descendant is ", max_seen[node],
                          " away, max_dist is ", tree.max_dist(node));
    }
    if (min_id[node] != tree.subtree_min_id(node)) {
      return absl::StrCat("node ", node, ": subtree_min_id ", tree.subtree_min_id(node),
                          ", expected ", min_id[node]);
    }
  }
  // parent(), node_depth(), depth() and max_children().
  std::vector<int64_t> depth(n, 0);
  int64_t deepest = 0, widest = 0;
  for (int64_t node = 1; node < n; ++node) {
    depth[node] = depth[parent[node]] + 1;
    deepest = std::max(deepest, depth[node]);
  }
  for (int64_t node = 0; node < n; ++node) {
    if (tree.parent(node) != parent[node]) {
      return absl::StrCat("node ", node, ": parent() ", tree.parent(node), ", expected ",
                          parent[node]);
    }
    if (tree.node_depth(node) != depth[node]) {
      return absl::StrCat("node ", node, ": node_depth() ", tree.node_depth(node), ", expected ",
                          depth[node]);
    }
  }
  // Rings: ring(c, j) holds d(y, a) for the ancestor a of c at depth j and every y in the
  // subtree of c, c included. Every y is visited with each of its ancestors a, and checked
  // against the ring of every node on the path from y up to a.
  for (int64_t y = 1; y < n; ++y) {
    for (int64_t a = parent[y]; a >= 0; a = parent[a]) {
      const double d = Dist(space, tree.point(a), tree.point(y));
      for (int64_t c = y; c != a; c = parent[c]) {
        const std::pair<double, double>& ring = tree.rings(c)[depth[a]];
        if (d < ring.first - kSlack || d > ring.second + kSlack) {
          return absl::StrCat("node ", y, " is ", d, " from ancestor ", a, ", outside the ring [",
                              ring.first, ", ", ring.second, "] of node ", c);
        }
      }
    }
  }
  for (int64_t node = 0; node < n; ++node) {
    widest = std::max(widest, tree.end_child(node) - tree.first_child(node));
  }
  if (tree.depth() != deepest) return absl::StrCat("depth() ", tree.depth(), " vs ", deepest);
  if (tree.max_children() != widest) {
    return absl::StrCat("max_children() ", tree.max_children(), " vs ", widest);
  }
  return "";
}

struct TreeCase {
  std::string name;
  bool residual;
  KernelType kernel;
  double lengthscale;
  int d;
  int64_t n;
  int64_t m;
  double base;
  double duplicates;  // fraction of rows overwritten with copies
  double grid;        // > 0: snap coordinates to this grid (many coincident points)
};

std::unique_ptr<MetricSpace> MakeSpace(const TreeCase& c, uint64_t seed) {
  RowMatrix points = testing::NormalPoints(c.n, c.d, seed);
  testing::AddDuplicates(points, c.duplicates, seed + 1);
  if (c.grid > 0) testing::SnapToGrid(points, c.grid);
  if (!c.residual) {
    absl::StatusOr<std::unique_ptr<core::EuclideanSpace>> space =
        core::EuclideanSpace::Create(std::move(points));
    EXPECT_TRUE(space.ok()) << space.status();
    return space.ok() ? std::unique_ptr<MetricSpace>(std::move(*space)) : nullptr;
  }
  core::ResidualOptions options;
  options.kernel.type = c.kernel;
  options.kernel.lengthscales = {c.lengthscale};
  options.inducing_count = std::min(c.m, c.n);
  options.inducing_seed = seed;
  if (c.grid > 0) options.jitter = 1e-3;  // coincident inducing points need it
  absl::StatusOr<std::unique_ptr<core::ResidualSpace>> space =
      core::ResidualSpace::Create(std::move(points), options);
  EXPECT_TRUE(space.ok()) << space.status();
  return space.ok() ? std::unique_ptr<MetricSpace>(std::move(*space)) : nullptr;
}

std::vector<TreeCase> Cases() {
  std::vector<TreeCase> cases;
  const KernelType kernels[] = {KernelType::kRbf, KernelType::kMatern12, KernelType::kMatern32,
                                KernelType::kMatern52};
  const double bases[] = {1.3, 1.5, 2.0, 3.0};
  const int64_t sizes[] = {1, 2, 3, 17, 100, 400, 1000};
  int i = 0;
  for (int64_t n : sizes) {
    for (int variant = 0; variant < 4; ++variant, ++i) {
      const int d = 1 + i % 8;
      const double base = bases[i % 4];
      cases.push_back({absl::StrCat("euclid_n", n, "_d", d, "_b", base), false, KernelType::kRbf,
                       1.0, d, n, 0, base, variant == 1 ? 0.1 : 0.0, 0.0});
      cases.push_back({absl::StrCat("resid_", core::KernelTypeName(kernels[i % 4]), "_n", n, "_d",
                                    d, "_b", base),
                       true, kernels[i % 4], variant % 2 == 0 ? 0.3 : 2.0, d, n,
                       variant == 3 ? 8 : 32, base, variant == 2 ? 0.1 : 0.0, 0.0});
    }
  }
  // Larger sets, both regimes.
  cases.push_back({"resid_sparse_3000", true, KernelType::kRbf, 0.3, 3, 3000, 32, 1.5, 0.0, 0.0});
  cases.push_back(
      {"resid_dense_3000", true, KernelType::kMatern32, 3.0, 2, 3000, 32, 2.0, 0.0, 0.0});
  cases.push_back({"euclid_3000_d8", false, KernelType::kRbf, 1.0, 8, 3000, 0, 1.3, 0.0, 0.0});
  // Coincident points: a coarse grid makes many points share a location.
  cases.push_back({"euclid_grid", false, KernelType::kRbf, 1.0, 2, 800, 0, 2.0, 0.0, 0.5});
  cases.push_back({"resid_grid", true, KernelType::kMatern52, 1.0, 2, 800, 32, 1.5, 0.0, 0.5});
  cases.push_back({"euclid_1d_grid_b3", false, KernelType::kRbf, 1.0, 1, 500, 0, 3.0, 0.2, 0.25});
  return cases;
}

TEST(CoverTreeTest, InvariantsOnRandomSets) {
  tbb::task_arena arena(2);
  uint64_t seed = 1000;
  for (const TreeCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<MetricSpace> space = MakeSpace(c, seed);
    seed += 10;
    ASSERT_NE(space, nullptr);
    CoverTreeOptions options;
    options.base = c.base;
    absl::StatusOr<CoverTree> tree = CoverTree::Build(*space, options, &arena);
    ASSERT_TRUE(tree.ok()) << tree.status();
    EXPECT_EQ(tree->size(), c.n);
    EXPECT_EQ(tree->base(), c.base);
    EXPECT_GT(tree->memory_bytes(), 0);
    EXPECT_EQ(tree->point(0), 0) << "the root is id 0";
    const absl::Status status = tree->CheckInvariants(*space);
    EXPECT_TRUE(status.ok()) << status;
    const std::string independent = IndependentCheck(*tree, *space);
    EXPECT_EQ(independent, "");
  }
}

TEST(CoverTreeTest, AllPointsIdentical) {
  for (bool residual : {false, true}) {
    for (int64_t n : {2, 50, 600}) {
      SCOPED_TRACE(::testing::Message() << "residual=" << residual << " n=" << n);
      RowMatrix points(n, 3);
      for (int64_t i = 0; i < n; ++i) points.row(i) << 0.5, -1.0, 2.0;
      std::unique_ptr<MetricSpace> space;
      if (residual) {
        // Out-of-sample inducing points: the data points themselves are all one point.
        core::ResidualOptions options;
        options.inducing_points = testing::NormalPoints(4, 3, 1);
        options.inducing_count = 4;
        space = *core::ResidualSpace::Create(points, options);
      } else {
        space = *core::EuclideanSpace::Create(points);
      }
      absl::StatusOr<CoverTree> tree = CoverTree::Build(*space, CoverTreeOptions());
      ASSERT_TRUE(tree.ok()) << tree.status();
      EXPECT_TRUE(tree->CheckInvariants(*space).ok());
      EXPECT_EQ(IndependentCheck(*tree, *space), "");
      // Everything hangs under the root as duplicates.
      EXPECT_EQ(tree->end_child(0) - tree->first_child(0), n - 1);
      for (int64_t node = 1; node < n; ++node) {
        EXPECT_EQ(tree->level(node), CoverTree::kDuplicateLevel);
      }
      EXPECT_EQ(tree->max_dist(0), 0.0);
    }
  }
}

// Points at exponentially growing spacing span many levels.
TEST(CoverTreeTest, DeepChain) {
  const int64_t n = 80;
  RowMatrix points(n, 1);
  for (int64_t i = 0; i < n; ++i) points(i, 0) = std::pow(1.4, static_cast<double>(i)) - 1.0;
  std::unique_ptr<core::EuclideanSpace> space = *core::EuclideanSpace::Create(points);
  for (double base : {1.3, 2.0}) {
    CoverTreeOptions options;
    options.base = base;
    absl::StatusOr<CoverTree> tree = CoverTree::Build(*space, options);
    ASSERT_TRUE(tree.ok()) << tree.status();
    EXPECT_TRUE(tree->CheckInvariants(*space).ok());
    EXPECT_EQ(IndependentCheck(*tree, *space), "");
    std::set<int32_t> levels;
    for (int64_t node = 0; node < n; ++node) levels.insert(tree->level(node));
    EXPECT_GT(levels.size(), 20u);
  }
}

void ExpectSameTree(const CoverTree& a, const CoverTree& b) {
  ASSERT_EQ(a.size(), b.size());
  for (int64_t node = 0; node < a.size(); ++node) {
    ASSERT_EQ(a.point(node), b.point(node)) << node;
    ASSERT_EQ(a.level(node), b.level(node)) << node;
    ASSERT_EQ(a.max_dist(node), b.max_dist(node)) << node;
    ASSERT_EQ(a.parent_dist(node), b.parent_dist(node)) << node;
    ASSERT_EQ(a.subtree_min_id(node), b.subtree_min_id(node)) << node;
    ASSERT_EQ(a.first_child(node), b.first_child(node)) << node;
    ASSERT_EQ(a.end_child(node), b.end_child(node)) << node;
    ASSERT_EQ(a.node_depth(node), b.node_depth(node)) << node;
    for (int64_t j = 0; j < a.node_depth(node); ++j) {
      ASSERT_EQ(a.rings(node)[j], b.rings(node)[j]) << node << " ring " << j;
    }
  }
}

TEST(CoverTreeTest, IdenticalOnOneAndTwoThreads) {
  tbb::task_arena one(1), two(2);
  // Large enough for several root blocks (Euclidean) and several chunks of centers per node
  // (sparse residual: most points are far from each other).
  const std::vector<TreeCase> cases = {
      {"euclid", false, KernelType::kRbf, 1.0, 3, 9000, 0, 1.5, 0.02, 0.0},
      {"resid_sparse", true, KernelType::kRbf, 0.2, 3, 3000, 32, 1.3, 0.02, 0.0},
      {"resid_dense", true, KernelType::kMatern52, 2.0, 2, 3000, 64, 2.0, 0.0, 0.0},
  };
  for (const TreeCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<MetricSpace> space = MakeSpace(c, 77);
    ASSERT_NE(space, nullptr);
    CoverTreeOptions options;
    options.base = c.base;
    absl::StatusOr<CoverTree> a = CoverTree::Build(*space, options, &one);
    absl::StatusOr<CoverTree> b = CoverTree::Build(*space, options, &two);
    absl::StatusOr<CoverTree> again = CoverTree::Build(*space, options, &two);
    ASSERT_TRUE(a.ok() && b.ok() && again.ok());
    ExpectSameTree(*a, *b);
    ExpectSameTree(*b, *again);
    EXPECT_TRUE(b->CheckInvariants(*space).ok());
  }
}

TEST(CoverTreeTest, ProgressReachesOne) {
  std::unique_ptr<core::EuclideanSpace> space =
      *core::EuclideanSpace::Create(testing::NormalPoints(2000, 2, 5));
  std::vector<double> seen;
  tbb::task_arena one(1);
  absl::StatusOr<CoverTree> tree = CoverTree::Build(*space, CoverTreeOptions(), &one, nullptr,
                                                    [&](double f) { seen.push_back(f); });
  ASSERT_TRUE(tree.ok()) << tree.status();
  ASSERT_FALSE(seen.empty());
  for (double f : seen) {
    EXPECT_GE(f, 0.0);
    EXPECT_LE(f, 1.0);
  }
  EXPECT_EQ(*std::max_element(seen.begin(), seen.end()), 1.0);
}

TEST(CoverTreeTest, BadBaseIsInvalidArgument) {
  std::unique_ptr<core::EuclideanSpace> space =
      *core::EuclideanSpace::Create(testing::NormalPoints(20, 2, 5));
  for (double base : {1.0, 0.5, 0.0, -2.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    CoverTreeOptions options;
    options.base = base;
    const absl::Status status = CoverTree::Build(*space, options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << base << ": " << status;
    EXPECT_NE(status.message().find("base"), std::string::npos) << status;
  }
}

TEST(CoverTreeTest, CancelledAndExpiredBuilds) {
  std::unique_ptr<core::EuclideanSpace> space =
      *core::EuclideanSpace::Create(testing::NormalPoints(500, 2, 5));
  tbb::task_arena arena(2);
  core::Cancellation cancelled;
  cancelled.Cancel();
  EXPECT_EQ(CoverTree::Build(*space, CoverTreeOptions(), &arena, &cancelled).status().code(),
            absl::StatusCode::kCancelled);
  core::Cancellation expired(absl::Now() - absl::Seconds(1));
  EXPECT_EQ(CoverTree::Build(*space, CoverTreeOptions(), &arena, &expired).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  core::Cancellation later(absl::Now() + absl::Hours(1));
  EXPECT_TRUE(CoverTree::Build(*space, CoverTreeOptions(), &arena, &later).ok());
}

// A node whose first block of 256 members all become centers: Builder::ChooseCenters must keep
// each full chunk of 256 centers for comparison with later blocks, also when the chunk's last
// center is the last member of its block (nothing left to compare it with there). Here the root
// (the origin) has 257 or more members, unit vectors all 1 from the root and sqrt2 from each
// other, so every one becomes a center. A lost chunk would be read out of range, so the build
// runs in a child process: a crash fails only this test.
TEST(CoverTreeDeathTest, MoreThan256MutuallyFarMembersOfOneNode) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (int64_t members : {256, 257, 300, 513}) {
    SCOPED_TRACE(::testing::Message() << members << " members");
    EXPECT_EXIT(
        {
          RowMatrix points = RowMatrix::Zero(members + 1, members);
          for (int64_t i = 0; i < members; ++i) points(i + 1, i) = 1.0;
          std::unique_ptr<core::EuclideanSpace> space = *core::EuclideanSpace::Create(points);
          absl::StatusOr<CoverTree> tree = CoverTree::Build(*space, CoverTreeOptions());
          const bool good = tree.ok() && tree->CheckInvariants(*space).ok() &&
                            IndependentCheck(*tree, *space).empty();
          std::exit(good ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
  }
}

// The checkers must be able to fail: a tree checked against a different point set of the same
// size breaks its recorded distances.
TEST(CoverTreeTest, CheckersDetectAWrongSpace) {
  for (bool residual : {false, true}) {
    SCOPED_TRACE(residual ? "residual" : "euclidean");
    TreeCase c{"", residual, KernelType::kRbf, 0.7, 2, 400, 32, 2.0, 0.0, 0.0};
    std::unique_ptr<MetricSpace> space = MakeSpace(c, 5);
    std::unique_ptr<MetricSpace> other = MakeSpace(c, 6);  // other points, same size
    absl::StatusOr<CoverTree> tree = CoverTree::Build(*space, CoverTreeOptions());
    ASSERT_TRUE(tree.ok()) << tree.status();
    EXPECT_TRUE(tree->CheckInvariants(*space).ok());
    EXPECT_FALSE(tree->CheckInvariants(*other).ok());
    EXPECT_NE(IndependentCheck(*tree, *other), "");
    // A slightly perturbed copy of the same points is caught too (stored distances move).
    c.n = 400;
    RowMatrix points = testing::NormalPoints(400, 2, 5);
    points(37, 0) += 0.3;
    std::unique_ptr<MetricSpace> perturbed;
    if (residual) {
      core::ResidualOptions options;
      options.kernel.lengthscales = {0.7};
      options.inducing_count = 32;
      options.inducing_seed = 5;
      perturbed = *core::ResidualSpace::Create(points, options);
    } else {
      perturbed = *core::EuclideanSpace::Create(points);
    }
    EXPECT_FALSE(tree->CheckInvariants(*perturbed).ok());
    EXPECT_NE(IndependentCheck(*tree, *perturbed), "");
    // And a space of another size.
    c.n = 399;
    std::unique_ptr<MetricSpace> smaller = MakeSpace(c, 5);
    EXPECT_FALSE(tree->CheckInvariants(*smaller).ok());
  }
}

}  // namespace
}  // namespace rcknn
