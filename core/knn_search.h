// Exact k-NN on a CoverTree: the single-query best-first walk, the block traversal
// (block_traversal.h) and the blocked scan, chosen per batch by the planner (search_planner.h).
//
// The walk pops tree nodes in order of the lower bound max(bound(parent), d(q, node) -
// max_dist(node)) and evaluates all children of a popped node at once (canonically:
// MetricSpace::RowToIds). A node is pruned when its bound exceeds the current k-th distance by
// more than PruneSlack (search_rule.h: kPruneSlack where the data is at the metric's natural
// scale, more where its rounding is beyond it), and a child whose subtree holds no qualifying
// key (search_rule.h) is skipped unevaluated. Every path returns canonical distances, so a
// query's answer is the same bits whatever batch it comes in, however the batch is split and at
// every thread count.
#ifndef RCKNN_CORE_KNN_SEARCH_H_
#define RCKNN_CORE_KNN_SEARCH_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/knn_query.h"
#include "core/metric_space.h"
#include "core/search_options.h"
#include "core/traversal_stats.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

// Same contract and errors as BruteForceKnn. FAILED_PRECONDITION if the tree was not built over
// the space (another size); INVALID_ARGUMENT for per_query_evaluations of the wrong size (it
// receives each query's distance evaluations).
absl::Status TreeKnnSearch(const TreeSearchContext& context, const QueryBatch& queries,
                           const KnnOptions& options, const SearchOutput& out);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_KNN_SEARCH_H_
