// CoverTree::Refit: a tree built under one metric, made valid for another over the same points.
//
// Why the shape can be kept: the search prunes with max_dist and the rings only, and both are
// plain upper and lower bounds on distances from a node's subtree to its ancestors. Measured
// again under the new metric they are true bounds whatever the shape, so the search over the
// refitted tree is exact. Levels are labels the search never reads; they are relabelled so that
// covering holds under the new metric, which keeps the stored file as Load() checks it (levels
// strictly decreasing). Separation is not restored: where the new metric has moved siblings
// closer together their balls overlap more and the search evaluates more distances, which is
// what KnnIndex::Reparameterize measures when it decides whether a fresh build pays.
//
// Why the lift (RefitOptions::lift_slack) is near the root only: counted by the depth of the
// node whose children a walk evaluates, a refitted tree's extra evaluations are in the
// children of the root's children, and deeper levels evaluate no more than a fresh tree's. A
// root child whose subtree the new metric stretched overlaps more siblings, so more walks
// expand it and evaluate its children one by one; the stretched parts, lifted to the root,
// are measured by the walks' matrix products (knn_search.cc) with the root's other children.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cover_tree.h"
#include "tbb/parallel_for.h"

namespace rcknn::core {
namespace {

constexpr int64_t kNodeBlock = 1024;  // nodes per task when measuring distances to ancestors
// Level of a node that covers nothing at a positive distance (only duplicates below it).
constexpr int32_t kLowestLevel = -1024;

// Smallest l with b^(l + 1) >= d, for d > 0: the lowest level at which a child at distance d
// from its parent is covered.
int32_t CoveringLevel(double d, double base) {
  int32_t level = static_cast<int32_t>(std::ceil(std::log(d) / std::log(base))) - 1;
  while (std::pow(base, level + 1) < d) ++level;
  while (std::pow(base, level) >= d) --level;
  return level;
}

// Widens the rings of `node`'s parent (at depth `parent_depth`) by the node's own for the
// ancestors they share, and the parent's max_dist by the ring the node holds for the parent.
void WidenParent(CoverTreeStorage& s, int64_t node, int64_t parent_depth) {
  const int64_t p = s.parent[node];
  const std::pair<double, double>* child = s.ring.data() + s.ring_offset[node];
  std::pair<double, double>* ring = s.ring.data() + s.ring_offset[p];
  for (int64_t j = 0; j < parent_depth; ++j) {
    ring[j].first = std::min(ring[j].first, child[j].first);
    ring[j].second = std::max(ring[j].second, child[j].second);
  }
  s.max_dist[p] = std::max(s.max_dist[p], child[parent_depth].second);
}

}  // namespace

absl::StatusOr<CoverTree> CoverTree::Refit(const CoverTree& source, const MetricSpace& space,
                                           const RefitOptions& options,
                                           tbb::task_arena* arena,
                                           const Cancellation* cancellation,
                                           const ProgressCallback& progress) {
  const int64_t n = source.size();
  if (n != space.size() || n < 1) {
    return absl::InvalidArgumentError(absl::StrCat("cannot refit a tree of ", n,
                                                   " points to a space of ", space.size()));
  }
  CoverTree tree;
  CoverTreeStorage& s = tree.storage_;
  s.base = source.storage().base;
  s.point = source.storage().point;
  s.parent = source.storage().parent;
  s.first_child = source.storage().first_child;
  s.subtree_min_id = source.storage().subtree_min_id;
  s.ring_offset = source.storage().ring_offset;
  s.ring.assign(source.storage().ring.size(), {0.0, 0.0});
  s.parent_dist.assign(n, 0.0);
  s.max_dist.assign(n, 0.0);
  s.level.assign(n, 0);

  // Each node's distances to its ancestors (canonical RowToIds, the node's point as the row),
  // as degenerate rings; the last one is the parent distance.
  std::atomic<bool> cancelled{false};
  std::atomic<int64_t> done{0};
  const int64_t tasks = (n + kNodeBlock - 1) / kNodeBlock;
  auto measure = [&] {
    tbb::parallel_for(int64_t{0}, tasks, [&](int64_t t) {
      if (cancelled.load(std::memory_order_relaxed)) return;
      if (!CheckCancelled(cancellation).ok()) {
        cancelled.store(true, std::memory_order_relaxed);
        return;
      }
      const int64_t begin = std::max<int64_t>(1, t * kNodeBlock);
      const int64_t end = std::min(n, (t + 1) * kNodeBlock);
      std::vector<int64_t> ancestors;
      std::vector<double> d;
      for (int64_t node = begin; node < end; ++node) {
        const int64_t depth = tree.node_depth(node);
        ancestors.resize(depth);
        for (int64_t a = s.parent[node], j = depth - 1; a >= 0; a = s.parent[a], --j) {
          ancestors[j] = s.point[a];
        }
        const PointRows row = space.Gather({s.point[node]});
        d.resize(depth);
        space.RowToIds(row, 0, ancestors, d.data());
        std::pair<double, double>* rings = s.ring.data() + s.ring_offset[node];
        for (int64_t j = 0; j < depth; ++j) rings[j] = {d[j], d[j]};
        s.parent_dist[node] = d[depth - 1];
      }
      const int64_t before = done.fetch_add(end - begin + (t == 0 ? 1 : 0));
      if (progress) progress(0.95 * static_cast<double>(before + end - begin) / n);
    });
  };
  if (arena != nullptr) {
    arena->execute(measure);
  } else {
    measure();
  }
  if (cancelled.load()) return CheckCancelled(cancellation);

  // Children before parents (breadth-first order reversed): widen each parent's rings by its
  // children's for the ancestors they share; the ring a child holds for its parent bounds every
  // distance from the parent into that child's subtree, so their largest is the parent's
  // max_dist.
  auto widen = [&] {
    s.max_dist.assign(n, 0.0);
    for (int64_t node = n - 1; node >= 1; --node) {
      WidenParent(s, node, tree.node_depth(s.parent[node]));
    }
  };
  std::vector<double> measured;  // the degenerate rings, kept for a lift
  if (options.lift_slack >= 0.0) {
    measured.resize(s.ring.size());
    for (size_t r = 0; r < s.ring.size(); ++r) measured[r] = s.ring[r].first;
  }
  widen();
  if (options.lift_slack >= 0.0) {
    auto lift = [&] { LiftOutliers(source, space, options.lift_slack, measured, tree); };
    if (arena != nullptr) {
      arena->execute(lift);
    } else {
      lift();
    }
  }
  if (progress) progress(0.97);

  // Levels, bottom-up: above every child's, and high enough to cover the parent distance.
  constexpr int32_t kNone = std::numeric_limits<int32_t>::min() + 1;
  std::vector<int32_t> above_children(n, kNone);  // largest child level + 1
  for (int64_t node = n - 1; node >= 0; --node) {
    int32_t level = above_children[node];
    const bool has_children = s.first_child[node + 1] > s.first_child[node];
    if (node > 0 && s.parent_dist[node] > 0.0) {
      level = std::max(level, CoveringLevel(s.parent_dist[node], s.base));
    } else if (node > 0 && !has_children) {
      level = kDuplicateLevel;
    } else if (node == 0 && s.max_dist[0] > 0.0) {
      level = std::max(level, CoveringLevel(s.max_dist[0], s.base) + 1);
    }
    if (level == kNone) level = kLowestLevel;
    s.level[node] = level;
    if (node > 0 && level != kDuplicateLevel) {
      int32_t& parent_floor = above_children[s.parent[node]];
      parent_floor = std::max(parent_floor, level + 1);
    }
  }
  tree.ComputeOrder();
  if (progress) progress(1.0);
  return tree;
}

void CoverTree::LiftOutliers(const CoverTree& source, const MetricSpace& space, double slack,
                             const std::vector<double>& measured, CoverTree& tree) {
  CoverTreeStorage& s = tree.storage_;
  const int64_t n = s.size();
  // How the new metric scaled the distances: the median ratio over the edges.
  std::vector<double> ratios;
  ratios.reserve(n);
  for (int64_t node = 1; node < n; ++node) {
    if (source.parent_dist(node) > 0.0 && s.parent_dist[node] > 0.0) {
      ratios.push_back(s.parent_dist[node] / source.parent_dist(node));
    }
  }
  if (ratios.empty()) return;
  std::nth_element(ratios.begin(), ratios.begin() + ratios.size() / 2, ratios.end());
  const double scale = ratios[ratios.size() / 2];
  // The root's children's children whose subtree reaches beyond the ball its parent had under
  // the source's metric, scaled.
  const int64_t r0 = s.first_child[0];
  const int64_t r1 = s.first_child[1];
  std::vector<double> target(r1 - r0);
  for (int64_t c = r0; c < r1; ++c) target[c - r0] = source.max_dist(c) * scale * (1.0 + slack);
  std::vector<char> lifted(n, 0);
  std::vector<int64_t> moving;  // the lifted nodes
  for (int64_t c = r0; c < r1; ++c) {
    for (int64_t g = s.first_child[c]; g < s.first_child[c + 1]; ++g) {
      if (s.ring[s.ring_offset[g] + 1].second > target[c - r0]) {
        lifted[g] = 1;
        moving.push_back(g);
      }
    }
  }
  if (moving.empty()) return;

  // A lifted subtree goes to another root child whose scaled ball holds it (by the triangle
  // inequality: its distance to that child plus its own max_dist), the nearest such; failing
  // that, to the root. Its points' distances to the new root child are measured (canonically).
  const int64_t num_moving = static_cast<int64_t>(moving.size());
  std::vector<int64_t> home(num_moving, -1);  // the new parent node, -1 for the root
  std::vector<double> to_home(n, 0.0);        // by old node, in the subtrees moved to a home
  tbb::parallel_for(int64_t{0}, (num_moving + kNodeBlock - 1) / kNodeBlock, [&](int64_t t) {
    const int64_t begin = t * kNodeBlock;
    const int64_t end = std::min(num_moving, begin + kNodeBlock);
    std::vector<int64_t> ids;
    for (int64_t i = begin; i < end; ++i) ids.push_back(s.point[moving[i]]);
    const PointRows rows = space.Gather(ids);
    const PointRows centers = space.Gather(source.points(r0, r1));
    std::vector<double> d((end - begin) * (r1 - r0));
    space.RowsToRows(rows, 0, end - begin, centers, 0, r1 - r0, d.data());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = moving[i];
      const double* row = d.data() + (i - begin) * (r1 - r0);
      int64_t best = -1;
      for (int64_t c = r0; c < r1; ++c) {
        if (c == s.parent[g] || !(row[c - r0] + s.max_dist[g] <= target[c - r0])) continue;
        if (best < 0 || row[c - r0] < row[best - r0]) best = c;
      }
      home[i] = best;
      if (best < 0) continue;
      const int64_t home_id = s.point[best];
      for (int64_t id : source.subtree_ids(g)) {
        const PointRows row_of = space.Gather({id});
        space.RowToIds(row_of, 0, absl::MakeConstSpan(&home_id, 1), &to_home[source.node_of(id)]);
      }
    }
  });
  std::vector<std::vector<int64_t>> gained(r1 - r0 + 1);  // per root child, then the root
  std::vector<char> rehomed(n, 0);
  for (int64_t i = 0; i < num_moving; ++i) {
    gained[home[i] < 0 ? r1 - r0 : home[i] - r0].push_back(moving[i]);
    if (home[i] >= 0) {
      for (int64_t id : source.subtree_ids(moving[i])) rehomed[source.node_of(id)] = 1;
    }
  }

  // The new shape, breadth-first: a root child's gained subtrees follow its own children, the
  // root's follow the root's children; a subtree lifted to the root loses one ancestor (the
  // root's child it left), whose ring entry is dropped, and a re-homed one changes that
  // ancestor.
  std::vector<int64_t> order;  // new node -> old node
  order.reserve(n);
  order.push_back(0);
  std::vector<int64_t> first_child(n + 1, n);
  std::vector<int64_t> parent(n, -1);
  for (int64_t i = 0; i < static_cast<int64_t>(order.size()); ++i) {
    const int64_t old = order[i];
    first_child[i] = static_cast<int64_t>(order.size());
    for (int64_t c = s.first_child[old]; c < s.first_child[old + 1]; ++c) {
      if (lifted[c]) continue;
      parent[order.size()] = i;
      order.push_back(c);
    }
    const int64_t gain = old == 0 ? r1 - r0 : (old >= r0 && old < r1 ? old - r0 : -1);
    if (gain < 0) continue;
    for (int64_t g : gained[gain]) {
      parent[order.size()] = i;
      order.push_back(g);
    }
  }
  CoverTreeStorage next;
  next.base = s.base;
  next.point.resize(n);
  next.parent = std::move(parent);
  next.first_child = std::move(first_child);
  next.ring_offset.assign(n + 1, 0);
  next.parent_dist.assign(n, 0.0);
  next.max_dist.assign(n, 0.0);
  next.level.assign(n, 0);
  std::vector<int64_t> depth(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    next.point[node] = s.point[order[node]];
    if (node > 0) depth[node] = depth[next.parent[node]] + 1;
    next.ring_offset[node + 1] = next.ring_offset[node] + depth[node];
  }
  next.ring.resize(next.ring_offset[n]);
  for (int64_t node = 1; node < n; ++node) {
    const int64_t old = order[node];
    const int64_t old_depth = s.ring_offset[old + 1] - s.ring_offset[old];
    const double* from = measured.data() + s.ring_offset[old];
    std::pair<double, double>* to = next.ring.data() + next.ring_offset[node];
    const bool dropped = depth[node] < old_depth;  // in a subtree lifted to the root
    for (int64_t j = 0, k = 0; j < old_depth; ++j) {
      if (dropped && j == 1) continue;
      const double d = rehomed[old] && j == 1 ? to_home[old] : from[j];
      to[k] = {d, d};
      ++k;
    }
    next.parent_dist[node] = to[depth[node] - 1].first;
  }
  next.subtree_min_id = next.point;
  for (int64_t node = n - 1; node >= 1; --node) {
    int64_t& up = next.subtree_min_id[next.parent[node]];
    up = std::min(up, next.subtree_min_id[node]);
  }
  s = std::move(next);
  for (int64_t node = n - 1; node >= 1; --node) {
    WidenParent(s, node, depth[s.parent[node]]);
  }
}

}  // namespace rcknn::core
