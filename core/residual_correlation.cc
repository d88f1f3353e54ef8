#include "core/residual_correlation.h"

#include <atomic>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/canonical_dot.h"
#include "core/knn_query.h"
#include "core/packed_product.h"
#include "core/random.h"
#include "core/fingerprint.h"
#include "core/status_macros.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace rcknn::core {
namespace {

constexpr int64_t kFactorBlock = 256;

// Runs `body` on `arena` when one is given, else on the calling thread's default arena.
template <typename F>
void RunIn(tbb::task_arena* arena, F&& body) {
  if (arena != nullptr) {
    arena->execute(std::forward<F>(body));
  } else {
    body();
  }
}

absl::Status CheckFinite(const RowMatrix& m, const char* field) {
  for (int64_t i = 0; i < m.rows(); ++i) {
    for (int64_t t = 0; t < m.cols(); ++t) {
      if (!std::isfinite(m(i, t))) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": value at row ", i, ", column ", t, " is not finite"));
      }
    }
  }
  return absl::OkStatus();
}

// Squared distances of one scaled point `a` to rows [begin, begin + count) of a d x n
// dimension-major matrix: vectorises over the points.
void SquaredDistancesToRange(const double* a, const double* by_dim, int64_t stride, int d,
                             int64_t begin, int64_t count, double* r2) {
  std::fill(r2, r2 + count, 0.0);
  for (int t = 0; t < d; ++t) {
    const double at = a[t];
    const double* column = by_dim + t * stride + begin;
    for (int64_t j = 0; j < count; ++j) {
      const double diff = at - column[j];
      r2[j] += diff * diff;
    }
  }
}

double SquaredDistance(const double* a, const double* b, int d) {
  double r2 = 0.0;
  for (int t = 0; t < d; ++t) {
    const double diff = a[t] - b[t];
    r2 += diff * diff;
  }
  return r2;
}

// out[j] = ResidualDistance(kernel_values[j], v_dots[j], isp, isp_other[j]) for j < count, bit
// for bit (out may alias v_dots): the same operations, with the square roots in vector
// instructions (correctly rounded like std::sqrt, which the compiler keeps scalar because of
// errno).
void ResidualDistances(const double* kernel_values, const double* v_dots, double isp,
                       const double* isp_other, int64_t count, double* out) {
  for (int64_t j = 0; j < count; ++j) {
    out[j] = ResidualSquaredDistance(kernel_values[j], v_dots[j], isp, isp_other[j]);
  }
  Eigen::Map<Eigen::ArrayXd> values(out, count);
  values = values.sqrt();
}

// The distances of the pairs whose distance may be at most `limit`, +inf for the others (the
// "Within" methods): ResidualDistance's operations on every pair, but the square root (the
// costly step) only where 1 - |rho| is within limit^2, widened by far more than the roundings of
// the square and the root, so no pair at distance <= limit is dropped.
void ResidualDistancesWithin(const double* kernel_values, double* v_dots, double isp,
                             const double* isp_other, int64_t count, double limit) {
  if (!(limit < std::numeric_limits<double>::infinity())) {
    ResidualDistances(kernel_values, v_dots, isp, isp_other, count, v_dots);
    return;
  }
  const double bound = limit * limit * (1.0 + 1e-12);
  constexpr double kFar = std::numeric_limits<double>::infinity();
  int64_t within = 0;
  for (int64_t j = 0; j < count; ++j) {
    const double s = ResidualSquaredDistance(kernel_values[j], v_dots[j], isp, isp_other[j]);
    within += s <= bound;
    v_dots[j] = s <= bound ? s : kFar;
  }
  // Once a query holds its k candidates, most rows of a tile have no pair within the limit.
  if (within == 0) return;
  for (int64_t j = 0; j < count; ++j) {
    if (v_dots[j] <= bound) v_dots[j] = std::sqrt(v_dots[j]);
  }
}

struct RowScratch {
  std::vector<double> r2;
  std::vector<double> isp;
  std::vector<double> by_dim;
  std::vector<int64_t> positions;
  std::vector<const double*> row_pointers;
  double* ByDim(int64_t n) {
    if (static_cast<int64_t>(by_dim.size()) < n) by_dim.resize(n);
    return by_dim.data();
  }
  int64_t* Positions(int64_t n) {
    if (static_cast<int64_t>(positions.size()) < n) positions.resize(n);
    return positions.data();
  }
  double* R2(int64_t n) {
    if (static_cast<int64_t>(r2.size()) < n) r2.resize(n);
    return r2.data();
  }
  double* Isp(int64_t n) {
    if (static_cast<int64_t>(isp.size()) < n) isp.resize(n);
    return isp.data();
  }
};

RowScratch& Scratch() {
  thread_local RowScratch scratch;
  return scratch;
}

}  // namespace

ResidualSpace::ResidualSpace(Kernel kernel, std::shared_ptr<const RowMatrix> points)
    : kernel_(std::move(kernel)), points_(std::move(points)) {}

absl::StatusOr<std::unique_ptr<ResidualSpace>> ResidualSpace::Create(
    RowMatrix points, const ResidualOptions& options, tbb::task_arena* arena,
    const ProgressCallback& progress) {
  return Create(std::make_shared<const RowMatrix>(std::move(points)), options, arena, progress);
}

absl::StatusOr<std::unique_ptr<ResidualSpace>> ResidualSpace::Create(
    std::shared_ptr<const RowMatrix> shared_points, const ResidualOptions& options,
    tbb::task_arena* arena, const ProgressCallback& progress, absl::Span<const int64_t> layout) {
  const RowMatrix& points = *shared_points;
  const int64_t n = points.rows();
  const int d = static_cast<int>(points.cols());
  if (n < 1) return absl::InvalidArgumentError("points: the point set is empty");
  if (!layout.empty() && static_cast<int64_t>(layout.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout: ", layout.size(), " positions for ", n, " points"));
  }
  ASSIGN_OR_RETURN(Kernel kernel, Kernel::Create(options.kernel, d));
  RETURN_IF_ERROR(CheckFinite(points, "points"));
  if (!std::isfinite(options.jitter) || options.jitter < 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("jitter must be finite and >= 0, got ", options.jitter));
  }
  std::unique_ptr<ResidualSpace> space(
      new ResidualSpace(std::move(kernel), std::move(shared_points)));
  const Kernel& k = space->kernel_;

  // Inducing points, scaled.
  space->scaled_.resize(n, d);
  for (int64_t i = 0; i < n; ++i) k.Scale(points.row(i).data(), space->scaled_.row(i).data());
  if (options.lloyd_iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat("lloyd_iterations must be >= 0, got ",
                                                   options.lloyd_iterations));
  }
  if (options.inducing_points.has_value()) {
    if (options.inducing_method != InducingMethod::kUniform) {
      return absl::InvalidArgumentError(
          "inducing_method: explicit inducing_points are given; a selection method would be "
          "ignored");
    }
    const RowMatrix& inducing = *options.inducing_points;
    if (inducing.rows() < 1 || inducing.cols() != d) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inducing_points: expected rows of ", d, " coordinates, got a ", inducing.rows(), " x ",
          inducing.cols(), " matrix"));
    }
    RETURN_IF_ERROR(CheckFinite(inducing, "inducing_points"));
    space->inducing_scaled_.resize(inducing.rows(), d);
    for (int64_t u = 0; u < inducing.rows(); ++u) {
      k.Scale(inducing.row(u).data(), space->inducing_scaled_.row(u).data());
    }
  } else {
    if (options.inducing_count < 1 || options.inducing_count > n) {
      return absl::InvalidArgumentError(absl::StrCat("inducing_count must be in [1, n = ", n,
                                                     "], got ", options.inducing_count));
    }
    switch (options.inducing_method) {
      case InducingMethod::kUniform:
        space->inducing_ids_ = SampleDistinct(n, options.inducing_count, options.inducing_seed);
        break;
      case InducingMethod::kKMeansPlusPlus: {
        ASSIGN_OR_RETURN(space->inducing_ids_,
                         KMeansPlusPlusSeeds(space->scaled_, options.inducing_count,
                                             options.inducing_seed, arena));
        std::sort(space->inducing_ids_.begin(), space->inducing_ids_.end());
        break;
      }
    }
    space->inducing_scaled_.resize(options.inducing_count, d);
    for (int64_t u = 0; u < options.inducing_count; ++u) {
      space->inducing_scaled_.row(u) = space->scaled_.row(space->inducing_ids_[u]);
    }
    if (options.inducing_method == InducingMethod::kKMeansPlusPlus &&
        options.lloyd_iterations > 0) {
      space->inducing_scaled_ = LloydIterations(space->scaled_, std::move(space->inducing_scaled_),
                                                options.lloyd_iterations, arena);
      space->inducing_ids_.clear();
    }
  }
  const int64_t m = space->inducing_scaled_.rows();

  // L = chol(K(U, U) + jitter * variance * I).
  Eigen::MatrixXd kuu(m, m);
  for (int64_t a = 0; a < m; ++a) {
    for (int64_t b = 0; b <= a; ++b) {
      const double value = k.ValueFromSquaredDistance(SquaredDistance(
          space->inducing_scaled_.row(a).data(), space->inducing_scaled_.row(b).data(), d));
      kuu(a, b) = value;
      kuu(b, a) = value;
    }
    kuu(a, a) += options.jitter * k.variance();
  }
  space->cholesky_.emplace(kuu);
  const auto& llt = *space->cholesky_;
  bool positive_definite = llt.info() == Eigen::Success;
  // A pivot^2 (a Schur complement) within rounding of zero means a singular matrix that
  // rounding happened to leave positive.
  const double min_pivot_squared =
      static_cast<double>(m) * std::numeric_limits<double>::epsilon() * k.variance();
  for (int64_t a = 0; positive_definite && a < m; ++a) {
    const double pivot = llt.matrixLLT()(a, a);
    positive_definite = std::isfinite(pivot) && pivot * pivot > min_pivot_squared;
  }
  if (!positive_definite) {
    return absl::FailedPreconditionError(
        "K(U, U) + jitter * variance * I is not positive definite: increase jitter or use "
        "distinct inducing points");
  }

  // V and p, in fixed blocks of positions (so the bits do not depend on the thread count), in
  // parallel. Each block is computed in place in its rows of V: the thread that fills a page is
  // the one that first touches it, and no temporary is copied. Row-major rows of V are the
  // columns of the m x count matrix K(U, X_block) that L^-1 is applied to by one blocked
  // triangular solve (Eigen's TRSM: matrix products on panels). The solve rounds a column
  // differently when it falls in a partial panel of columns, so the last block, if short, is
  // solved at the full width in scratch (zero columns after the points): every row then has
  // the same bits wherever it sits, which is what lets V be computed in any layout.
  space->computed_v_ = LargeArray(n * m);  // advised for huge pages (core/array_cache.h)
  new (&space->v_) Eigen::Map<RowMatrix>(space->computed_v_.data(), n, m);
  // Recorded (and checked) before V is computed in it.
  if (!layout.empty()) {
    RETURN_IF_ERROR(space->AdoptLayout(std::vector<int64_t>(layout.begin(), layout.end())));
  }
  space->p_.resize(n);
  const RowMatrix inducing_by_dim = space->inducing_scaled_.transpose();  // d x m
  const int64_t blocks = (n + kFactorBlock - 1) / kFactorBlock;
  std::atomic<int64_t> done{0};
  ResidualSpace* s = space.get();
  auto id_at = [&](int64_t position) { return layout.empty() ? position : layout[position]; };
  RunIn(arena, [&] {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, blocks, 1), [&](const auto& range) {
      std::vector<double> padded;
      for (int64_t block = range.begin(); block != range.end(); ++block) {
        const int64_t begin = block * kFactorBlock;
        const int64_t count = std::min(kFactorBlock, n - begin);
        const bool short_block = count < kFactorBlock;
        double* rows = s->v_.row(begin).data();
        if (short_block) {
          padded.assign(kFactorBlock * m, 0.0);
          rows = padded.data();
        }
        for (int64_t j = 0; j < count; ++j) {
          double* r2 = rows + j * m;
          const double* x = s->scaled_.row(id_at(begin + j)).data();
          std::fill(r2, r2 + m, 0.0);
          for (int t = 0; t < d; ++t) {
            const double xt = x[t];
            const double* column = inducing_by_dim.row(t).data();
            for (int64_t u = 0; u < m; ++u) {
              const double diff = column[u] - xt;
              r2[u] += diff * diff;
            }
          }
        }
        k.ValuesFromSquaredDistances(rows, count * m);
        Eigen::Map<Eigen::MatrixXd> kux(rows, m, short_block ? kFactorBlock : count);
        llt.matrixL().solveInPlace(kux);  // kux is K(U, X_block), column-major
        if (short_block) std::copy_n(rows, count * m, s->v_.row(begin).data());
        for (int64_t j = 0; j < count; ++j) {
          s->p_[id_at(begin + j)] =
              std::max(k.variance() - s->v_.row(begin + j).squaredNorm(), kMinResidualVariance);
        }
        const int64_t finished = done.fetch_add(1) + 1;
        if (progress) progress(static_cast<double>(finished) / blocks);
      }
    });
  });
  // The coordinates follow V into the layout (p stays by id).
  if (!layout.empty()) PermuteRowsInPlace(layout, space->scaled_);
  space->FinishSetup();
  return space;
}

absl::StatusOr<std::unique_ptr<ResidualSpace>> ResidualSpace::FromFactors(RowMatrix points,
                                                                          const KernelSpec& kernel,
                                                                          RowMatrix v,
                                                                          Eigen::VectorXd p) {
  const int64_t n = points.rows();
  const int d = static_cast<int>(points.cols());
  if (n < 1) return absl::InvalidArgumentError("points: the point set is empty");
  ASSIGN_OR_RETURN(Kernel k, Kernel::Create(kernel, d));
  RETURN_IF_ERROR(CheckFinite(points, "points"));
  if (v.rows() != n || v.cols() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("factors: expected ", n,
                                                   " rows of at least one value, got a ",
                                                   v.rows(), " x ", v.cols(), " matrix"));
  }
  RETURN_IF_ERROR(CheckFinite(v, "factors"));
  if (p.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("residual_variances: expected ", n, " values, got ", p.size()));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i]) || p[i] <= 0.0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "residual_variances[", i, "] must be finite and > 0, got ", p[i]));
    }
  }
  auto shared_points = std::make_shared<const RowMatrix>(std::move(points));
  std::unique_ptr<ResidualSpace> space(new ResidualSpace(std::move(k), shared_points));
  space->scaled_.resize(n, d);
  for (int64_t i = 0; i < n; ++i) {
    space->kernel_.Scale(shared_points->row(i).data(), space->scaled_.row(i).data());
  }
  space->supplied_v_ = std::move(v);
  new (&space->v_) Eigen::Map<RowMatrix>(space->supplied_v_.data(), space->supplied_v_.rows(),
                                         space->supplied_v_.cols());
  space->p_ = std::move(p);
  space->FinishSetup();
  return space;
}

void ResidualSpace::FinishSetup() {
  scaled_by_dim_ = scaled_.transpose();
  // Scalar, correctly rounded: equal p give equal bits wherever they sit.
  inv_sqrt_p_.resize(p_.size());
  for (int64_t i = 0; i < p_.size(); ++i) inv_sqrt_p_[i] = 1.0 / std::sqrt(p_[id_at(i)]);
  max_inv_sqrt_p_ = inv_sqrt_p_.size() > 0 ? inv_sqrt_p_.maxCoeff() : 0.0;
  max_v_norm_ = v_.rows() > 0 ? std::sqrt(v_.rowwise().squaredNorm().maxCoeff()) : 0.0;
}

double ResidualSpace::RoundingBound(const PointRows& rows, int64_t row) const {
  // Two evaluations of rho = (k - V_i . V_j) / sqrt(p_i p_j) differ by at most about
  // m ulp of |V_i| |V_j| (a length-m dot product rounds at the scale of its terms) plus 16 ulp of
  // the variance (the kernel value), times the two 1/sqrt(p); and
  // |sqrt(1 - |x|) - sqrt(1 - |y|)| <= sqrt(|x - y|). Doubled for the other path's own error.
  // |V_i| |V_j| is bounded by the row's own norm times the largest stored one: for computed
  // factors that is at most the variance (|V_i|^2 = variance - p_i), so the bound is the
  // variance's; supplied factors may be far larger (see the header).
  const double m = static_cast<double>(v_.cols());
  const double scale =
      std::max(kernel_.variance(), rows.features.row(row).norm() * max_v_norm_);
  const double e = (m + 16.0) * std::numeric_limits<double>::epsilon() * scale *
                   rows.inv_sqrt_p[row] * max_inv_sqrt_p_;
  return std::max(kPruneSlack, 2.0 * std::sqrt(e));
}

double ResidualSpace::RoundingExcess() const {
  // One evaluation of d(i, j) errs by at most sqrt(e), e as in RoundingBound (which is twice
  // that): sqrt((m + 16) ulp / sqrt(p_i p_j)) times sqrt(scale), scale <= max(variance,
  // max |V|^2). Less its value at scale = variance, that is at most, for every pair,
  // sqrt((m + 16) ulp) max(1 / sqrt(p)) (max |V| - sqrt(variance)): exactly 0 when no |V_i|^2
  // exceeds the variance (computed factors: |V_i|^2 = variance - p_i), sqrt being monotone.
  const double m = static_cast<double>(v_.cols());
  const double above = std::max(0.0, max_v_norm_ - std::sqrt(kernel_.variance()));
  return std::sqrt((m + 16.0) * std::numeric_limits<double>::epsilon()) * max_inv_sqrt_p_ * above;
}

int64_t ResidualSpace::memory_bytes() const {
  const int64_t doubles = points_->size() + scaled_.size() + scaled_by_dim_.size() + v_.size() +
                          p_.size() + inv_sqrt_p_.size() + inducing_scaled_.size() +
                          (cholesky_ ? cholesky_->matrixLLT().size() : 0);
  return doubles * static_cast<int64_t>(sizeof(double)) +
         static_cast<int64_t>(inducing_ids_.size() * sizeof(int64_t));
}

PointRows ResidualSpace::Gather(absl::Span<const int64_t> ids) const {
  PointRows rows;
  const int64_t num = static_cast<int64_t>(ids.size());
  rows.features.resize(num, v_.cols());
  rows.inv_sqrt_p.resize(num);
  rows.coords.resize(num, scaled_.cols());
  rows.ids.assign(ids.begin(), ids.end());
  for (int64_t i = 0; i < num; ++i) {
    const int64_t position = position_of(ids[i]);
    rows.features.row(i) = v_.row(position);
    rows.inv_sqrt_p[i] = inv_sqrt_p_[position];
    rows.coords.row(i) = scaled_.row(position);
  }
  return rows;
}

absl::StatusOr<PointRows> ResidualSpace::Prepare(const double* points, int64_t num) const {
  if (!cholesky_.has_value()) {
    return absl::FailedPreconditionError(
        "query_points: out-of-sample queries need the kernel's inducing points, and this index "
        "was built from supplied factors; query by id instead");
  }
  const int d = kernel_.dimension();
  const int64_t m = inducing_scaled_.rows();
  PointRows rows;
  if (num == 0) {
    rows.features.resize(0, m);
    rows.coords.resize(0, d);
    return rows;
  }
  rows.coords.resize(num, d);
  for (int64_t i = 0; i < num; ++i) kernel_.Scale(points + i * d, rows.coords.row(i).data());
  // One point at a time: a blocked solve over several right-hand sides would round each point's
  // factors differently depending on the other points of the request.
  rows.features.resize(num, m);
  rows.inv_sqrt_p.resize(num);
  Eigen::VectorXd kux(m);
  for (int64_t j = 0; j < num; ++j) {
    for (int64_t u = 0; u < m; ++u) {
      kux[u] = SquaredDistance(inducing_scaled_.row(u).data(), rows.coords.row(j).data(), d);
    }
    kernel_.ValuesFromSquaredDistances(kux.data(), m);
    cholesky_->matrixL().solveInPlace(kux);
    rows.features.row(j) = kux.transpose();
    const double norm2 = CanonicalDot(kux.data(), kux.data(), m);
    const double p = std::max(kernel_.variance() - norm2, kMinResidualVariance);
    rows.inv_sqrt_p[j] = 1.0 / std::sqrt(p);
  }
  rows.ids.assign(num, -1);
  return rows;
}

void ResidualSpace::FinishRow(const PointRows& rows, int64_t row, const int64_t* positions,
                              int64_t begin, int64_t count, double* r2, double* dots) const {
  kernel_.ValuesFromSquaredDistances(r2, count);
  const double isp_row = rows.inv_sqrt_p[row];
  const double* isp_other;
  if (positions == nullptr) {
    isp_other = inv_sqrt_p_.data() + begin;
  } else {
    double* gathered = Scratch().Isp(count);
    for (int64_t j = 0; j < count; ++j) gathered[j] = inv_sqrt_p_[positions[j]];
    isp_other = gathered;
  }
  ResidualDistances(r2, dots, isp_row, isp_other, count, dots);
  // Identity and coincidence (rare: only where the kernel value is the variance, r ~ 0).
  const double variance = kernel_.variance();
  for (int64_t j = 0; j < count; ++j) {
    if (r2[j] != variance || dots[j] == 0.0) continue;
    const int64_t position = positions == nullptr ? begin + j : positions[j];
    if (Coincide(rows, row, id_at(position))) dots[j] = 0.0;
  }
}

bool ResidualSpace::Coincide(const PointRows& rows, int64_t row, int64_t id) const {
  if (id < 0) return false;
  if (rows.ids[row] == id) return true;
  const int d = kernel_.dimension();
  const int64_t position = position_of(id);
  if (SquaredDistance(rows.coords.row(row).data(), scaled_.row(position).data(), d) != 0.0) {
    return false;
  }
  // Computed factors are a function of the location; supplied ones need not be.
  return !factors_supplied() || (rows.features.row(row) == v_.row(position) &&
                                 rows.inv_sqrt_p[row] == inv_sqrt_p_[position]);
}

void ResidualSpace::RowsToRange(const PointRows& rows, int64_t first, int64_t num, int64_t begin,
                                int64_t count, double* out) const {
  Eigen::Map<RowMatrix> g(out, num, count);
  g.noalias() = rows.features.middleRows(first, num) * v_.middleRows(begin, count).transpose();
  double* r2 = Scratch().R2(count);
  for (int64_t i = 0; i < num; ++i) {
    SquaredDistancesToRange(rows.coords.row(first + i).data(), scaled_by_dim_.data(),
                            scaled_by_dim_.cols(), kernel_.dimension(), begin, count, r2);
    FinishRow(rows, first + i, nullptr, begin, count, r2, out + i * count);
  }
}

void ResidualSpace::RowsToRows(const PointRows& a, int64_t a0, int64_t na, const PointRows& b,
                               int64_t b0, int64_t nb, double* out) const {
  Eigen::Map<RowMatrix> g(out, na, nb);
  g.noalias() = a.features.middleRows(a0, na) * b.features.middleRows(b0, nb).transpose();
  const int d = kernel_.dimension();
  const double variance = kernel_.variance();
  double* r2 = Scratch().R2(nb);
  for (int64_t i = 0; i < na; ++i) {
    const double* ac = a.coords.row(a0 + i).data();
    for (int64_t j = 0; j < nb; ++j) r2[j] = SquaredDistance(ac, b.coords.row(b0 + j).data(), d);
    kernel_.ValuesFromSquaredDistances(r2, nb);
    double* row_out = out + i * nb;
    ResidualDistances(r2, row_out, a.inv_sqrt_p[a0 + i], b.inv_sqrt_p.data() + b0, nb, row_out);
    for (int64_t j = 0; j < nb; ++j) {
      if (r2[j] != variance || row_out[j] == 0.0) continue;
      const int64_t id = b.ids[b0 + j];
      if (id >= 0 ? Coincide(a, a0 + i, id) : Coincide(b, b0 + j, a.ids[a0 + i])) {
        row_out[j] = 0.0;
      }
    }
  }
}

void ResidualSpace::RowsToRangeWithin(const PointRows& rows, int64_t first, int64_t num,
                                      int64_t begin, int64_t count, const double* limits,
                                      double* out, RowsReady rows_ready) const {
  // The scan's product (the only caller): packed, register-blocked (core/packed_product.h), each
  // group of rows finished into distances while its products are still in cache.
  const int64_t m = v_.cols();
  const double variance = kernel_.variance();
  double* r2 = Scratch().R2(count);
  PackedProducts(
      rows.features.data() + first * m, m, num, v_.data() + begin * m, m, count, m, out, count,
      [&](int64_t group_begin, int64_t group_end) {
        for (int64_t i = group_begin; i < group_end; ++i) {
          double* row_out = out + i * count;
          SquaredDistancesToRange(rows.coords.row(first + i).data(), scaled_by_dim_.data(),
                                  scaled_by_dim_.cols(), kernel_.dimension(), begin, count, r2);
          kernel_.ValuesFromSquaredDistances(r2, count);
          ResidualDistancesWithin(r2, row_out, rows.inv_sqrt_p[first + i],
                                  inv_sqrt_p_.data() + begin, count, limits[i]);
          for (int64_t j = 0; j < count; ++j) {
            if (r2[j] == variance && Coincide(rows, first + i, id_at(begin + j))) {
              row_out[j] = 0.0;
            }
          }
        }
        rows_ready(group_begin, group_end);
      });
}

void ResidualSpace::RowsToRowsWithin(const PointRows& a, int64_t a0, int64_t na,
                                     const PointRows& b, int64_t b0, int64_t nb,
                                     const double* limits, double* out,
                                     RowsReady rows_ready) const {
  const int64_t m = v_.cols();
  const int d = kernel_.dimension();
  const double variance = kernel_.variance();
  RowScratch& scratch = Scratch();
  // b's coordinates one dimension at a time, so the squared distances vectorise over b.
  double* by_dim = scratch.ByDim(d * nb);
  for (int64_t j = 0; j < nb; ++j) {
    for (int t = 0; t < d; ++t) by_dim[t * nb + j] = b.coords(b0 + j, t);
  }
  double* r2 = scratch.R2(nb);
  PackedProducts(
      a.features.data() + a0 * m, m, na, b.features.data() + b0 * m, m, nb, m, out, nb,
      [&](int64_t group_begin, int64_t group_end) {
        for (int64_t i = group_begin; i < group_end; ++i) {
          double* row_out = out + i * nb;
          SquaredDistancesToRange(a.coords.row(a0 + i).data(), by_dim, nb, d, 0, nb, r2);
          kernel_.ValuesFromSquaredDistances(r2, nb);
          ResidualDistancesWithin(r2, row_out, a.inv_sqrt_p[a0 + i], b.inv_sqrt_p.data() + b0,
                                  nb, limits[i]);
          for (int64_t j = 0; j < nb; ++j) {
            if (r2[j] != variance) continue;
            const int64_t id = b.ids[b0 + j];
            if (id >= 0 ? Coincide(a, a0 + i, id) : Coincide(b, b0 + j, a.ids[a0 + i])) {
              row_out[j] = 0.0;
            }
          }
        }
        rows_ready(group_begin, group_end);
      });
}

void ResidualSpace::RowsToIdsWithin(const PointRows& rows, int64_t first, int64_t num,
                                    absl::Span<const int64_t> ids, const double* limits,
                                    double* out, RowsReady rows_ready) const {
  // RowsToRowsWithin on Gather(ids), bit for bit, but the rows of V are packed straight from
  // their storage positions instead of being copied first.
  const int64_t count = static_cast<int64_t>(ids.size());
  const int64_t m = v_.cols();
  const int d = kernel_.dimension();
  const double variance = kernel_.variance();
  RowScratch& scratch = Scratch();
  scratch.row_pointers.resize(count);
  double* by_dim = scratch.ByDim(d * count);
  double* isp_other = scratch.Isp(count);
  for (int64_t j = 0; j < count; ++j) {
    const int64_t position = position_of(ids[j]);
    scratch.row_pointers[j] = v_.row(position).data();
    isp_other[j] = inv_sqrt_p_[position];
    for (int t = 0; t < d; ++t) by_dim[t * count + j] = scaled_(position, t);
  }
  double* r2 = scratch.R2(count);
  PackedProducts(
      rows.features.data() + first * m, m, num, scratch.row_pointers.data(), count, m, out,
      count, [&](int64_t group_begin, int64_t group_end) {
        for (int64_t i = group_begin; i < group_end; ++i) {
          double* row_out = out + i * count;
          SquaredDistancesToRange(rows.coords.row(first + i).data(), by_dim, count, d, 0, count,
                                  r2);
          kernel_.ValuesFromSquaredDistances(r2, count);
          ResidualDistancesWithin(r2, row_out, rows.inv_sqrt_p[first + i], isp_other, count,
                                  limits[i]);
          for (int64_t j = 0; j < count; ++j) {
            if (r2[j] == variance && Coincide(rows, first + i, ids[j])) row_out[j] = 0.0;
          }
        }
        rows_ready(group_begin, group_end);
      });
}

void ResidualSpace::RowToIds(const PointRows& rows, int64_t row, absl::Span<const int64_t> ids,
                             double* out) const {
  const int64_t count = static_cast<int64_t>(ids.size());
  const int d = kernel_.dimension();
  const double* ac = rows.coords.row(row).data();
  const double* a = rows.features.row(row).data();
  const int64_t m = v_.cols();
  RowScratch& scratch = Scratch();
  double* r2 = scratch.R2(count);
  int64_t* positions = scratch.Positions(count);
  for (int64_t j = 0; j < count; ++j) positions[j] = position_of(ids[j]);
  // The stored rows sit at scattered positions: each is requested kRowsAhead rows before its
  // dot product, so several rows come from memory at once instead of one after another.
  constexpr int64_t kRowsAhead = 4;
  const int64_t row_bytes = m * static_cast<int64_t>(sizeof(double));
  auto prefetch = [&](int64_t position) {
    const char* v_row = reinterpret_cast<const char*>(v_.row(position).data());
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(v_row + b);
    __builtin_prefetch(scaled_.row(position).data());
    __builtin_prefetch(inv_sqrt_p_.data() + position);
  };
  for (int64_t j = 0; j < std::min(count, kRowsAhead); ++j) prefetch(positions[j]);
  for (int64_t j = 0; j < count; ++j) {
    if (j + kRowsAhead < count) prefetch(positions[j + kRowsAhead]);
    r2[j] = SquaredDistance(ac, scaled_.row(positions[j]).data(), d);
    out[j] = CanonicalDot(a, v_.row(positions[j]).data(), m);
  }
  FinishRow(rows, row, positions, 0, count, r2, out);
}

void ResidualSpace::PermuteStorage(absl::Span<const int64_t> from) {
  // The fingerprint covers the arrays in id order, whatever their layout.
  if (!fingerprint_.has_value()) fingerprint_ = Fingerprint();
  PermuteRowsInPlace(from, v_);
  PermuteRowsInPlace(from, scaled_);
  PermuteColumnsInPlace(from, scaled_by_dim_);
  PermuteInPlace(from, inv_sqrt_p_);
}

uint64_t ResidualSpace::Fingerprint() const {
  if (fingerprint_.has_value()) return *fingerprint_;
  // The kernel enters every distance, also where V and p were supplied rather than computed.
  const KernelSpec& kernel = kernel_.spec();
  const uint32_t type = static_cast<uint32_t>(kernel.type);
  uint64_t hash = core::Fingerprint(&type, sizeof(type), static_cast<uint64_t>(v_.cols()));
  hash = core::Fingerprint(&kernel.variance, sizeof(double), hash);
  hash = core::Fingerprint(kernel.lengthscales.data(),
                           kernel.lengthscales.size() * sizeof(double), hash);
  hash = core::Fingerprint(points_->data(), points_->size() * sizeof(double), hash);
  if (has_layout()) {
    // V's rows by id, as one piece (the hash of their concatenation).
    FingerprintStream rows(hash);
    const size_t row_bytes = static_cast<size_t>(v_.cols()) * sizeof(double);
    for (int64_t id = 0; id < v_.rows(); ++id) rows.Add(v_.row(position_of(id)).data(), row_bytes);
    hash = rows.Digest();
  } else {
    hash = core::Fingerprint(v_.data(), v_.size() * sizeof(double), hash);
  }
  return core::Fingerprint(p_.data(), p_.size() * sizeof(double), hash);
}

}  // namespace rcknn::core
