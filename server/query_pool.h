// The server's one tbb::task_arena and the fair scheduler in front of it.
//
// Every Search batch in flight is a job split into slices of whole queries (one slice up to a
// few thousand queries); worker tasks on the arena take slices round robin across jobs. Each
// slice is one core::KnnIndex::Search call, whose own parallel loops spread it over every thread
// of the arena by work stealing, so answers are those of the core library and a large batch uses
// all workers. A new batch enqueues its own worker task, which the arena runs as soon as any
// thread finishes a piece of the work in progress (a chunk of core's loop), so a small batch
// is not queued behind a large one. Index builds run on the same arena (Run).
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
  explicit QueryPool(int threads);
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

  // Queries per slice for a batch of `num_queries` on `threads` workers.
  static int64_t SliceQueries(int64_t num_queries, int threads);

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
  static void RunSlice(Job& job, int64_t slice, core::TraversalStats& stats,
                       absl::Status& status);

  const int threads_;
  tbb::global_control parallelism_;
  tbb::task_arena arena_;
  const std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_QUERY_POOL_H_
