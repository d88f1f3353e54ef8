// The query contract shared by every search path (docs/design.md section 3).
//
// A query returns its k nearest stored points by (distance, id) ascending: ties go to the smaller
// id. Results are written to caller-owned row-major num_queries x k arrays; rows with fewer than
// k qualifying points are padded with id -1 and distance +infinity.
#ifndef RCKNN_CORE_KNN_QUERY_H_
#define RCKNN_CORE_KNN_QUERY_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace rcknn::core {

// The slack used when pruning by a lower bound: a subtree is skipped only if its bound exceeds
// the current k-th distance by more than this, so rounding (docs/design.md section 3: about 1e-6 at
// worst) never discards a true neighbour. It covers the rounding at the metric's natural scale;
// the trees prune with PruneSlack (search_rule.h), which adds what the data rounds beyond it.
inline constexpr double kPruneSlack = 1e-6;

struct KnnOptions {
  int64_t k = 10;
  // Queries by id only: return the point itself (at distance 0) as a candidate.
  bool include_self = false;
  // Queries by id only: only ids j < i qualify; query 0 gets nothing.
  bool predecessor_mode = false;
  // Predecessor mode under an ordering (core/ordering.h, IndexOrdering): j qualifies for query
  // i iff rank[j] < rank[i], so the query at rank 0 gets nothing. subtree_min_rank[node] is the
  // smallest rank in the subtree of that node of the tree the search walks (unused by the
  // brute force). Both empty: the ids themselves are the ranks. Set both or neither, n entries
  // each, only with predecessor_mode.
  absl::Span<const int64_t> rank;
  absl::Span<const int64_t> subtree_min_rank;

  // The key predecessor mode compares: the rank under the ordering, or the id.
  int64_t PredecessorKey(int64_t id) const { return rank.empty() ? id : rank[id]; }
};

// Either stored ids or out-of-sample points (row-major, `dimension` values each), not both.
struct QueryBatch {
  absl::Span<const int64_t> ids;
  absl::Span<const double> points;  // num_points * dimension values
  // Out-of-sample points only; empty: no bound. One per point: only stored ids j < id_bounds[q]
  // qualify for point q (a value <= 0 leaves nothing, the row is all padding). What a shard of a
  // sharded index needs to answer a predecessor query whose own point lives on another shard.
  absl::Span<const int64_t> id_bounds;

  bool by_id() const { return points.empty(); }
  // The bound of query q: ids below it qualify (no bound: the largest id + 1 never binds).
  int64_t IdBound(int64_t q) const {
    return id_bounds.empty() ? std::numeric_limits<int64_t>::max() : id_bounds[q];
  }
};

inline int64_t NumQueries(const QueryBatch& batch, int dimension) {
  return batch.by_id() ? static_cast<int64_t>(batch.ids.size())
                       : static_cast<int64_t>(batch.points.size()) / dimension;
}

// INVALID_ARGUMENT naming the field: k < 1, ids out of [0, n), both or neither of ids and points,
// a point count that is not a multiple of `dimension`, non-finite coordinates,
// predecessor_mode or include_self with out-of-sample points, id_bounds with query ids or with a
// count other than one per point, rank / subtree_min_rank without predecessor_mode or not of n
// entries each.
absl::Status ValidateQuery(const QueryBatch& batch, const KnnOptions& options, int64_t n,
                           int dimension);

// The k best (distance, id) pairs offered so far. Not thread-safe.
class TopK {
 public:
  explicit TopK(int64_t k = 0) { Reset(k); }
  void Reset(int64_t k) {
    k_ = k;
    heap_.clear();
    heap_.reserve(k);
    threshold_ = k > 0 ? std::numeric_limits<double>::infinity()
                       : -std::numeric_limits<double>::infinity();
  }
  // The distance a new candidate must not exceed to possibly enter: +inf until k are held.
  double threshold() const { return threshold_; }
  // Returns true if (distance, id) entered the k best.
  bool Offer(double distance, int64_t id) {
    const Entry entry{distance, id};
    const size_t size = heap_.size();
    if (static_cast<int64_t>(size) < k_) {
      // Sift up from a new leaf, moving a hole rather than swapping.
      size_t hole = size;
      heap_.emplace_back();
      while (hole > 0) {
        const size_t parent = (hole - 1) / 2;
        if (!(heap_[parent] < entry)) break;
        heap_[hole] = heap_[parent];
        hole = parent;
      }
      heap_[hole] = entry;
      if (static_cast<int64_t>(size) + 1 == k_) threshold_ = heap_[0].first;
      return true;
    }
    if (size == 0 || !(entry < heap_[0])) return false;
    // Replaces the largest: sift down from the root.
    size_t hole = 0;
    for (;;) {
      size_t child = 2 * hole + 1;
      if (child >= size) break;
      if (child + 1 < size && heap_[child] < heap_[child + 1]) ++child;
      if (!(entry < heap_[child])) break;
      heap_[hole] = heap_[child];
      hole = child;
    }
    heap_[hole] = entry;
    threshold_ = heap_[0].first;
    return true;
  }
  void Merge(const TopK& other) {
    for (const auto& [distance, id] : other.heap_) Offer(distance, id);
  }
  // Writes k entries ascending by (distance, id), padded with -1 / +inf.
  void Write(int64_t* ids, double* distances) const {
    std::vector<Entry> sorted = heap_;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t j = 0; j < k_; ++j) {
      const bool have = j < static_cast<int64_t>(sorted.size());
      ids[j] = have ? sorted[j].second : -1;
      distances[j] = have ? sorted[j].first : std::numeric_limits<double>::infinity();
    }
  }

 private:
  using Entry = std::pair<double, int64_t>;
  int64_t k_ = 0;
  double threshold_ = std::numeric_limits<double>::infinity();
  std::vector<Entry> heap_;  // max-heap on (distance, id)
};

// Whether stored point `id` may be returned for a query with id `query_id` (-1: out-of-sample,
// whose candidates are the ids below `id_bound`).
inline bool Qualifies(int64_t id, int64_t query_id, const KnnOptions& options,
                      int64_t id_bound = std::numeric_limits<int64_t>::max()) {
  if (query_id < 0) return id < id_bound;
  if (options.predecessor_mode) return options.PredecessorKey(id) < options.PredecessorKey(query_id);
  return options.include_self || id != query_id;
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_KNN_QUERY_H_
