// Exact range search on a CoverTree: every stored point within a radius of a query row, found
// with the tree's max-descendant-distance bounds. Written over CoverTree's public accessors, so
// it depends on nothing but the tree's invariants (core/cover_tree.h).
#ifndef RCKNN_CORE_COVER_TREE_RANGE_SEARCH_H_
#define RCKNN_CORE_COVER_TREE_RANGE_SEARCH_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "core/cover_tree.h"
#include "core/metric_space.h"

namespace rcknn::core {

// Reusable buffers of one range search (one per thread).
struct RangeSearchScratch {
  std::vector<std::pair<int64_t, int64_t>> stack;     // (node, its record)
  std::vector<std::pair<double, int64_t>> records;    // (d(query, node), parent's record)
  std::vector<double> path;                           // d(query, ancestor), root first
  std::vector<int64_t> nodes;
  std::vector<int64_t> ids;
  std::vector<double> dists;
};

// Walks `tree` (built over `space`) for the query rows[row]. radius_of(node) gives the radius
// that matters inside node's subtree (the node's own point included): a negative value means
// nothing there matters and the subtree is skipped unevaluated. Every other stored point x of the
// subtree with d(query, x) <= radius_of(node) is passed to visit(id, d); points farther away may
// be passed too (every evaluated point is). Distances are evaluated by space.RowToIds from the
// query row, so they have the bits of that call. A subtree is pruned when the triangle
// inequality puts all of it beyond its radius by more than PruneSlack (search_rule.h), through its
// max-descendant distance or through the rings of its ancestors (core/cover_tree.h), so rounding
// never hides a point that is in range. Returns the number of distances evaluated.
//
// radius_of(child) must not exceed radius_of(parent) for pruning to be tight; correctness needs
// only that it bounds what matters in the child's subtree.
int64_t CoverTreeRangeSearch(const CoverTree& tree, const MetricSpace& space,
                             const PointRows& rows, int64_t row,
                             absl::FunctionRef<double(int64_t node)> radius_of,
                             absl::FunctionRef<void(int64_t id, double distance)> visit,
                             RangeSearchScratch& scratch);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_COVER_TREE_RANGE_SEARCH_H_
