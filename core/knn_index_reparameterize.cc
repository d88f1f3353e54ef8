// KnnIndex::Reparameterize: a new metric over an existing index's points, with the source's tree
// refitted or a fresh one (the rule is in knn_index.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/knn_index.h"
#include "core/status_macros.h"

namespace rcknn::core {
namespace {

struct Probe {
  double evaluations = 0.0;  // mean per query
  double seconds = 0.0;
  int64_t queries = 1;
};

// How unevenly the new metric moved the tree's parent distances: the ratio of the 90th to the
// 10th percentile of d_new(c, parent) / d_old(c, parent) over the edges both trees have, where
// both are positive (1 when every distance was scaled alike: the tree is then what a fresh build
// would give for the new metric, up to its level labels). 1 with fewer than 16 such edges.
double EdgeDistortion(const CoverTree& source, const CoverTree& refitted) {
  std::vector<double> ratios;
  ratios.reserve(source.size());
  for (int64_t node = 1; node < refitted.size(); ++node) {
    // Edges the refit kept (RefitOptions::lift_slack moves some subtrees to the root).
    const int64_t was = source.node_of(refitted.point(node));
    if (was == 0 ||
        source.point(source.parent(was)) != refitted.point(refitted.parent(node))) {
      continue;
    }
    const double before = source.parent_dist(was);
    const double after = refitted.parent_dist(node);
    if (before > 0.0 && after > 0.0) ratios.push_back(after / before);
  }
  if (ratios.size() < 16) return 1.0;
  const size_t lo = ratios.size() / 10;
  const size_t hi = ratios.size() - 1 - ratios.size() / 10;
  std::nth_element(ratios.begin(), ratios.begin() + lo, ratios.end());
  const double low = ratios[lo];
  std::nth_element(ratios.begin(), ratios.begin() + hi, ratios.end());
  return std::max(1.0, ratios[hi] / low);
}

// The probe queries of ReparameterizeOptions: ids spread evenly, predecessor mode.
absl::StatusOr<Probe> RunProbe(const CoverTree& tree, const MetricSpace& space,
                               const TreeSearchOptions& search,
                               const ReparameterizeOptions& options, tbb::task_arena* arena,
                               const Cancellation* cancellation) {
  const int64_t n = space.size();
  const int64_t count = std::clamp<int64_t>(options.probe_queries, 1, n);
  std::vector<int64_t> ids(count);
  for (int64_t q = 0; q < count; ++q) ids[q] = std::min(n - 1, (2 * q + 1) * n / (2 * count));
  KnnOptions knn;
  knn.k = std::clamp<int64_t>(options.probe_k, 1, n);
  knn.predecessor_mode = true;
  QueryBatch batch;
  batch.ids = ids;
  std::vector<int64_t> out_ids(count * knn.k);
  std::vector<double> out_dists(count * knn.k);
  std::vector<int64_t> evaluations(count, 0);
  const absl::Time start = absl::Now();
  RETURN_IF_ERROR(TreeKnnSearch({&tree, &space, search, arena, cancellation}, batch, knn,
                                {out_ids.data(), out_dists.data(), nullptr,
                                 absl::MakeSpan(evaluations)}));
  Probe probe;
  probe.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  probe.queries = count;
  probe.evaluations =
      static_cast<double>(std::accumulate(evaluations.begin(), evaluations.end(), int64_t{0})) /
      static_cast<double>(count);
  return probe;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KnnIndex>> KnnIndex::Reparameterize(
    const KnnIndex& source, const IndexSpec& spec, const ReparameterizeOptions& options,
    tbb::task_arena* arena, const Cancellation* cancellation, const ProgressCallback& progress) {
  const auto* source_space = dynamic_cast<const ResidualSpace*>(source.space_.get());
  if (source.spec_.metric != Metric::kResidualCorrelation || source_space == nullptr) {
    return absl::InvalidArgumentError(
        "metric: the source index is not residual correlation; it has no kernel to change");
  }
  if (spec.metric != Metric::kResidualCorrelation) {
    return absl::InvalidArgumentError("metric: a re-parameterised index is residual correlation");
  }
  if (spec.dimension != source.dimension()) {
    return absl::InvalidArgumentError(absl::StrCat("dimension: the source's points have ",
                                                   source.dimension(), " coordinates, got ",
                                                   spec.dimension));
  }
  if (spec.factors_supplied) {
    return absl::InvalidArgumentError(
        "factors_supplied: a re-parameterised index computes V and p from its kernel");
  }
  const bool same_base = spec.tree.base == source.tree_.base();
  if (options.tree_start == TreeStart::kRefit && !same_base) {
    return absl::InvalidArgumentError(absl::StrCat("base: the source tree has base ",
                                                   source.tree_.base(), ", the spec ",
                                                   spec.tree.base, "; a refit keeps the base"));
  }
  auto report = [&](double fraction) {
    if (progress) progress(fraction);
  };

  BuildTimings timings;
  const absl::Time start = absl::Now();
  // A refit keeps the source's shape, so the new index's storage order is the source's: V is
  // computed in it and never moved (a lift or a fresh tree moves it once, as in any build).
  const bool refit_first = options.tree_start != TreeStart::kRebuild && same_base;
  ASSIGN_OR_RETURN(std::unique_ptr<ResidualSpace> space,
                   ResidualSpace::Create(source_space->shared_points(), spec.residual, arena,
                                         [&](double f) { report(0.5 * f); },
                                         refit_first ? source.tree_.subtree_ids(0)
                                                     : absl::Span<const int64_t>()));
  timings.factor_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  RETURN_IF_ERROR(CheckCancelled(cancellation));

  const absl::Time tree_start = absl::Now();
  ReparameterizeReport chosen;
  std::optional<CoverTree> tree;
  if (refit_first) {
    ASSIGN_OR_RETURN(CoverTree refitted,
                     CoverTree::Refit(source.tree_, *space, options.refit, arena, cancellation,
                                      [&](double f) { report(0.5 + 0.25 * f); }));
    chosen.refitted = true;
    chosen.refit_seconds = absl::ToDoubleSeconds(absl::Now() - tree_start);
    tree = std::move(refitted);
  }
  if (options.tree_start == TreeStart::kAuto && tree.has_value()) {
    chosen.distortion = EdgeDistortion(source.tree_, *tree);
    chosen.predicted_inflation =
        1.0 + options.inflation_scale *
                  std::pow(chosen.distortion - 1.0, options.inflation_power);
    ASSIGN_OR_RETURN(Probe probe,
                     RunProbe(*tree, *space, spec.search, options, arena, cancellation));
    chosen.probe_seconds = probe.seconds;
    chosen.refit_evaluations = probe.evaluations;
    const double per_evaluation =
        probe.evaluations > 0.0 ? probe.seconds / (probe.evaluations * probe.queries) : 0.0;
    chosen.predicted_saving_seconds =
        options.expected_searches * static_cast<double>(space->size()) * probe.evaluations *
        (1.0 - 1.0 / chosen.predicted_inflation) * per_evaluation;
    chosen.predicted_build_seconds = source.fresh_tree_seconds();
    if (chosen.predicted_saving_seconds > chosen.predicted_build_seconds) {
      chosen.refitted = false;
      tree.reset();
    }
  }
  double build_seconds = -1.0;
  if (!tree.has_value()) {
    const absl::Time build_start = absl::Now();
    ASSIGN_OR_RETURN(CoverTree built,
                     CoverTree::Build(*space, spec.tree, arena, cancellation, [&](double f) {
                       report(0.75 + 0.25 * f);
                     }));
    tree = std::move(built);
    build_seconds = absl::ToDoubleSeconds(absl::Now() - build_start);
  }
  RETURN_IF_ERROR(LayOutInTreeOrder(*tree, *space));
  timings.tree_seconds = absl::ToDoubleSeconds(absl::Now() - tree_start);
  report(1.0);
  std::unique_ptr<KnnIndex> index(new KnnIndex(spec, std::move(space), *std::move(tree), timings));
  index->report_ = chosen;
  index->fresh_tree_seconds_ = chosen.refitted ? source.fresh_tree_seconds() : build_seconds;
  return index;
}

}  // namespace rcknn::core
