// Plain Euclidean distance on coordinates, for users who want ordinary k-NN on the same tree.
#ifndef RCKNN_CORE_EUCLIDEAN_SPACE_H_
#define RCKNN_CORE_EUCLIDEAN_SPACE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "core/metric_space.h"

namespace rcknn::core {

class EuclideanSpace final : public MetricSpace {
 public:
  // INVALID_ARGUMENT for an empty or non-finite point set.
  static absl::StatusOr<std::unique_ptr<EuclideanSpace>> Create(RowMatrix points);

  int64_t size() const override { return points_.rows(); }
  int dimension() const override { return static_cast<int>(points_.cols()); }
  int64_t cost_per_distance() const override { return points_.cols(); }
  uint64_t Fingerprint() const override;
  int64_t memory_bytes() const override {
    return static_cast<int64_t>((points_.size() + by_dim_.size()) * sizeof(double));
  }

  PointRows Gather(absl::Span<const int64_t> ids) const override;
  absl::StatusOr<PointRows> Prepare(const double* points, int64_t num) const override;
  void RowsToRange(const PointRows& rows, int64_t first, int64_t num, int64_t begin,
                   int64_t count, double* out) const override;
  void RowsToRows(const PointRows& a, int64_t a0, int64_t na, const PointRows& b, int64_t b0,
                  int64_t nb, double* out) const override;
  void RowToIds(const PointRows& rows, int64_t row, absl::Span<const int64_t> ids,
                double* out) const override;
  double RoundingBound(const PointRows& rows, int64_t row) const override;

  const RowMatrix& points() const override { return points_; }

 private:
  explicit EuclideanSpace(RowMatrix points);
  void PermuteStorage(absl::Span<const int64_t> from) override;
  RowMatrix points_;  // n x d, by id (Gather, RowToIds)
  RowMatrix by_dim_;  // d x n, in storage order (RowsToRange)
  double max_abs_ = 0.0;  // largest |coordinate|
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_EUCLIDEAN_SPACE_H_
