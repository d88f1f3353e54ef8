// --max_memory_bytes: one budget for everything large the server holds (uploaded points, indexes
// and their builds, search answers), reserved before it is allocated.
//
// A MemoryReservation is a movable handle on some bytes of the budget, returned to it when the
// handle is destroyed. Reserve() refuses with RESOURCE_EXHAUSTED when the bytes would not fit;
// Resize() of an existing reservation never refuses (it records what was actually allocated,
// which an estimate may have missed). Thread-safe.
#ifndef RCKNN_SERVER_MEMORY_BUDGET_H_
#define RCKNN_SERVER_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rcknn::server {

class MemoryBudget;

class MemoryReservation {
 public:
  MemoryReservation() = default;
  ~MemoryReservation() { Release(); }
  MemoryReservation(MemoryReservation&& other) noexcept { *this = std::move(other); }
  MemoryReservation& operator=(MemoryReservation&& other) noexcept;
  MemoryReservation(const MemoryReservation&) = delete;
  MemoryReservation& operator=(const MemoryReservation&) = delete;

  int64_t bytes() const { return bytes_; }
  // Sets the reservation to `bytes`, whatever the budget holds.
  void Resize(int64_t bytes);
  // Takes over `other`'s bytes (of the same budget).
  void Absorb(MemoryReservation other);
  void Release();

 private:
  friend class MemoryBudget;
  MemoryBudget* budget_ = nullptr;
  int64_t bytes_ = 0;
};

class MemoryBudget {
 public:
  // `limit` bytes in all (> 0).
  explicit MemoryBudget(int64_t limit) : limit_(limit) {}

  // `bytes` more, for `what` (named in the error): RESOURCE_EXHAUSTED naming --max_memory_bytes
  // if they do not fit.
  absl::StatusOr<MemoryReservation> Reserve(int64_t bytes, absl::string_view what);
  // Grows `reservation` by `bytes` under the same rule (on error it is unchanged).
  absl::Status Grow(MemoryReservation& reservation, int64_t bytes, absl::string_view what);

  int64_t limit() const { return limit_; }
  int64_t used() const { return used_.load(); }

  // Called (at most once per Reserve or Grow) when bytes would not fit, before they are refused:
  // gives back memory held only for reuse (core::ArrayCache's kept arrays, whose reservation
  // shrinks meanwhile), then the request is tried again. Set it before the budget is shared.
  void SetReclaimer(std::function<void()> reclaim) { reclaim_ = std::move(reclaim); }

 private:
  friend class MemoryReservation;
  const int64_t limit_;
  std::atomic<int64_t> used_{0};
  std::function<void()> reclaim_;
};

// A byte count for people and for grep: "19.2 GiB (20615843840 bytes)" (binary units, one
// decimal); below 1 KiB just "512 bytes".
std::string FormatBytes(int64_t bytes);

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_MEMORY_BUDGET_H_
