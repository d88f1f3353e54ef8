// How a tree search runs and what it reads and writes: the options of every path (planner, walk,
// block traversal, scan) and the two structs every traversal takes instead of long argument
// lists.
#ifndef RCKNN_CORE_SEARCH_OPTIONS_H_
#define RCKNN_CORE_SEARCH_OPTIONS_H_

#include <cstdint>
#include <limits>

#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/metric_space.h"
#include "core/traversal_stats.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

struct BlockTraversalOptions {
  // Queries by id are grouped by the maximal subtree of at most block_size points holding them;
  // groups of fewer than min_block_queries queries are left over.
  int64_t block_size = 64;
  int64_t min_block_queries = 16;
  int64_t leaf_size = 24;  // subtrees of at most this many points are evaluated whole
};

enum class SearchStrategy {
  kAuto,    // the planner decides (search_planner.h)
  kWalk,    // every query walks, without a budget: never scanned
  kScan,    // every query scanned
  kBlocks,  // every query by the block traversal (queries by point too, in batch order)
};

struct TreeSearchOptions {
  SearchStrategy strategy = SearchStrategy::kAuto;
  // kAuto: fraction of its candidates (all points, or the ids below the query's bound) a walk may
  // evaluate before the query moves to the scan. 1 or more: never scan; 0: always scan.
  double scan_fraction = 0.1;
  // kAuto: batches by id of at least this many queries (after the outright scans) take the block
  // traversal when the probes walk. Off by default: on the workloads measured so far the block
  // traversal evaluates several times more distances than the walk and has not been shown
  // faster (docs/benchmarks.md has the counters).
  int64_t min_block_batch = std::numeric_limits<int64_t>::max();
  // Batches of at least this many queries walk with the distances to the children of the nodes
  // near the root measured by one matrix product per chunk of walks (knn_search.cc,
  // ChunkProducts) instead of one dot product each; smaller ones (a single query) do not pay for
  // gathering the children.
  int64_t min_product_batch = 64;
  // Nodes up to this depth (the root: 0) have their children measured by those products. Deeper
  // than the root, the walks of one chunk share too few expansions for the products to pay
  // (docs/benchmarks.md).
  int64_t product_depth = 0;
  // kAuto: queries with at most this many candidates are scanned outright.
  int64_t scan_candidates_below = 2048;
  BlockTraversalOptions block;
};

// What one tree search reads: the tree, the space it was built over, how to search and where to
// run. The tree and the space must outlive the search.
struct TreeSearchContext {
  const CoverTree* tree = nullptr;
  const MetricSpace* space = nullptr;
  TreeSearchOptions search;
  tbb::task_arena* arena = nullptr;  // null: the calling thread's arena
  const Cancellation* cancellation = nullptr;
};

// Where a search writes (caller-owned): num_queries x k rows of ids and distances (row q for
// query q of the batch); `stats`, if set, is added to; `per_query_evaluations`, if non-empty,
// has one entry per query of the batch.
struct SearchOutput {
  int64_t* ids = nullptr;
  double* distances = nullptr;
  TraversalStats* stats = nullptr;
  absl::Span<int64_t> per_query_evaluations;
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_SEARCH_OPTIONS_H_
