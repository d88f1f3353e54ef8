// Exact best-first k-NN search on a CoverTree, with a per-query fall-back to the blocked scan of
// BruteForceScan where the tree's bounds stop pruning.
//
// Each query pops tree nodes in order of the lower bound max(bound(parent), d(q, node) -
// max_dist(node)) and evaluates all children of a popped node at once. A node is pruned when
// its bound exceeds the current k-th distance by more than kPruneSlack; in predecessor mode a
// child whose subtree holds no id below the query's is skipped unevaluated. A query whose walk
// would evaluate more than `scan_fraction` of its candidates stops and is answered, with all other
// such queries of the batch, by the blocked matrix-product scan, which evaluates candidates many
// times faster per distance. Both paths are exact; which one answers a query depends only on
// the query batch, so results are identical at every thread count: 16 queries spread over the
// batch are walked first as probes, and where more than half of them fall back the rest of the
// batch is scanned without walking.
#ifndef RCKNN_CORE_KNN_SEARCH_H_
#define RCKNN_CORE_KNN_SEARCH_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/knn_query.h"
#include "core/metric_space.h"
#include "core/traversal_stats.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

struct TreeSearchOptions {
  // Fraction of its candidates (all points, or the ids below the query's in predecessor mode) a
  // tree walk may evaluate before the query moves to the scan. 1 or more: never fall back;
  // 0: always scan.
  double scan_fraction = 0.1;
};

// Same contract and errors as BruteForceKnn. `tree` must have been built over `space`.
// `per_query_evaluations`, if non-empty, must hold num_queries entries and receives each query's
// distance evaluations.
absl::Status TreeKnnSearch(const CoverTree& tree, const MetricSpace& space,
                           const QueryBatch& queries, const KnnOptions& options,
                           const TreeSearchOptions& search_options, tbb::task_arena* arena,
                           const Cancellation* cancellation, int64_t* out_ids,
                           double* out_distances, TraversalStats* stats = nullptr,
                           absl::Span<int64_t> per_query_evaluations = {});

}  // namespace rcknn::core

#endif  // RCKNN_CORE_KNN_SEARCH_H_
