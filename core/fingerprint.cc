#include "core/fingerprint.h"

#include "xxhash.h"

namespace rcknn::core {

uint64_t Fingerprint(const void* data, size_t bytes, uint64_t seed) {
  return XXH3_64bits_withSeed(data, bytes, seed);
}

}  // namespace rcknn::core
