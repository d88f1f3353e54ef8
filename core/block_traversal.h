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
#include "core/knn_query.h"
#include "core/search_options.h"

namespace rcknn::core {

// Answers queries[list[i]] for every i but those it leaves over (`left_over`, for the caller to
// answer otherwise), in parallel on the current arena (context.arena is not entered), with
// context.search.block. Query points go in blocks of the batch's order. The caller has validated
// `queries`. Writes rows of out.ids / out.distances; adds evaluation counts to
// out.per_query_evaluations (if non-empty) and to *out.stats (which must be set).
absl::Status BlockTraversal(const TreeSearchContext& context, const QueryBatch& queries,
                            absl::Span<const int64_t> list, const KnnOptions& options,
                            const SearchOutput& out, std::vector<int64_t>* left_over);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_BLOCK_TRAVERSAL_H_
