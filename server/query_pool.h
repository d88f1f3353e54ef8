// The server's one tbb::task_arena and the fair scheduler in front of it.
//
// Every Search batch in flight is a job cut into slices of a few hundred queries; worker tasks on
// the arena take slices across jobs, a batch that has not started yet first, then round robin.
// Each slice is one core::KnnIndex::Search call, whose own parallel loops spread it over idle
// threads by work stealing, so answers are those of the core library and a large batch uses
// every worker. A worker finishes its slice before it takes another, so a small batch waits
// behind a large one for about one slice at most. Index builds run on the same arena (Run).
//
// Submit is asynchronous: it queues the batch and returns a cancel handle at once; the worker
// that finishes the batch's last slice calls its completion callback. No thread waits for the
// pool. Admission control: the work waiting to start (see Submit) is bounded, and a batch that
// would exceed the bound is refused at once (RESOURCE_EXHAUSTED) rather than queued.
// Thread-safe.
#ifndef RCKNN_SERVER_QUERY_POOL_H_
#define RCKNN_SERVER_QUERY_POOL_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/knn_index.h"
#include "core/knn_query.h"
#include "core/cancellation.h"
#include "core/traversal_stats.h"
#include "tbb/global_control.h"
#include "tbb/task_arena.h"

namespace rcknn::server {

class QueryPool {
 public:
  // `threads` >= 1 workers. Raises oneTBB's process-wide worker limit to at least that many for
  // the pool's lifetime (by default oneTBB allows one worker fewer than the cores, assuming the
  // caller's thread joins; here no caller joins).
  // Batches are cut into slices of `slice_queries` queries, each one core call. A worker
  // finishes its slice before it serves a newly arrived batch, so the size bounds how long a
  // small batch waits behind a large one (about one slice on one thread); and core answers a
  // batch faster per query the more queries it scans together (on gold, k = 50, 2 threads:
  // slices of 512 run at about 97% of the speed of one 1,024-query call, 256 at 95%, 128 at
  // 87%). Use a multiple of core's query chunk (32).
  // `max_queued_queries` (>= 0; 0: DefaultMaxQueuedQueries) bounds the queries waiting to start
  // (see Submit).
  QueryPool(int threads, int64_t slice_queries, int64_t max_queued_queries = 0);
  // Waits for every slice, every completion callback and every Run() task; builds must have
  // been cancelled or finished.
  // Must not be called from a task of the pool.
  ~QueryPool();
  QueryPool(const QueryPool&) = delete;
  QueryPool& operator=(const QueryPool&) = delete;

  int threads() const { return threads_; }
  tbb::task_arena* arena() { return &arena_; }

  // Runs `work` on the arena and returns at once. `work` must not throw.
  void Run(std::function<void()> work);

  // Cancels a submitted batch: workers stop it at core's next cancellation check, and its
  // callback gets CANCELLED. Copyable; outlives the batch harmlessly; Cancel after the end does
  // nothing. A default-constructed handle cancels nothing.
  class CancelHandle {
   public:
    CancelHandle() = default;
    void Cancel() const {
      if (cancellation_ != nullptr) cancellation_->Cancel();
    }

   private:
    friend class QueryPool;
    explicit CancelHandle(std::shared_ptr<core::Cancellation> cancellation)
        : cancellation_(std::move(cancellation)) {}
    std::shared_ptr<core::Cancellation> cancellation_;
  };

  struct SearchJob {
    // Kept alive until the callback has run.
    std::shared_ptr<const core::KnnIndex> index;
    core::QueryBatch queries;  // validated; its memory must outlive the callback
    core::KnnOptions options;
    absl::Time deadline = absl::InfiniteFuture();  // DEADLINE_EXCEEDED once it passes
    // num_queries x k rows, written like core does; must outlive the callback.
    int64_t* out_ids = nullptr;
    double* out_distances = nullptr;
    // Empty, or one entry per query (filled with each query's distance evaluations).
    absl::Span<int64_t> per_query_evaluations;
  };
  // Called once per submitted batch, on a pool thread, with the batch's status and its stats
  // merged over its queries (valid when the status is OK). Must not block or throw.
  using SearchDone = std::function<void(absl::Status status, const core::TraversalStats& stats)>;

  // Queues `job` and returns at once; `done` runs when every slice is done or abandoned (the
  // first error of a slice, CANCELLED, DEADLINE_EXCEEDED). Never calls `done` on the caller's
  // thread. RESOURCE_EXHAUSTED (naming --max_queued_queries) without queueing anything if the
  // queries waiting to start would exceed the bound: every batch that has not started counts
  // its first slice (at most slice_queries queries), which is what runs before a newly arrived
  // batch under this scheduler. A batch is always admitted when nothing waits to start, so a
  // bound below one slice still lets batches run one at a time.
  absl::StatusOr<CancelHandle> Submit(SearchJob job, SearchDone done);

  // The default bound on queries waiting to start: kQueuedSlicesPerThread slices per thread.
  static constexpr int64_t kQueuedSlicesPerThread = 2;
  static int64_t DefaultMaxQueuedQueries(int threads, int64_t slice_queries);
  int64_t max_queued_queries() const { return max_queued_queries_; }
  // Queries waiting to start now (the admission measure above).
  int64_t queued_queries() const;

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
    int64_t queued_queries ABSL_GUARDED_BY(mutex) = 0;  // first slices of jobs not started
  };

  static void StartWorkerLocked(const std::shared_ptr<State>& state, tbb::task_arena* arena)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mutex);
  static void WorkerLoop(const std::shared_ptr<State>& state, tbb::task_arena* arena);
  static void RunSlice(Job& job, int64_t slice, core::TraversalStats& stats, absl::Status& status);

  const int threads_;
  const int64_t slice_queries_;
  const int64_t max_queued_queries_;
  tbb::global_control parallelism_;
  tbb::task_arena arena_;
  const std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_QUERY_POOL_H_
