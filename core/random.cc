#include "core/random.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"

namespace rcknn::core {

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::UniformBelow(uint64_t bound) {
  // Reject the top partial interval so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t x;
  do {
    x = Next();
  } while (x >= limit);
  return x % bound;
}

double SplitMix64::UniformDouble() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

double SplitMix64::Normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1;
  do {
    u1 = UniformDouble();
  } while (u1 <= 0.0);
  const double u2 = UniformDouble();
  const double radius = std::sqrt(-2.0 * std::log(u1));
  const double angle = 2.0 * M_PI * u2;
  spare_ = radius * std::sin(angle);
  has_spare_ = true;
  return radius * std::cos(angle);
}

std::vector<int64_t> SampleDistinct(int64_t n, int64_t count, uint64_t seed) {
  SplitMix64 rng(seed);
  absl::flat_hash_set<int64_t> chosen;
  chosen.reserve(count);
  std::vector<int64_t> out;
  out.reserve(count);
  for (int64_t j = n - count; j < n; ++j) {
    const int64_t t = static_cast<int64_t>(rng.UniformBelow(static_cast<uint64_t>(j) + 1));
    const int64_t pick = chosen.insert(t).second ? t : j;
    if (pick == j) chosen.insert(j);
    out.push_back(pick);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace rcknn::core
