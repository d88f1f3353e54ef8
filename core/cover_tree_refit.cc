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

}  // namespace

absl::StatusOr<CoverTree> CoverTree::Refit(const CoverTree& source, const MetricSpace& space,
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
  for (int64_t node = n - 1; node >= 1; --node) {
    const int64_t p = s.parent[node];
    const int64_t parent_depth = tree.node_depth(p);
    const std::pair<double, double>* child = s.ring.data() + s.ring_offset[node];
    std::pair<double, double>* ring = s.ring.data() + s.ring_offset[p];
    for (int64_t j = 0; j < parent_depth; ++j) {
      ring[j].first = std::min(ring[j].first, child[j].first);
      ring[j].second = std::max(ring[j].second, child[j].second);
    }
    s.max_dist[p] = std::max(s.max_dist[p], child[parent_depth].second);
  }

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

}  // namespace rcknn::core
