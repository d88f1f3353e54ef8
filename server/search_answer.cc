#include "server/search_answer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "absl/base/config.h"

namespace rcknn::server {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

bool Aligned(const std::string& bytes) {
  return reinterpret_cast<uintptr_t>(bytes.data()) % alignof(int64_t) == 0;
}

// Copies `count` 8-byte host-order values to little-endian bytes at `out`.
void StoreLittleEndian(const void* values, int64_t count, char* out) {
  std::memcpy(out, values, static_cast<size_t>(count) * 8);
#if defined(ABSL_IS_BIG_ENDIAN)
  for (int64_t i = 0; i < count; ++i) std::reverse(out + 8 * i, out + 8 * (i + 1));
#endif
}

}  // namespace

AnswerArrays PackedAnswerArrays(int64_t size, v1::SearchResponse* response) {
  response->mutable_neighbor_ids()->Resize(static_cast<int>(size), -1);
  response->mutable_distances()->Resize(static_cast<int>(size), kInfinity);
  AnswerArrays answer;
  answer.ids = response->mutable_neighbor_ids()->mutable_data();
  answer.distances = response->mutable_distances()->mutable_data();
  return answer;
}

AnswerArrays RawAnswerArrays(int64_t size, v1::SearchResponse* response) {
  std::string* ids = response->mutable_neighbor_ids_raw();
  std::string* distances = response->mutable_distances_raw();
  ids->resize(static_cast<size_t>(size) * 8);
  distances->resize(static_cast<size_t>(size) * 8);
  AnswerArrays answer;
#if defined(ABSL_IS_LITTLE_ENDIAN)
  const bool in_place = Aligned(*ids) && Aligned(*distances);
#else
  const bool in_place = false;
#endif
  if (in_place) {
    answer.ids = reinterpret_cast<int64_t*>(ids->data());
    answer.distances = reinterpret_cast<double*>(distances->data());
    std::fill_n(answer.ids, size, int64_t{-1});
    std::fill_n(answer.distances, size, kInfinity);
    return answer;
  }
  answer.raw_response = response;
  answer.staged_ids.assign(static_cast<size_t>(size), -1);
  answer.staged_distances.assign(static_cast<size_t>(size), kInfinity);
  answer.ids = answer.staged_ids.data();
  answer.distances = answer.staged_distances.data();
  return answer;
}

void FinishAnswerArrays(AnswerArrays* answer) {
  if (answer->raw_response == nullptr) return;
  const auto size = static_cast<int64_t>(answer->staged_ids.size());
  StoreLittleEndian(answer->staged_ids.data(), size,
                    answer->raw_response->mutable_neighbor_ids_raw()->data());
  StoreLittleEndian(answer->staged_distances.data(), size,
                    answer->raw_response->mutable_distances_raw()->data());
}

}  // namespace rcknn::server
