// The interface every search structure uses to ask for distances: a stored point set with a
// fixed distance function, evaluated in blocks so that implementations can use matrix products.
#ifndef RCKNN_CORE_METRIC_SPACE_H_
#define RCKNN_CORE_METRIC_SPACE_H_

#include <cstdint>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace rcknn::core {

using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Points prepared for distance evaluation against a MetricSpace: either stored points gathered
// by id, or out-of-sample points. Produced only by a MetricSpace; its fields are that space's
// business.
struct PointRows {
  RowMatrix features;          // residual: rows of V; Euclidean: coordinates
  Eigen::VectorXd inv_sqrt_p;  // residual: 1 / sqrt(p); empty otherwise
  RowMatrix coords;            // residual: coordinates divided by the lengthscales
  std::vector<int64_t> ids;    // stored id of each row, or -1 for an out-of-sample point

  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

// rows[row_list[0]], rows[row_list[1]], ... as a new PointRows.
PointRows SelectRows(const PointRows& rows, absl::Span<const int64_t> row_list);

// A point set with ids 0..size()-1 and a (pseudo)metric d on it, d(i, i) = 0.
//
// Layout: a stored point keeps its id forever (every method taking ids, and every answer, uses
// ids), but its data sits at a storage position, which ApplyLayout may change: the index stores
// its points in the cover tree's depth-first order, so that a subtree's points are one contiguous
// range of positions (read by RowsToRange) and a query's walk touches nearby memory. Until
// ApplyLayout, position = id.
//
// All distances are float64 and deterministic: the same pair evaluated through the same method
// with the same block shape gives the same bits, whatever thread runs it. Different methods may
// differ in the last bits (matrix product versus dot product), by at most RoundingBound. RowToIds
// is the canonical evaluation: its value for a pair depends only on the pair (the query row's
// values and the stored point), never on the other ids or rows evaluated with it, and searches
// return distances evaluated by it. A row and a stored point with the same id are at distance
// exactly 0.
//
// Thread safety: const methods may be called concurrently.
class MetricSpace {
 public:
  virtual ~MetricSpace() = default;

  virtual int64_t size() const = 0;
  virtual int dimension() const = 0;
  // Multiply-adds one distance costs, roughly (m for the residual metric, d for Euclidean).
  virtual int64_t cost_per_distance() const = 0;
  virtual int64_t memory_bytes() const = 0;
  // A checksum of everything the distances depend on (points and derived arrays, bit for bit):
  // equal fingerprints mean equal distances, which is what lets a saved tree be trusted.
  virtual uint64_t Fingerprint() const = 0;

  // The stored points' coordinates as given (size() x dimension()).
  virtual const RowMatrix& points() const = 0;

  // Rows for stored points. Every id must be in [0, size()).
  virtual PointRows Gather(absl::Span<const int64_t> ids) const = 0;
  // Rows for `num` out-of-sample points given row-major with dimension() coordinates each.
  // Coordinates must be finite (checked by the caller).
  virtual absl::StatusOr<PointRows> Prepare(const double* points, int64_t num) const = 0;

  // out[i * count + j] = d(rows[first + i], the stored point at position begin + j), that is
  // point id_at(begin + j).
  virtual void RowsToRange(const PointRows& rows, int64_t first, int64_t num, int64_t begin,
                           int64_t count, double* out) const = 0;
  // out[i * nb + j] = d(a[a0 + i], b[b0 + j]).
  virtual void RowsToRows(const PointRows& a, int64_t a0, int64_t na, const PointRows& b,
                          int64_t b0, int64_t nb, double* out) const = 0;
  // RowsToRange and RowsToRows for a scan that keeps only candidates within a limit: a distance
  // above limits[i] (for row first + i, resp. a0 + i) may come back as +infinity instead, which
  // spares the exact value of most pairs. Every distance at most limits[i] comes back as a
  // non-canonical evaluation (within RoundingBound of RowToIds), like the methods above. Once
  // rows [b, e) of out (0 <= b < e <= num, ascending, together covering [0, num)) are final,
  // rows_ready(b, e) is called, while they are still in cache. The defaults return every
  // distance.
  using RowsReady = absl::FunctionRef<void(int64_t begin, int64_t end)>;
  virtual void RowsToRangeWithin(const PointRows& rows, int64_t first, int64_t num,
                                 int64_t begin, int64_t count, const double* limits,
                                 double* out, RowsReady rows_ready) const {
    RowsToRange(rows, first, num, begin, count, out);
    rows_ready(0, num);
  }
  virtual void RowsToRowsWithin(const PointRows& a, int64_t a0, int64_t na, const PointRows& b,
                                int64_t b0, int64_t nb, const double* limits, double* out,
                                RowsReady rows_ready) const {
    RowsToRows(a, a0, na, b, b0, nb, out);
    rows_ready(0, na);
  }
  // RowsToRowsWithin against the stored points `ids` (out[i * ids.size() + j] for ids[j]): the
  // same as gathering them first (the default), which implementations may spare.
  virtual void RowsToIdsWithin(const PointRows& rows, int64_t first, int64_t num,
                               absl::Span<const int64_t> ids, const double* limits, double* out,
                               RowsReady rows_ready) const {
    const PointRows gathered = Gather(ids);
    RowsToRowsWithin(rows, first, num, gathered, 0, gathered.size(), limits, out, rows_ready);
  }
  void RowsToRangeWithin(const PointRows& rows, int64_t first, int64_t num, int64_t begin,
                         int64_t count, const double* limits, double* out) const {
    RowsToRangeWithin(rows, first, num, begin, count, limits, out, [](int64_t, int64_t) {});
  }
  void RowsToRowsWithin(const PointRows& a, int64_t a0, int64_t na, const PointRows& b,
                        int64_t b0, int64_t nb, const double* limits, double* out) const {
    RowsToRowsWithin(a, a0, na, b, b0, nb, limits, out, [](int64_t, int64_t) {});
  }
  // out[j] = d(rows[row], stored point ids[j]), canonically (see above).
  virtual void RowToIds(const PointRows& rows, int64_t row, absl::Span<const int64_t> ids,
                        double* out) const = 0;
  // An upper bound on |a - b| for any two of the methods above evaluating d(rows[row], j), for
  // every stored j: how far a candidate's distance from a matrix product may sit from its
  // canonical value. At least kPruneSlack.
  virtual double RoundingBound(const PointRows& rows, int64_t row) const = 0;
  // How much further than at the metric's natural scale one evaluation of any pair, by any of
  // the methods above, may sit from the distance in exact arithmetic: the part of the rounding
  // that kPruneSlack was not chosen for, which the tree's pruning adds (search_rule.h,
  // PruneSlack). 0 for data at that scale, so that pruning there is unchanged; the residual
  // space's is positive only for supplied factors with |V_i|^2 above the kernel variance.
  virtual double RoundingExcess() const { return 0.0; }

  // The stored point at storage `position`, and the position of stored point `id`.
  int64_t id_at(int64_t position) const { return ids_.empty() ? position : ids_[position]; }
  int64_t position_of(int64_t id) const { return positions_.empty() ? id : positions_[id]; }
  // Whether positions may differ from ids (after ApplyLayout).
  bool has_layout() const { return !ids_.empty(); }

  // Moves the stored data so that position p holds point order[p]; `order` must be a permutation
  // of 0..size()-1 (checked: INVALID_ARGUMENT otherwise, nothing moved). Distances, their bits
  // and Fingerprint() do not change. Rearranges in place (the large arrays are never held
  // twice); a layout the data already has moves nothing. Not thread-safe: call before the
  // space is shared.
  absl::Status ApplyLayout(std::vector<int64_t> order);

 protected:
  // Rearranges the stored per-point arrays so that new position p holds what old position
  // from[p] held. Called by ApplyLayout with a valid permutation that moves something.
  virtual void PermuteStorage(absl::Span<const int64_t> from) = 0;
  // For a space whose arrays were written in `order` from the start (position p holds point
  // order[p]): records the layout without moving anything. INVALID_ARGUMENT unless `order` is a
  // permutation of 0..size()-1.
  absl::Status AdoptLayout(std::vector<int64_t> order);

 private:
  void SetLayout(std::vector<int64_t> order, std::vector<int64_t> positions);

  std::vector<int64_t> ids_;        // position -> id; empty: the identity
  std::vector<int64_t> positions_;  // id -> position; empty: the identity
};

// Applies new_row[p] = old_row[from[p]] to the rows of `m` in place, one row of scratch: the
// cycles of the permutation are followed, so a large matrix is never copied whole.
void PermuteRowsInPlace(absl::Span<const int64_t> from, Eigen::Ref<RowMatrix> m);
// The same for the columns of a row-major matrix (each row permuted alike), and for a vector.
void PermuteColumnsInPlace(absl::Span<const int64_t> from, RowMatrix& m);
void PermuteInPlace(absl::Span<const int64_t> from, Eigen::VectorXd& v);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_METRIC_SPACE_H_
