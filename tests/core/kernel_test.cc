// Kernel values against the defining formulas of docs/design.md section 2, written out independently
// here, and the validation of kernel settings.
#include "core/kernel.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/random.h"
#include "gtest/gtest.h"

namespace rcknn {
namespace {

using core::Kernel;
using core::KernelSpec;
using core::KernelType;

constexpr KernelType kAllTypes[] = {KernelType::kRbf, KernelType::kMatern12, KernelType::kMatern32,
                                    KernelType::kMatern52};

// f(r) of docs/design.md section 2.
double Shape(KernelType type, double r) {
  switch (type) {
    case KernelType::kRbf:
      return std::exp(-r * r / 2.0);
    case KernelType::kMatern12:
      return std::exp(-r);
    case KernelType::kMatern32:
      return (1.0 + std::sqrt(3.0) * r) * std::exp(-std::sqrt(3.0) * r);
    case KernelType::kMatern52:
      return (1.0 + std::sqrt(5.0) * r + 5.0 * r * r / 3.0) * std::exp(-std::sqrt(5.0) * r);
  }
  ADD_FAILURE() << "unknown kernel type";
  return 0.0;
}

// s2 * f(||(x - y) / l||) for isotropic (one value) or ARD lengthscales.
double Reference(const KernelSpec& spec, const std::vector<double>& x,
                 const std::vector<double>& y) {
  double r2 = 0.0;
  for (size_t t = 0; t < x.size(); ++t) {
    const double l = spec.lengthscales.size() == 1 ? spec.lengthscales[0] : spec.lengthscales[t];
    r2 += (x[t] - y[t]) * (x[t] - y[t]) / (l * l);
  }
  return spec.variance * Shape(spec.type, std::sqrt(r2));
}

void ExpectClose(double actual, double expected, const std::string& what) {
  EXPECT_NEAR(actual, expected, 1e-13 * std::abs(expected) + 1e-300) << what;
}

class KernelFormulaTest : public ::testing::TestWithParam<KernelType> {};

TEST_P(KernelFormulaTest, MatchesDefiningFormulaIsotropicAndArd) {
  core::SplitMix64 rng(17);
  for (int d : {1, 2, 3, 5, 8}) {
    for (bool ard : {false, true}) {
      KernelSpec spec;
      spec.type = GetParam();
      spec.variance = 0.2 + 3.0 * rng.UniformDouble();
      spec.lengthscales.clear();
      for (int t = 0; t < (ard ? d : 1); ++t)
        spec.lengthscales.push_back(0.1 + 2.0 * rng.UniformDouble());
      absl::StatusOr<Kernel> kernel = Kernel::Create(spec, d);
      ASSERT_TRUE(kernel.ok()) << kernel.status();
      EXPECT_EQ(kernel->dimension(), d);
      EXPECT_EQ(kernel->variance(), spec.variance);

      // Pairs from identical to far apart, so every part of each curve is exercised.
      constexpr int kPairs = 53;  // not a multiple of any SIMD width
      std::vector<double> r2(kPairs);
      std::vector<double> expected(kPairs);
      for (int p = 0; p < kPairs; ++p) {
        std::vector<double> x(d), y(d);
        const double spread = p == 0 ? 0.0 : 0.05 * p;
        for (int t = 0; t < d; ++t) {
          x[t] = rng.Normal();
          y[t] = x[t] + spread * rng.Normal();
        }
        expected[p] = Reference(spec, x, y);
        const std::string what = ::testing::PrintToString(
            std::vector<std::string>{core::KernelTypeName(spec.type), ard ? "ard" : "iso",
                                     std::to_string(d), std::to_string(p)});
        ExpectClose(kernel->Evaluate(x.data(), y.data()), expected[p], "Evaluate " + what);

        std::vector<double> xs(d), ys(d);
        kernel->Scale(x.data(), xs.data());
        kernel->Scale(y.data(), ys.data());
        for (int t = 0; t < d; ++t) {
          const double l = ard ? spec.lengthscales[t] : spec.lengthscales[0];
          EXPECT_NEAR(xs[t], x[t] / l, 1e-15 * std::abs(x[t] / l)) << what;
        }
        r2[p] = 0.0;
        for (int t = 0; t < d; ++t) r2[p] += (xs[t] - ys[t]) * (xs[t] - ys[t]);
        ExpectClose(kernel->ValueFromSquaredDistance(r2[p]), expected[p],
                    "ValueFromSquaredDistance " + what);
      }
      kernel->ValuesFromSquaredDistances(r2.data(), kPairs);
      for (int p = 0; p < kPairs; ++p) {
        ExpectClose(r2[p], expected[p], "ValuesFromSquaredDistances pair " + std::to_string(p));
      }
    }
  }
}

// The residual metric treats k = variance as "same location" (its exact-duplicate rule), so a
// zero distance must give exactly the variance, on every path.
TEST_P(KernelFormulaTest, ZeroDistanceGivesExactlyTheVariance) {
  for (double variance : {1.0, 1.5, 0.3, 7.25, 1e-3}) {
    KernelSpec spec;
    spec.type = GetParam();
    spec.variance = variance;
    spec.lengthscales = {0.7};
    absl::StatusOr<Kernel> kernel = Kernel::Create(spec, 3);
    ASSERT_TRUE(kernel.ok()) << kernel.status();
    const double x[3] = {0.25, -1.5, 3.0};
    EXPECT_EQ(kernel->Evaluate(x, x), variance);
    EXPECT_EQ(kernel->ValueFromSquaredDistance(0.0), variance);
    std::vector<double> zeros(19, 0.0);
    kernel->ValuesFromSquaredDistances(zeros.data(), static_cast<int64_t>(zeros.size()));
    for (double value : zeros) EXPECT_EQ(value, variance);
  }
}

// kernel.h: "values[i] = ValueFromSquaredDistance(values[i])". The residual metric depends on
// this being exact: equal inputs must give equal bits wherever they sit in the array, or two
// exact duplicate points get different factors V (their kernel columns start at different
// alignments) and lose their exact distance 0.
TEST_P(KernelFormulaTest, BatchValuesEqualSingleValuesBitForBit) {
  KernelSpec spec;
  spec.type = GetParam();
  absl::StatusOr<Kernel> kernel = Kernel::Create(spec, 1);
  ASSERT_TRUE(kernel.ok()) << kernel.status();
  core::SplitMix64 rng(1);
  int differ = 0;
  double example_r2 = 0.0;
  for (int trial = 0; trial < 50; ++trial) {
    const double r2 = 5.0 * rng.UniformDouble();
    const double single = kernel->ValueFromSquaredDistance(r2);
    for (int offset = 0; offset < 8; ++offset) {
      std::vector<double> values(40, r2);
      kernel->ValuesFromSquaredDistances(values.data() + offset, 40 - offset);
      for (int i = offset; i < 40; ++i) {
        if (values[i] != single) {
          ++differ;
          example_r2 = r2;
        }
      }
    }
  }
  EXPECT_EQ(differ, 0) << "batch values differing from ValueFromSquaredDistance, e.g. for r2 = "
                       << example_r2;
}

TEST_P(KernelFormulaTest, DecaysMonotonicallyToZeroWithoutNaN) {
  KernelSpec spec;
  spec.type = GetParam();
  spec.variance = 2.0;
  absl::StatusOr<Kernel> kernel = Kernel::Create(spec, 1);
  ASSERT_TRUE(kernel.ok()) << kernel.status();
  std::vector<double> r2;
  for (double r = 0.0; r < 60.0; r += 0.37) r2.push_back(r * r);
  r2.push_back(1e6);
  r2.push_back(1e300);
  kernel->ValuesFromSquaredDistances(r2.data(), static_cast<int64_t>(r2.size()));
  for (size_t i = 0; i < r2.size(); ++i) {
    ASSERT_FALSE(std::isnan(r2[i])) << i;
    EXPECT_GE(r2[i], 0.0) << i;
    EXPECT_LE(r2[i], 2.0) << i;
    if (i > 0) {
      EXPECT_LE(r2[i], r2[i - 1]) << i;
    }
  }
  EXPECT_EQ(r2.back(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(AllKernels, KernelFormulaTest, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return core::KernelTypeName(info.param); });

TEST(KernelTest, TypeNamesAreDistinct) {
  EXPECT_EQ(core::KernelTypeName(KernelType::kRbf), "rbf");
  EXPECT_EQ(core::KernelTypeName(KernelType::kMatern12), "matern12");
  EXPECT_EQ(core::KernelTypeName(KernelType::kMatern32), "matern32");
  EXPECT_EQ(core::KernelTypeName(KernelType::kMatern52), "matern52");
}

TEST(KernelTest, KnownValues) {
  // Values at r = 1 worked out by hand: exp(-1/2), exp(-1), (1 + sqrt3) exp(-sqrt3),
  // (1 + sqrt5 + 5/3) exp(-sqrt5); lengthscale 2 and a point 2 away gives r = 1.
  const double expected[] = {0.6065306597126334, 0.36787944117144233, 0.4833577245965077,
                             0.5239941088318203};
  int i = 0;
  for (KernelType type : kAllTypes) {
    KernelSpec spec;
    spec.type = type;
    spec.variance = 3.0;
    spec.lengthscales = {2.0};
    absl::StatusOr<Kernel> kernel = Kernel::Create(spec, 1);
    ASSERT_TRUE(kernel.ok());
    const double x = 1.0, y = 3.0;
    EXPECT_NEAR(kernel->Evaluate(&x, &y), 3.0 * expected[i], 1e-14) << core::KernelTypeName(type);
    ++i;
  }
}

absl::Status CreateStatus(const KernelSpec& spec, int dimension) {
  return Kernel::Create(spec, dimension).status();
}

void ExpectInvalid(const KernelSpec& spec, int dimension, const std::string& field) {
  const absl::Status status = CreateStatus(spec, dimension);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(field), std::string::npos)
      << "message does not name " << field << ": " << status;
}

TEST(KernelValidationTest, RejectsBadVariance) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (double variance : {0.0, -1.0, -kInf, kInf, std::nan("")}) {
    KernelSpec spec;
    spec.variance = variance;
    ExpectInvalid(spec, 2, "variance");
  }
}

TEST(KernelValidationTest, RejectsBadLengthscales) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (double bad : {0.0, -0.5, kInf, -kInf, std::nan("")}) {
    KernelSpec iso;
    iso.lengthscales = {bad};
    ExpectInvalid(iso, 3, "lengthscales");
    for (int position = 0; position < 3; ++position) {
      KernelSpec ard;
      ard.lengthscales = {1.0, 2.0, 3.0};
      ard.lengthscales[position] = bad;
      ExpectInvalid(ard, 3, "lengthscales");
    }
  }
}

TEST(KernelValidationTest, RejectsWrongLengthscaleCount) {
  KernelSpec spec;
  spec.lengthscales = {};
  ExpectInvalid(spec, 3, "lengthscales");
  spec.lengthscales = {1.0, 1.0};
  ExpectInvalid(spec, 3, "lengthscales");
  spec.lengthscales = {1.0, 1.0, 1.0, 1.0};
  ExpectInvalid(spec, 3, "lengthscales");
  spec.lengthscales = {1.0, 1.0};
  ExpectInvalid(spec, 1, "lengthscales");
  // One per dimension and a single value are both fine.
  spec.lengthscales = {1.0, 2.0, 3.0};
  EXPECT_TRUE(CreateStatus(spec, 3).ok());
  spec.lengthscales = {4.0};
  EXPECT_TRUE(CreateStatus(spec, 3).ok());
}

TEST(KernelValidationTest, RejectsDimensionBelowOne) {
  KernelSpec spec;
  for (int dimension : {0, -1, -100}) ExpectInvalid(spec, dimension, "dimension");
}

TEST(KernelValidationTest, RejectsUnknownType) {
  KernelSpec spec;
  spec.type = static_cast<KernelType>(42);
  ExpectInvalid(spec, 2, "type");
}

}  // namespace
}  // namespace rcknn
