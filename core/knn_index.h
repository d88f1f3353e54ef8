// A searchable index: a point set, its metric space and a cover tree over it. What the server
// keeps per index name. Immutable once built; Search() is thread-safe. The space stores its
// points in the tree's depth-first order (MetricSpace layout); ids are the user's throughout.
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
#include "core/progress.h"
#include "core/residual_correlation.h"
#include "core/traversal_stats.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

enum class Metric { kResidualCorrelation, kEuclidean };

// Stores the space's points in the tree's depth-first order (MetricSpace layout): every subtree
// is one contiguous range of positions, and a walk reads nearby memory. Every KnnIndex's space
// is laid out so, whichever way the index was made.
absl::Status LayOutInTreeOrder(const CoverTree& tree, MetricSpace& space);

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
  double tree_seconds = 0.0;    // the tree, and the space laid out in its depth-first order
};

// Where KnnIndex::Reparameterize takes its tree from.
enum class TreeStart {
  kAuto,     // refit the source's tree, then build afresh if the rule below says that pays
  kRefit,    // always the source's tree, refitted (CoverTree::Refit)
  kRebuild,  // always a fresh build
};

struct ReparameterizeOptions {
  TreeStart tree_start = TreeStart::kAuto;
  // How the refit keeps the source's shape (CoverTree::Refit). By default the whole shape:
  // lifting the stretched subtrees out of their root child (RefitOptions::lift_slack) has not
  // been shown to pay at 10^6 points (docs/gp-loop.md, "The lift").
  RefitOptions refit;
  // kAuto's probe: this many stored ids spread evenly over the set, answered in predecessor mode
  // with this k (the all-points Vecchia search the GP loop runs next) on the refitted tree only;
  // what a fresh tree would evaluate is predicted from the distortion (below), not probed.
  int64_t probe_queries = 256;
  int64_t probe_k = 30;
  // kAuto: how many all-points searches the new index is expected to serve (the GP loop runs
  // one per hyperparameter setting).
  double expected_searches = 1.0;
  // kAuto: the refitted tree is predicted to evaluate I = 1 + scale * (D - 1)^power times the
  // distances a fresh tree would, D the distortion (docs/gp-loop.md: fitted to the measured
  // evaluations of lengthscale changes of 1%, 10% and 2x).
  double inflation_scale = kInflationScale;
  double inflation_power = kInflationPower;
  static constexpr double kInflationScale = 0.54;
  static constexpr double kInflationPower = 1.7;
};

// What Reparameterize measured and chose (docs/gp-loop.md states the rule).
struct ReparameterizeReport {
  bool refitted = false;            // the index uses the source's tree shape
  double refit_seconds = 0.0;       // CoverTree::Refit (0 with kRebuild)
  double probe_seconds = 0.0;       // kAuto only
  double refit_evaluations = 0.0;   // mean distance evaluations per probe query, refitted tree
  double distortion = 1.0;          // EdgeDistortion of the refit (kAuto only)
  double predicted_inflation = 1.0;       // I of ReparameterizeOptions
  double predicted_saving_seconds = 0.0;  // search time a fresh tree would save
  double predicted_build_seconds = 0.0;   // what a fresh tree would cost
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

  // The index that Build(spec, data) made, with the tree it built then (read back from an index
  // file, core/index_file.h) instead of building it again: computes the metric space from `data`
  // as Build() does (V and p for computed factors) and adopts `tree`. DATA_LOSS if the tree
  // does not fit (another size or base), or if the space's fingerprint differs from
  // `space_fingerprint` where the space is given (Euclidean points, supplied factors): other
  // points or factors. Where the factors are computed (V and p from the points and the kernel),
  // a different fingerprint means they come out differently here than where the tree was built
  // (another CPU, or a version of rcknn that rounds them differently): the tree, derived data, is
  // then built again over the recomputed space and tree_rebuilt() is true. Otherwise the errors
  // of Build(). A restored index whose tree was adopted answers every query exactly as the saved
  // one did; one whose tree was rebuilt answers exactly by docs/design.md section 3, with
  // distances that may differ from the saved index's in the last digits.
  static absl::StatusOr<std::unique_ptr<KnnIndex>> Restore(
      const IndexSpec& spec, IndexData data, CoverTree tree, const BuildTimings& timings,
      uint64_t space_fingerprint, tbb::task_arena* arena = nullptr,
      const Cancellation* cancellation = nullptr, const ProgressCallback& progress = nullptr);

  // An index over the points of `source` (shared in memory, not copied) with the metric of
  // `spec`: other kernel hyperparameters, kernel type, inducing points or jitter. V and p are
  // computed for `spec`; the tree is the source's refitted (CoverTree::Refit: exact, the shape
  // kept) or a fresh one, as `options.tree_start` says. kAuto refits, then measures the
  // distortion D of the tree's parent distances (the 90th / 10th percentile ratio of
  // d_new / d_old over the edges), and with a probe the refitted tree's mean distance
  // evaluations per query e and seconds per evaluation t, predicts that a fresh tree evaluates
  // 1 / I of them with I = 1 + inflation_scale * (D - 1)^inflation_power, and builds afresh when
  //   expected_searches * n * e * (1 - 1 / I) * t  >  the source's fresh tree build seconds,
  // that is when the search time a fresh tree is predicted to save exceeds what building it
  // costs. A fresh build is also chosen when the spec's tree base differs from the source's.
  // INVALID_ARGUMENT naming the field: a source or spec that is not residual correlation
  // ("metric"), another dimension ("dimension"), factors_supplied ("factors_supplied"), kRefit
  // with another tree base ("base"); otherwise the errors of Build(). Defined in
  // core/knn_index_reparameterize.cc.
  static absl::StatusOr<std::unique_ptr<KnnIndex>> Reparameterize(
      const KnnIndex& source, const IndexSpec& spec, const ReparameterizeOptions& options,
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
  // Whether Restore() built the tree again instead of adopting the saved one (see Restore).
  bool tree_rebuilt() const { return tree_rebuilt_; }
  // Set by Reparameterize (default-constructed otherwise).
  const ReparameterizeReport& reparameterize_report() const { return report_; }
  // What a fresh tree over this index's points costs, as far as measured: its own tree build,
  // or for a refitted tree its source's estimate.
  double fresh_tree_seconds() const {
    return fresh_tree_seconds_ >= 0.0 ? fresh_tree_seconds_ : timings_.tree_seconds;
  }

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
  bool tree_rebuilt_ = false;
  ReparameterizeReport report_;
  double fresh_tree_seconds_ = -1.0;  // < 0: timings_.tree_seconds
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_KNN_INDEX_H_
