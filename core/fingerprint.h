// A 64-bit hash of bytes, for telling data sets apart (MetricSpace::Fingerprint) and checking
// files (core/snapshot_file.h). XXH3-64: its values are on disk, so the function never changes.
#ifndef RCKNN_CORE_FINGERPRINT_H_
#define RCKNN_CORE_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>

namespace rcknn::core {

// XXH3-64 of `bytes` bytes at `data`, continuing from `seed`.
uint64_t Fingerprint(const void* data, size_t bytes, uint64_t seed = 0);

// The same hash over pieces given one after another: Digest() equals Fingerprint() of their
// concatenation with the same seed (for arrays hashed in an order other than their storage).
class FingerprintStream {
 public:
  explicit FingerprintStream(uint64_t seed = 0);
  ~FingerprintStream();
  FingerprintStream(const FingerprintStream&) = delete;
  FingerprintStream& operator=(const FingerprintStream&) = delete;

  void Add(const void* data, size_t bytes);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_FINGERPRINT_H_
