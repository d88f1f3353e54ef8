// The pruning rule shared by the tree traversals (single-query walk, block traversal): which
// stored points qualify for a query, which subtrees can hold one, and when a subtree's lower bound
// rules it out.
//
// The id filter is one shape for every mode: stored point j qualifies for query q iff
// key(j) < bound(q), with key(j) = j; a subtree can hold a qualifying point iff its minimum key
// is below bound(q). Predecessor mode is bound(q) = the query's id, QueryBatch::id_bounds gives
// bound(q) directly, and no filter is bound(q) = +inf. (An ordering other than the ids is a key
// array with per-node subtree minima, the same test.) Excluding the query itself without
// include_self is a separate, per-point rule (Qualifies).
#ifndef RCKNN_CORE_SEARCH_RULE_H_
#define RCKNN_CORE_SEARCH_RULE_H_

#include <cstdint>
#include <limits>

#include "core/cover_tree.h"
#include "core/knn_query.h"

namespace rcknn::core {

inline constexpr int64_t kNoKeyBound = std::numeric_limits<int64_t>::max();

// bound(q) for query number q of `queries` with stored id `query_id` (-1 for a point).
inline int64_t KeyBound(const QueryBatch& queries, const KnnOptions& options, int64_t q,
                        int64_t query_id) {
  if (query_id >= 0) return options.predecessor_mode ? options.PredecessorKey(query_id) : kNoKeyBound;
  return queries.IdBound(q);
}

// Whether the subtree of `node` can hold a point with key below `bound` (keys: ranks under
// options.rank in predecessor mode, else ids).
inline bool SubtreeMayQualify(const CoverTree& tree, int64_t node, int64_t bound,
                              const KnnOptions& options) {
  if (bound == kNoKeyBound) return true;
  const bool by_rank = options.predecessor_mode && !options.rank.empty();
  return (by_rank ? options.subtree_min_rank[node] : tree.subtree_min_id(node)) < bound;
}

// Whether a subtree whose distances from the query are bounded below by `lower_bound` may hold a
// candidate that matters: `limit` is the query's CandidateSet::limit() (its k-th distance so far,
// plus the candidate margin), and kPruneSlack covers the rounding of the bound itself.
inline bool BoundMayMatter(double lower_bound, double limit) {
  return lower_bound <= limit + kPruneSlack;
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_SEARCH_RULE_H_
