#include "core/knn_search.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/block_traversal.h"
#include "core/blocked_scan.h"
#include "core/brute_force_knn.h"
#include "core/parallel_tasks.h"
#include "core/search_planner.h"
#include "core/search_rule.h"
#include "core/status_macros.h"
#include "tbb/enumerable_thread_specific.h"

namespace rcknn::core {
namespace {

constexpr int64_t kChunk = 32;           // queries prepared together for their walks
constexpr int64_t kProbe = 16;           // queries whose walks decide whether the batch walks
constexpr int64_t kMinWalkBudget = 64;   // evaluations any walk may spend before falling back

// The query's distance to one expanded node, linked to its parent's record: the chain from a
// node's record to the root gives the query's distances to all the node's ancestors.
struct PathRecord {
  double distance;
  int64_t parent_record;  // -1 for the root
};

struct HeapEntry {
  double bound;  // lower bound on the distance from the query to the node's subtree
  int64_t record;
  int64_t node;
  bool operator>(const HeapEntry& other) const {
    return bound != other.bound ? bound > other.bound : node > other.node;
  }
};

// The walk's queue: a binary min-heap on (bound, node) whose sifts move a hole rather than
// swapping, so the entry being placed stays in registers (std::push_heap and std::pop_heap on
// the 24-byte entry went through the stack and stalled on store forwarding). A walk pushes each
// node at most once, so the keys are distinct and the pops come in the keys' order, as with
// any heap.
class NodeHeap {
 public:
  void clear() { entries_.clear(); }
  bool empty() const { return entries_.empty(); }
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  void Push(double bound, int64_t record, int64_t node) {
    const HeapEntry entry{bound, record, node};
    size_t hole = entries_.size();
    entries_.emplace_back();
    while (hole > 0) {
      const size_t parent = (hole - 1) / 2;
      if (!(entries_[parent] > entry)) break;
      entries_[hole] = entries_[parent];
      hole = parent;
    }
    entries_[hole] = entry;
  }
  // The least entry, removed. The heap must not be empty.
  HeapEntry Pop() {
    const HeapEntry top = entries_[0];
    const HeapEntry last = entries_.back();
    entries_.pop_back();
    const size_t count = entries_.size();
    if (count == 0) return top;
    size_t hole = 0;
    for (;;) {
      size_t child = 2 * hole + 1;
      if (child >= count) break;
      if (child + 1 < count && entries_[child] > entries_[child + 1]) ++child;
      if (!(last > entries_[child])) break;
      entries_[hole] = entries_[child];
      hole = child;
    }
    entries_[hole] = last;
    return top;
  }

 private:
  std::vector<HeapEntry> entries_;
};

struct WalkScratch {
  NodeHeap heap;                                 // on (bound, node)
  std::vector<PathRecord> records;
  std::vector<double> ancestor_distances;        // query to the expanded node's path, root first
  std::vector<int64_t> nodes;                    // children to evaluate
  std::vector<int64_t> ids;                      // their point ids
  std::vector<double> distances;
  std::vector<double> bounds;                    // ring bounds of those children
  std::vector<std::pair<double, int64_t>> offers;  // (product distance, child) to re-evaluate
  // Room for `count` children in nodes, ids, distances and bounds (never shrunk, so that a
  // node's children are written by index without reallocating or zeroing).
  void Reserve(int64_t count) {
    if (static_cast<int64_t>(nodes.size()) >= count) return;
    nodes.resize(count);
    ids.resize(count);
    distances.resize(count);
    bounds.resize(count);
  }
};

// Distances from a chunk of walks' queries (consecutive in the tree's depth-first order) to the
// children of the nodes near the root, each node's children measured for the whole chunk by one
// matrix product the first time one of its walks expands it. Every walk evaluates most of the
// root's children (the larger part of its evaluations), and a product evaluates a pair several
// times faster than a dot product each; deeper nodes are shared by few walks of a chunk
// (TreeSearchOptions::product_depth). Not canonical: within RoundingBound of the canonical value.
class ChunkProducts {
 public:
  // `root_rows`: the root's children, gathered once per search. Forgets every product.
  void Reset(const MetricSpace& space, const CoverTree& tree, const PointRows& rows,
             const PointRows& root_rows, int64_t max_depth) {
    space_ = &space;
    tree_ = &tree;
    rows_ = &rows;
    root_rows_ = &root_rows;
    max_depth_ = max_depth;
    offsets_.clear();
    pool_.clear();
  }
  // Row `row`'s distances to the children of `node` in child order, or null if `node` is deeper
  // than max_depth. The pointer is valid until the next call.
  const double* Children(int64_t node, int64_t row) {
    if (tree_->node_depth(node) > max_depth_) return nullptr;
    const int64_t first = tree_->first_child(node);
    const int64_t count = tree_->end_child(node) - first;
    const int64_t num = rows_->size();
    auto [it, inserted] = offsets_.try_emplace(node, static_cast<int64_t>(pool_.size()));
    if (inserted) {
      pool_.resize(pool_.size() + num * count);
      double* out = pool_.data() + it->second;
      if (node == 0) {
        // The packed product (the scan's), with no limit: every distance comes back.
        limits_.assign(num, std::numeric_limits<double>::infinity());
        space_->RowsToRowsWithin(*rows_, 0, num, *root_rows_, 0, count, limits_.data(), out);
      } else {
        const PointRows children = space_->Gather(tree_->points(first, first + count));
        space_->RowsToRows(*rows_, 0, num, children, 0, count, out);
      }
    }
    return pool_.data() + it->second + row * count;
  }

 private:
  const MetricSpace* space_ = nullptr;
  const CoverTree* tree_ = nullptr;
  const PointRows* rows_ = nullptr;
  const PointRows* root_rows_ = nullptr;
  int64_t max_depth_ = 0;
  absl::flat_hash_map<int64_t, int64_t> offsets_;  // node -> its block in pool_
  std::vector<double> pool_;
  std::vector<double> limits_;
};

// One query's best-first walk. Returns false, leaving `top` incomplete, if the walk would
// exceed `budget` evaluations. `id_bound` is the out-of-sample query's QueryBatch::IdBound.
// With `products`, the children of the nodes near the root are measured by it, row
// `product_row`: the bounds of those children are loosened by `rounding` (and so are the ring
// bounds of their descendants, which use those distances), and a child's point enters `top` with
// its canonical distance, evaluated only where the product's distance says it may enter. So `top`
// holds canonical distances either way.
bool Walk(const CoverTree& tree, const MetricSpace& space, const PointRows& rows, int64_t row,
          const KnnOptions& options, int64_t id_bound, int64_t budget, TopK& top,
          WalkScratch& scratch, TraversalStats& stats, int64_t& evaluations,
          ChunkProducts* products = nullptr, int64_t product_row = 0, double rounding = 0.0) {
  const int64_t query_id = rows.ids[row];
  // Predecessor mode and an id bound are one filter: only ids below `below` qualify, and a
  // subtree whose minimum id is not below it holds no candidate.
  const int64_t below = query_id >= 0 ? (options.predecessor_mode
                                           ? options.PredecessorKey(query_id)
                                           : kNoKeyBound)
                                      : id_bound;
  auto& heap = scratch.heap;
  heap.clear();
  auto& records = scratch.records;
  records.clear();
  auto& path = scratch.ancestor_distances;
  const double slack = PruneSlack(space);

  double root_distance;
  space.RowToIds(rows, row, tree.points(0, 1), &root_distance);
  evaluations = 1;
  if (Qualifies(tree.point(0), query_id, options, id_bound)) top.Offer(root_distance, tree.point(0));
  if (tree.end_child(0) > tree.first_child(0)) {
    records.push_back({root_distance, -1});
    heap.Push(std::max(0.0, root_distance - tree.max_dist(0)), 0, 0);
    ++stats.heap_pushes;
  }
  while (!heap.empty()) {
    const HeapEntry entry = heap.Pop();
    if (entry.bound > top.threshold() + slack) {
      stats.pruned_by_bound += heap.size() + 1;
      break;
    }
    ++stats.nodes_visited;
    const double limit = top.threshold() + slack;
    const int64_t depth = tree.node_depth(entry.node);
    const int64_t first = tree.first_child(entry.node);
    const int64_t end = tree.end_child(entry.node);
    scratch.Reserve(end - first);
    int64_t* const nodes = scratch.nodes.data();
    int64_t* const ids = scratch.ids.data();
    double* const bounds = scratch.bounds.data();
    double* const distances = scratch.distances.data();
    const double* product =
        products != nullptr ? products->Children(entry.node, product_row) : nullptr;
    const bool from_product = product != nullptr;
    // Below the root, the path may hold a product's distances.
    const double path_slack = depth >= 1 && products != nullptr ? rounding : 0.0;
    if (static_cast<int64_t>(path.size()) < depth + 1) path.resize(depth + 1);
    for (int64_t r = entry.record, j = depth; r >= 0; r = records[r].parent_record, --j) {
      path[j] = records[r].distance;
    }
    int64_t count = 0;
    for (int64_t c = first; c < end; ++c) {
      if (!SubtreeMayQualify(tree, c, below, options)) {
        ++stats.pruned_by_predecessor;
        continue;
      }
      // Ring bounds through every ancestor: a child whose whole subtree (itself included) is
      // provably too far is skipped without evaluating it.
      const auto* ring = tree.rings(c);
      double ring_max = 0.0;
      // The nearest ancestors first, which bound most tightly; a child is dropped as soon as one
      // ring rules it out.
      const double cut = limit + path_slack;
      for (int64_t j = depth; j >= 0; --j) {
        ring_max = std::max(ring_max, std::max(ring[j].first - path[j], path[j] - ring[j].second));
        if (ring_max > cut) break;
      }
      const double ring_bound = std::max(entry.bound, ring_max - path_slack);
      if (ring_bound > limit) {
        ++stats.pruned_by_bound;
        continue;
      }
      nodes[count] = c;
      ids[count] = tree.point(c);
      bounds[count] = ring_bound;
      ++count;
    }
    if (evaluations + count > budget) return false;
    evaluations += count;
    if (from_product) {
      for (int64_t j = 0; j < count; ++j) distances[j] = product[nodes[j] - first];
      // A child whose product distance exceeds the k-th canonical distance so far by more than
      // the rounding is farther than it canonically too; the others are re-evaluated, nearest
      // first, so that the k-th falls early and few are.
      const double margin = 2.0 * rounding + kPruneSlack;
      auto& offers = scratch.offers;
      offers.clear();
      for (int64_t j = 0; j < count; ++j) {
        if (distances[j] <= top.threshold() + margin &&
            Qualifies(ids[j], query_id, options, id_bound)) {
          offers.emplace_back(distances[j], j);
        }
      }
      const int64_t sorted = std::min<int64_t>(static_cast<int64_t>(offers.size()), options.k);
      std::partial_sort(offers.begin(), offers.begin() + sorted, offers.end());
      for (const auto& [product_distance, j] : offers) {
        if (product_distance > top.threshold() + margin) continue;
        double d;
        space.RowToIds(rows, row, absl::MakeConstSpan(&ids[j], 1), &d);
        ++evaluations;
        top.Offer(d, ids[j]);
      }
    } else {
      space.RowToIds(rows, row, absl::MakeConstSpan(ids, count), distances);
      for (int64_t j = 0; j < count; ++j) {
        const double d = distances[j];
        if (d <= top.threshold() && Qualifies(ids[j], query_id, options, id_bound)) {
          top.Offer(d, ids[j]);
        }
      }
    }
    const double child_slack = from_product ? rounding : 0.0;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t c = nodes[j];
      if (tree.end_child(c) == tree.first_child(c)) continue;
      const double d = distances[j];
      const double child_bound = std::max(bounds[j], d - child_slack - tree.max_dist(c));
      if (child_bound > top.threshold() + slack) {
        ++stats.pruned_by_bound;
        continue;
      }
      const int64_t record = static_cast<int64_t>(records.size());
      records.push_back({d, entry.record});
      heap.Push(child_bound, record, c);
      ++stats.heap_pushes;
    }
  }
  return true;
}

}  // namespace

absl::Status TreeKnnSearch(const TreeSearchContext& context, const QueryBatch& queries,
                           const KnnOptions& options, const SearchOutput& out) {
  const CoverTree& tree = *context.tree;
  const MetricSpace& space = *context.space;
  const TreeSearchOptions& search_options = context.search;
  const Cancellation* cancellation = context.cancellation;
  int64_t* const out_ids = out.ids;
  double* const out_distances = out.distances;
  const absl::Span<int64_t> per_query_evaluations = out.per_query_evaluations;
  const int64_t n = space.size();
  const int dimension = space.dimension();
  if (absl::Status status = ValidateQuery(queries, options, n, dimension); !status.ok()) {
    return status;
  }
  if (tree.size() != n) {
    return absl::FailedPreconditionError("the tree was not built over this point set");
  }
  if (!queries.by_id()) {
    if (absl::StatusOr<PointRows> probe = space.Prepare(nullptr, 0); !probe.ok()) {
      return probe.status();
    }
  }
  const int64_t nq = NumQueries(queries, dimension);
  if (!per_query_evaluations.empty() && static_cast<int64_t>(per_query_evaluations.size()) != nq) {
    return absl::InvalidArgumentError("per_query_evaluations must hold one entry per query");
  }
  const SearchStrategy strategy = search_options.strategy;
  const bool unbounded_walks = strategy == SearchStrategy::kWalk ||
                               strategy == SearchStrategy::kBlocks ||
                               (strategy == SearchStrategy::kAuto &&
                                search_options.scan_fraction >= 1.0);

  tbb::enumerable_thread_specific<TraversalStats> local_stats;
  tbb::enumerable_thread_specific<WalkScratch> local_scratch;
  std::vector<char> done(nq, 0);
  std::vector<int64_t> evaluations(nq, 0);
  // The number of qualifying points of query q with stored id `query_id` (-1 for a point).
  auto candidates_of = [&](int64_t q, int64_t query_id) {
    const int64_t bound = KeyBound(queries, options, q, query_id);
    return std::max<int64_t>(0, std::min(n, bound));
  };

  // The root's children, gathered once for a large batch (ChunkProducts).
  PointRows root_rows;
  const bool use_products =
      nq >= search_options.min_product_batch && tree.end_child(0) > tree.first_child(0);
  if (use_products) root_rows = space.Gather(tree.points(tree.first_child(0), tree.end_child(0)));
  tbb::enumerable_thread_specific<ChunkProducts> local_products;

  // Walks the queries of `list` in parallel, in chunks of `chunk_size` prepared together.
  auto walk_list = [&](const std::vector<int64_t>& list, int64_t chunk_size) {
    const int64_t total = static_cast<int64_t>(list.size());
    const int64_t num_chunks = (total + chunk_size - 1) / chunk_size;
    return ParallelTasks(num_chunks, cancellation, [&](int64_t chunk) {
      const int64_t first = chunk * chunk_size;
      const int64_t num = std::min(chunk_size, total - first);
      absl::StatusOr<PointRows> prepared =
          QueryRows(space, queries, absl::MakeConstSpan(list).subspan(first, num));
      if (!prepared.ok()) return prepared.status();
      const PointRows& rows = *prepared;
      TraversalStats& st = local_stats.local();
      WalkScratch& scratch = local_scratch.local();
      ChunkProducts& products = local_products.local();
      if (use_products) {
        products.Reset(space, tree, rows, root_rows, search_options.product_depth);
      }
      TopK top(options.k);
      for (int64_t i = 0; i < num; ++i) {
        top.Reset(options.k);
        const int64_t q = list[first + i];
        const int64_t budget =
            unbounded_walks
                ? std::numeric_limits<int64_t>::max()
                : std::max(kMinWalkBudget,
                           static_cast<int64_t>(search_options.scan_fraction *
                                                candidates_of(q, rows.ids[i])));
        if (Walk(tree, space, rows, i, options, queries.IdBound(q), budget, top, scratch, st,
                 evaluations[q], use_products ? &products : nullptr, i,
                 use_products ? space.RoundingBound(rows, i) : 0.0)) {
          top.Write(out_ids + q * options.k, out_distances + q * options.k);
          done[q] = 1;
        }
        st.distance_evaluations += evaluations[q];
      }
      return absl::OkStatus();
    });
  };

  TraversalStats scan_stats;
  TraversalStats block_stats;
  auto run = [&]() -> absl::Status {
    // The queries the plan is for: all but those scanned outright.
    std::vector<int64_t> rest;
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t query_id = queries.by_id() ? queries.ids[q] : -1;
      if (strategy != SearchStrategy::kAuto ||
          !ScanOutright(candidates_of(q, query_id), search_options)) {
        rest.push_back(q);
      }
    }
    if (queries.by_id()) {
      // In the tree's depth-first order: consecutive walks (one thread's chunk) visit mostly
      // the same nodes, whose data then sits in cache, and with the space laid out in that order
      // (KnnIndex) in nearby memory.
      std::vector<std::pair<int64_t, int64_t>> keyed(rest.size());
      for (size_t i = 0; i < rest.size(); ++i) {
        keyed[i] = {tree.preorder(tree.node_of(queries.ids[rest[i]])), rest[i]};
      }
      std::sort(keyed.begin(), keyed.end());
      for (size_t i = 0; i < rest.size(); ++i) rest[i] = keyed[i].second;
    }
    BatchPath path = BatchPath::kWalk;
    switch (strategy) {
      case SearchStrategy::kWalk:
        path = BatchPath::kWalk;
        break;
      case SearchStrategy::kScan:
        path = BatchPath::kScan;
        break;
      case SearchStrategy::kBlocks:
        path = BatchPath::kBlocks;
        break;
      case SearchStrategy::kAuto: {
        BatchFacts facts;
        facts.by_id = queries.by_id();
        if (search_options.scan_fraction > 0.0 && !rest.empty()) {
          const int64_t total = static_cast<int64_t>(rest.size());
          const int64_t probes = std::min(total, kProbe);
          std::vector<int64_t> probe_queries(probes);
          for (int64_t p = 0; p < probes; ++p) probe_queries[p] = rest[p * total / probes];
          RETURN_IF_ERROR(walk_list(probe_queries, 1));
          facts.probes = probes;
          for (int64_t q : probe_queries) facts.probes_walked += done[q];
        }
        if (facts.probes > 0) {
          // The probes are answered (or, having exceeded their budget, left to the scan).
          std::vector<char> probed(nq, 0);
          for (int64_t p = 0; p < facts.probes; ++p) probed[rest[p * rest.size() / facts.probes]] = 1;
          std::vector<int64_t> left;
          for (int64_t q : rest) {
            if (!probed[q]) left.push_back(q);
          }
          rest.swap(left);
        }
        facts.queries = static_cast<int64_t>(rest.size());
        path = PlanBatch(facts, search_options);
        break;
      }
    }
    switch (path) {
      case BatchPath::kWalk:
        RETURN_IF_ERROR(walk_list(rest, kChunk));
        break;
      case BatchPath::kBlocks: {
        std::vector<int64_t> left_over;
        SearchOutput block_out = out;
        block_out.stats = &block_stats;
        block_out.per_query_evaluations = absl::MakeSpan(evaluations);
        RETURN_IF_ERROR(BlockTraversal(context, queries, rest, options, block_out, &left_over));
        for (int64_t q : rest) done[q] = 1;
        for (int64_t q : left_over) done[q] = 0;
        // What the blocks leave over walks; under kBlocks without a budget, never scanned.
        RETURN_IF_ERROR(walk_list(left_over, kChunk));
        break;
      }
      case BatchPath::kScan:
        break;
    }
    std::vector<int64_t> scan_list;
    for (int64_t q = 0; q < nq; ++q) {
      if (!done[q]) scan_list.push_back(q);
    }
    return BlockedScan(space, queries, scan_list, options, cancellation, out_ids, out_distances,
                       scan_stats, absl::MakeSpan(evaluations));
  };
  absl::Status status;
  if (context.arena != nullptr) {
    context.arena->execute([&] { status = run(); });
  } else {
    status = run();
  }
  if (!status.ok()) return status;
  if (!per_query_evaluations.empty()) {
    std::copy(evaluations.begin(), evaluations.end(), per_query_evaluations.begin());
  }
  if (out.stats != nullptr) {
    TraversalStats total = scan_stats;
    total.Merge(block_stats);
    for (const TraversalStats& s : local_stats) total.Merge(s);
    total.queries = nq;
    out.stats->Merge(total);
  }
  return absl::OkStatus();
}

}  // namespace rcknn::core
