#include "server/memory_budget.h"

#include <iterator>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace rcknn::server {

MemoryReservation& MemoryReservation::operator=(MemoryReservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void MemoryReservation::Resize(int64_t bytes) {
  if (budget_ == nullptr) return;
  budget_->used_.fetch_add(bytes - bytes_);
  bytes_ = bytes;
}

void MemoryReservation::Absorb(MemoryReservation other) {
  if (other.budget_ == nullptr) return;
  if (budget_ == nullptr) budget_ = other.budget_;
  bytes_ += std::exchange(other.bytes_, 0);
  other.budget_ = nullptr;
}

void MemoryReservation::Release() {
  if (budget_ != nullptr) budget_->used_.fetch_sub(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

absl::StatusOr<MemoryReservation> MemoryBudget::Reserve(int64_t bytes, absl::string_view what) {
  MemoryReservation reservation;
  reservation.budget_ = this;
  if (absl::Status status = Grow(reservation, bytes, what); !status.ok()) {
    reservation.budget_ = nullptr;
    return status;
  }
  return reservation;
}

absl::Status MemoryBudget::Grow(MemoryReservation& reservation, int64_t bytes,
                                absl::string_view what) {
  if (reservation.budget_ == nullptr) reservation.budget_ = this;
  int64_t used = used_.load();
  bool reclaimed = false;
  for (;;) {
    if (bytes > limit_ - used && !reclaimed && reclaim_) {
      reclaimed = true;
      reclaim_();
      used = used_.load();
      continue;
    }
    if (bytes > limit_ - used) {
      return absl::ResourceExhaustedError(absl::StrCat(
          what, " needs ", bytes, " bytes; the server holds ", used, " of --max_memory_bytes = ",
          limit_, "; delete an index or raise the limit"));
    }
    if (used_.compare_exchange_weak(used, used + bytes)) break;
  }
  reservation.bytes_ += bytes;
  return absl::OkStatus();
}

std::string FormatBytes(int64_t bytes) {
  constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " bytes");
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit + 1 < static_cast<int>(std::size(kUnits))) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s (%d bytes)", value, kUnits[unit], bytes);
}

}  // namespace rcknn::server
