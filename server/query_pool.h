// The server's one tbb::task_arena and the fair scheduler in front of it.
//
// Every Search batch in flight is a job cut into slices of a few hundred queries; worker tasks on
// the arena take slices across jobs, a batch that has not started yet first, then round robin.
// Each slice is one core::KnnIndex::Search call, whose own parallel loops spread it over idle
// threads by work stealing, so answers are those of the core library and a large batch uses
// every worker. A worker finishes its slice before it takes another, so a small batch waits
// behind a large one for about one slice at most. Index builds run on the same arena (Run).
//
// The caller of Search only waits: it polls its cancellation predicate while the workers run.
// Thread-safe.
#ifndef RCKNN_SERVER_QUERY_POOL_H_
#define RCKNN_SERVER_QUERY_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/knn_index.h"
#include "core/knn_query.h"
#include "core/traversal_stats.h"
#include "tbb/global_control.h"
#include "tbb/task_arena.h"

namespace rcknn::server {

class QueryPool {
 public:
  // `threads` >= 1 workers. Raises oneTBB's process-wide worker limit to at least that many for
  // the pool's lifetime (by default oneTBB allows one worker fewer than the cores, assuming the
  // caller's thread joins; here the calling threads only wait).
  // Batches are cut into slices of `slice_queries` queries, each one core call. A worker
  // finishes its slice before it serves a newly arrived batch, so the size bounds how long a
  // small batch waits behind a large one (about one slice on one thread); and core answers a
  // batch faster per query the more queries it scans together (on gold, k = 50, 2 threads:
  // slices of 512 run at about 97% of the speed of one 1,024-query call, 256 at 95%, 128 at
  // 87%). Use a multiple of core's query chunk (32).
  QueryPool(int threads, int64_t slice_queries);
  // Waits for every slice and every Run() task; builds must have been cancelled or finished.
  // Must not be called from a task of the pool.
  ~QueryPool();
  QueryPool(const QueryPool&) = delete;
  QueryPool& operator=(const QueryPool&) = delete;

  int threads() const { return threads_; }
  tbb::task_arena* arena() { return &arena_; }

  // Runs `work` on the arena and returns at once. `work` must not throw.
  void Run(std::function<void()> work);

  // index.Search over `queries` (validated by the caller or by core), writing num_queries x k
  // rows to out_ids / out_distances like core does. Blocks until every slice is done or
  // abandoned; while waiting it calls `is_cancelled` every millisecond or so and, once it
  // returns true, cancels the batch (CANCELLED). The batch also stops at `deadline`
  // (DEADLINE_EXCEEDED). Workers stop a cancelled batch at core's next cancellation check.
  // `stats` (optional) is added to; `per_query_evaluations` is empty or holds one entry per query.
  absl::Status Search(const core::KnnIndex& index, const core::QueryBatch& queries,
                      const core::KnnOptions& options, absl::Time deadline,
                      const std::function<bool()>& is_cancelled, int64_t* out_ids,
                      double* out_distances, core::TraversalStats* stats,
                      absl::Span<int64_t> per_query_evaluations = {});

  // Search batches in flight (waiting for or holding workers).
  int64_t jobs_in_flight() const;

 private:
  struct Job;
  // The scheduler's state. Tasks hold it by shared_ptr: after a task's last update of the counts
  // the destructor may proceed, and the task must touch nothing the pool owns.
  struct State {
    absl::Mutex mutex;
    std::deque<std::shared_ptr<Job>> queue ABSL_GUARDED_BY(mutex);  // jobs with slices left
    int running_workers ABSL_GUARDED_BY(mutex) = 0;
    int64_t pending_runs ABSL_GUARDED_BY(mutex) = 0;
    int64_t jobs_in_flight ABSL_GUARDED_BY(mutex) = 0;
  };

  static void StartWorkerLocked(const std::shared_ptr<State>& state, tbb::task_arena* arena)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mutex);
  static void WorkerLoop(const std::shared_ptr<State>& state, tbb::task_arena* arena);
  static void RunSlice(Job& job, int64_t slice, core::TraversalStats& stats, absl::Status& status);

  const int threads_;
  const int64_t slice_queries_;
  tbb::global_control parallelism_;
  tbb::task_arena arena_;
  const std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_QUERY_POOL_H_
