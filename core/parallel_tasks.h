// Fallible tasks in parallel: the error-collecting loop every search path runs its batches with.
#ifndef RCKNN_CORE_PARALLEL_TASKS_H_
#define RCKNN_CORE_PARALLEL_TASKS_H_

#include <atomic>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "core/cancellation.h"
#include "tbb/parallel_for.h"

namespace rcknn::core {

// The first error any task reports; later ones are dropped. Thread-safe.
class FirstError {
 public:
  void Set(absl::Status status) {
    absl::MutexLock lock(&mutex_);
    if (status_.ok()) status_ = std::move(status);
    failed_.store(true, std::memory_order_relaxed);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  absl::Status status() const {
    absl::MutexLock lock(&mutex_);
    return status_;
  }

 private:
  mutable absl::Mutex mutex_;
  absl::Status status_;
  std::atomic<bool> failed_{false};
};

// Runs task(i) -> absl::Status for every i in [0, count) with tbb::parallel_for on the current
// arena. Before each task `cancellation` (may be null) is checked; after the first error (a
// task's, or CANCELLED / DEADLINE_EXCEEDED) no further task starts. Returns that error, else OK.
template <typename Task>
absl::Status ParallelTasks(int64_t count, const Cancellation* cancellation, Task&& task) {
  FirstError error;
  tbb::parallel_for(int64_t{0}, count, [&](int64_t i) {
    if (error.failed()) return;
    if (absl::Status status = CheckCancelled(cancellation); !status.ok()) {
      error.Set(std::move(status));
      return;
    }
    if (absl::Status status = task(i); !status.ok()) error.Set(std::move(status));
  });
  return error.status();
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_PARALLEL_TASKS_H_
