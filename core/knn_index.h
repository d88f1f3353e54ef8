// A searchable index: a point set, its metric space and a cover tree over it. What the server
// keeps per index name. Immutable once built; Search() is thread-safe.
#ifndef RCKNN_CORE_KNN_INDEX_H_
#define RCKNN_CORE_KNN_INDEX_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/knn_query.h"
#include "core/knn_search.h"
#include "core/metric_space.h"
#include "core/residual_correlation.h"
#include "core/snapshot_file.h"
#include "core/traversal_stats.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

enum class Metric { kResidualCorrelation, kEuclidean };

struct IndexSpec {
  Metric metric = Metric::kResidualCorrelation;
  int dimension = 0;
  // Residual correlation only.
  ResidualOptions residual;
  bool factors_supplied = false;  // V and p come with the data instead of being computed
  CoverTreeOptions tree;
  TreeSearchOptions search;
};

// What a client uploads. `factors` (n x m) and `residual_variances` (n) only when the spec says
// factors_supplied.
struct IndexData {
  RowMatrix points;  // n x dimension
  RowMatrix factors;
  Eigen::VectorXd residual_variances;
};

struct BuildTimings {
  double factor_seconds = 0.0;  // kernel, Cholesky and V (0 for Euclidean or supplied factors)
  double tree_seconds = 0.0;
};

class KnnIndex {
 public:
  // INVALID_ARGUMENT for a bad spec or data (the message names the field), FAILED_PRECONDITION for
  // a kernel matrix that is not positive definite, CANCELLED / DEADLINE_EXCEEDED from
  // `cancellation`. `progress` receives the fraction of the build done, in [0, 1].
  static absl::StatusOr<std::unique_ptr<KnnIndex>> Build(const IndexSpec& spec, IndexData data,
                                                         tbb::task_arena* arena = nullptr,
                                                         const Cancellation* cancellation = nullptr,
                                                         const ProgressCallback& progress = nullptr);

  // Bytes that Build(spec, data) allocates for n points beyond `data` itself, estimated from
  // above (the tree's depth is not known in advance; it is taken as log_base(n) + 16).
  static int64_t EstimateBuildBytes(const IndexSpec& spec, int64_t n);

  // Appends what Restore() needs besides the spec and the data: the build timings, the metric
  // space's fingerprint and the tree.
  void Save(SnapshotWriter& writer) const;

  // The index that Build(spec, data) made and Save() wrote, without building the tree again:
  // reads the rest of `reader` and checks it (SnapshotReader::Finish) first, then computes the
  // metric space from `data` as Build() does (V and p for computed factors) and adopts the saved
  // tree. DATA_LOSS if the file is corrupt or the space's fingerprint differs from the saved one
  // (other points, or factors that came out differently on this machine); otherwise the errors
  // of Build(). The restored index answers every query exactly as the saved one did.
  static absl::StatusOr<std::unique_ptr<KnnIndex>> Restore(
      const IndexSpec& spec, IndexData data, SnapshotReader& reader,
      tbb::task_arena* arena = nullptr, const Cancellation* cancellation = nullptr,
      const ProgressCallback& progress = nullptr);

  // Exact k-NN (the tree with its scan fall-back). Contract of BruteForceKnn.
  absl::Status Search(const QueryBatch& queries, const KnnOptions& options, tbb::task_arena* arena,
                      const Cancellation* cancellation, int64_t* out_ids, double* out_distances,
                      TraversalStats* stats = nullptr,
                      absl::Span<int64_t> per_query_evaluations = {}) const;
  // The exhaustive blocked scan over the same space, for comparison.
  absl::Status SearchBruteForce(const QueryBatch& queries, const KnnOptions& options,
                                tbb::task_arena* arena, const Cancellation* cancellation,
                                int64_t* out_ids, double* out_distances,
                                TraversalStats* stats = nullptr) const;

  const IndexSpec& spec() const { return spec_; }
  int64_t size() const { return space_->size(); }
  int dimension() const { return space_->dimension(); }
  int64_t memory_bytes() const { return space_->memory_bytes() + tree_.memory_bytes(); }
  const BuildTimings& timings() const { return timings_; }
  const MetricSpace& space() const { return *space_; }
  const CoverTree& tree() const { return tree_; }

 private:
  // The metric space of `spec` over `data`; `progress` covers this part only.
  static absl::StatusOr<std::unique_ptr<MetricSpace>> MakeSpace(const IndexSpec& spec,
                                                                IndexData data,
                                                                tbb::task_arena* arena,
                                                                const ProgressCallback& progress);

  KnnIndex(IndexSpec spec, std::unique_ptr<MetricSpace> space, CoverTree tree,
           BuildTimings timings)
      : spec_(std::move(spec)),
        space_(std::move(space)),
        tree_(std::move(tree)),
        timings_(timings) {}

  IndexSpec spec_;
  std::unique_ptr<MetricSpace> space_;
  CoverTree tree_;
  BuildTimings timings_;
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_KNN_INDEX_H_
