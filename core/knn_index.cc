#include "core/knn_index.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/brute_force_knn.h"
#include "core/euclidean_space.h"
#include "core/status_macros.h"

namespace rcknn::core {

namespace {

absl::Status CheckShape(const IndexSpec& spec, const IndexData& data) {
  if (spec.dimension < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dimension must be >= 1, got ", spec.dimension));
  }
  if (data.points.cols() != spec.dimension) {
    return absl::InvalidArgumentError(absl::StrCat("points: rows have ", data.points.cols(),
                                                   " coordinates, the spec says ",
                                                   spec.dimension));
  }
  return absl::OkStatus();
}

bool ComputesFactors(const IndexSpec& spec) {
  return spec.metric == Metric::kResidualCorrelation && !spec.factors_supplied;
}

}  // namespace

absl::Status LayOutInTreeOrder(const CoverTree& tree, MetricSpace& space) {
  const absl::Span<const int64_t> order = tree.subtree_ids(0);
  return space.ApplyLayout(std::vector<int64_t>(order.begin(), order.end()));
}

absl::StatusOr<std::unique_ptr<MetricSpace>> KnnIndex::MakeSpace(
    const IndexSpec& spec, IndexData data, tbb::task_arena* arena,
    const ProgressCallback& progress) {
  switch (spec.metric) {
    case Metric::kResidualCorrelation:
      if (spec.factors_supplied) {
        return ResidualSpace::FromFactors(std::move(data.points), spec.residual.kernel,
                                          std::move(data.factors),
                                          std::move(data.residual_variances));
      }
      return ResidualSpace::Create(std::move(data.points), spec.residual, arena, progress);
    case Metric::kEuclidean:
      return EuclideanSpace::Create(std::move(data.points));
  }
  return absl::InvalidArgumentError("metric: unknown metric");
}

absl::StatusOr<std::unique_ptr<KnnIndex>> KnnIndex::Build(const IndexSpec& spec, IndexData data,
                                                          tbb::task_arena* arena,
                                                          const Cancellation* cancellation,
                                                          const ProgressCallback& progress) {
  RETURN_IF_ERROR(CheckShape(spec, data));
  BuildTimings timings;
  const double factor_share = ComputesFactors(spec) ? 0.5 : 0.0;
  auto report = [&](double fraction) {
    if (progress) progress(fraction);
  };
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<MetricSpace> space,
                   MakeSpace(spec, std::move(data), arena,
                             [&](double f) { report(f * factor_share); }));
  timings.factor_seconds = ComputesFactors(spec) ? absl::ToDoubleSeconds(absl::Now() - start) : 0.0;
  RETURN_IF_ERROR(CheckCancelled(cancellation));
  const absl::Time tree_start = absl::Now();
  ASSIGN_OR_RETURN(CoverTree tree,
                   CoverTree::Build(*space, spec.tree, arena, cancellation, [&](double f) {
                     report(factor_share + (1.0 - factor_share) * f);
                   }));
  RETURN_IF_ERROR(LayOutInTreeOrder(tree, *space));
  timings.tree_seconds = absl::ToDoubleSeconds(absl::Now() - tree_start);
  report(1.0);
  return std::unique_ptr<KnnIndex>(
      new KnnIndex(spec, std::move(space), std::move(tree), timings));
}

int64_t KnnIndex::EstimateBuildBytes(const IndexSpec& spec, int64_t n) {
  const double points = static_cast<double>(n);
  const double d = spec.dimension;
  double bytes = 0.0;
  if (spec.metric == Metric::kResidualCorrelation) {
    double m = 0.0;
    if (!spec.factors_supplied) {
      m = spec.residual.inducing_points.has_value()
              ? static_cast<double>(spec.residual.inducing_points->rows())
              : static_cast<double>(spec.residual.inducing_count);
    }
    // V (computed), p and 1/sqrt(p), coordinates twice scaled and once as given.
    bytes = points * (8.0 * m + 16.0 + 24.0 * d);
  } else {
    bytes = points * 16.0 * d;
  }
  // Tree: ~100 bytes of arrays per node, 16 per ring, one ring per ancestor; plus the build's
  // scratch, of the same order as the arrays.
  const double depth = std::log(std::max(points, 2.0)) / std::log(std::max(spec.tree.base, 1.01)) + 16.0;
  bytes += points * (2.0 * 100.0 + 16.0 * depth);
  return static_cast<int64_t>(std::min(bytes, 9.0e18));
}

absl::StatusOr<std::unique_ptr<KnnIndex>> KnnIndex::Restore(
    const IndexSpec& spec, IndexData data, CoverTree tree, const BuildTimings& timings,
    uint64_t space_fingerprint, tbb::task_arena* arena, const Cancellation* cancellation,
    const ProgressCallback& progress) {
  RETURN_IF_ERROR(CheckShape(spec, data));
  if (tree.size() != data.points.rows()) {
    return absl::DataLossError(absl::StrCat("the saved index holds ", tree.size(),
                                            " points, the data ", data.points.rows()));
  }
  if (tree.base() != spec.tree.base) {
    return absl::DataLossError(absl::StrCat("the saved tree has base ", tree.base(),
                                            ", the spec ", spec.tree.base));
  }
  RETURN_IF_ERROR(CheckCancelled(cancellation));
  ASSIGN_OR_RETURN(std::unique_ptr<MetricSpace> space,
                   MakeSpace(spec, std::move(data), arena, progress));
  BuildTimings restored_timings = timings;
  bool rebuilt = false;
  // The fingerprint is of the arrays by id, so it is the same before and after the layout.
  if (space->Fingerprint() != space_fingerprint) {
    if (!ComputesFactors(spec)) {
      return absl::DataLossError(
          "the saved tree was built over a different metric space (other points or factors); "
          "rebuild the index");
    }
    // The points and the kernel are those of the saved index (the caller's uploads); only the
    // computed factors differ in their rounding. The tree is derived from them: build it again.
    RETURN_IF_ERROR(CheckCancelled(cancellation));
    const absl::Time tree_start = absl::Now();
    ASSIGN_OR_RETURN(tree, CoverTree::Build(*space, spec.tree, arena, cancellation));
    restored_timings.tree_seconds = absl::ToDoubleSeconds(absl::Now() - tree_start);
    rebuilt = true;
  }
  RETURN_IF_ERROR(LayOutInTreeOrder(tree, *space));
  if (progress) progress(1.0);
  std::unique_ptr<KnnIndex> index(
      new KnnIndex(spec, std::move(space), std::move(tree), restored_timings));
  index->tree_rebuilt_ = rebuilt;
  return index;
}

absl::Status KnnIndex::Search(const QueryBatch& queries, const KnnOptions& options,
                              tbb::task_arena* arena, const Cancellation* cancellation,
                              int64_t* out_ids, double* out_distances, TraversalStats* stats,
                              absl::Span<int64_t> per_query_evaluations) const {
  return TreeKnnSearch({&tree_, space_.get(), spec_.search, arena, cancellation}, queries, options,
                       {out_ids, out_distances, stats, per_query_evaluations});
}

absl::Status KnnIndex::SearchBruteForce(const QueryBatch& queries, const KnnOptions& options,
                                        tbb::task_arena* arena, const Cancellation* cancellation,
                                        int64_t* out_ids, double* out_distances,
                                        TraversalStats* stats) const {
  return BruteForceKnn(*space_, queries, options, arena, cancellation, out_ids, out_distances,
                       stats);
}

}  // namespace rcknn::core
