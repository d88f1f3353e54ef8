// The production scan: the exhaustive search the tree search falls back to where its bounds stop
// pruning (sparse data, small predecessor ranges), tuned for the matrix product's speed. The
// oracle it must agree with is BruteForceKnn (brute_force_knn.h), which stays simple.
//
// Queries go in blocks of up to 256 (sorted by id in predecessor mode, so a block shares its id
// range), candidates in tiles of 512 evaluated as one matrix product per block and tile; the
// k-th-distance test is fused into the step that turns dot products into distances
// (MetricSpace::RowsToRangeWithin), so only the pairs that may enter a query's candidates get
// their exact distance (GSKNN: Yu et al., SC'15). Where only a prefix of ids qualifies and the
// space is laid out in tree order, each tile's ids are gathered once and serve the whole block.
#ifndef RCKNN_CORE_BLOCKED_SCAN_H_
#define RCKNN_CORE_BLOCKED_SCAN_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/knn_query.h"
#include "core/metric_space.h"
#include "core/traversal_stats.h"

namespace rcknn::core {

// Answers queries[query_list[i]] for every i, in parallel on the current arena (call inside
// task_arena::execute to choose one), writing rows q of out_ids / out_distances (num_queries x
// k, caller-owned) for each listed q. The caller has validated `queries`. Each answer is its
// candidates re-evaluated canonically (CandidateSet), so it is bit for bit BruteForceKnn's,
// whatever the other queries, the list or the thread count. CANCELLED / DEADLINE_EXCEEDED when
// `cancellation` fires (outputs then unspecified), or space.Prepare's error for out-of-sample
// points. `stats` is added to (distance evaluations, brute_force_queries);
// `per_query_evaluations`, if non-empty, has one entry per query of `queries` and the listed ones
// get their evaluation counts added.
absl::Status BlockedScan(const MetricSpace& space, const QueryBatch& queries,
                         absl::Span<const int64_t> query_list, const KnnOptions& options,
                         const Cancellation* cancellation, int64_t* out_ids,
                         double* out_distances, TraversalStats& stats,
                         absl::Span<int64_t> per_query_evaluations = {});

}  // namespace rcknn::core

#endif  // RCKNN_CORE_BLOCKED_SCAN_H_
