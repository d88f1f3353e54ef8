// Work counters for searches: plain integers, filled per query by one thread and merged once per
// batch. Never atomics, never shared inside a traversal loop.
#ifndef RCKNN_CORE_TRAVERSAL_STATS_H_
#define RCKNN_CORE_TRAVERSAL_STATS_H_

#include <cstdint>

namespace rcknn::core {

struct TraversalStats {
  int64_t queries = 0;
  int64_t distance_evaluations = 0;
  int64_t heap_pushes = 0;
  int64_t nodes_visited = 0;
  int64_t pruned_by_bound = 0;        // subtrees skipped because their lower bound was too large
  int64_t pruned_by_predecessor = 0;  // subtrees skipped because every id in them was too large
  int64_t brute_force_queries = 0;    // queries answered by the blocked exhaustive scan
  int64_t block_queries = 0;          // queries answered by the block traversal
  int64_t blocks = 0;                 // blocks it traversed

  void Merge(const TraversalStats& other) {
    queries += other.queries;
    distance_evaluations += other.distance_evaluations;
    heap_pushes += other.heap_pushes;
    nodes_visited += other.nodes_visited;
    pruned_by_bound += other.pruned_by_bound;
    pruned_by_predecessor += other.pruned_by_predecessor;
    brute_force_queries += other.brute_force_queries;
    block_queries += other.block_queries;
    blocks += other.blocks;
  }
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_TRAVERSAL_STATS_H_
