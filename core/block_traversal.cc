#include "core/block_traversal.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "core/brute_force_knn.h"
#include "core/candidate_set.h"
#include "core/parallel_tasks.h"
#include "core/search_rule.h"
#include "tbb/enumerable_thread_specific.h"

namespace rcknn::core {
namespace {

constexpr int64_t kPendingFlush = 128;  // points of expanded nodes evaluated together

struct Entry {
  double bound;    // lower bound on d(c, y) for the points y of the node's subtree
  int64_t record;  // the center's distance to the node, linked to its parent's
  int64_t node;
  bool operator>(const Entry& other) const {
    return bound != other.bound ? bound > other.bound : node > other.node;
  }
};

struct PathRecord {
  double distance;
  int64_t parent_record;  // -1 for the root
};

struct Scratch {
  std::vector<Entry> heap;
  std::vector<PathRecord> records;
  std::vector<double> path;  // the center's distances to the expanded node's ancestors, root first
  std::vector<int64_t> child_nodes;
  std::vector<int64_t> child_ids;
  std::vector<double> child_bounds;
  std::vector<CandidateSet> sets;
  std::vector<int64_t> bounds;       // per query: key bound
  std::vector<double> to_center;     // per query: d(q, c)
  std::vector<int64_t> evaluations;  // per query
  std::vector<int64_t> active;
  std::vector<int64_t> pending;
  std::vector<double> distances;
  std::vector<double> buffer;
};

// One block's traversal.
class Block {
 public:
  Block(const CoverTree& tree, const MetricSpace& space, const KnnOptions& options,
        const BlockTraversalOptions& block_options, const PointRows& rows, Scratch& scratch,
        TraversalStats& stats)
      : tree_(tree),
        space_(space),
        options_(options),
        block_options_(block_options),
        rows_(rows),
        s_(scratch),
        stats_(stats),
        slack_(PruneSlack(space)) {}

  void Run(int64_t center) {
    const int64_t nb = rows_.size();
    auto& heap = s_.heap;
    heap.clear();
    s_.pending.clear();
    const auto heap_order = std::greater<Entry>();
    s_.to_center.resize(nb);
    space_.RowsToRows(rows_, 0, nb, rows_, center, 1, s_.to_center.data());
    Count(center, nb);
    double max_to_center = 0.0;
    for (double t : s_.to_center) max_to_center = std::max(max_to_center, t);

    double root_distance;
    space_.RowToIds(rows_, center, tree_.points(0, 1), &root_distance);
    Count(center, 1);
    auto& records = s_.records;
    records.clear();
    records.push_back({root_distance, -1});
    heap.push_back({std::max(0.0, root_distance - tree_.max_dist(0)), 0, 0});
    ++stats_.heap_pushes;
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), heap_order);
      const Entry entry = heap.back();
      heap.pop_back();
      // The queries this subtree may still matter to.
      auto& active = s_.active;
      active.clear();
      double max_limit = 0.0;
      bool any_key = false;
      for (int64_t i = 0; i < nb; ++i) {
        const double limit = s_.sets[i].limit();
        max_limit = std::max(max_limit, limit);
        if (!SubtreeMayQualify(tree_, entry.node, s_.bounds[i], options_)) continue;
        any_key = true;
        if (BoundMayMatter(entry.bound - s_.to_center[i], limit, slack_)) active.push_back(i);
      }
      if (active.empty()) {
        if (any_key) {
          ++stats_.pruned_by_bound;
        } else {
          ++stats_.pruned_by_predecessor;
        }
        // Entries come in bound order: once no query could use this bound, none can use the rest.
        if (!BoundMayMatter(entry.bound - max_to_center, max_limit, slack_)) {
          stats_.pruned_by_bound += static_cast<int64_t>(heap.size());
          break;
        }
        continue;
      }
      ++stats_.nodes_visited;
      const int64_t node = entry.node;
      const bool leaf = tree_.end_child(node) == tree_.first_child(node);
      if (leaf || tree_.subtree_size(node) <= block_options_.leaf_size) {
        Evaluate(active, tree_.subtree_ids(node));
        continue;
      }
      s_.pending.push_back(tree_.point(node));
      // Ring bounds through every ancestor, with the center's distances to them: a child whose
      // subtree is provably too far from every query is skipped without evaluating it.
      const int64_t depth = tree_.node_depth(node);
      auto& path = s_.path;
      path.resize(depth + 1);
      for (int64_t r = entry.record, j = depth; r >= 0; r = records[r].parent_record, --j) {
        path[j] = records[r].distance;
      }
      const double relaxed = max_limit + max_to_center;
      s_.child_nodes.clear();
      s_.child_ids.clear();
      s_.child_bounds.clear();
      for (int64_t c = tree_.first_child(node); c < tree_.end_child(node); ++c) {
        const auto* ring = tree_.rings(c);
        double bound = entry.bound;
        for (int64_t j = 0; j <= depth; ++j) {
          bound = std::max(bound, std::max(ring[j].first - path[j], path[j] - ring[j].second));
        }
        if (!BoundMayMatter(bound, relaxed, slack_)) {
          ++stats_.pruned_by_bound;
          continue;
        }
        s_.child_nodes.push_back(c);
        s_.child_ids.push_back(tree_.point(c));
        s_.child_bounds.push_back(bound);
      }
      const int64_t count = static_cast<int64_t>(s_.child_nodes.size());
      s_.distances.resize(count);
      space_.RowToIds(rows_, center, s_.child_ids, s_.distances.data());
      Count(center, count);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t c = s_.child_nodes[j];
        const double bound =
            std::max(s_.child_bounds[j], s_.distances[j] - tree_.max_dist(c));
        if (!BoundMayMatter(bound, relaxed, slack_)) {
          ++stats_.pruned_by_bound;
          continue;
        }
        const int64_t record = static_cast<int64_t>(records.size());
        records.push_back({s_.distances[j], entry.record});
        heap.push_back({bound, record, c});
        std::push_heap(heap.begin(), heap.end(), heap_order);
        ++stats_.heap_pushes;
      }
      if (static_cast<int64_t>(s_.pending.size()) >= kPendingFlush) FlushPending();
    }
    FlushPending();
  }

 private:
  void Count(int64_t row, int64_t evaluations) {
    s_.evaluations[row] += evaluations;
    stats_.distance_evaluations += evaluations;
  }

  void FlushPending() {
    if (s_.pending.empty()) return;
    auto& all = s_.active;
    all.resize(rows_.size());
    std::iota(all.begin(), all.end(), 0);
    const std::vector<int64_t> ids = s_.pending;
    s_.pending.clear();
    Evaluate(all, ids);
  }

  // Rows `active` of the block against stored points `ids`, one matrix product.
  void Evaluate(const std::vector<int64_t>& active, absl::Span<const int64_t> ids) {
    const int64_t na = static_cast<int64_t>(active.size());
    const int64_t nc = static_cast<int64_t>(ids.size());
    if (na == 0 || nc == 0) return;
    const PointRows candidates = space_.Gather(ids);
    PointRows subset;
    const PointRows* a = &rows_;
    if (na < rows_.size()) {
      subset = SelectRows(rows_, active);
      a = &subset;
    }
    s_.buffer.resize(na * nc);
    space_.RowsToRows(*a, 0, na, candidates, 0, nc, s_.buffer.data());
    for (int64_t r = 0; r < na; ++r) {
      const int64_t i = active[r];
      const int64_t query_id = rows_.ids[i];
      const int64_t bound = s_.bounds[i];
      CandidateSet& set = s_.sets[i];
      double limit = set.limit();
      const double* d = s_.buffer.data() + r * nc;
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t id = ids[j];
        if (d[j] <= limit && Qualifies(id, query_id, options_, bound)) {
          set.Offer(d[j], id);
          limit = set.limit();
        }
      }
      Count(i, nc);
    }
  }

  const CoverTree& tree_;
  const MetricSpace& space_;
  const KnnOptions& options_;
  const BlockTraversalOptions& block_options_;
  const PointRows& rows_;
  Scratch& s_;
  TraversalStats& stats_;
  const double slack_;  // PruneSlack
};

}  // namespace

absl::Status BlockTraversal(const TreeSearchContext& context, const QueryBatch& queries,
                            absl::Span<const int64_t> list, const KnnOptions& options,
                            const SearchOutput& out, std::vector<int64_t>* left_over) {
  const CoverTree& tree = *context.tree;
  const MetricSpace& space = *context.space;
  const BlockTraversalOptions& block_options = context.search.block;
  const int64_t total = static_cast<int64_t>(list.size());
  left_over->clear();
  if (total == 0) return absl::OkStatus();
  // Blocks are spatially compact: the queries by id inside one maximal subtree of at most
  // block_size points (its radius bounds theirs), gathered in the tree's depth-first order.
  // Queries in smaller groups than min_block_queries (points of nodes with big subtrees, near
  // the top of the tree, and isolated ones) are left over for the single-query walk.
  const int64_t block_size = std::max<int64_t>(1, block_options.block_size);
  // (unit, preorder, query): unit = preorder of the maximal small subtree, or -1 for a query
  // whose own subtree is too big.
  std::vector<std::tuple<int64_t, int64_t, int64_t>> keyed(total);
  for (int64_t i = 0; i < total; ++i) {
    const int64_t q = list[i];
    if (!queries.by_id()) {
      keyed[i] = {0, i, q};
      continue;
    }
    int64_t node = tree.node_of(queries.ids[q]);
    const int64_t own = tree.preorder(node);
    if (tree.subtree_size(node) > block_size) {
      keyed[i] = {-1, own, q};
      continue;
    }
    while (node > 0 && tree.subtree_size(tree.parent(node)) <= block_size) node = tree.parent(node);
    keyed[i] = {tree.preorder(node), own, q};
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<int64_t> order;
  // [first, end) of `order` and the center's position in the block: the query nearest the
  // subtree's root (first in depth-first order) for a unit, the middle one otherwise.
  std::vector<std::tuple<int64_t, int64_t, int64_t>> blocks;
  auto add_block = [&](int64_t i, int64_t j, bool unit) {
    blocks.emplace_back(static_cast<int64_t>(order.size()),
                        static_cast<int64_t>(order.size()) + (j - i), unit ? 0 : (j - i) / 2);
    for (int64_t t = i; t < j; ++t) order.push_back(std::get<2>(keyed[t]));
  };
  for (int64_t i = 0; i < total;) {
    int64_t j = i;
    while (j < total && std::get<0>(keyed[j]) == std::get<0>(keyed[i])) ++j;
    const bool loose = std::get<0>(keyed[i]) < 0 || !queries.by_id();
    if (loose && (!queries.by_id() || block_options.min_block_queries <= 1)) {
      // Query points (no spatial grouping known), or every query wanted in a block: runs of the
      // order found.
      for (int64_t t = i; t < j; t += block_size) add_block(t, std::min(j, t + block_size), false);
    } else if (loose || j - i < block_options.min_block_queries) {
      for (int64_t t = i; t < j; ++t) left_over->push_back(std::get<2>(keyed[t]));
    } else {
      add_block(i, j, true);
    }
    i = j;
  }
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());

  tbb::enumerable_thread_specific<Scratch> local_scratch;
  tbb::enumerable_thread_specific<TraversalStats> local_stats;
  const absl::Status status = ParallelTasks(num_blocks, context.cancellation, [&](int64_t block) {
    const auto [first, end, center] = blocks[block];
    const int64_t num = end - first;
    const absl::Span<const int64_t> members = absl::MakeConstSpan(order).subspan(first, num);
    absl::StatusOr<PointRows> rows = QueryRows(space, queries, members);
    if (!rows.ok()) return rows.status();
    Scratch& scratch = local_scratch.local();
    scratch.sets.resize(num);
    scratch.bounds.resize(num);
    scratch.evaluations.assign(num, 0);
    for (int64_t i = 0; i < num; ++i) {
      scratch.sets[i].Reset(options.k, 2.0 * space.RoundingBound(*rows, i));
      scratch.bounds[i] = KeyBound(queries, options, members[i], rows->ids[i]);
    }
    TraversalStats& st = local_stats.local();
    ++st.blocks;
    st.block_queries += num;
    Block(tree, space, options, block_options, *rows, scratch, st).Run(center);
    for (int64_t i = 0; i < num; ++i) {
      const int64_t q = members[i];
      const int64_t finishing = scratch.sets[i].Finish(space, *rows, i, out.ids + q * options.k,
                                                       out.distances + q * options.k);
      st.distance_evaluations += finishing;
      if (!out.per_query_evaluations.empty()) {
        out.per_query_evaluations[q] += scratch.evaluations[i] + finishing;
      }
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  for (const TraversalStats& s : local_stats) out.stats->Merge(s);
  return absl::OkStatus();
}

}  // namespace rcknn::core
