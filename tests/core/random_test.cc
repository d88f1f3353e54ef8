// SplitMix64 and SampleDistinct: fixed outputs (seeded choices such as inducing points must be
// reproducible across machines and versions), ranges, and uniformity.
#include "core/random.h"

#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace rcknn {
namespace {

using core::SampleDistinct;
using core::SplitMix64;

// The reference algorithm (Steele, Lea & Flood 2014; Vigna's splitmix64.c), written out here.
uint64_t ReferenceNext(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Golden outputs, computed with an independent Python implementation of the reference algorithm
// (seed 0 starts with 0xe220a8397b1dcdaf, the published first value).
TEST(SplitMix64Test, GoldenOutputs) {
  SplitMix64 zero(0);
  EXPECT_EQ(zero.Next(), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(zero.Next(), 0x6e789e6aa1b965f4ULL);
  EXPECT_EQ(zero.Next(), 0x06c45d188009454fULL);
  EXPECT_EQ(zero.Next(), 0xf88bb8a8724c81ecULL);
  SplitMix64 answer(42);
  EXPECT_EQ(answer.Next(), 0xbdd732262feb6e95ULL);
  EXPECT_EQ(answer.Next(), 0x28efe333b266f103ULL);
  EXPECT_EQ(answer.Next(), 0x47526757130f9f52ULL);
  EXPECT_EQ(answer.Next(), 0x581ce1ff0e4ae394ULL);
}

TEST(SplitMix64Test, MatchesReferenceForManySeeds) {
  for (uint64_t seed :
       {uint64_t{0}, uint64_t{1}, uint64_t{42}, uint64_t{0xdeadbeef}, ~uint64_t{0}}) {
    SplitMix64 rng(seed);
    uint64_t state = seed;
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(rng.Next(), ReferenceNext(state)) << seed << " " << i;
  }
}

TEST(SplitMix64Test, GoldenUniformDoubles) {
  // (Next() >> 11) * 2^-53 for seed 0, computed in Python.
  SplitMix64 rng(0);
  EXPECT_EQ(rng.UniformDouble(), 0.8833108082136426);
  EXPECT_EQ(rng.UniformDouble(), 0.43152799704850997);
  EXPECT_EQ(rng.UniformDouble(), 0.026433771592597743);
}

TEST(SplitMix64Test, GoldenUniformBelow) {
  // Rejection sampling on Next(), computed in Python.
  SplitMix64 a(42);
  const std::vector<uint64_t> expected_a = {3, 1, 8, 4, 0, 2, 5, 8, 5, 4};
  for (uint64_t value : expected_a) EXPECT_EQ(a.UniformBelow(10), value);
  SplitMix64 b(0);
  const std::vector<uint64_t> expected_b = {1, 0, 1, 1, 1, 0, 2, 2, 2, 2};
  for (uint64_t value : expected_b) EXPECT_EQ(b.UniformBelow(3), value);
}

TEST(SplitMix64Test, SameSeedSameSequence) {
  SplitMix64 a(1234), b(1234), c(1235);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const double x = a.Normal();
    EXPECT_EQ(x, b.Normal());
    differs |= x != c.Normal();
  }
  EXPECT_TRUE(differs);
}

TEST(SplitMix64Test, UniformBelowStaysInRange) {
  SplitMix64 rng(7);
  for (uint64_t bound : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{7}, uint64_t{1000},
                         (uint64_t{1} << 63) + 1, ~uint64_t{0} - 1, ~uint64_t{0}}) {
    for (int i = 0; i < 2000; ++i) ASSERT_LT(rng.UniformBelow(bound), bound) << bound;
  }
  for (int i = 0; i < 100; ++i) EXPECT_EQ(rng.UniformBelow(1), 0u);
}

TEST(SplitMix64Test, UniformBelowIsUnbiasedForLargeBounds) {
  // With bound b = 2/3 of 2^64, a plain Next() % b would land in [0, b/2) three times in four.
  const uint64_t bound = 0xaaaaaaaaaaaaaaaaULL;
  SplitMix64 rng(99);
  constexpr int kDraws = 20000;
  int low = 0;
  for (int i = 0; i < kDraws; ++i) low += rng.UniformBelow(bound) < bound / 2 ? 1 : 0;
  // Binomial(20000, 1/2): standard deviation 71; allow 6 of them.
  EXPECT_NEAR(low, kDraws / 2, 6 * 71);
}

TEST(SplitMix64Test, UniformBelowSmallBoundIsUniform) {
  SplitMix64 rng(5);
  constexpr int kBound = 6;
  constexpr int kDraws = 60000;
  std::vector<int> counts(kBound, 0);
  for (int i = 0; i < kDraws; ++i) ++counts[rng.UniformBelow(kBound)];
  // Each count is Binomial(60000, 1/6): standard deviation 91.
  for (int value = 0; value < kBound; ++value) {
    EXPECT_NEAR(counts[value], kDraws / kBound, 6 * 91) << value;
  }
}

TEST(SplitMix64Test, UniformDoubleAndNormalMoments) {
  SplitMix64 rng(11);
  constexpr int kDraws = 40000;
  double sum = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const double u = rng.UniformDouble();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / kDraws, 0.5, 6 * std::sqrt(1.0 / 12.0 / kDraws));
  double s1 = 0.0, s2 = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const double z = rng.Normal();
    ASSERT_TRUE(std::isfinite(z));
    s1 += z;
    s2 += z * z;
  }
  EXPECT_NEAR(s1 / kDraws, 0.0, 6 / std::sqrt(kDraws));
  EXPECT_NEAR(s2 / kDraws, 1.0, 6 * std::sqrt(2.0 / kDraws));
}

void ExpectValidSample(const std::vector<int64_t>& sample, int64_t n, int64_t count) {
  ASSERT_EQ(static_cast<int64_t>(sample.size()), count);
  for (size_t i = 0; i < sample.size(); ++i) {
    EXPECT_GE(sample[i], 0);
    EXPECT_LT(sample[i], n);
    if (i > 0) {
      EXPECT_LT(sample[i - 1], sample[i]) << "not distinct and ascending at " << i;
    }
  }
}

TEST(SampleDistinctTest, DistinctAscendingInRange) {
  for (int64_t n : {1, 2, 5, 64, 1000, 1000000}) {
    for (int64_t count : {int64_t{0}, int64_t{1}, n / 3, n / 2, n - 1, n}) {
      if (count < 0 || count > n || count > 5000) continue;
      for (uint64_t seed : {0, 1, 77}) {
        SCOPED_TRACE(::testing::Message() << "n=" << n << " count=" << count << " seed=" << seed);
        ExpectValidSample(SampleDistinct(n, count, seed), n, count);
      }
    }
  }
}

TEST(SampleDistinctTest, GoldenSamples) {
  // Floyd's algorithm on UniformBelow, computed with an independent Python implementation.
  EXPECT_EQ(SampleDistinct(100, 5, 7), (std::vector<int64_t>{33, 56, 74, 86, 87}));
  EXPECT_EQ(SampleDistinct(1000000, 8, 42),
            (std::vector<int64_t>{84372, 302809, 304440, 366571, 635488, 639425, 775908, 988903}));
}

TEST(SampleDistinctTest, SameSeedSameSampleDifferentSeedDifferent) {
  EXPECT_EQ(SampleDistinct(5000, 100, 3), SampleDistinct(5000, 100, 3));
  EXPECT_NE(SampleDistinct(5000, 100, 3), SampleDistinct(5000, 100, 4));
  EXPECT_NE(SampleDistinct(1000, 10, 0), SampleDistinct(1000, 10, 1));
}

TEST(SampleDistinctTest, FullCountIsEveryIndex) {
  for (int64_t n : {1, 2, 17, 512}) {
    std::vector<int64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(SampleDistinct(n, n, 9), all) << n;
  }
  EXPECT_TRUE(SampleDistinct(10, 0, 9).empty());
}

TEST(SampleDistinctTest, EveryIndexEquallyLikely) {
  // n = 10, count = 3 over 3000 seeds: each index is chosen Binomial(3000, 0.3) times
  // (standard deviation 25). A biased sampler (say, one favouring the last indices) fails.
  constexpr int kSeeds = 3000;
  std::vector<int> counts(10, 0);
  std::set<std::vector<int64_t>> distinct_samples;
  for (int seed = 0; seed < kSeeds; ++seed) {
    const std::vector<int64_t> sample = SampleDistinct(10, 3, seed);
    for (int64_t i : sample) ++counts[i];
    distinct_samples.insert(sample);
  }
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(counts[i], kSeeds * 3 / 10, 6 * 25) << i;
  // All C(10, 3) = 120 subsets turn up.
  EXPECT_EQ(distinct_samples.size(), 120u);
}

}  // namespace
}  // namespace rcknn
