// The checks and sizes of one search, worked out before anything is allocated: the one place a
// search request is validated against its index (core::ValidateQuery) and the one place its
// answer is sized. Every size is computed with overflow checks: k is a client's int64, and
// num_queries x k x bytes per entry can exceed any integer type.
//
// Transport-agnostic: core types in, absl::Status out. Used by server/index_service.h and by the
// request fuzzer, which checks the sizes reported here against exact arithmetic.
#ifndef RCKNN_SERVER_SEARCH_PLAN_H_
#define RCKNN_SERVER_SEARCH_PLAN_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "core/knn_query.h"

namespace rcknn::server {

// The configured limits a search must fit (ServerOptions).
struct SearchLimits {
  int64_t max_queries_per_search = 1'000'000;
  int64_t max_message_bytes = int64_t{64} << 20;
};

struct SearchPlan {
  int64_t num_queries = 0;
  int64_t k = 0;
  // num_queries x k: the length of the ids and of the distances of the answer.
  int64_t answer_entries = 0;
  // Upper bound of the serialized answer (see AnswerEntryBytes), framing included.
  int64_t message_bytes = 0;
  // Bytes the answer holds in memory while it is computed (reserved in the memory budget).
  int64_t memory_bytes = 0;
};

// Bytes of the answer message besides its entries (lengths, num_queries, k, stats).
inline constexpr int64_t kAnswerFramingBytes = 256;

// How the answer travels: packed repeated fields (a double and a varint id per entry), or raw
// little-endian bytes (16 per entry; SearchRequest.raw_answer).
enum class AnswerLayout { kPacked, kRaw };

// Upper bound of the serialized size of one (id, distance) entry of an answer from an index of
// `n` points. Packed: a double and a varint id, 10 bytes when the answer may hold -1 padding
// (k >= n, or predecessor mode), else the varint length of n - 1. Raw: 16.
int64_t AnswerEntryBytes(int64_t n, int64_t k, bool predecessor_mode,
                         AnswerLayout layout = AnswerLayout::kPacked);

// Checked product; nullopt on overflow (or a negative factor).
std::optional<int64_t> CheckedMul(int64_t a, int64_t b);
std::optional<int64_t> CheckedAdd(int64_t a, int64_t b);

// Validates `queries` and `options` against an index of `n` points in `dimension` dimensions
// (INVALID_ARGUMENT naming the field, as core::ValidateQuery) and sizes the answer:
// RESOURCE_EXHAUSTED naming --max_queries_per_search for too many queries, naming k when one
// query's answer alone exceeds --max_message_bytes (the size stated exactly, or "more than
// 2^63 bytes" when it exceeds int64), and naming the number of queries and k when the whole
// answer does (its size stated exactly).
absl::StatusOr<SearchPlan> PlanSearch(const core::QueryBatch& queries,
                                      const core::KnnOptions& options, int64_t n, int dimension,
                                      const SearchLimits& limits,
                                      AnswerLayout layout = AnswerLayout::kPacked);

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_SEARCH_PLAN_H_
