// Large arrays whose memory is kept, when they are freed, for the next array of the same size.
//
// Why: a computed-factor index's V (n x m doubles: 2 GB at 10^6 points and m = 256) is written
// once into new memory, and first writes to new memory are page faults. On a virtual machine
// whose host takes freed guest memory back (free page reporting, ballooning), each fault on a
// transparent huge page is also a host fault, and zeroing V's pages can cost more than computing
// V. The GP fitting loop frees an index of the same size as the next one it builds (the
// previous hyperparameters' index), so keeping that memory mapped lets the next V reuse pages
// that are already backed, already huge, and need no zeroing.
//
// A LargeArray takes its memory from ArrayCache::Default(): a kept block of the same size (page
// rounded; up to a quarter larger) if there is one, else new anonymous memory advised for huge
// pages. When it is destroyed its block is kept, while the kept blocks stay within the cache's
// byte limit, for at most the cache's keep time; otherwise it is unmapped. The default cache
// keeps nothing until Configure() is called (the server does, from its flags).
//
// Thread safety: every method may be called concurrently. The observer is called with the
// cache's lock held, so it must not call back into the cache.
#ifndef RCKNN_CORE_ARRAY_CACHE_H_
#define RCKNN_CORE_ARRAY_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace rcknn::core {

class ArrayCache {
 public:
  // The process-wide cache that LargeArray uses; keeps nothing until configured.
  static ArrayCache& Default();

  ArrayCache() = default;
  ~ArrayCache();
  ArrayCache(const ArrayCache&) = delete;
  ArrayCache& operator=(const ArrayCache&) = delete;

  // Keeps freed blocks while they total at most `max_bytes` (0: none), each for at most `keep`.
  // Blocks kept beyond the new limits are unmapped now.
  void Configure(int64_t max_bytes, absl::Duration keep);
  // Called with the bytes kept whenever they change (for a memory budget that counts them).
  void SetObserver(std::function<void(int64_t kept_bytes)> observer);

  // Unmaps every kept block; returns the bytes given back. A memory budget calls this before it
  // refuses a reservation.
  int64_t Release();
  // Unmaps the blocks kept for longer than the keep time. Done on every Take and Give, and by
  // the cache's own thread (started by the first Configure that keeps anything) when it is idle.
  void Expire();

  int64_t kept_bytes() const;
  int64_t kept_blocks() const;
  // Blocks handed out again, and blocks newly mapped, so far.
  int64_t reused() const;
  int64_t mapped() const;

  // Memory for at least `bytes` (> 0): a kept block or a new mapping. Throws std::bad_alloc if
  // the system has no memory to map, as operator new does (a build reports that as
  // RESOURCE_EXHAUSTED instead of ending the process). *size is set to the block's usable size.
  void* Take(size_t bytes, size_t* size);
  // Gives back a block from Take with its size.
  void Give(void* data, size_t size);

 private:
  struct Block {
    void* data;
    size_t size;
    absl::Time freed;
  };
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void NotifyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ExpiryLoop();

  mutable absl::Mutex mutex_;
  int64_t max_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Duration keep_ ABSL_GUARDED_BY(mutex_) = absl::ZeroDuration();
  std::vector<Block> kept_ ABSL_GUARDED_BY(mutex_);
  int64_t kept_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t reused_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t mapped_ ABSL_GUARDED_BY(mutex_) = 0;
  std::function<void(int64_t)> observer_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread expiry_;  // started once, under mutex_
};

// An owned, uninitialised, 64-byte aligned array of doubles: from ArrayCache::Default() and given
// back to it when destroyed, unless it is smaller than kSmallArrayBytes (then from the heap).
// Move-only.
class LargeArray {
 public:
  static constexpr size_t kSmallArrayBytes = size_t{1} << 20;

  LargeArray() = default;
  explicit LargeArray(int64_t count);
  ~LargeArray() { Reset(); }
  LargeArray(LargeArray&& other) noexcept { *this = std::move(other); }
  LargeArray& operator=(LargeArray&& other) noexcept;
  LargeArray(const LargeArray&) = delete;
  LargeArray& operator=(const LargeArray&) = delete;

  double* data() { return data_; }
  const double* data() const { return data_; }
  int64_t size() const { return count_; }
  void Reset();

 private:
  double* data_ = nullptr;
  int64_t count_ = 0;
  size_t bytes_ = 0;  // of the cache's block; 0 for a heap array
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_ARRAY_CACHE_H_
