// Stationary covariance kernels k(x, y) = variance * f(r), r = ||(x - y) / lengthscale||.
#ifndef RCKNN_CORE_KERNEL_H_
#define RCKNN_CORE_KERNEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace rcknn::core {

enum class KernelType {
  kRbf,        // f(r) = exp(-r^2 / 2)
  kMatern12,   // f(r) = exp(-r)
  kMatern32,   // f(r) = (1 + sqrt3 r) exp(-sqrt3 r)
  kMatern52,   // f(r) = (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)
};

std::string KernelTypeName(KernelType type);

struct KernelSpec {
  KernelType type = KernelType::kRbf;
  double variance = 1.0;
  // One value (isotropic) or one per dimension (ARD).
  std::vector<double> lengthscales = {1.0};
};

// A validated kernel for a fixed dimension. Immutable and thread-safe.
//
// Callers scale coordinates once with Scale() and then only ever need the squared scaled
// distance r^2 between two points: ValueFromSquaredDistance(r^2) = k(x, y).
class Kernel {
 public:
  // INVALID_ARGUMENT for a non-finite or non-positive variance or lengthscale, or a lengthscale
  // count that is neither 1 nor `dimension`.
  static absl::StatusOr<Kernel> Create(const KernelSpec& spec, int dimension);

  const KernelSpec& spec() const { return spec_; }
  int dimension() const { return dimension_; }
  double variance() const { return spec_.variance; }

  // out[t] = x[t] / lengthscale[t] for one point of `dimension` coordinates.
  void Scale(const double* x, double* out) const;

  // k for a squared scaled distance r2 >= 0.
  double ValueFromSquaredDistance(double r2) const;
  // In place: values[i] = ValueFromSquaredDistance(values[i]). Vectorised.
  void ValuesFromSquaredDistances(double* values, int64_t count) const;

  // k(x, y) for unscaled coordinates, straight from the defining formula.
  double Evaluate(const double* x, const double* y) const;

 private:
  Kernel(KernelSpec spec, int dimension, std::vector<double> inverse_lengthscales)
      : spec_(std::move(spec)),
        dimension_(dimension),
        inverse_lengthscales_(std::move(inverse_lengthscales)) {}

  KernelSpec spec_;
  int dimension_;
  std::vector<double> inverse_lengthscales_;  // `dimension` entries
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_KERNEL_H_
