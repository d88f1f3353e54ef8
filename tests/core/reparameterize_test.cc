// CoverTree::Refit and KnnIndex::Reparameterize: a refitted tree keeps every invariant but
// separation under the new metric, its searches equal the brute force's, the points are shared,
// the automatic choice follows its rule, and bad requests are refused naming the field.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/brute_force_knn.h"
#include "core/cover_tree.h"
#include "core/knn_index.h"
#include "core/knn_search.h"
#include "core/residual_correlation.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/testing/index_cases.h"
#include "tests/testing/shared_data.h"

namespace rcknn {
namespace {

using core::CoverTree;
using core::IndexSpec;
using core::KernelType;
using core::KnnIndex;
using core::KnnOptions;
using core::QueryBatch;
using core::ReparameterizeOptions;
using core::TreeStart;

constexpr double kTol = 1e-6;

std::unique_ptr<KnnIndex> BuildCase(const testing::IndexCase& c, tbb::task_arena* arena) {
  absl::StatusOr<core::IndexData> data = testing::CaseData(c);
  EXPECT_TRUE(data.ok()) << data.status();
  if (!data.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(testing::CaseSpec(c), *std::move(data), arena);
  EXPECT_TRUE(index.ok()) << index.status();
  return index.ok() ? *std::move(index) : nullptr;
}

// Every query id's answer through `search` on the index's own tree against the brute force
// over the index's space, by the rule of docs/design.md section 3.
void ExpectExact(const KnnIndex& index, core::SearchStrategy strategy, const KnnOptions& options,
                 tbb::task_arena* arena, const std::string& what) {
  const int64_t n = index.size();
  std::vector<int64_t> ids = testing::CaseQueryIds(n, 7, std::min<int64_t>(n, 60));
  QueryBatch batch;
  batch.ids = ids;
  const int64_t nq = static_cast<int64_t>(ids.size());
  std::vector<int64_t> got_ids(nq * options.k), ref_ids(nq * options.k);
  std::vector<double> got(nq * options.k), ref(nq * options.k);
  core::TreeSearchOptions search;
  search.strategy = strategy;
  ASSERT_TRUE(core::TreeKnnSearch({&index.tree(), &index.space(), search, arena, nullptr}, batch,
                                  options, {got_ids.data(), got.data(), nullptr, {}})
                  .ok());
  ASSERT_TRUE(core::BruteForceKnn(index.space(), batch, options, arena, nullptr, ref_ids.data(),
                                  ref.data())
                  .ok());
  const core::PointRows rows = index.space().Gather(ids);
  int failures = 0;
  for (int64_t q = 0; q < nq; ++q) {
    const std::string diff =
        testing::CompareRow(index.space(), rows, q, ids[q], options, &got_ids[q * options.k],
                            &got[q * options.k], &ref[q * options.k], kTol);
    if (!diff.empty() && ++failures <= 3) {
      ADD_FAILURE() << what << " query " << ids[q] << ": " << diff;
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

// What can change between a source and a re-parameterised index.
struct Change {
  std::string name;
  double lengthscale_factor = 1.0;
  double variance = 1.0;
  KernelType kernel = KernelType::kRbf;
  int64_t m = 0;  // 0: the source's
  double jitter = -1.0;
};

std::vector<Change> Changes() {
  return {{"lengthscale_1pct", 1.01},
          {"lengthscale_10pct", 1.1},
          {"lengthscale_half", 0.5},
          {"lengthscale_2x", 2.0},
          {"variance_3", 1.0, 3.0},
          {"matern32", 1.0, 1.0, KernelType::kMatern32},
          {"inducing_8", 1.0, 1.0, KernelType::kRbf, 8},
          {"jitter_1e-3", 1.0, 1.0, KernelType::kRbf, 0, 1e-3}};
}

IndexSpec Changed(IndexSpec spec, const Change& change) {
  for (double& l : spec.residual.kernel.lengthscales) l *= change.lengthscale_factor;
  spec.residual.kernel.variance = change.variance;
  spec.residual.kernel.type = change.kernel;
  if (change.m > 0) spec.residual.inducing_count = change.m;
  if (change.jitter >= 0.0) spec.residual.jitter = change.jitter;
  return spec;
}

class ReparameterizeTest : public ::testing::Test {
 protected:
  tbb::task_arena arena_{2};
};

TEST_F(ReparameterizeTest, RefittedTreesKeepTheirInvariantsAndAreExact) {
  std::vector<testing::IndexCase> sources = {
      testing::ResidualCase("dense_rbf", KernelType::kRbf, 2.0, 2, 1500, 32),
      testing::ResidualCase("sparse_matern52", KernelType::kMatern52, 0.3, 3, 800, 32),
  };
  testing::IndexCase dup = testing::ResidualCase("duplicates", KernelType::kRbf, 1.0, 2, 600, 16);
  dup.duplicates = 0.15;
  sources.push_back(dup);
  testing::IndexCase grid = testing::ResidualCase("grid", KernelType::kMatern32, 1.0, 2, 500, 16);
  grid.grid = 0.5;
  sources.push_back(grid);
  for (const testing::IndexCase& c : sources) {
    std::unique_ptr<KnnIndex> source = BuildCase(c, &arena_);
    ASSERT_NE(source, nullptr);
    for (const Change& change : Changes()) {
      for (const double lift : {-1.0, 0.1}) {
        const std::string what = absl::StrCat(c.name, "/", change.name, " lift ", lift);
        SCOPED_TRACE(what);
        ReparameterizeOptions options;
        options.tree_start = TreeStart::kRefit;
        options.refit.lift_slack = lift;
        absl::StatusOr<std::unique_ptr<KnnIndex>> derived = KnnIndex::Reparameterize(
            *source, Changed(source->spec(), change), options, &arena_);
        ASSERT_TRUE(derived.ok()) << derived.status();
        const KnnIndex& index = **derived;
        EXPECT_TRUE(index.reparameterize_report().refitted);
        // The shape is the source's, node by node without the lift; with it, every point keeps
        // its parent but the lifted ones (children of the root's children), now the root's or
        // another root child's.
        const CoverTree& before = source->tree();
        const CoverTree& after = index.tree();
        ASSERT_EQ(after.size(), before.size());
        for (int64_t node = 0; node < after.size(); ++node) {
          if (lift < 0.0) {
            ASSERT_EQ(after.point(node), before.point(node));
            ASSERT_EQ(after.parent(node), before.parent(node));
            continue;
          }
          if (node == 0) {
            ASSERT_EQ(after.point(0), before.point(0));
            continue;
          }
          const int64_t was = before.node_of(after.point(node));
          const int64_t parent_was = before.point(before.parent(was));
          const int64_t parent_now = after.point(after.parent(node));
          if (parent_now != parent_was) {
            ASSERT_LE(after.node_depth(after.parent(node)), 1) << "point " << after.point(node);
            ASSERT_EQ(before.node_depth(was), 2) << "point " << after.point(node);
          }
        }
        double slack = kTol;
        if (c.grid > 0) slack = 1e-4;  // p near the jitter floor: see knn_search_test
        const absl::Status check = index.tree().CheckInvariants(index.space(), slack,
                                                                /*check_separation=*/false);
        EXPECT_TRUE(check.ok()) << check;
        for (int64_t k : {1, 10}) {
          KnnOptions plain;
          plain.k = k;
          ExpectExact(index, core::SearchStrategy::kWalk, plain, &arena_,
                      absl::StrCat(what, " walk k=", k));
          KnnOptions pred = plain;
          pred.predecessor_mode = true;
          ExpectExact(index, core::SearchStrategy::kWalk, pred, &arena_,
                      absl::StrCat(what, " walk predecessor k=", k));
        }
      }
    }
  }
}

// All ids of the index as one batch (large enough for the walks' matrix products near the
// root, knn_search.cc) through the planner, against the brute force.
void ExpectAllExact(const CoverTree& tree, const core::MetricSpace& space,
                    const KnnOptions& options, tbb::task_arena* arena, const std::string& what) {
  const int64_t n = space.size();
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  QueryBatch batch;
  batch.ids = ids;
  std::vector<int64_t> got_ids(n * options.k), ref_ids(n * options.k);
  std::vector<double> got(n * options.k), ref(n * options.k);
  ASSERT_TRUE(core::TreeKnnSearch({&tree, &space, {}, arena, nullptr}, batch, options,
                                  {got_ids.data(), got.data(), nullptr, {}})
                  .ok());
  ASSERT_TRUE(core::BruteForceKnn(space, batch, options, arena, nullptr, ref_ids.data(),
                                  ref.data())
                  .ok());
  const core::PointRows rows = space.Gather(ids);
  int failures = 0;
  for (int64_t q = 0; q < n; ++q) {
    const std::string diff =
        testing::CompareRow(space, rows, q, ids[q], options, &got_ids[q * options.k],
                            &got[q * options.k], &ref[q * options.k], kTol);
    if (!diff.empty() && ++failures <= 3) ADD_FAILURE() << what << " query " << q << ": " << diff;
  }
  EXPECT_EQ(failures, 0) << what;
}

TEST_F(ReparameterizeTest, LiftedSubtreesKeepTheirShapeAndTheirBallsShrink) {
  std::unique_ptr<KnnIndex> source =
      BuildCase(testing::ResidualCase("lift", KernelType::kRbf, 2.0, 2, 2500, 32), &arena_);
  ASSERT_NE(source, nullptr);
  // The new metric's space (the derived index's tree is not used).
  ReparameterizeOptions rebuild;
  rebuild.tree_start = TreeStart::kRebuild;
  absl::StatusOr<std::unique_ptr<KnnIndex>> derived = KnnIndex::Reparameterize(
      *source, Changed(source->spec(), Change{"l x2", 2.0}), rebuild, &arena_);
  ASSERT_TRUE(derived.ok()) << derived.status();
  const core::MetricSpace& space = (*derived)->space();
  const CoverTree& before = source->tree();
  absl::StatusOr<CoverTree> kept = CoverTree::Refit(before, space, {-1.0}, &arena_);
  absl::StatusOr<CoverTree> lifted = CoverTree::Refit(before, space, {0.0}, &arena_);
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_TRUE(lifted.ok()) << lifted.status();
  const absl::Status check = lifted->CheckInvariants(space, kTol, /*check_separation=*/false);
  EXPECT_TRUE(check.ok()) << check;

  // Some subtrees were lifted (a lengthscale doubled stretches many), each whole: the same
  // points below it, and every other point under its old parent.
  int64_t moved = 0;
  int64_t to_root = 0;
  std::vector<char> gained(lifted->size(), 0);  // by node of `lifted`
  for (int64_t node = 1; node < lifted->size(); ++node) {
    const int64_t id = lifted->point(node);
    const int64_t was = before.node_of(id);
    if (lifted->point(lifted->parent(node)) == before.point(before.parent(was))) continue;
    ++moved;
    to_root += lifted->parent(node) == 0;
    gained[lifted->parent(node)] = 1;
    ASSERT_LE(lifted->node_depth(lifted->parent(node)), 1);
    ASSERT_EQ(before.node_depth(was), 2);
    std::vector<int64_t> a(before.subtree_ids(was).begin(), before.subtree_ids(was).end());
    std::vector<int64_t> b(lifted->subtree_ids(node).begin(), lifted->subtree_ids(node).end());
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    EXPECT_EQ(a, b) << "subtree of point " << id;
  }
  EXPECT_GT(moved, 0);
  EXPECT_EQ(lifted->end_child(0) - lifted->first_child(0),
            kept->end_child(0) - kept->first_child(0) + to_root);
  // The root's children that only lost subtrees have balls no wider than before, and some
  // narrower.
  int64_t narrower = 0;
  for (int64_t c = kept->first_child(0); c < kept->end_child(0); ++c) {
    const int64_t now = lifted->node_of(kept->point(c));
    if (gained[now]) continue;
    EXPECT_LE(lifted->max_dist(now), kept->max_dist(c) + kTol) << "point " << kept->point(c);
    narrower += lifted->max_dist(now) < kept->max_dist(c) - kTol;
  }
  EXPECT_GT(narrower, 0);
  for (bool predecessor : {false, true}) {
    KnnOptions knn;
    knn.k = 10;
    knn.predecessor_mode = predecessor;
    ExpectAllExact(*lifted, space, knn, &arena_, absl::StrCat("predecessor ", predecessor));
  }
}

// What the server does (default ReparameterizeOptions): the refit keeps the source's shape node
// for node, on a change where the lift at the slack docs/gp-loop.md measured would move
// subtrees; the lift is off by default because it has not been shown to pay (docs/gp-loop.md,
// "The lift").
TEST_F(ReparameterizeTest, DefaultRefitKeepsTheSourceShape) {
  std::unique_ptr<KnnIndex> source =
      BuildCase(testing::ResidualCase("lift", KernelType::kRbf, 2.0, 2, 2500, 32), &arena_);
  ASSERT_NE(source, nullptr);
  const IndexSpec spec = Changed(source->spec(), Change{"l x2", 2.0});
  ReparameterizeOptions defaults;
  defaults.tree_start = TreeStart::kRefit;
  ReparameterizeOptions lifting = defaults;
  lifting.refit.lift_slack = 0.1;
  absl::StatusOr<std::unique_ptr<KnnIndex>> kept =
      KnnIndex::Reparameterize(*source, spec, defaults, &arena_);
  absl::StatusOr<std::unique_ptr<KnnIndex>> lifted =
      KnnIndex::Reparameterize(*source, spec, lifting, &arena_);
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_TRUE(lifted.ok()) << lifted.status();
  const CoverTree& before = source->tree();
  int64_t moved = 0;
  for (int64_t node = 1; node < before.size(); ++node) {
    const CoverTree& after = (*lifted)->tree();
    const int64_t now = after.node_of(before.point(node));
    moved += after.point(after.parent(now)) != before.point(before.parent(node));
  }
  EXPECT_GT(moved, 0) << "the case must be one the lift changes";
  const CoverTree& after = (*kept)->tree();
  for (int64_t node = 0; node < before.size(); ++node) {
    ASSERT_EQ(after.point(node), before.point(node)) << "node " << node;
    ASSERT_EQ(after.parent(node), before.parent(node)) << "node " << node;
  }
}

TEST_F(ReparameterizeTest, RefitUnderTheSameMetricMeasuresTheSameRings) {
  std::unique_ptr<KnnIndex> source =
      BuildCase(testing::ResidualCase("same", KernelType::kRbf, 1.0, 2, 700, 16), &arena_);
  ASSERT_NE(source, nullptr);
  absl::StatusOr<CoverTree> refit = CoverTree::Refit(source->tree(), source->space(), {}, &arena_);
  ASSERT_TRUE(refit.ok()) << refit.status();
  const CoverTree& a = source->tree();
  const CoverTree& b = *refit;
  for (int64_t node = 0; node < a.size(); ++node) {
    ASSERT_EQ(a.node_depth(node), b.node_depth(node));
    for (int64_t j = 0; j < a.node_depth(node); ++j) {
      EXPECT_EQ(a.rings(node)[j], b.rings(node)[j]) << "node " << node << " ancestor " << j;
    }
    EXPECT_NEAR(a.parent_dist(node), b.parent_dist(node), kTol);
    // The build keeps the largest distance it measured, the refit the rings' bound: both are
    // bounds on the same distances.
    EXPECT_NEAR(a.max_dist(node), b.max_dist(node), kTol) << "node " << node;
    EXPECT_EQ(a.subtree_min_id(node), b.subtree_min_id(node));
    EXPECT_EQ(a.preorder(node), b.preorder(node));
  }
  // Unchanged metric: the build's levels already cover, and the relabelling finds levels no
  // higher than the build's.
  for (int64_t node = 1; node < a.size(); ++node) EXPECT_LE(b.level(node), a.level(node));
  EXPECT_TRUE(b.CheckInvariants(source->space(), kTol, false).ok());
}

TEST_F(ReparameterizeTest, PointsAreSharedAndOutliveTheSource) {
  testing::IndexCase c = testing::ResidualCase("shared", KernelType::kRbf, 1.5, 2, 900, 16);
  std::unique_ptr<KnnIndex> source = BuildCase(c, &arena_);
  ASSERT_NE(source, nullptr);
  Change change{"l", 1.1};
  for (TreeStart start : {TreeStart::kAuto, TreeStart::kRefit, TreeStart::kRebuild}) {
    ReparameterizeOptions options;
    options.tree_start = start;
    absl::StatusOr<std::unique_ptr<KnnIndex>> derived =
        KnnIndex::Reparameterize(*source, Changed(source->spec(), change), options, &arena_);
    ASSERT_TRUE(derived.ok()) << derived.status();
    EXPECT_EQ(&(*derived)->space().points(), &source->space().points()) << "a copy was made";
  }
  ReparameterizeOptions options;
  options.tree_start = TreeStart::kRefit;
  absl::StatusOr<std::unique_ptr<KnnIndex>> derived =
      KnnIndex::Reparameterize(*source, Changed(source->spec(), change), options, &arena_);
  ASSERT_TRUE(derived.ok());
  const core::RowMatrix copy = source->space().points();
  source.reset();
  EXPECT_EQ((*derived)->space().points(), copy);
  KnnOptions knn;
  knn.k = 10;
  ExpectExact(**derived, core::SearchStrategy::kWalk, knn, &arena_, "after the source is gone");
  ExpectExact(**derived, core::SearchStrategy::kAuto, knn, &arena_, "planner");
}

// However it started (refit computing V in the source's layout, with or without a lift that
// moves it once more, or a fresh tree), a re-parameterised index holds the same factors bit for
// bit, by id, as an index built from scratch with the new kernel, and the same fingerprint: its
// saved tree is trusted on restore (core/knn_index.h, Restore). Each is laid out in its own
// tree's order. n = 1001 leaves a short last block of V.
TEST_F(ReparameterizeTest, FactorsAreThoseOfAFreshBuildInTheTreeOrder) {
  testing::IndexCase c = testing::ResidualCase("factors", KernelType::kRbf, 2.0, 2, 1001, 24);
  std::unique_ptr<KnnIndex> source = BuildCase(c, &arena_);
  ASSERT_NE(source, nullptr);
  const IndexSpec spec = Changed(source->spec(), Change{"l x1.3", 1.3});
  absl::StatusOr<core::IndexData> data = testing::CaseData(c);
  ASSERT_TRUE(data.ok()) << data.status();
  absl::StatusOr<std::unique_ptr<KnnIndex>> scratch =
      KnnIndex::Build(spec, *std::move(data), &arena_);
  ASSERT_TRUE(scratch.ok()) << scratch.status();
  const auto& reference = dynamic_cast<const core::ResidualSpace&>((*scratch)->space());
  struct Start {
    const char* name;
    TreeStart start;
    double lift;
  };
  for (const Start& start : {Start{"refit", TreeStart::kRefit, -1.0},
                             Start{"refit, lifted", TreeStart::kRefit, 0.1},
                             Start{"rebuild", TreeStart::kRebuild, -1.0}}) {
    SCOPED_TRACE(start.name);
    ReparameterizeOptions options;
    options.tree_start = start.start;
    options.refit.lift_slack = start.lift;
    absl::StatusOr<std::unique_ptr<KnnIndex>> derived =
        KnnIndex::Reparameterize(*source, spec, options, &arena_);
    ASSERT_TRUE(derived.ok()) << derived.status();
    const auto& space = dynamic_cast<const core::ResidualSpace&>((*derived)->space());
    const absl::Span<const int64_t> order = (*derived)->tree().subtree_ids(0);
    for (int64_t p = 0; p < space.size(); ++p) {
      ASSERT_EQ(space.id_at(p), order[p]) << "position " << p;
      ASSERT_EQ(space.v().row(p), reference.v().row(reference.position_of(order[p])))
          << "id " << order[p];
    }
    EXPECT_TRUE(space.p() == reference.p());
    EXPECT_EQ(space.Fingerprint(), reference.Fingerprint());
  }
}

TEST_F(ReparameterizeTest, AutomaticChoiceFollowsItsRule) {
  std::unique_ptr<KnnIndex> source =
      BuildCase(testing::ResidualCase("auto", KernelType::kRbf, 2.0, 2, 2000, 16), &arena_);
  ASSERT_NE(source, nullptr);
  // A change that costs the refitted tree evaluations: lengthscale / 8.
  const IndexSpec spec = Changed(source->spec(), Change{"l/8", 0.125});
  for (double searches : {0.0, 1.0, 1e9}) {
    SCOPED_TRACE(searches);
    ReparameterizeOptions options;
    options.expected_searches = searches;
    absl::StatusOr<std::unique_ptr<KnnIndex>> derived =
        KnnIndex::Reparameterize(*source, spec, options, &arena_);
    ASSERT_TRUE(derived.ok()) << derived.status();
    const core::ReparameterizeReport& r = (*derived)->reparameterize_report();
    EXPECT_GT(r.refit_seconds, 0.0);
    EXPECT_GT(r.probe_seconds, 0.0);
    EXPECT_GT(r.refit_evaluations, 0.0);
    EXPECT_GT(r.distortion, 1.0) << "lengthscale / 8 moves short and long distances unevenly";
    EXPECT_DOUBLE_EQ(r.predicted_inflation,
                     1.0 + ReparameterizeOptions::kInflationScale *
                               std::pow(r.distortion - 1.0,
                                        ReparameterizeOptions::kInflationPower));
    EXPECT_EQ(r.predicted_build_seconds, source->fresh_tree_seconds());
    EXPECT_EQ(r.refitted, !(r.predicted_saving_seconds > r.predicted_build_seconds));
    if (searches == 0.0) {
      EXPECT_TRUE(r.refitted);
    }
    if (searches == 1e9) {
      EXPECT_FALSE(r.refitted);
      // A fresh tree keeps separation.
      EXPECT_TRUE((*derived)->tree().CheckInvariants((*derived)->space()).ok());
    }
    KnnOptions knn;
    knn.k = 10;
    knn.predecessor_mode = true;
    ExpectExact(**derived, core::SearchStrategy::kAuto, knn, &arena_, "auto");
  }
  // kRebuild reports no refit; its tree is a fresh build.
  ReparameterizeOptions rebuild;
  rebuild.tree_start = TreeStart::kRebuild;
  absl::StatusOr<std::unique_ptr<KnnIndex>> fresh =
      KnnIndex::Reparameterize(*source, spec, rebuild, &arena_);
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE((*fresh)->reparameterize_report().refitted);
  EXPECT_EQ((*fresh)->reparameterize_report().refit_seconds, 0.0);
  EXPECT_TRUE((*fresh)->tree().CheckInvariants((*fresh)->space()).ok());
}

TEST_F(ReparameterizeTest, RefusedRequestsNameTheField) {
  std::unique_ptr<KnnIndex> source =
      BuildCase(testing::ResidualCase("errors", KernelType::kRbf, 1.0, 2, 300, 16), &arena_);
  std::unique_ptr<KnnIndex> euclidean =
      BuildCase(testing::EuclideanCase("euclidean", 2, 300), &arena_);
  ASSERT_NE(source, nullptr);
  ASSERT_NE(euclidean, nullptr);
  auto expect = [&](const KnnIndex& from, const IndexSpec& spec, TreeStart start,
                    const std::string& field) {
    ReparameterizeOptions options;
    options.tree_start = start;
    absl::StatusOr<std::unique_ptr<KnnIndex>> got =
        KnnIndex::Reparameterize(from, spec, options, &arena_);
    ASSERT_FALSE(got.ok()) << field;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
    EXPECT_EQ(got.status().message().substr(0, field.size() + 1), field + ":") << got.status();
  };
  expect(*euclidean, source->spec(), TreeStart::kAuto, "metric");
  IndexSpec spec = source->spec();
  spec.metric = core::Metric::kEuclidean;
  expect(*source, spec, TreeStart::kAuto, "metric");
  spec = source->spec();
  spec.dimension = 3;
  spec.residual.kernel.lengthscales = {1.0};
  expect(*source, spec, TreeStart::kAuto, "dimension");
  spec = source->spec();
  spec.factors_supplied = true;
  expect(*source, spec, TreeStart::kAuto, "factors_supplied");
  spec = source->spec();
  spec.tree.base = 2.0;
  expect(*source, spec, TreeStart::kRefit, "base");
  // Auto and rebuild take another base by building afresh.
  ReparameterizeOptions options;
  absl::StatusOr<std::unique_ptr<KnnIndex>> other_base =
      KnnIndex::Reparameterize(*source, spec, options, &arena_);
  ASSERT_TRUE(other_base.ok()) << other_base.status();
  EXPECT_FALSE((*other_base)->reparameterize_report().refitted);
  EXPECT_EQ((*other_base)->tree().base(), 2.0);
  // The kernel's own checks still apply.
  spec = source->spec();
  spec.residual.kernel.lengthscales = {-1.0};
  ReparameterizeOptions refit;
  refit.tree_start = TreeStart::kRefit;
  EXPECT_EQ(KnnIndex::Reparameterize(*source, spec, refit, &arena_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ReparameterizeTest, RefitIsCancelled) {
  std::unique_ptr<KnnIndex> source =
      BuildCase(testing::ResidualCase("cancel", KernelType::kRbf, 1.0, 2, 3000, 16), &arena_);
  ASSERT_NE(source, nullptr);
  core::Cancellation cancellation;
  cancellation.Cancel();
  absl::StatusOr<CoverTree> tree =
      CoverTree::Refit(source->tree(), source->space(), {}, &arena_, &cancellation);
  EXPECT_EQ(tree.status().code(), absl::StatusCode::kCancelled) << tree.status();
  testing::IndexCase small = testing::ResidualCase("small", KernelType::kRbf, 1.0, 2, 10, 4);
  std::unique_ptr<KnnIndex> other = BuildCase(small, &arena_);
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(CoverTree::Refit(source->tree(), other->space(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rcknn
