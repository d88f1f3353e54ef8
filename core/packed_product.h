// The dot products of every row of one matrix with every row of another (C = A B^T), with the
// operands packed into register-sized panels and a register-blocked kernel (the GotoBLAS/BLIS
// structure: Goto and van de Geijn, ACM TOMS 2008). It is the production scan's matrix product:
// the scan's shapes (a block of up to 256 queries against a tile of 512 candidates, depth m of a
// few hundred) run markedly faster here than through Eigen's general product, and its rounding
// is fixed per pair, which Eigen's (whose blocking depends on the shapes) is not.
#ifndef RCKNN_CORE_PACKED_PRODUCT_H_
#define RCKNN_CORE_PACKED_PRODUCT_H_

#include <cstdint>

#include "absl/functional/function_ref.h"

namespace rcknn::core {

// out[i * ldo + j] = sum over t < depth of a[i * lda + t] * b[j * ldb + t], for i < na, j < nb.
// Rows are read in place (lda, ldb >= depth); out must not overlap a or b.
//
// Rounding: each entry is summed in a fixed order that depends only on `depth` (chunks of the
// depth, each a fused multiply-add chain from zero where the target has FMA, added in order), so
// its bits depend only on its two rows: never on na, nb, the entry's position, the other rows or
// the thread. That order is not CanonicalDot's: a caller that needs canonical distances
// re-evaluates them (docs/design.md section 3). The error is within the usual bound of a
// length-depth dot product (depth ulp of the sum of the absolute products).
//
// Thread-safe; uses thread-local scratch of about (na + nb) * depth doubles.
void PackedProducts(const double* a, int64_t lda, int64_t na, const double* b, int64_t ldb,
                    int64_t nb, int64_t depth, double* out, int64_t ldo);
// The same, calling rows_done(first, end) as soon as rows [first, end) of out are final (in
// ascending groups of a few dozen rows that together cover [0, na)), while those rows are still
// in cache: what the caller does with each row right after the product costs less there.
void PackedProducts(const double* a, int64_t lda, int64_t na, const double* b, int64_t ldb,
                    int64_t nb, int64_t depth, double* out, int64_t ldo,
                    absl::FunctionRef<void(int64_t first, int64_t end)> rows_done);
// The same with B's rows anywhere in memory: row j at b_rows[j] (a gather that costs no copy
// beyond the packing), with the same bits as the contiguous form.
void PackedProducts(const double* a, int64_t lda, int64_t na, const double* const* b_rows,
                    int64_t nb, int64_t depth, double* out, int64_t ldo,
                    absl::FunctionRef<void(int64_t first, int64_t end)> rows_done);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_PACKED_PRODUCT_H_
