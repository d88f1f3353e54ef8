// Exact k-NN by evaluating every qualifying candidate, in blocks of matrix products.
// The test oracle, and the path the tree search falls back to where bounds stop pruning.
#ifndef RCKNN_CORE_BRUTE_FORCE_KNN_H_
#define RCKNN_CORE_BRUTE_FORCE_KNN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/candidate_set.h"
#include "core/cancellation.h"
#include "core/knn_query.h"
#include "core/metric_space.h"
#include "core/traversal_stats.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

// Answers `queries` against every point of `space`, writing num_queries x k rows to `out_ids`
// and `out_distances` (caller-owned). Runs on `arena` if given. Results do not depend on the
// number of threads. Returns the ValidateQuery error for bad input, the error of
// space.Prepare for out-of-sample points it cannot handle, or CANCELLED / DEADLINE_EXCEEDED
// when `cancellation` fires (outputs are then unspecified). `stats` (optional) is added to.
absl::Status BruteForceKnn(const MetricSpace& space, const QueryBatch& queries,
                           const KnnOptions& options, tbb::task_arena* arena,
                           const Cancellation* cancellation, int64_t* out_ids,
                           double* out_distances, TraversalStats* stats = nullptr);

// Rows for queries[list[0]], queries[list[1]], ...: gathered stored points for queries by id,
// prepared out-of-sample points otherwise (with space.Prepare's errors).
absl::StatusOr<PointRows> QueryRows(const MetricSpace& space, const QueryBatch& queries,
                                    absl::Span<const int64_t> list);

// Answers queries[query_list[i]] for every i by the blocked scan, in parallel on the current
// arena (call inside task_arena::execute to choose one). The caller has validated `queries`.
// Each query's answer is its candidates re-evaluated canonically (CandidateSet), so it does not
// depend on the other queries or the thread count. `per_query_evaluations`, if non-empty, has one entry per
// query of `queries`; the scanned ones get their evaluation counts added.
absl::Status ScanQueries(const MetricSpace& space, const QueryBatch& queries,
                         absl::Span<const int64_t> query_list, const KnnOptions& options,
                         const Cancellation* cancellation, int64_t* out_ids,
                         double* out_distances, TraversalStats& stats,
                         absl::Span<int64_t> per_query_evaluations = {});

// The scan itself, on the calling thread: offers every qualifying stored point of the part
// [begin, end) of [0, size()) to sets[i], the candidates of rows[i], by matrix products over
// blocks. sets.size() == rows.size(). The part is of ids where only a prefix of the ids
// qualifies (predecessor mode by id, `id_bounds`) and the space has a layout (those ids are
// gathered), of storage positions otherwise; either way the parts [0, a), [a, b), ... of one
// scan cover every point once. `id_bounds`, if not empty, has one entry per row: only ids below it
// qualify for that row (QueryBatch::id_bounds).
void BruteForceScan(const MetricSpace& space, const PointRows& rows, const KnnOptions& options,
                    int64_t begin, int64_t end, std::vector<CandidateSet>& sets,
                    TraversalStats& stats, absl::Span<const int64_t> id_bounds = {});

}  // namespace rcknn::core

#endif  // RCKNN_CORE_BRUTE_FORCE_KNN_H_
