// The answer arrays of a SearchResponse, written in place by the search: either the packed
// repeated fields (neighbor_ids, distances) or, when the request set raw_answer, the bytes
// fields neighbor_ids_raw and distances_raw (little-endian int64 / float64, the same
// num_queries x k row-major order and padding). Either way the search writes straight into the
// response: no second copy of an answer that can be hundreds of megabytes.
#ifndef RCKNN_SERVER_SEARCH_ANSWER_H_
#define RCKNN_SERVER_SEARCH_ANSWER_H_

#include <cstdint>
#include <vector>

#include "rcknn/v1/rcknn.pb.h"

namespace rcknn::server {

struct AnswerArrays {
  AnswerArrays() = default;
  // Moves keep `ids` / `distances` valid (a moved vector keeps its buffer); copies would not.
  AnswerArrays(AnswerArrays&&) = default;
  AnswerArrays& operator=(AnswerArrays&&) = default;
  AnswerArrays(const AnswerArrays&) = delete;
  AnswerArrays& operator=(const AnswerArrays&) = delete;

  // `size` entries each, pre-filled with the padding (-1 / +infinity).
  int64_t* ids = nullptr;
  double* distances = nullptr;
  // Raw layout only: where the bytes go once the search has written ids / distances (set when
  // the arrays had to be staged because the string buffer was not 8-byte aligned, or the host
  // is big-endian).
  v1::SearchResponse* raw_response = nullptr;
  std::vector<int64_t> staged_ids;
  std::vector<double> staged_distances;
};

// Sizes the packed repeated fields of `response` to `size` entries.
AnswerArrays PackedAnswerArrays(int64_t size, v1::SearchResponse* response);
// Sizes neighbor_ids_raw and distances_raw of `response` to 8 * `size` bytes each.
AnswerArrays RawAnswerArrays(int64_t size, v1::SearchResponse* response);
// After the search: copies staged arrays into the raw fields (a no-op otherwise).
void FinishAnswerArrays(AnswerArrays* answer);

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_SEARCH_ANSWER_H_
