// ArrayCache and LargeArray: what is kept, for how long, what is reused, and that a V computed
// in reused memory is the V computed in new memory.
#include "core/array_cache.h"

#include <cstring>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "core/residual_correlation.h"
#include "gtest/gtest.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using core::ArrayCache;
using core::LargeArray;

constexpr size_t kMiB = size_t{1} << 20;

TEST(ArrayCacheTest, KeepsNothingUntilConfigured) {
  ArrayCache cache;
  size_t size = 0;
  void* a = cache.Take(3 * kMiB, &size);
  ASSERT_NE(a, nullptr);
  EXPECT_GE(size, 3 * kMiB);
  std::memset(a, 1, size);
  cache.Give(a, size);
  EXPECT_EQ(cache.kept_bytes(), 0);
  EXPECT_EQ(cache.kept_blocks(), 0);
  EXPECT_EQ(cache.mapped(), 1);
  EXPECT_EQ(cache.reused(), 0);
}

TEST(ArrayCacheTest, ReusesAKeptBlockOfTheSameSizeOnly) {
  ArrayCache cache;
  std::vector<int64_t> seen;
  cache.SetObserver([&](int64_t kept) { seen.push_back(kept); });
  cache.Configure(64 * kMiB, absl::Hours(1));
  size_t size = 0;
  void* a = cache.Take(10 * kMiB, &size);
  static_cast<char*>(a)[0] = 7;
  cache.Give(a, size);
  EXPECT_EQ(cache.kept_bytes(), static_cast<int64_t>(size));
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), static_cast<int64_t>(size));
  // Too small a request (the block would waste more than a quarter of itself) and too large
  // a one get new memory; the same size gets the kept block.
  size_t other = 0;
  void* small = cache.Take(4 * kMiB, &other);
  EXPECT_NE(small, a);
  cache.Give(small, other);
  void* large = cache.Take(12 * kMiB, &other);
  EXPECT_NE(large, a);
  cache.Give(large, other);
  EXPECT_EQ(cache.kept_blocks(), 3);
  size_t again_size = 0;
  void* again = cache.Take(10 * kMiB - 5, &again_size);
  EXPECT_EQ(again, a);
  EXPECT_EQ(again_size, size);
  EXPECT_EQ(static_cast<char*>(again)[0], 7) << "a kept block is handed out as it was";
  EXPECT_EQ(cache.reused(), 1);
  EXPECT_EQ(cache.mapped(), 3);
  cache.Give(again, again_size);
  const int64_t kept = cache.kept_bytes();
  EXPECT_EQ(cache.Release(), kept);
  EXPECT_EQ(cache.kept_bytes(), 0);
  EXPECT_EQ(seen.back(), 0);
}

TEST(ArrayCacheTest, StaysWithinItsLimitDroppingTheOldest) {
  ArrayCache cache;
  cache.Configure(9 * kMiB, absl::Hours(1));
  size_t sa = 0, sb = 0, sc = 0;
  void* a = cache.Take(4 * kMiB, &sa);
  void* b = cache.Take(4 * kMiB, &sb);
  void* c = cache.Take(16 * kMiB, &sc);
  cache.Give(a, sa);
  cache.Give(b, sb);
  EXPECT_EQ(cache.kept_blocks(), 2);
  cache.Give(c, sc);  // larger than the limit: unmapped, the others stay
  EXPECT_EQ(cache.kept_blocks(), 2);
  void* d = cache.Take(4 * kMiB, &sc);
  EXPECT_EQ(d, b) << "the most recently freed of equal blocks";
  cache.Give(d, sc);
  cache.Configure(5 * kMiB, absl::Hours(1));  // shrinking drops the oldest
  EXPECT_EQ(cache.kept_blocks(), 1);
  size_t se = 0;
  EXPECT_EQ(cache.Take(4 * kMiB, &se), b);
  cache.Give(b, se);
}

TEST(ArrayCacheTest, ForgetsBlocksAfterTheKeepTime) {
  ArrayCache cache;
  cache.Configure(64 * kMiB, absl::Milliseconds(50));
  size_t size = 0;
  void* a = cache.Take(2 * kMiB, &size);
  cache.Give(a, size);
  EXPECT_EQ(cache.kept_blocks(), 1);
  // The cache's own thread expires it without any further call.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (cache.kept_blocks() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(cache.kept_blocks(), 0);
  EXPECT_EQ(cache.kept_bytes(), 0);
}

TEST(LargeArrayTest, SmallArraysComeFromTheHeapAndLargeOnesFromTheDefaultCache) {
  ArrayCache& cache = ArrayCache::Default();
  cache.Configure(256 * kMiB, absl::Hours(1));
  const int64_t mapped = cache.mapped();
  {
    LargeArray small(1000);
    ASSERT_NE(small.data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 64, 0u);
    small.data()[999] = 1.0;
  }
  EXPECT_EQ(cache.mapped(), mapped);
  EXPECT_EQ(cache.kept_blocks(), 0);
  const double* where = nullptr;
  {
    LargeArray large(1 << 20);  // 8 MiB
    where = large.data();
    large.data()[(1 << 20) - 1] = 2.0;
    LargeArray moved = std::move(large);
    EXPECT_EQ(large.data(), nullptr);
    EXPECT_EQ(moved.data(), where);
  }
  EXPECT_EQ(cache.mapped(), mapped + 1);
  EXPECT_EQ(cache.kept_blocks(), 1);
  {
    LargeArray again(1 << 20);
    EXPECT_EQ(again.data(), where);
  }
  cache.Configure(0, absl::ZeroDuration());
  EXPECT_EQ(cache.kept_blocks(), 0);
}

// A V computed in memory that held another index's V (stale values) has the bits of a V computed
// in new memory: every entry is written. 4,100 x 40 doubles: above the heap threshold, with a
// short last block.
TEST(LargeArrayTest, FactorsInReusedMemoryAreTheFactorsInNewMemory) {
  ArrayCache& cache = ArrayCache::Default();
  cache.Configure(256 * kMiB, absl::Hours(1));
  const core::RowMatrix points = testing::NormalPoints(4100, 2, 5);
  core::ResidualOptions options;
  options.kernel.type = core::KernelType::kMatern32;
  options.kernel.variance = 1.3;
  options.kernel.lengthscales = {0.4};
  options.inducing_count = 40;
  options.inducing_seed = 2;
  core::ResidualOptions other = options;
  other.kernel.lengthscales = {0.9};
  other.kernel.variance = 0.7;
  absl::StatusOr<std::unique_ptr<core::ResidualSpace>> first =
      core::ResidualSpace::Create(points, other);
  ASSERT_TRUE(first.ok()) << first.status();
  const double* old_rows = (*first)->v().data();
  const core::RowMatrix old_v = (*first)->v();
  first->reset();
  ASSERT_EQ(cache.kept_blocks(), 1);
  const int64_t reused = cache.reused();
  absl::StatusOr<std::unique_ptr<core::ResidualSpace>> second =
      core::ResidualSpace::Create(points, options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(cache.reused(), reused + 1);
  EXPECT_EQ((*second)->v().data(), old_rows) << "the kept memory was not reused";
  cache.Configure(0, absl::ZeroDuration());  // what follows gets new memory
  absl::StatusOr<std::unique_ptr<core::ResidualSpace>> fresh =
      core::ResidualSpace::Create(points, options);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE((*fresh)->v().data(), old_rows);
  EXPECT_TRUE((*second)->v() == (*fresh)->v());
  EXPECT_FALSE((*second)->v() == old_v);
  EXPECT_EQ((*second)->Fingerprint(), (*fresh)->Fingerprint());
}

}  // namespace
}  // namespace rcknn
