#include "core/euclidean_space.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/snapshot_file.h"

namespace rcknn::core {

EuclideanSpace::EuclideanSpace(RowMatrix points)
    : points_(std::move(points)), by_dim_(points_.transpose()) {}

absl::StatusOr<std::unique_ptr<EuclideanSpace>> EuclideanSpace::Create(RowMatrix points) {
  if (points.rows() < 1 || points.cols() < 1) {
    return absl::InvalidArgumentError("points: the point set is empty");
  }
  for (int64_t i = 0; i < points.rows(); ++i) {
    for (int64_t t = 0; t < points.cols(); ++t) {
      if (!std::isfinite(points(i, t))) {
        return absl::InvalidArgumentError(
            absl::StrCat("points: value at row ", i, ", column ", t, " is not finite"));
      }
    }
  }
  return std::unique_ptr<EuclideanSpace>(new EuclideanSpace(std::move(points)));
}

PointRows EuclideanSpace::Gather(absl::Span<const int64_t> ids) const {
  PointRows rows;
  rows.features.resize(static_cast<int64_t>(ids.size()), points_.cols());
  for (size_t i = 0; i < ids.size(); ++i) rows.features.row(i) = points_.row(ids[i]);
  rows.ids.assign(ids.begin(), ids.end());
  return rows;
}

absl::StatusOr<PointRows> EuclideanSpace::Prepare(const double* points, int64_t num) const {
  PointRows rows;
  rows.features = Eigen::Map<const RowMatrix>(points, num, points_.cols());
  rows.ids.assign(num, -1);
  return rows;
}

void EuclideanSpace::RowsToRange(const PointRows& rows, int64_t first, int64_t num,
                                 int64_t begin, int64_t count, double* out) const {
  const int64_t d = points_.cols();
  for (int64_t i = 0; i < num; ++i) {
    double* row_out = out + i * count;
    std::fill(row_out, row_out + count, 0.0);
    const double* a = rows.features.row(first + i).data();
    for (int64_t t = 0; t < d; ++t) {
      const double* column = by_dim_.row(t).data() + begin;
      for (int64_t j = 0; j < count; ++j) {
        const double diff = a[t] - column[j];
        row_out[j] += diff * diff;
      }
    }
    for (int64_t j = 0; j < count; ++j) row_out[j] = std::sqrt(row_out[j]);
  }
}

void EuclideanSpace::RowsToRows(const PointRows& a, int64_t a0, int64_t na, const PointRows& b,
                                int64_t b0, int64_t nb, double* out) const {
  for (int64_t i = 0; i < na; ++i) {
    for (int64_t j = 0; j < nb; ++j) {
      out[i * nb + j] = (a.features.row(a0 + i) - b.features.row(b0 + j)).norm();
    }
  }
}

void EuclideanSpace::RowToIds(const PointRows& rows, int64_t row, absl::Span<const int64_t> ids,
                              double* out) const {
  const auto a = rows.features.row(row);
  for (size_t j = 0; j < ids.size(); ++j) out[j] = (a - points_.row(ids[j])).norm();
}

uint64_t EuclideanSpace::Fingerprint() const {
  return core::Fingerprint(points_.data(), points_.size() * sizeof(double), points_.cols());
}

}  // namespace rcknn::core
