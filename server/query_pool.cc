#include "server/query_pool.h"

#include <algorithm>
#include <atomic>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/cancellation.h"

namespace rcknn::server {
namespace {

// A worker task returns to the arena's scheduler once it has worked this long (checked between
// slices) and enqueues its successor, so that a build or a nested parallel loop whose thread
// picked the task up while waiting gets its thread back.
constexpr absl::Duration kWorkerTurn = absl::Milliseconds(10);

}  // namespace

struct QueryPool::Job {
  SearchJob spec;
  SearchDone done;
  int dimension = 0;
  int64_t num_queries = 0;
  int64_t slice_queries = 0;
  int64_t num_slices = 0;
  int64_t first_slice_queries = 0;  // counted in State::queued_queries until it starts
  std::shared_ptr<core::Cancellation> cancellation;
  std::atomic<bool> failed{false};  // a slice failed: the others stop

  // Guarded by the pool's State::mutex.
  int64_t next_slice = 0;
  int64_t finished_slices = 0;
  absl::Status status;
  core::TraversalStats stats;
};

int64_t QueryPool::DefaultMaxQueuedQueries(int threads, int64_t slice_queries) {
  return kQueuedSlicesPerThread * std::max(1, threads) * std::max<int64_t>(1, slice_queries);
}

QueryPool::QueryPool(int threads, int64_t slice_queries, int64_t max_queued_queries)
    : threads_(std::max(1, threads)),
      slice_queries_(std::max<int64_t>(1, slice_queries)),
      max_queued_queries_(max_queued_queries > 0
                              ? max_queued_queries
                              : DefaultMaxQueuedQueries(threads_, slice_queries_)),
      parallelism_(tbb::global_control::max_allowed_parallelism,
                   std::max<size_t>(static_cast<size_t>(threads_) + 1,
                                    tbb::global_control::active_value(
                                        tbb::global_control::max_allowed_parallelism))),
      // No slot is reserved for external threads: none ever joins.
      arena_(threads_, /*reserved_for_masters=*/0) {}

QueryPool::~QueryPool() {
  // Not by waiting inside the arena: a build waiting there for its own subtasks could pick up
  // that wait and wait for itself.
  absl::MutexLock lock(&state_->mutex);
  State& state = *state_;
  auto idle = [&state]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state.mutex) {
    return state.pending_runs == 0 && state.running_workers == 0;
  };
  state_->mutex.Await(absl::Condition(&idle));
}

void QueryPool::Run(std::function<void()> work) {
  {
    absl::MutexLock lock(&state_->mutex);
    ++state_->pending_runs;
  }
  arena_.enqueue([state = state_, work = std::move(work)] {
    work();
    absl::MutexLock lock(&state->mutex);
    --state->pending_runs;
  });
}

absl::StatusOr<QueryPool::CancelHandle> QueryPool::Submit(SearchJob spec, SearchDone done) {
  auto job = std::make_shared<Job>();
  job->dimension = spec.index->dimension();
  job->num_queries = core::NumQueries(spec.queries, job->dimension);
  job->slice_queries = slice_queries_;
  job->num_slices = (job->num_queries + job->slice_queries - 1) / job->slice_queries;
  job->first_slice_queries = std::min(job->num_queries, job->slice_queries);
  job->cancellation = std::make_shared<core::Cancellation>(spec.deadline);
  job->spec = std::move(spec);
  job->done = std::move(done);
  CancelHandle handle(job->cancellation);
  absl::MutexLock lock(&state_->mutex);
  if (state_->queued_queries > 0 &&
      state_->queued_queries + job->first_slice_queries > max_queued_queries_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server is overloaded: ", state_->queued_queries,
        " queries are waiting to start, the limit is --max_queued_queries = ",
        max_queued_queries_, "; retry later, or with fewer clients"));
  }
  ++state_->jobs_in_flight;
  if (job->num_slices == 0) {
    // Nothing to search: complete on the pool like any other batch, never on this thread.
    ++state_->pending_runs;
    arena_.enqueue([state = state_, job] {
      job->done(absl::OkStatus(), job->stats);
      absl::MutexLock lock(&state->mutex);
      --state->jobs_in_flight;
      --state->pending_runs;
    });
    return handle;
  }
  state_->queued_queries += job->first_slice_queries;
  state_->queue.push_back(job);
  // A worker task per slice, up to the arena's threads. Not capped by the tasks already
  // running: those may be deep in another batch's slices, and this batch's own task can then
  // start on a thread that finishes a piece of work (the arena serves enqueued tasks before
  // it steals).
  for (int64_t s = 0; s < std::min<int64_t>(job->num_slices, threads_); ++s) {
    StartWorkerLocked(state_, &arena_);
  }
  return handle;
}

int64_t QueryPool::queued_queries() const {
  absl::MutexLock lock(&state_->mutex);
  return state_->queued_queries;
}

int64_t QueryPool::jobs_in_flight() const {
  absl::MutexLock lock(&state_->mutex);
  return state_->jobs_in_flight;
}

void QueryPool::StartWorkerLocked(const std::shared_ptr<State>& state, tbb::task_arena* arena) {
  ++state->running_workers;
  arena->enqueue([state, arena] { WorkerLoop(state, arena); });
}

void QueryPool::WorkerLoop(const std::shared_ptr<State>& state, tbb::task_arena* arena) {
  const absl::Time turn_end = absl::Now() + kWorkerTurn;
  for (;;) {
    std::shared_ptr<Job> job;
    int64_t slice = 0;
    {
      absl::MutexLock lock(&state->mutex);
      if (state->queue.empty()) {
        --state->running_workers;
        return;
      }
      if (absl::Now() >= turn_end) {
        // Hand the turn back to the scheduler; the successor keeps this worker's place, so the
        // pool (and its arena) cannot go away in between.
        --state->running_workers;
        StartWorkerLocked(state, arena);
        return;
      }
      // A batch that has not started yet goes first (a small batch is then never queued behind
      // the slices of a large one); otherwise round robin.
      auto it = std::find_if(state->queue.begin(), state->queue.end(),
                             [](const std::shared_ptr<Job>& j) { return j->next_slice == 0; });
      if (it == state->queue.end()) it = state->queue.begin();
      job = *it;
      state->queue.erase(it);
      if (job->next_slice == 0) state->queued_queries -= job->first_slice_queries;
      slice = job->next_slice++;
      // A job with slices left goes to the back of the line.
      if (job->next_slice < job->num_slices) state->queue.push_back(job);
    }
    core::TraversalStats slice_stats;
    absl::Status slice_status;
    RunSlice(*job, slice, slice_stats, slice_status);
    bool last = false;
    {
      absl::MutexLock lock(&state->mutex);
      if (!slice_status.ok() && job->status.ok()) {
        job->status = std::move(slice_status);
        job->failed.store(true);
      }
      job->stats.Merge(slice_stats);
      last = ++job->finished_slices == job->num_slices;
    }
    if (last) {
      // Outside the lock: the callback may submit the next batch of its stream. This worker
      // still counts as running, so the pool outlives the callback.
      job->done(job->status, job->stats);
      absl::MutexLock lock(&state->mutex);
      --state->jobs_in_flight;
    }
  }
}

void QueryPool::RunSlice(Job& job, int64_t slice, core::TraversalStats& stats,
                         absl::Status& status) {
  if (job.failed.load()) return;  // the job's first error is already recorded
  status = job.cancellation->Check();
  if (!status.ok()) return;
  const int64_t first = slice * job.slice_queries;
  const int64_t num = std::min(job.slice_queries, job.num_queries - first);
  core::QueryBatch part;
  const SearchJob& spec = job.spec;
  if (spec.queries.by_id()) {
    part.ids = spec.queries.ids.subspan(first, num);
  } else {
    part.points = spec.queries.points.subspan(first * job.dimension, num * job.dimension);
    if (!spec.queries.id_bounds.empty()) {
      part.id_bounds = spec.queries.id_bounds.subspan(first, num);
    }
  }
  const int64_t k = spec.options.k;
  absl::Span<int64_t> evaluations;
  if (!spec.per_query_evaluations.empty()) {
    evaluations = spec.per_query_evaluations.subspan(first, num);
  }
  // Already inside the arena: core's parallel loops nest here, and idle workers steal them.
  try {
    status = spec.index->Search(part, spec.options, /*arena=*/nullptr, job.cancellation.get(),
                                spec.out_ids + first * k, spec.out_distances + first * k, &stats,
                                evaluations);
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError("the search ran out of memory");
  }
}

}  // namespace rcknn::server
