// PackedProducts against a plain reference (within the rounding bound of a dot product), and
// its rounding contract: an entry's bits depend only on its two rows, never on the shapes, the
// entry's position (inside the register blocks or at their edges) or the other rows.
#include "core/packed_product.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/random.h"
#include "gtest/gtest.h"

namespace rcknn {
namespace {

std::vector<double> RandomValues(int64_t count, uint64_t seed) {
  core::SplitMix64 rng(seed);
  std::vector<double> v(count);
  for (double& x : v) x = rng.Normal();
  return v;
}

TEST(PackedProductTest, MatchesTheDefinitionOnEveryShape) {
  // Depths around the kernel's chunk (256), shapes around its blocks (6 x 8 and 72 rows).
  for (int64_t depth : {1, 3, 17, 255, 256, 257, 600}) {
    for (int64_t na : {1, 5, 6, 7, 73, 150}) {
      for (int64_t nb : {1, 7, 8, 9, 40}) {
        const int64_t lda = depth + 3, ldb = depth + 1, ldo = nb + 2;
        const std::vector<double> a = RandomValues(na * lda, depth * 1000 + na);
        const std::vector<double> b = RandomValues(nb * ldb, depth * 1000 + nb + 500);
        std::vector<double> out(na * ldo, -7.0);
        core::PackedProducts(a.data(), lda, na, b.data(), ldb, nb, depth, out.data(), ldo);
        for (int64_t i = 0; i < na; ++i) {
          for (int64_t j = 0; j < nb; ++j) {
            long double exact = 0.0L, magnitude = 0.0L;
            for (int64_t t = 0; t < depth; ++t) {
              const long double p = static_cast<long double>(a[i * lda + t]) * b[j * ldb + t];
              exact += p;
              magnitude += std::fabs(p);
            }
            const double tol = static_cast<double>(depth + 1) *
                               std::numeric_limits<double>::epsilon() *
                               static_cast<double>(magnitude);
            ASSERT_LE(std::fabs(out[i * ldo + j] - static_cast<double>(exact)), tol)
                << "depth " << depth << " na " << na << " nb " << nb << " entry " << i << ","
                << j;
          }
          // Columns past nb are not written.
          for (int64_t j = nb; j < ldo; ++j) ASSERT_EQ(out[i * ldo + j], -7.0);
        }
      }
    }
  }
}

TEST(PackedProductTest, BitsDependOnlyOnTheTwoRows) {
  const int64_t depth = 300;  // two chunks of the depth
  const int64_t na = 80, nb = 70;
  const std::vector<double> a = RandomValues(na * depth, 1);
  const std::vector<double> b = RandomValues(nb * depth, 2);
  std::vector<double> full(na * nb);
  core::PackedProducts(a.data(), depth, na, b.data(), depth, nb, depth, full.data(), nb);
  // Every sub-block, at offsets that move each pair between the inside and the edges of the
  // register blocks, and single pairs: the same bits.
  for (int64_t a0 : {0, 1, 5, 6, 71, 79}) {
    for (int64_t b0 : {0, 3, 8, 63, 69}) {
      for (int64_t sa : {1, 6, 7, 9}) {
        for (int64_t sb : {1, 8, 11}) {
          const int64_t ra = std::min(sa, na - a0), rb = std::min(sb, nb - b0);
          std::vector<double> part(ra * rb);
          core::PackedProducts(a.data() + a0 * depth, depth, ra, b.data() + b0 * depth, depth,
                               rb, depth, part.data(), rb);
          for (int64_t i = 0; i < ra; ++i) {
            for (int64_t j = 0; j < rb; ++j) {
              ASSERT_EQ(part[i * rb + j], full[(a0 + i) * nb + b0 + j])
                  << "block at " << a0 << "," << b0 << " entry " << i << "," << j;
            }
          }
        }
      }
    }
  }
}

TEST(PackedProductTest, ScatteredRowsAndReadyGroups) {
  const int64_t depth = 260, na = 150, nb = 37;
  const std::vector<double> a = RandomValues(na * depth, 3);
  const std::vector<double> b = RandomValues(nb * depth, 4);
  std::vector<double> contiguous(na * nb);
  core::PackedProducts(a.data(), depth, na, b.data(), depth, nb, depth, contiguous.data(), nb);
  // B's rows in reverse order, through pointers; every row handed over once, in ascending
  // groups, each already final when handed over.
  std::vector<const double*> rows(nb);
  for (int64_t j = 0; j < nb; ++j) rows[j] = b.data() + (nb - 1 - j) * depth;
  std::vector<double> scattered(na * nb, -1.0);
  int64_t next = 0;
  core::PackedProducts(a.data(), depth, na, rows.data(), nb, depth, scattered.data(), nb,
                       [&](int64_t first, int64_t end) {
                         ASSERT_EQ(first, next);
                         ASSERT_GT(end, first);
                         for (int64_t i = first; i < end; ++i) {
                           for (int64_t j = 0; j < nb; ++j) {
                             ASSERT_EQ(scattered[i * nb + j], contiguous[i * nb + nb - 1 - j])
                                 << "entry " << i << "," << j;
                           }
                         }
                         next = end;
                       });
  EXPECT_EQ(next, na);
}

TEST(PackedProductTest, ZeroDepthGivesZeros) {
  std::vector<double> out(6, 1.0);
  const double a = 1.0, b = 2.0;
  core::PackedProducts(&a, 1, 2, &b, 1, 3, 0, out.data(), 3);
  for (double x : out) EXPECT_EQ(x, 0.0);
}

}  // namespace
}  // namespace rcknn
