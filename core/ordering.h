// Orderings of an index's points for Vecchia approximations: a permutation that predecessor mode
// follows instead of the upload order (a point's neighbours are then chosen among the points
// earlier in the ordering).
//
// permutation[r] is the id at rank r; Ranks() gives the inverse, rank[id]. Every ordering here is
// a pure function of its inputs: the same points, kernel, method and seed give the same
// permutation on every machine and at every thread count.
//
// Maximin orderings (the ordering GpGp and GPvecchia use, computed exactly): the first point is
// the one nearest (Euclidean, in lengthscale-scaled coordinates) to the centroid of the scaled
// coordinates; each next point is the one whose minimum distance to the points already chosen is
// largest. Ties go to the smaller id, at the start and at every step. Distances from a chosen
// point c to a candidate j are evaluated as space.RowToIds(space.Gather({c}), 0, {j}), whose
// bits do not depend on the other ids of the call, so an independent implementation that
// evaluates them the same way reproduces the permutation exactly.
#ifndef RCKNN_CORE_ORDERING_H_
#define RCKNN_CORE_ORDERING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/metric_space.h"
#include "core/residual_correlation.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

class KnnIndex;

enum class OrderingMethod {
  kSupplied,          // a permutation given by the user
  kRandom,            // uniform, from a seed (RandomPermutation)
  kMaximinEuclidean,  // maximin in lengthscale-scaled coordinates
  kMaximinResidual,   // maximin under the index's residual-correlation distance
};

std::string OrderingMethodName(OrderingMethod method);

// The inverse of `permutation` as a permutation of [0, n). INVALID_ARGUMENT naming the field
// "permutation" when it has the wrong length, an id outside [0, n), or an id twice (a missing id
// then follows from the length).
absl::StatusOr<std::vector<int64_t>> Ranks(absl::Span<const int64_t> permutation, int64_t n);

// A uniformly random permutation of [0, n) from `seed`: Fisher-Yates from the last position
// down, position t swapped with SplitMix64(seed).UniformBelow(t + 1), starting from the
// identity.
std::vector<int64_t> RandomPermutation(int64_t n, uint64_t seed);

// The row of `scaled` (n x d) nearest to the mean of its rows, ties to the smaller row.
// The mean is summed in row order; squared distances are compared.
int64_t NearestToCentroid(const RowMatrix& scaled);

// Coordinates divided by the kernel's lengthscales for a residual-correlation space, the
// coordinates themselves for a Euclidean one. INVALID_ARGUMENT for any other space.
absl::StatusOr<RowMatrix> ScaledCoordinates(const MetricSpace& space);

struct MaximinStats {
  int64_t distance_evaluations = 0;
};

// The exact maximin ordering of `space` from the point `first` (see the file comment), found
// with range searches on `tree` (built over `space`) and a max-heap of each point's distance to
// the chosen set, updated as points are chosen (Schaefer, Katzfuss & Owhadi, SIAM J. Sci.
// Comput. 2021). Single-threaded. CANCELLED / DEADLINE_EXCEEDED from `cancellation`.
absl::StatusOr<std::vector<int64_t>> MaximinOrdering(const MetricSpace& space,
                                                     const CoverTree& tree, int64_t first,
                                                     const Cancellation* cancellation = nullptr,
                                                     const ProgressCallback& progress = nullptr,
                                                     MaximinStats* stats = nullptr);

struct OrderingRequest {
  OrderingMethod method = OrderingMethod::kRandom;
  uint64_t seed = 0;                  // kRandom only
  std::vector<int64_t> permutation;  // kSupplied only
};

// The permutation `request` asks for over `index`'s points. kMaximinEuclidean builds a cover
// tree over the scaled coordinates (on `arena` if given); kMaximinResidual uses the index's own
// tree; `stats` (optional) is added to by maximin orderings. INVALID_ARGUMENT: a supplied permutation that is not one (see Ranks), a permutation
// with another method, kMaximinResidual on a Euclidean index (field "method").
absl::StatusOr<std::vector<int64_t>> ComputeOrdering(const KnnIndex& index,
                                                     const OrderingRequest& request,
                                                     tbb::task_arena* arena = nullptr,
                                                     const Cancellation* cancellation = nullptr,
                                                     const ProgressCallback& progress = nullptr,
                                                     MaximinStats* stats = nullptr);

// An ordering attached to a built index, in the form predecessor mode needs: the rank of every
// point, and per tree node the smallest rank in its subtree (the node-level bound that lets a
// search skip a subtree holding no point earlier than the query). Immutable; thread-safe.
class IndexOrdering {
 public:
  // Ranks(permutation, tree.size())'s errors.
  static absl::StatusOr<IndexOrdering> Create(const CoverTree& tree,
                                              std::vector<int64_t> permutation);

  int64_t size() const { return static_cast<int64_t>(permutation_.size()); }
  const std::vector<int64_t>& permutation() const { return permutation_; }  // rank -> id
  const std::vector<int64_t>& rank() const { return rank_; }                // id -> rank
  const std::vector<int64_t>& subtree_min_rank() const { return subtree_min_rank_; }  // node
  int64_t memory_bytes() const {
    return static_cast<int64_t>(3 * permutation_.size() * sizeof(int64_t));
  }

 private:
  IndexOrdering() = default;
  std::vector<int64_t> permutation_;
  std::vector<int64_t> rank_;
  std::vector<int64_t> subtree_min_rank_;
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_ORDERING_H_
