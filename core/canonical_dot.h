// A dot product whose rounding depends only on the two vectors and their length: never on where
// the vectors sit in memory (alignment), on how many other pairs are evaluated with them, or on
// the thread. Every answer a search returns is evaluated through it, which is what makes the
// returned distances independent of how a batch is cut (docs/design.md section 3).
#ifndef RCKNN_CORE_CANONICAL_DOT_H_
#define RCKNN_CORE_CANONICAL_DOT_H_

#include <cstdint>
#include <cstring>

namespace rcknn::core {

// Sixteen partial sums in four vectors of four (one fused chain each where the target has FMA),
// combined in a fixed tree; elements past the last multiple of 16 go to the lanes in order.
inline double CanonicalDot(const double* a, const double* b, int64_t m) {
  typedef double Vec4 __attribute__((vector_size(32)));
  Vec4 s0 = {0.0, 0.0, 0.0, 0.0}, s1 = s0, s2 = s0, s3 = s0;
  int64_t t = 0;
  for (; t + 16 <= m; t += 16) {
    Vec4 a0, a1, a2, a3, b0, b1, b2, b3;
    std::memcpy(&a0, a + t, 32);
    std::memcpy(&a1, a + t + 4, 32);
    std::memcpy(&a2, a + t + 8, 32);
    std::memcpy(&a3, a + t + 12, 32);
    std::memcpy(&b0, b + t, 32);
    std::memcpy(&b1, b + t + 4, 32);
    std::memcpy(&b2, b + t + 8, 32);
    std::memcpy(&b3, b + t + 12, 32);
    s0 += a0 * b0;
    s1 += a1 * b1;
    s2 += a2 * b2;
    s3 += a3 * b3;
  }
  double lanes[16];
  std::memcpy(lanes, &s0, 32);
  std::memcpy(lanes + 4, &s1, 32);
  std::memcpy(lanes + 8, &s2, 32);
  std::memcpy(lanes + 12, &s3, 32);
  for (int lane = 0; t < m; ++t, ++lane) lanes[lane] += a[t] * b[t];
  for (int width = 8; width >= 1; width /= 2) {
    for (int lane = 0; lane < width; ++lane) lanes[lane] += lanes[lane + width];
  }
  return lanes[0];
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_CANONICAL_DOT_H_
