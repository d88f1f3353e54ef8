// A small, fully specified pseudo-random generator, so that seeded choices (inducing points,
// generated workloads) are identical across runs, compilers and machines. The standard
// library's distributions are implementation-defined and are not used for that reason.
#ifndef RCKNN_CORE_RANDOM_H_
#define RCKNN_CORE_RANDOM_H_

#include <cstdint>
#include <vector>

namespace rcknn::core {

// SplitMix64 (Steele, Lea & Flood 2014): 64-bit state, passes BigCrush, trivially portable.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform integer in [0, bound), unbiased (rejection sampling). bound > 0.
  uint64_t UniformBelow(uint64_t bound);
  // Uniform double in [0, 1) with 53 random bits.
  double UniformDouble();
  // Standard normal deviate (Box-Muller, both values used in turn).
  double Normal();

 private:
  uint64_t state_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// `count` distinct integers drawn uniformly from [0, n), ascending. Requires count <= n.
// Robert Floyd's algorithm: O(count) draws whatever n is.
std::vector<int64_t> SampleDistinct(int64_t n, int64_t count, uint64_t seed);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_RANDOM_H_
