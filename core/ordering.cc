#include "core/ordering.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/cover_tree_range_search.h"
#include "core/euclidean_space.h"
#include "core/knn_index.h"
#include "core/random.h"
#include "core/status_macros.h"

namespace rcknn::core {
namespace {

constexpr int64_t kCancellationInterval = 1024;

// A binary max-heap of ids keyed by (key[id] descending, id ascending), with the position of
// every id so that a key can be lowered in place. Keys only ever decrease, so a lowered id
// sinks.
class IndexedMaxHeap {
 public:
  explicit IndexedMaxHeap(const std::vector<double>& key) : key_(key) {}

  // Heapifies all ids in [0, key.size()) except `skip`.
  void Init(int64_t skip) {
    const int64_t n = static_cast<int64_t>(key_.size());
    heap_.clear();
    heap_.reserve(n);
    position_.assign(n, -1);
    for (int64_t id = 0; id < n; ++id) {
      if (id == skip) continue;
      position_[id] = static_cast<int64_t>(heap_.size());
      heap_.push_back(id);
    }
    for (int64_t slot = static_cast<int64_t>(heap_.size()) / 2 - 1; slot >= 0; --slot) {
      SiftDown(slot);
    }
  }
  bool empty() const { return heap_.empty(); }
  bool contains(int64_t id) const { return position_[id] >= 0; }
  int64_t Pop() {
    const int64_t top = heap_.front();
    position_[top] = -1;
    const int64_t last = heap_.back();
    heap_.pop_back();
    if (!heap_.empty()) {
      heap_[0] = last;
      position_[last] = 0;
      SiftDown(0);
    }
    return top;
  }
  // After key[id] was lowered.
  void Decreased(int64_t id) { SiftDown(position_[id]); }

 private:
  // Whether a belongs above b.
  bool Above(int64_t a, int64_t b) const {
    return key_[a] > key_[b] || (key_[a] == key_[b] && a < b);
  }
  void SiftDown(int64_t slot) {
    const int64_t size = static_cast<int64_t>(heap_.size());
    const int64_t id = heap_[slot];
    while (true) {
      int64_t best = 2 * slot + 1;
      if (best >= size) break;
      if (best + 1 < size && Above(heap_[best + 1], heap_[best])) ++best;
      if (!Above(heap_[best], id)) break;
      heap_[slot] = heap_[best];
      position_[heap_[slot]] = slot;
      slot = best;
    }
    heap_[slot] = id;
    position_[id] = slot;
  }

  const std::vector<double>& key_;
  std::vector<int64_t> heap_;
  std::vector<int64_t> position_;  // -1 once popped
};

}  // namespace

std::string OrderingMethodName(OrderingMethod method) {
  switch (method) {
    case OrderingMethod::kSupplied:
      return "supplied";
    case OrderingMethod::kRandom:
      return "random";
    case OrderingMethod::kMaximinEuclidean:
      return "maximin_euclidean";
    case OrderingMethod::kMaximinResidual:
      return "maximin_residual";
  }
  return "unknown";
}

absl::StatusOr<std::vector<int64_t>> Ranks(absl::Span<const int64_t> permutation, int64_t n) {
  if (static_cast<int64_t>(permutation.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("permutation: expected ", n,
                                                   " ids (one per point), got ",
                                                   permutation.size()));
  }
  std::vector<int64_t> rank(n, -1);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t id = permutation[r];
    if (id < 0 || id >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("permutation[", r, "] = ", id, " is not an id in [0, ", n, ")"));
    }
    if (rank[id] >= 0) {
      return absl::InvalidArgumentError(absl::StrCat("permutation: id ", id,
                                                     " appears twice (at ranks ", rank[id],
                                                     " and ", r, "), so some id is missing"));
    }
    rank[id] = r;
  }
  return rank;
}

std::vector<int64_t> RandomPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> permutation(n);
  for (int64_t i = 0; i < n; ++i) permutation[i] = i;
  SplitMix64 rng(seed);
  for (int64_t t = n - 1; t > 0; --t) {
    const int64_t other = static_cast<int64_t>(rng.UniformBelow(static_cast<uint64_t>(t) + 1));
    std::swap(permutation[t], permutation[other]);
  }
  return permutation;
}

int64_t NearestToCentroid(const RowMatrix& scaled) {
  const int64_t n = scaled.rows();
  const int64_t d = scaled.cols();
  std::vector<double> centroid(d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < d; ++t) centroid[t] += scaled(i, t);
  }
  for (int64_t t = 0; t < d; ++t) centroid[t] /= static_cast<double>(n);
  int64_t best = 0;
  double best_r2 = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    double r2 = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      const double diff = scaled(i, t) - centroid[t];
      r2 += diff * diff;
    }
    if (r2 < best_r2) {
      best_r2 = r2;
      best = i;
    }
  }
  return best;
}

absl::StatusOr<RowMatrix> ScaledCoordinates(const MetricSpace& space) {
  if (const auto* residual = dynamic_cast<const ResidualSpace*>(&space)) {
    const RowMatrix& points = residual->points();
    RowMatrix scaled(points.rows(), points.cols());
    for (int64_t i = 0; i < points.rows(); ++i) {
      residual->kernel().Scale(points.row(i).data(), scaled.row(i).data());
    }
    return scaled;
  }
  if (const auto* euclidean = dynamic_cast<const EuclideanSpace*>(&space)) {
    return euclidean->points();
  }
  return absl::InvalidArgumentError("metric: orderings need a residual or Euclidean space");
}

absl::StatusOr<std::vector<int64_t>> MaximinOrdering(const MetricSpace& space,
                                                     const CoverTree& tree, int64_t first,
                                                     const Cancellation* cancellation,
                                                     const ProgressCallback& progress,
                                                     MaximinStats* stats) {
  const int64_t n = space.size();
  if (tree.size() != n) {
    return absl::InvalidArgumentError("tree: built over another number of points");
  }
  if (first < 0 || first >= n) {
    return absl::InvalidArgumentError(absl::StrCat("first: ", first, " is not an id"));
  }
  // distance[j]: the distance from j to the nearest chosen point (+inf before the first, 0 once
  // j is chosen); remaining[node]: unchosen points in node's subtree, so that range searches
  // skip subtrees that are done.
  std::vector<double> distance(n, std::numeric_limits<double>::infinity());
  std::vector<int64_t> node_of(n);
  for (int64_t node = 0; node < n; ++node) node_of[tree.point(node)] = node;
  std::vector<int64_t> remaining(n, 1);
  for (int64_t node = n - 1; node > 0; --node) remaining[tree.parent(node)] += remaining[node];

  IndexedMaxHeap heap(distance);
  RangeSearchScratch scratch;
  std::vector<int64_t> permutation;
  permutation.reserve(n);
  int64_t evaluations = 0;
  int64_t next = first;
  for (int64_t r = 0; r < n; ++r) {
    if (r % kCancellationInterval == 0) {
      RETURN_IF_ERROR(CheckCancelled(cancellation));
      if (progress && r > 0) progress(static_cast<double>(r) / n);
    }
    const int64_t chosen = r == 0 ? next : heap.Pop();
    // Every unchosen point is at most this far from the chosen set, so only points within this
    // radius of `chosen` can come nearer.
    const double radius = distance[chosen];
    permutation.push_back(chosen);
    distance[chosen] = 0.0;
    for (int64_t node = node_of[chosen]; node >= 0; node = tree.parent(node)) --remaining[node];
    const PointRows rows = space.Gather(absl::MakeConstSpan(&chosen, 1));
    const bool heap_ready = r > 0;
    evaluations += CoverTreeRangeSearch(
        tree, space, rows, 0,
        [&](int64_t node) { return remaining[node] > 0 ? radius : -1.0; },
        [&](int64_t id, double d) {
          if (d < distance[id]) {
            distance[id] = d;
            if (heap_ready && heap.contains(id)) heap.Decreased(id);
          }
        },
        scratch);
    if (r == 0) heap.Init(chosen);
  }
  if (stats != nullptr) stats->distance_evaluations += evaluations;
  if (progress) progress(1.0);
  return permutation;
}

absl::StatusOr<std::vector<int64_t>> ComputeOrdering(const KnnIndex& index,
                                                     const OrderingRequest& request,
                                                     tbb::task_arena* arena,
                                                     const Cancellation* cancellation,
                                                     const ProgressCallback& progress,
                                                     MaximinStats* stats) {
  const int64_t n = index.size();
  if (request.method != OrderingMethod::kSupplied && !request.permutation.empty()) {
    return absl::InvalidArgumentError(
        "permutation: given with a method that computes the ordering; use the supplied method");
  }
  switch (request.method) {
    case OrderingMethod::kSupplied: {
      RETURN_IF_ERROR(Ranks(request.permutation, n).status());
      return request.permutation;
    }
    case OrderingMethod::kRandom:
      return RandomPermutation(n, request.seed);
    case OrderingMethod::kMaximinEuclidean: {
      ASSIGN_OR_RETURN(RowMatrix scaled, ScaledCoordinates(index.space()));
      const int64_t first = NearestToCentroid(scaled);
      ASSIGN_OR_RETURN(std::unique_ptr<EuclideanSpace> space,
                       EuclideanSpace::Create(std::move(scaled)));
      ASSIGN_OR_RETURN(CoverTree tree,
                       CoverTree::Build(*space, index.spec().tree, arena, cancellation));
      return MaximinOrdering(*space, tree, first, cancellation, progress, stats);
    }
    case OrderingMethod::kMaximinResidual: {
      if (index.spec().metric != Metric::kResidualCorrelation) {
        return absl::InvalidArgumentError(
            "method: the residual maximin ordering needs a residual-correlation index");
      }
      ASSIGN_OR_RETURN(RowMatrix scaled, ScaledCoordinates(index.space()));
      return MaximinOrdering(index.space(), index.tree(), NearestToCentroid(scaled),
                             cancellation, progress, stats);
    }
  }
  return absl::InvalidArgumentError("method: unknown ordering method");
}

absl::StatusOr<IndexOrdering> IndexOrdering::Create(const CoverTree& tree,
                                                    std::vector<int64_t> permutation) {
  IndexOrdering ordering;
  ASSIGN_OR_RETURN(ordering.rank_, Ranks(permutation, tree.size()));
  ordering.permutation_ = std::move(permutation);
  const int64_t n = tree.size();
  ordering.subtree_min_rank_.resize(n);
  for (int64_t node = 0; node < n; ++node) {
    ordering.subtree_min_rank_[node] = ordering.rank_[tree.point(node)];
  }
  // Breadth-first storage: every child comes after its parent.
  for (int64_t node = n - 1; node > 0; --node) {
    int64_t& parent = ordering.subtree_min_rank_[tree.parent(node)];
    parent = std::min(parent, ordering.subtree_min_rank_[node]);
  }
  return ordering;
}

}  // namespace rcknn::core
