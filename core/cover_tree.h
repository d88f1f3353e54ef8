// A compressed cover tree over a MetricSpace: one node per stored point, explicit levels, and per
// node a true bound on the distance to every descendant.
//
// Invariants (checked by CheckInvariants on every tree built in tests), with base b > 1:
//  - every stored id appears in exactly one node; node 0 is the root;
//  - levels decrease strictly from a parent to each child;
//  - covering: d(child, parent) <= b^(level(child) + 1);
//  - separation: two children of one parent that share a level l are more than b^l apart, and
//    each is more than b^l from the parent;
//  - max_dist(node) >= d(node, x) for every descendant x (the value is the largest distance
//    measured while building, not a level radius; measured by matrix products, it may sit below
//    a canonical distance by the metric's rounding, which the searches' PruneSlack allows for:
//    core/search_rule.h);
//  - subtree_min_id(node) is the smallest id in the node's subtree;
//  - rings: for every node c and every ancestor a of c (a at depth j), ring(c, j) = [lo, hi]
//    holds d(y, a) for every y in the subtree of c (c included), as measured at build time.
//    The search bounds d(q, y) >= max(lo - d(q, a), d(q, a) - hi) for all those y without
//    evaluating c: the per-point pivot bound of LAESA-style tables, kept per subtree and per
//    ancestor, which is what prunes where balls are too wide for max_dist to help.
// Children whose parent is at distance exactly 0 (duplicates) sit at kDuplicateLevel.
//
// A tree made by Refit (core/cover_tree_refit.cc) keeps every invariant but separation: its shape
// was chosen under another metric. The search needs only the bounds (max_dist, rings), so it
// stays exact over such a tree; separation is what keeps it fast.
//
// Nodes are stored breadth-first, so the children of a node are one contiguous range and their
// point ids one contiguous span. Immutable after Build(); const methods are thread-safe.
#ifndef RCKNN_CORE_COVER_TREE_H_
#define RCKNN_CORE_COVER_TREE_H_

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/metric_space.h"
#include "core/progress.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

struct CoverTreeOptions {
  // Ratio between the radii of successive levels. Smaller bases give narrower, deeper trees.
  double base = 1.5;
};

// The arrays a cover tree is made of, indexed by node (breadth-first order), all of them saved:
// a CoverTree is this struct plus orderings derived from it. ForEachArray names every array once,
// in the order the index file stores them (core/index_file.h); saving, loading, the structural
// check and memory_bytes() iterate over it, so an array added here is saved, loaded,
// length-checked and counted without another edit (it changes the index file's format, though).
struct CoverTreeStorage {
  // How long an array is for a tree of n nodes.
  enum class Length { kNodes, kNodesPlusOne, kRings };

  double base = 2.0;
  std::vector<int64_t> point;           // node -> stored id
  std::vector<int32_t> level;           // CoverTree::kDuplicateLevel for duplicates
  std::vector<double> max_dist;         // a bound on the distance to every descendant
  std::vector<double> parent_dist;      // distance to the parent (0 for the root)
  std::vector<int64_t> parent;          // node -> parent node (-1 for the root)
  // n + 1 entries: the children of node i are [first_child[i], first_child[i + 1]).
  std::vector<int64_t> first_child;
  std::vector<int64_t> subtree_min_id;  // the smallest id in the node's subtree
  // n + 1 entries: the rings of node i are ring[ring_offset[i] .. ring_offset[i + 1]).
  std::vector<int64_t> ring_offset;
  std::vector<std::pair<double, double>> ring;  // (lo, hi); ring_offset[n] of them

  int64_t size() const { return static_cast<int64_t>(point.size()); }

  // Calls visit(name, array, length) for every array above, in file order; `storage` const or
  // not (the arrays are then const or not).
  template <typename Storage, typename Visit>
  static void ForEachArray(Storage& storage, Visit&& visit) {
    static_assert(std::is_same_v<std::remove_const_t<Storage>, CoverTreeStorage>);
    visit("point", storage.point, Length::kNodes);
    visit("level", storage.level, Length::kNodes);
    visit("max_dist", storage.max_dist, Length::kNodes);
    visit("parent_dist", storage.parent_dist, Length::kNodes);
    visit("parent", storage.parent, Length::kNodes);
    visit("first_child", storage.first_child, Length::kNodesPlusOne);
    visit("subtree_min_id", storage.subtree_min_id, Length::kNodes);
    visit("ring_offset", storage.ring_offset, Length::kNodesPlusOne);
    visit("ring", storage.ring, Length::kRings);
  }
};

// How CoverTree::Refit keeps the source's shape.
struct RefitOptions {
  // Where the new metric stretched a subtree of one of the root's children beyond the ball that
  // child had (its source max_dist times the median ratio of new to old parent distances, times
  // 1 + lift_slack), the root child's ball overlaps its siblings' more than a fresh tree's
  // would, and every walk nearby expands it. Such a subtree (a child of a root child) moves, whole,
  // to the nearest other root child whose scaled ball holds it by the triangle inequality (its
  // points' distances to that child measured, one evaluation each), or else to the root (its
  // remaining ancestors' distances are measured already), which tightens the ball it left.
  // Negative: no lift, the shape kept node for node.
  double lift_slack = -1.0;
};

class CoverTree {
 public:
  static constexpr int32_t kDuplicateLevel = std::numeric_limits<int32_t>::min();

  // Builds over every point of `space` (which must outlive nothing: the tree keeps only ids).
  // Runs on `arena` if given; the tree does not depend on the number of threads.
  // INVALID_ARGUMENT for base <= 1 or non-finite; CANCELLED / DEADLINE_EXCEEDED from
  // `cancellation`. `progress` receives the fraction of points placed.
  static absl::StatusOr<CoverTree> Build(const MetricSpace& space, const CoverTreeOptions& options,
                                         tbb::task_arena* arena = nullptr,
                                         const Cancellation* cancellation = nullptr,
                                         const ProgressCallback& progress = nullptr);

  // The shape of `source` (built over the same points under another metric, for example other
  // kernel hyperparameters) with every distance in it measured again in `space`: parent
  // distances, rings, and max_dist taken from the rings; levels relabelled bottom-up so that
  // covering holds again (the smallest level covering the parent distance, below the parent).
  // With options.lift_slack >= 0 the stretched subtrees below the root's children move first
  // (RefitOptions), every other edge kept. O(n * depth) distance evaluations, no
  // search. INVALID_ARGUMENT if the sizes differ;
  // CANCELLED / DEADLINE_EXCEEDED from `cancellation`. Defined in core/cover_tree_refit.cc.
  static absl::StatusOr<CoverTree> Refit(const CoverTree& source, const MetricSpace& space,
                                         const RefitOptions& options,
                                         tbb::task_arena* arena = nullptr,
                                         const Cancellation* cancellation = nullptr,
                                         const ProgressCallback& progress = nullptr);

  // The tree whose arrays are `storage` (as saved from storage() of a built tree), checked for
  // structure first: array lengths, every id once, child ranges, parents, levels, depths, subtree
  // minimum ids, finite non-negative bounds and rings that are intervals. INVALID_ARGUMENT
  // "tree: ..." naming the first defect. Distances are not re-measured: the caller checks that
  // the space is the one the tree was built over.
  static absl::StatusOr<CoverTree> FromStorage(CoverTreeStorage storage);

  // Every saved array (what FromStorage takes back).
  const CoverTreeStorage& storage() const { return storage_; }

  int64_t size() const { return storage_.size(); }
  double base() const { return storage_.base; }
  int64_t point(int64_t node) const { return storage_.point[node]; }
  int32_t level(int64_t node) const { return storage_.level[node]; }
  double max_dist(int64_t node) const { return storage_.max_dist[node]; }
  double parent_dist(int64_t node) const { return storage_.parent_dist[node]; }
  int64_t parent(int64_t node) const { return storage_.parent[node]; }
  // Depth of `node` (root 0) = the number of its ancestors.
  int64_t node_depth(int64_t node) const {
    return storage_.ring_offset[node + 1] - storage_.ring_offset[node];
  }
  // ring(node, j) for j in [0, node_depth(node)): the ancestor at depth j, root first.
  const std::pair<double, double>* rings(int64_t node) const {
    return storage_.ring.data() + storage_.ring_offset[node];
  }
  int64_t subtree_min_id(int64_t node) const { return storage_.subtree_min_id[node]; }
  int64_t first_child(int64_t node) const { return storage_.first_child[node]; }
  int64_t end_child(int64_t node) const { return storage_.first_child[node + 1]; }
  // Point ids of nodes [first, end), contiguous.
  absl::Span<const int64_t> points(int64_t first, int64_t end) const {
    return absl::MakeConstSpan(storage_.point.data() + first, end - first);
  }
  // Depth-first (pre-order) numbering, derived from the structure when a tree is built or
  // loaded: the ids of a node's subtree are one contiguous span, and consecutive spans of it are
  // spatially adjacent points (what the block traversal groups queries by).
  int64_t subtree_size(int64_t node) const { return subtree_size_[node]; }
  int64_t preorder(int64_t node) const { return preorder_[node]; }
  // Ids of the node's subtree, the node's own first.
  absl::Span<const int64_t> subtree_ids(int64_t node) const {
    return absl::MakeConstSpan(preorder_ids_.data() + preorder_[node], subtree_size_[node]);
  }
  // The node holding stored point `id`.
  int64_t node_of(int64_t id) const { return node_of_[id]; }
  int64_t memory_bytes() const;
  // Depth of the deepest node (root = 0) and the largest number of children of one node.
  int64_t depth() const;
  int64_t max_children() const;

  // Verifies every invariant in the class comment by recomputing distances in `space`, with
  // `slack` allowed for rounding. O(n * depth) distance evaluations plus O(children^2) per node
  // for separation: meant for tests. INTERNAL error describing the first violation.
  // `check_separation` false skips separation (a tree made by Refit).
  absl::Status CheckInvariants(const MetricSpace& space, double slack = 1e-6,
                               bool check_separation = true) const;

 private:
  // RefitOptions::lift_slack, on a refitted `tree` of `source`'s shape whose rings are widened;
  // `measured` holds its degenerate rings (each node's distances to its ancestors).
  static void LiftOutliers(const CoverTree& source, const MetricSpace& space, double slack,
                           const std::vector<double>& measured, CoverTree& tree);
  void ComputeRings(const MetricSpace& space);
  void ComputeOrder();

  CoverTreeStorage storage_;
  // Derived by ComputeOrder (not saved).
  std::vector<int64_t> subtree_size_;
  std::vector<int64_t> preorder_;
  std::vector<int64_t> preorder_ids_;
  std::vector<int64_t> node_of_;
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_COVER_TREE_H_
