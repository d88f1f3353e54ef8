#include "core/kernel.h"

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "absl/strings/str_cat.h"

namespace rcknn::core {
namespace {

constexpr double kSqrt3 = 1.7320508075688772;
constexpr double kSqrt5 = 2.23606797749979;
constexpr double kMaxExponent = 700.0;  // exp(-700) ~ 1e-304: below it, a kernel value is 0

}  // namespace

std::string KernelTypeName(KernelType type) {
  switch (type) {
    case KernelType::kRbf:
      return "rbf";
    case KernelType::kMatern12:
      return "matern12";
    case KernelType::kMatern32:
      return "matern32";
    case KernelType::kMatern52:
      return "matern52";
  }
  return "unknown";
}

absl::StatusOr<Kernel> Kernel::Create(const KernelSpec& spec, int dimension) {
  if (dimension < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dimension must be >= 1, got ", dimension));
  }
  switch (spec.type) {
    case KernelType::kRbf:
    case KernelType::kMatern12:
    case KernelType::kMatern32:
    case KernelType::kMatern52:
      break;
    default:
      return absl::InvalidArgumentError("kernel.type: unknown kernel type");
  }
  if (!std::isfinite(spec.variance) || spec.variance <= 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kernel.variance must be finite and > 0, got ", spec.variance));
  }
  const size_t count = spec.lengthscales.size();
  if (count != 1 && count != static_cast<size_t>(dimension)) {
    return absl::InvalidArgumentError(absl::StrCat("kernel.lengthscales must hold 1 or ",
                                                   dimension, " values, got ", count));
  }
  std::vector<double> inverse(dimension);
  for (int t = 0; t < dimension; ++t) {
    const double l = spec.lengthscales[count == 1 ? 0 : t];
    if (!std::isfinite(l) || l <= 0.0) {
      return absl::InvalidArgumentError(
          absl::StrCat("kernel.lengthscales[", count == 1 ? 0 : t, "] must be finite and > 0, got ", l));
    }
    inverse[t] = 1.0 / l;
  }
  return Kernel(spec, dimension, std::move(inverse));
}

void Kernel::Scale(const double* x, double* out) const {
  for (int t = 0; t < dimension_; ++t) out[t] = x[t] * inverse_lengthscales_[t];
}

double Kernel::ValueFromSquaredDistance(double r2) const {
  double value = r2;
  ValuesFromSquaredDistances(&value, 1);
  return value;
}

void Kernel::ValuesFromSquaredDistances(double* values, int64_t count) const {
  // Every value goes through the same vector code in a 64-byte aligned buffer whose length is a
  // multiple of the packet size: Eigen would otherwise compute unaligned heads and tails with
  // scalar code that rounds differently, so equal inputs would give different bits depending
  // on where they sit (and two duplicates different factors).
  constexpr int64_t kBlock = 256;
  alignas(64) double r[kBlock];  // r^2, then the exponent's argument
  alignas(64) double e[kBlock];
  const double s2 = spec_.variance;
  for (int64_t start = 0; start < count; start += kBlock) {
    const int64_t num = std::min(kBlock, count - start);
    const int64_t padded = (num + 7) / 8 * 8;
    std::copy_n(values + start, num, r);
    std::fill(r + num, r + padded, 0.0);
    Eigen::Map<Eigen::ArrayXd, Eigen::Aligned64> a(r, padded);
    Eigen::Map<Eigen::ArrayXd, Eigen::Aligned64> x(e, padded);
    // Eigen's select() has no vector path (it would call the scalar exp per value), so the
    // exponentials are taken as a plain array expression and the cut-off applied by a loop the
    // compiler turns into blends. The vectorised exp clamps its argument near -708 instead of
    // underflowing to 0, so values past kMaxExponent are set to 0 explicitly (else a Matern
    // polynomial times the clamped exp grows).
    double* out = values + start;
    switch (spec_.type) {
      case KernelType::kRbf:
        x = (-0.5 * a).exp();
        for (int64_t i = 0; i < num; ++i) out[i] = r[i] < 2.0 * kMaxExponent ? s2 * e[i] : 0.0;
        break;
      case KernelType::kMatern12:
        a = a.sqrt();
        x = (-a).exp();
        for (int64_t i = 0; i < num; ++i) out[i] = r[i] < kMaxExponent ? s2 * e[i] : 0.0;
        break;
      case KernelType::kMatern32:
        a = kSqrt3 * a.sqrt();
        x = (1.0 + a) * (-a).exp();
        for (int64_t i = 0; i < num; ++i) out[i] = r[i] < kMaxExponent ? s2 * e[i] : 0.0;
        break;
      case KernelType::kMatern52:
        a = kSqrt5 * a.sqrt();  // a = sqrt5 r, so 5 r^2 / 3 = a^2 / 3
        x = (1.0 + a + a.square() * (1.0 / 3.0)) * (-a).exp();
        for (int64_t i = 0; i < num; ++i) out[i] = r[i] < kMaxExponent ? s2 * e[i] : 0.0;
        break;
    }
  }
}

double Kernel::Evaluate(const double* x, const double* y) const {
  double r2 = 0.0;
  for (int t = 0; t < dimension_; ++t) {
    const double diff = (x[t] - y[t]) * inverse_lengthscales_[t];
    r2 += diff * diff;
  }
  const double r = std::sqrt(r2);
  const double s2 = spec_.variance;
  switch (spec_.type) {
    case KernelType::kRbf:
      return s2 * std::exp(-0.5 * r * r);
    case KernelType::kMatern12:
      return s2 * std::exp(-r);
    case KernelType::kMatern32:
      return s2 * (1.0 + kSqrt3 * r) * std::exp(-kSqrt3 * r);
    case KernelType::kMatern52:
      return s2 * (1.0 + kSqrt5 * r + 5.0 * r * r / 3.0) * std::exp(-kSqrt5 * r);
  }
  return 0.0;
}

}  // namespace rcknn::core
