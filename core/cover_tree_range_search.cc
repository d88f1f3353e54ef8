#include "core/cover_tree_range_search.h"

#include <algorithm>
#include <cmath>

#include "core/search_rule.h"

namespace rcknn::core {

int64_t CoverTreeRangeSearch(const CoverTree& tree, const MetricSpace& space,
                             const PointRows& rows, int64_t row,
                             absl::FunctionRef<double(int64_t node)> radius_of,
                             absl::FunctionRef<void(int64_t id, double distance)> visit,
                             RangeSearchScratch& scratch) {
  if (tree.size() == 0) return 0;
  const double root_radius = radius_of(0);
  if (root_radius < 0.0) return 0;
  double root_distance;
  const int64_t root_id = tree.point(0);
  space.RowToIds(rows, row, absl::MakeConstSpan(&root_id, 1), &root_distance);
  int64_t evaluations = 1;
  visit(root_id, root_distance);
  scratch.stack.clear();
  scratch.records.clear();
  const double slack = PruneSlack(space);
  if (root_distance - tree.max_dist(0) <= root_radius + slack) {
    scratch.records.push_back({root_distance, -1});
    scratch.stack.emplace_back(0, 0);
  }
  while (!scratch.stack.empty()) {
    const auto [node, record] = scratch.stack.back();
    scratch.stack.pop_back();
    // d(query, a) for every ancestor a of the children (node included), root first.
    const int64_t depth = tree.node_depth(node);
    scratch.path.resize(depth + 1);
    for (int64_t r = record, j = depth; r >= 0; r = scratch.records[r].second, --j) {
      scratch.path[j] = scratch.records[r].first;
    }
    const double node_distance = scratch.path[depth];
    scratch.nodes.clear();
    scratch.ids.clear();
    for (int64_t child = tree.first_child(node); child < tree.end_child(node); ++child) {
      const double radius = radius_of(child);
      if (radius < 0.0) continue;
      // d(q, y) >= |d(q, node) - d(node, child)| - d(child, y) for every y under child, and
      // the rings bound d(q, y) through every ancestor a: d(y, a) lies in [lo, hi].
      double bound = std::fabs(node_distance - tree.parent_dist(child)) - tree.max_dist(child);
      const auto* ring = tree.rings(child);
      for (int64_t j = 0; j <= depth && bound <= radius + slack; ++j) {
        bound = std::max(bound, std::max(ring[j].first - scratch.path[j],
                                         scratch.path[j] - ring[j].second));
      }
      if (bound > radius + slack) continue;
      scratch.nodes.push_back(child);
      scratch.ids.push_back(tree.point(child));
    }
    const int64_t count = static_cast<int64_t>(scratch.ids.size());
    if (count == 0) continue;
    scratch.dists.resize(count);
    space.RowToIds(rows, row, scratch.ids, scratch.dists.data());
    evaluations += count;
    for (int64_t t = 0; t < count; ++t) {
      const int64_t child = scratch.nodes[t];
      const double distance = scratch.dists[t];
      visit(scratch.ids[t], distance);
      if (tree.first_child(child) < tree.end_child(child) &&
          distance - tree.max_dist(child) <= radius_of(child) + slack) {
        scratch.records.push_back({distance, record});
        scratch.stack.emplace_back(child, static_cast<int64_t>(scratch.records.size()) - 1);
      }
    }
  }
  return evaluations;
}

}  // namespace rcknn::core
