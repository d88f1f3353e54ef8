// The block traversal: queries that sit next to each other in the tree's depth-first order
// (spatially adjacent points) traverse the tree together, and where a subtree cannot be pruned
// for them the (block x subtree) distances are one matrix product.
//
// A block of B queries has a center c (one of them) and each query's distance t_q = d(q, c). The
// traversal measures only the center's distance to the nodes it expands; for a node N with point
// x_N and descendant bound R_N, every query q and point y of N's subtree satisfy
// d(q, y) >= d(c, x_N) - R_N - t_q (the triangle inequality twice: the dual-tree bound of
// Curtin et al., ICML 2013, with the block as a ball of center c). Nodes are expanded best first
// on d(c, x_N) - R_N; a node is pruned when, for every query of the block, that bound exceeds the
// query's own k-th distance (plus margins) or the subtree holds no qualifying key. A subtree of at
// most `leaf_size` points is evaluated whole, for the queries it is not pruned for, as one matrix
// product; the points of expanded nodes are gathered and evaluated the same way. Candidates go
// through CandidateSet, so the distances returned are the canonical ones.
#ifndef RCKNN_CORE_BLOCK_TRAVERSAL_H_
#define RCKNN_CORE_BLOCK_TRAVERSAL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/knn_query.h"
#include "core/metric_space.h"
#include "core/traversal_stats.h"

namespace rcknn::core {

struct BlockTraversalOptions {
  // Queries by id are grouped by the maximal subtree of at most block_size points holding them;
  // groups of fewer than min_block_queries queries are left over.
  int64_t block_size = 64;
  int64_t min_block_queries = 16;
  int64_t leaf_size = 24;  // subtrees of at most this many points are evaluated whole
};

// Answers queries[list[i]] for every i but those it leaves over (`left_over`, for the caller to
// answer otherwise), in parallel on the current arena. Query points go in blocks of the batch's
// order. The caller has validated `queries`. Writes rows of out_ids / out_distances; adds
// evaluation counts to per_query_evaluations (if non-empty, one entry per query of `queries`)
// and to `stats`.
absl::Status BlockTraversal(const CoverTree& tree, const MetricSpace& space,
                            const QueryBatch& queries, absl::Span<const int64_t> list,
                            const KnnOptions& options, const BlockTraversalOptions& block_options,
                            const Cancellation* cancellation, int64_t* out_ids,
                            double* out_distances, TraversalStats& stats,
                            absl::Span<int64_t> per_query_evaluations,
                            std::vector<int64_t>* left_over);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_BLOCK_TRAVERSAL_H_
