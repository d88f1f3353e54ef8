#include "core/packed_product.h"

#include <algorithm>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace rcknn::core {
namespace {

// A kernel call multiplies a kKc x kMr panel of A by a kKc x kNr panel of B into a kMr x kNr
// block of C held in 12 vector registers (6 rows x 2 vectors of 4), leaving 4 of AVX2's 16 for
// the operands. kKc bounds the panels to 12 KB and 16 KB, so B's panel stays in the 32 KB L1
// while the kMc rows of A (a 144 KB block) stream from L2 against every panel of B.
constexpr int64_t kMr = 6;
constexpr int64_t kNr = 8;
constexpr int64_t kKc = 256;
constexpr int64_t kMc = 72;

struct PackScratch {
  std::vector<double> a;
  std::vector<double> b;
  alignas(32) double edge[kMr * kNr];
};

PackScratch& Scratch() {
  thread_local PackScratch scratch;
  return scratch;
}

// Copies columns [k0, k0 + kc) of the rows row_of(0), ..., row_of(rows - 1) into panels of
// kPanel rows, each stored k-major (for every k, the panel's kPanel values), rows past the end
// as zeros. The writes are sequential, the reads kPanel sequential streams.
template <int64_t kPanel, typename RowOf>
void Pack(const RowOf& row_of, int64_t rows, int64_t k0, int64_t kc, double* out) {
  for (int64_t p = 0; p < rows; p += kPanel) {
    const int64_t valid = std::min(kPanel, rows - p);
    const double* src[kPanel];
    for (int64_t i = 0; i < valid; ++i) src[i] = row_of(p + i) + k0;
    if (valid == kPanel) {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < kPanel; ++i) out[k * kPanel + i] = src[i][k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < kPanel; ++i) out[k * kPanel + i] = i < valid ? src[i][k] : 0.0;
      }
    }
    out += kc * kPanel;
  }
}

// c[i * ldc + j] (+)= sum over k < kc of a[k * kMr + i] * b[k * kNr + j], i < kMr, j < kNr; with
// `accumulate` the chunk's sum is added to what c holds.
#if defined(__AVX2__) && defined(__FMA__)
void Kernel(int64_t kc, const double* __restrict a, const double* __restrict b,
            double* __restrict c, int64_t ldc, bool accumulate) {
  __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256d c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < kc; ++k) {
    const __m256d b0 = _mm256_loadu_pd(b);
    const __m256d b1 = _mm256_loadu_pd(b + 4);
    __m256d t = _mm256_broadcast_sd(a);
    c00 = _mm256_fmadd_pd(t, b0, c00);
    c01 = _mm256_fmadd_pd(t, b1, c01);
    t = _mm256_broadcast_sd(a + 1);
    c10 = _mm256_fmadd_pd(t, b0, c10);
    c11 = _mm256_fmadd_pd(t, b1, c11);
    t = _mm256_broadcast_sd(a + 2);
    c20 = _mm256_fmadd_pd(t, b0, c20);
    c21 = _mm256_fmadd_pd(t, b1, c21);
    t = _mm256_broadcast_sd(a + 3);
    c30 = _mm256_fmadd_pd(t, b0, c30);
    c31 = _mm256_fmadd_pd(t, b1, c31);
    t = _mm256_broadcast_sd(a + 4);
    c40 = _mm256_fmadd_pd(t, b0, c40);
    c41 = _mm256_fmadd_pd(t, b1, c41);
    t = _mm256_broadcast_sd(a + 5);
    c50 = _mm256_fmadd_pd(t, b0, c50);
    c51 = _mm256_fmadd_pd(t, b1, c51);
    a += kMr;
    b += kNr;
  }
  auto store = [&](int64_t i, __m256d lo, __m256d hi) {
    double* row = c + i * ldc;
    if (accumulate) {
      lo = _mm256_add_pd(lo, _mm256_loadu_pd(row));
      hi = _mm256_add_pd(hi, _mm256_loadu_pd(row + 4));
    }
    _mm256_storeu_pd(row, lo);
    _mm256_storeu_pd(row + 4, hi);
  };
  store(0, c00, c01);
  store(1, c10, c11);
  store(2, c20, c21);
  store(3, c30, c31);
  store(4, c40, c41);
  store(5, c50, c51);
}
#else
void Kernel(int64_t kc, const double* __restrict a, const double* __restrict b,
            double* __restrict c, int64_t ldc, bool accumulate) {
  double sums[kMr][kNr] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t i = 0; i < kMr; ++i) {
      for (int64_t j = 0; j < kNr; ++j) sums[i][j] += a[k * kMr + i] * b[k * kNr + j];
    }
  }
  for (int64_t i = 0; i < kMr; ++i) {
    for (int64_t j = 0; j < kNr; ++j) {
      c[i * ldc + j] = accumulate ? sums[i][j] + c[i * ldc + j] : sums[i][j];
    }
  }
}
#endif

template <typename ARow, typename BRow>
void Products(const ARow& a_row, int64_t na, const BRow& b_row, int64_t nb, int64_t depth,
              double* out, int64_t ldo,
              absl::FunctionRef<void(int64_t first, int64_t end)> rows_done) {
  if (na <= 0) return;
  if (nb <= 0 || depth <= 0) {
    for (int64_t i = 0; i < na; ++i) std::fill(out + i * ldo, out + i * ldo + nb, 0.0);
    rows_done(0, na);
    return;
  }
  PackScratch& scratch = Scratch();
  const int64_t na_padded = (na + kMr - 1) / kMr * kMr;
  const int64_t nb_padded = (nb + kNr - 1) / kNr * kNr;
  scratch.a.resize(na_padded * depth);
  scratch.b.resize(nb_padded * depth);
  // Chunk k0 of the depth starts at k0 * padded rows in each packed buffer.
  for (int64_t k0 = 0; k0 < depth; k0 += kKc) {
    const int64_t kc = std::min(kKc, depth - k0);
    Pack<kMr>(a_row, na, k0, kc, scratch.a.data() + k0 * na_padded);
    Pack<kNr>(b_row, nb, k0, kc, scratch.b.data() + k0 * nb_padded);
  }
  double* const edge = scratch.edge;
  for (int64_t ic = 0; ic < na_padded; ic += kMc) {
    const int64_t ic_end = std::min(ic + kMc, na_padded);
    for (int64_t k0 = 0; k0 < depth; k0 += kKc) {
      const int64_t kc = std::min(kKc, depth - k0);
      const bool accumulate = k0 > 0;
      const double* a_chunk = scratch.a.data() + k0 * na_padded;
      const double* b_chunk = scratch.b.data() + k0 * nb_padded;
      for (int64_t jr = 0; jr < nb_padded; jr += kNr) {
        const double* b_panel = b_chunk + jr * kc;
        const int64_t cols = std::min(kNr, nb - jr);
        for (int64_t ir = ic; ir < ic_end; ir += kMr) {
          const double* a_panel = a_chunk + ir * kc;
          const int64_t rows = std::min(kMr, na - ir);
          double* c = out + ir * ldo + jr;
          if (rows == kMr && cols == kNr) {
            Kernel(kc, a_panel, b_panel, c, ldo, accumulate);
            continue;
          }
          // A block at the edge of C goes through a full-size buffer: the same operations, so
          // the same bits as inside.
          if (accumulate) {
            for (int64_t i = 0; i < rows; ++i) std::copy_n(c + i * ldo, cols, edge + i * kNr);
          }
          Kernel(kc, a_panel, b_panel, edge, kNr, accumulate);
          for (int64_t i = 0; i < rows; ++i) std::copy_n(edge + i * kNr, cols, c + i * ldo);
        }
      }
    }
    rows_done(ic, std::min(ic_end, na));
  }
}

}  // namespace

void PackedProducts(const double* a, int64_t lda, int64_t na, const double* b, int64_t ldb,
                    int64_t nb, int64_t depth, double* out, int64_t ldo) {
  PackedProducts(a, lda, na, b, ldb, nb, depth, out, ldo, [](int64_t, int64_t) {});
}

void PackedProducts(const double* a, int64_t lda, int64_t na, const double* b, int64_t ldb,
                    int64_t nb, int64_t depth, double* out, int64_t ldo,
                    absl::FunctionRef<void(int64_t first, int64_t end)> rows_done) {
  Products([&](int64_t i) { return a + i * lda; }, na, [&](int64_t j) { return b + j * ldb; },
           nb, depth, out, ldo, rows_done);
}

void PackedProducts(const double* a, int64_t lda, int64_t na, const double* const* b_rows,
                    int64_t nb, int64_t depth, double* out, int64_t ldo,
                    absl::FunctionRef<void(int64_t first, int64_t end)> rows_done) {
  Products([&](int64_t i) { return a + i * lda; }, na, [&](int64_t j) { return b_rows[j]; }, nb,
           depth, out, ldo, rows_done);
}

}  // namespace rcknn::core
