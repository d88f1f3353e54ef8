// A few threads for work that blocks on the disk (committing an upload's file), so that gRPC's
// callback threads, which must not block, only hand it over. FIFO; thread-safe.
#ifndef RCKNN_SERVER_BLOCKING_EXECUTOR_H_
#define RCKNN_SERVER_BLOCKING_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace rcknn::server {

class BlockingExecutor {
 public:
  explicit BlockingExecutor(int threads);
  // Runs every job already submitted, then joins the threads.
  ~BlockingExecutor();
  BlockingExecutor(const BlockingExecutor&) = delete;
  BlockingExecutor& operator=(const BlockingExecutor&) = delete;

  void Submit(std::function<void()> job);

 private:
  void Work();

  absl::Mutex mutex_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_BLOCKING_EXECUTOR_H_
