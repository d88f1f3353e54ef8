// A cancellation object passed into long work (builds, search batches) and polled there.
// Never global: each batch gets the one its caller owns.
#ifndef RCKNN_CORE_CANCELLATION_H_
#define RCKNN_CORE_CANCELLATION_H_

#include <atomic>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace rcknn::core {

// Thread-safe. Cancel() may be called from any thread while workers poll Check().
class Cancellation {
 public:
  Cancellation() = default;
  explicit Cancellation(absl::Time deadline) : deadline_(deadline) {}
  Cancellation(const Cancellation&) = delete;
  Cancellation& operator=(const Cancellation&) = delete;

  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }

  // CANCELLED after Cancel(), DEADLINE_EXCEEDED once the deadline has passed, else OK.
  absl::Status Check() const {
    if (cancelled_.load(std::memory_order_relaxed)) {
      return absl::CancelledError("the operation was cancelled");
    }
    if (deadline_ != absl::InfiniteFuture() && absl::Now() >= deadline_) {
      return absl::DeadlineExceededError("the deadline expired before the work finished");
    }
    return absl::OkStatus();
  }

 private:
  std::atomic<bool> cancelled_{false};
  absl::Time deadline_ = absl::InfiniteFuture();
};

// Check() on a possibly null cancellation.
inline absl::Status CheckCancelled(const Cancellation* cancellation) {
  return cancellation == nullptr ? absl::OkStatus() : cancellation->Check();
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_CANCELLATION_H_
