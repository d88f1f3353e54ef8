#include "core/array_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>

namespace rcknn::core {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

size_t RoundUp(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }

// Anonymous memory in whole huge pages, advised for transparent huge pages (Linux's default
// "madvise" mode needs the request): the rows of V are read at random, and with 4 KiB pages
// each would cost a TLB miss.
void* Map(size_t bytes) {
  // Over-allocate by one huge page so that the block can start on a huge-page boundary.
  const size_t mapped = bytes + kHugePage;
  void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  if (aligned > begin) munmap(raw, aligned - begin);
  const uintptr_t end = begin + mapped;
  if (end > aligned + bytes) munmap(reinterpret_cast<void*>(aligned + bytes), end - aligned - bytes);
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
}

}  // namespace

ArrayCache& ArrayCache::Default() {
  static ArrayCache* cache = new ArrayCache();  // never destroyed: arrays may outlive main()
  return *cache;
}

ArrayCache::~ArrayCache() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (expiry_.joinable()) expiry_.join();
  for (const Block& block : kept_) munmap(block.data, block.size);
}

void ArrayCache::Configure(int64_t max_bytes, absl::Duration keep) {
  absl::MutexLock lock(&mutex_);
  max_bytes_ = std::max<int64_t>(0, max_bytes);
  keep_ = std::max(keep, absl::ZeroDuration());
  // The oldest go first when the limit shrinks.
  while (kept_bytes_ > max_bytes_ && !kept_.empty()) {
    munmap(kept_.front().data, kept_.front().size);
    kept_bytes_ -= static_cast<int64_t>(kept_.front().size);
    kept_.erase(kept_.begin());
  }
  ExpireLocked(absl::Now());
  NotifyLocked();
  if (max_bytes_ > 0 && keep_ > absl::ZeroDuration() && !expiry_.joinable()) {
    expiry_ = std::thread([this] { ExpiryLoop(); });
  }
}

void ArrayCache::SetObserver(std::function<void(int64_t)> observer) {
  absl::MutexLock lock(&mutex_);
  observer_ = std::move(observer);
  NotifyLocked();
}

int64_t ArrayCache::Release() {
  absl::MutexLock lock(&mutex_);
  const int64_t released = kept_bytes_;
  for (const Block& block : kept_) munmap(block.data, block.size);
  kept_.clear();
  kept_bytes_ = 0;
  NotifyLocked();
  return released;
}

void ArrayCache::Expire() {
  absl::MutexLock lock(&mutex_);
  ExpireLocked(absl::Now());
}

int64_t ArrayCache::kept_bytes() const {
  absl::MutexLock lock(&mutex_);
  return kept_bytes_;
}

int64_t ArrayCache::kept_blocks() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int64_t>(kept_.size());
}

int64_t ArrayCache::reused() const {
  absl::MutexLock lock(&mutex_);
  return reused_;
}

int64_t ArrayCache::mapped() const {
  absl::MutexLock lock(&mutex_);
  return mapped_;
}

void* ArrayCache::Take(size_t bytes, size_t* size) {
  const size_t wanted = RoundUp(std::max<size_t>(bytes, 1), kHugePage);
  {
    absl::MutexLock lock(&mutex_);
    ExpireLocked(absl::Now());
    // The smallest kept block that fits and wastes at most a quarter of itself; the most
    // recently freed among equals (its pages are the likeliest to be resident).
    int64_t best = -1;
    for (int64_t i = static_cast<int64_t>(kept_.size()) - 1; i >= 0; --i) {
      const size_t have = kept_[i].size;
      if (have < wanted || have - wanted > have / 4) continue;
      if (best < 0 || have < kept_[best].size) best = i;
    }
    if (best >= 0) {
      const Block block = kept_[best];
      kept_.erase(kept_.begin() + best);
      kept_bytes_ -= static_cast<int64_t>(block.size);
      ++reused_;
      NotifyLocked();
      *size = block.size;
      return block.data;
    }
    ++mapped_;
  }
  *size = wanted;
  return Map(wanted);
}

void ArrayCache::Give(void* data, size_t size) {
  {
    absl::MutexLock lock(&mutex_);
    ExpireLocked(absl::Now());
    if (keep_ > absl::ZeroDuration() && static_cast<int64_t>(size) <= max_bytes_) {
      // Room is made by dropping the oldest blocks: the newest is the likeliest to be wanted.
      while (kept_bytes_ + static_cast<int64_t>(size) > max_bytes_) {
        munmap(kept_.front().data, kept_.front().size);
        kept_bytes_ -= static_cast<int64_t>(kept_.front().size);
        kept_.erase(kept_.begin());
      }
      kept_.push_back({data, size, absl::Now()});
      kept_bytes_ += static_cast<int64_t>(size);
      NotifyLocked();
      return;
    }
  }
  munmap(data, size);
}

void ArrayCache::ExpireLocked(absl::Time now) {
  const int64_t before = kept_bytes_;
  auto expired = [&](const Block& block) { return now - block.freed >= keep_; };
  for (const Block& block : kept_) {
    if (expired(block)) {
      munmap(block.data, block.size);
      kept_bytes_ -= static_cast<int64_t>(block.size);
    }
  }
  kept_.erase(std::remove_if(kept_.begin(), kept_.end(), expired), kept_.end());
  if (kept_bytes_ != before) NotifyLocked();
}

void ArrayCache::NotifyLocked() {
  if (observer_) observer_(kept_bytes_);
}

void ArrayCache::ExpiryLoop() {
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    // Wake when the oldest block is due (or once a second while nothing is kept, so that a
    // later Give is noticed without a signal).
    absl::Duration wait = absl::Seconds(1);
    if (!kept_.empty()) {
      wait = std::max(absl::Milliseconds(10), kept_.front().freed + keep_ - absl::Now());
    }
    mutex_.AwaitWithTimeout(absl::Condition(&stopping_), std::min(wait, absl::Seconds(1)));
    if (!stopping_) ExpireLocked(absl::Now());
  }
}

LargeArray::LargeArray(int64_t count) : count_(std::max<int64_t>(count, 0)) {
  const size_t bytes = static_cast<size_t>(count_) * sizeof(double);
  if (bytes == 0) return;
  if (bytes < kSmallArrayBytes) {
    // Not worth a mapping of whole huge pages: the heap, cache-line aligned.
    data_ = static_cast<double*>(std::aligned_alloc(64, RoundUp(bytes, 64)));
    if (data_ == nullptr) throw std::bad_alloc();
    return;
  }
  data_ = static_cast<double*>(ArrayCache::Default().Take(bytes, &bytes_));
}

LargeArray& LargeArray::operator=(LargeArray&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    count_ = std::exchange(other.count_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void LargeArray::Reset() {
  if (data_ != nullptr && bytes_ == 0) std::free(data_);
  if (data_ != nullptr && bytes_ > 0) ArrayCache::Default().Give(data_, bytes_);
  data_ = nullptr;
  count_ = 0;
  bytes_ = 0;
}

}  // namespace rcknn::core
