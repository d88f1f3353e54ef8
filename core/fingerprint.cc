#include "core/fingerprint.h"

#include "xxhash.h"

namespace rcknn::core {

uint64_t Fingerprint(const void* data, size_t bytes, uint64_t seed) {
  return XXH3_64bits_withSeed(data, bytes, seed);
}

FingerprintStream::FingerprintStream(uint64_t seed) : state_(XXH3_createState()) {
  XXH3_64bits_reset_withSeed(static_cast<XXH3_state_t*>(state_), seed);
}

FingerprintStream::~FingerprintStream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void FingerprintStream::Add(const void* data, size_t bytes) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, bytes);
}

uint64_t FingerprintStream::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

}  // namespace rcknn::core
