// The input format of rcknn_fuzz_requests, shared by the target and the seed writer.
//
// Byte 0 selects the request: its low 3 bits the message type (RequestKind), its high 5 bits a
// variant (the upload's index spec, the n given to SpecForBuild). Bytes 1.. are the serialized
// message, parsed with ParseFromArray.
#ifndef RCKNN_TESTS_FUZZ_FUZZ_REQUESTS_H_
#define RCKNN_TESTS_FUZZ_FUZZ_REQUESTS_H_

#include <cstdint>

namespace rcknn::fuzz {

enum class RequestKind : uint8_t {
  kCreateIndex = 0,
  kUploadPoints = 1,
  kBuildIndex = 2,
  kGetIndex = 3,  // also WatchIndex
  kDeleteIndex = 4,
  kSearch = 5,  // also SearchStream
  kListIndexes = 6,
  kIndexSpec = 7,  // a bare spec through ToCoreSpec and SpecForBuild
};
inline constexpr int kNumRequestKinds = 8;

inline uint8_t Selector(RequestKind kind, int variant) {
  return static_cast<uint8_t>(static_cast<int>(kind) | (variant << 3));
}

// The prebuilt index the fuzzed searches run against.
inline constexpr int kIndexPoints = 48;
inline constexpr int kIndexDimension = 3;

}  // namespace rcknn::fuzz

#endif  // RCKNN_TESTS_FUZZ_FUZZ_REQUESTS_H_
