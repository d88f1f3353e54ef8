#include "core/knn_index.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/brute_force_knn.h"
#include "core/euclidean_space.h"
#include "core/status_macros.h"

namespace rcknn::core {

absl::StatusOr<std::unique_ptr<KnnIndex>> KnnIndex::Build(const IndexSpec& spec, IndexData data,
                                                          tbb::task_arena* arena,
                                                          const Cancellation* cancellation,
                                                          const ProgressCallback& progress) {
  if (spec.dimension < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dimension must be >= 1, got ", spec.dimension));
  }
  if (data.points.cols() != spec.dimension) {
    return absl::InvalidArgumentError(absl::StrCat("points: rows have ", data.points.cols(),
                                                   " coordinates, the spec says ",
                                                   spec.dimension));
  }
  BuildTimings timings;
  const bool computes_factors =
      spec.metric == Metric::kResidualCorrelation && !spec.factors_supplied;
  const double factor_share = computes_factors ? 0.5 : 0.0;
  auto report = [&](double fraction) {
    if (progress) progress(fraction);
  };
  std::unique_ptr<MetricSpace> space;
  const absl::Time start = absl::Now();
  switch (spec.metric) {
    case Metric::kResidualCorrelation: {
      if (spec.factors_supplied) {
        ASSIGN_OR_RETURN(space, ResidualSpace::FromFactors(
                                    std::move(data.points), spec.residual.kernel,
                                    std::move(data.factors), std::move(data.residual_variances)));
      } else {
        ASSIGN_OR_RETURN(space, ResidualSpace::Create(std::move(data.points), spec.residual, arena,
                                                      [&](double f) { report(f * factor_share); }));
      }
      break;
    }
    case Metric::kEuclidean: {
      ASSIGN_OR_RETURN(space, EuclideanSpace::Create(std::move(data.points)));
      break;
    }
    default:
      return absl::InvalidArgumentError("metric: unknown metric");
  }
  timings.factor_seconds = computes_factors ? absl::ToDoubleSeconds(absl::Now() - start) : 0.0;
  RETURN_IF_ERROR(CheckCancelled(cancellation));
  const absl::Time tree_start = absl::Now();
  ASSIGN_OR_RETURN(CoverTree tree,
                   CoverTree::Build(*space, spec.tree, arena, cancellation, [&](double f) {
                     report(factor_share + (1.0 - factor_share) * f);
                   }));
  timings.tree_seconds = absl::ToDoubleSeconds(absl::Now() - tree_start);
  report(1.0);
  return std::unique_ptr<KnnIndex>(
      new KnnIndex(spec, std::move(space), std::move(tree), timings));
}

absl::Status KnnIndex::Search(const QueryBatch& queries, const KnnOptions& options,
                              tbb::task_arena* arena, const Cancellation* cancellation,
                              int64_t* out_ids, double* out_distances, TraversalStats* stats,
                              absl::Span<int64_t> per_query_evaluations) const {
  return TreeKnnSearch(tree_, *space_, queries, options, spec_.search, arena, cancellation,
                       out_ids, out_distances, stats, per_query_evaluations);
}

absl::Status KnnIndex::SearchBruteForce(const QueryBatch& queries, const KnnOptions& options,
                                        tbb::task_arena* arena, const Cancellation* cancellation,
                                        int64_t* out_ids, double* out_distances,
                                        TraversalStats* stats) const {
  return BruteForceKnn(*space_, queries, options, arena, cancellation, out_ids, out_distances,
                       stats);
}

}  // namespace rcknn::core
