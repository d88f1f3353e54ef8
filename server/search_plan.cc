#include "server/search_plan.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace rcknn::server {
namespace {

// Bytes of a non-negative varint.
int64_t VarintBytes(uint64_t value) {
  int64_t bytes = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++bytes;
  }
  return bytes;
}

// "N bytes", or "more than 2^63 - 1 bytes" when the size did not fit in int64.
std::string Bytes(const std::optional<int64_t>& bytes) {
  return bytes.has_value()
             ? absl::StrCat(*bytes, " bytes")
             : absl::StrCat("more than ", std::numeric_limits<int64_t>::max(), " bytes");
}

}  // namespace

std::optional<int64_t> CheckedMul(int64_t a, int64_t b) {
  int64_t product = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &product)) return std::nullopt;
  return product;
}

std::optional<int64_t> CheckedAdd(int64_t a, int64_t b) {
  int64_t sum = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &sum)) return std::nullopt;
  return sum;
}

int64_t AnswerEntryBytes(int64_t n, int64_t k, bool predecessor_mode, AnswerLayout layout) {
  if (layout == AnswerLayout::kRaw) return 16;
  const bool may_pad = predecessor_mode || k >= n;
  return 8 + (may_pad || n < 1 ? 10 : VarintBytes(static_cast<uint64_t>(n - 1)));
}

absl::StatusOr<SearchPlan> PlanSearch(const core::QueryBatch& queries,
                                      const core::KnnOptions& options, int64_t n, int dimension,
                                      const SearchLimits& limits, AnswerLayout layout) {
  RETURN_IF_ERROR(core::ValidateQuery(queries, options, n, dimension));
  SearchPlan plan;
  plan.k = options.k;
  plan.num_queries = core::NumQueries(queries, dimension);
  if (plan.num_queries > limits.max_queries_per_search) {
    return absl::ResourceExhaustedError(absl::StrCat(
        queries.by_id() ? "query_ids" : "query_points", ": ", plan.num_queries,
        " queries, over the limit --max_queries_per_search = ", limits.max_queries_per_search,
        "; split the batch (SearchStream takes one batch per message)"));
  }
  const int64_t entry_bytes = AnswerEntryBytes(n, plan.k, options.predecessor_mode, layout);
  // One query's answer first: when k alone is too large, fewer queries would not help.
  std::optional<int64_t> query_bytes = CheckedMul(plan.k, entry_bytes);
  if (query_bytes.has_value()) query_bytes = CheckedAdd(*query_bytes, kAnswerFramingBytes);
  if (!query_bytes.has_value() || *query_bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "k: ", plan.k, " neighbours per query make an answer of ", Bytes(query_bytes),
        " for a single query, over --max_message_bytes = ", limits.max_message_bytes,
        "; ask for fewer neighbours (the index holds ", n, " points)"));
  }
  // Both factors are now bounded (k by the message limit, the queries by the request's size),
  // but every product stays checked.
  std::optional<int64_t> entries = CheckedMul(plan.num_queries, plan.k);
  std::optional<int64_t> message_bytes =
      entries.has_value() ? CheckedMul(*entries, entry_bytes) : std::nullopt;
  if (message_bytes.has_value()) message_bytes = CheckedAdd(*message_bytes, kAnswerFramingBytes);
  if (!message_bytes.has_value() || *message_bytes > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the answer (", plan.num_queries, " queries x k = ", plan.k, ") would take ",
        Bytes(message_bytes), ", over --max_message_bytes = ", limits.max_message_bytes,
        "; send fewer queries per request"));
  }
  plan.answer_entries = *entries;
  plan.message_bytes = *message_bytes;
  // The ids and distances, and one per-query evaluation count.
  std::optional<int64_t> memory =
      CheckedMul(*entries, static_cast<int64_t>(sizeof(int64_t) + sizeof(double)));
  const std::optional<int64_t> per_query =
      CheckedMul(plan.num_queries, static_cast<int64_t>(sizeof(int64_t)));
  if (memory.has_value() && per_query.has_value()) memory = CheckedAdd(*memory, *per_query);
  if (!memory.has_value()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the answer (", plan.num_queries, " queries x k = ", plan.k,
                     ") would need more than ", std::numeric_limits<int64_t>::max(),
                     " bytes of memory"));
  }
  plan.memory_bytes = *memory;
  return plan;
}

}  // namespace rcknn::server
