#include "core/euclidean_space.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/knn_query.h"
#include "core/fingerprint.h"

namespace rcknn::core {

EuclideanSpace::EuclideanSpace(RowMatrix points)
    : points_(std::move(points)),
      by_dim_(points_.transpose()),
      max_abs_(points_.size() > 0 ? points_.cwiseAbs().maxCoeff() : 0.0) {}

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
  // Dimensions summed in order, one pair at a time: the canonical evaluation.
  const int64_t d = points_.cols();
  const double* a = rows.features.row(row).data();
  for (size_t j = 0; j < ids.size(); ++j) {
    const double* b = points_.row(ids[j]).data();
    double r2 = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      const double diff = a[t] - b[t];
      r2 += diff * diff;
    }
    out[j] = std::sqrt(r2);
  }
}

double EuclideanSpace::RoundingBound(const PointRows& rows, int64_t row) const {
  // The paths differ only in how d squares are summed: a few ulp of the largest squared
  // coordinate difference, through the square root.
  double row_max = 0.0;
  for (int64_t t = 0; t < rows.features.cols(); ++t) {
    row_max = std::max(row_max, std::abs(rows.features(row, t)));
  }
  const double span = row_max + max_abs_;
  const double e = 4.0 * (static_cast<double>(points_.cols()) + 2.0) *
                   std::numeric_limits<double>::epsilon() * span * span;
  return std::max(kPruneSlack, 2.0 * std::sqrt(e));
}

void EuclideanSpace::PermuteStorage(absl::Span<const int64_t> from) {
  PermuteColumnsInPlace(from, by_dim_);
}

uint64_t EuclideanSpace::Fingerprint() const {
  return core::Fingerprint(points_.data(), points_.size() * sizeof(double), points_.cols());
}

}  // namespace rcknn::core
