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
#include "core/metric_space.h"

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

// The slack every tree traversal prunes with (the walk, the block traversal, the range search):
// a subtree is skipped only if its lower bound exceeds what it is compared with (the k-th
// distance so far, a candidate limit, a radius) by more than this.
//
// Why kPruneSlack plus four times RoundingExcess. Write D for the distance in exact arithmetic
// (it satisfies the triangle inequality) and e for how far any one evaluation of it may be off,
// whether canonical (RowToIds) or a matrix product: e <= r + x, with r the rounding at the
// metric's natural scale and x = space.RoundingExcess(). Every lower bound on the points y of a
// subtree chains at most four evaluations between y and the comparison, each costing e:
//  - the walk's d(q, c) - max_dist(c): max_dist(c) was measured as the largest of some
//    evaluations of d(c, y), so D(c, y) <= max_dist(c) + e, and the evaluated
//    d(q, y) >= D(q, y) - e >= D(q, c) - D(c, y) - e >= d(q, c) - max_dist(c) - 3e;
//  - a ring [lo, hi] of ancestor a (evaluations of d(y, a)): d(q, y) >= lo - d(q, a) - 3e, and
//    d(q, y) >= d(q, a) - hi - 3e;
//  - the range search's |d(q, p) - parent_dist(c)| - max_dist(c): 4e (the parent distance too);
//  - the block traversal's bound for the center o minus the evaluated d(q, o): 4e.
// Which path measured a stored bound (products at build, RowToIds at refit) does not matter: it
// is one evaluation in the chain either way. kPruneSlack is the allowance for 4r, the rounding at
// the natural scale (the kernel variance; docs/design.md section 3), as it always was: tested on
// the densest regime, not a worst case where p is tiny. What the data adds beyond that scale is
// covered in full by 4x. The excess is taken here and not folded into the stored max_dist and
// rings, because three of the four evaluations are the query's (or the block center's), which
// no stored bound can absorb, and so the trees, and index files written before, are valid for
// any space as they are. Where x = 0 (computed factors, Euclidean points) the slack is
// kPruneSlack bit for bit: the same pruning, the same evaluations, the same answers.
//
// Distances a walk measured by a matrix product are loosened by the whole RoundingBound where
// they enter a bound (knn_search.cc), and candidates compared by product distances carry the
// candidate margin (candidate_set.h); both bounds include the excess already.
inline double PruneSlack(const MetricSpace& space) {
  return kPruneSlack + 4.0 * space.RoundingExcess();
}

// Whether a subtree whose distances from the query are bounded below by `lower_bound` may hold a
// candidate that matters: `limit` is the query's CandidateSet::limit() (its k-th distance so far,
// plus the candidate margin), and `slack` (PruneSlack) covers the rounding of the bound itself.
inline bool BoundMayMatter(double lower_bound, double limit, double slack) {
  return lower_bound <= limit + slack;
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_SEARCH_RULE_H_
