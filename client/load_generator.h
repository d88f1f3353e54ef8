// `rcknn load`: a closed-loop load generator for rcknn-server. `concurrency` workers share one
// channel; each sends a request, waits for its answer and sends the next, until `total` requests
// were sent or `duration` has passed. With a target rate, request i is not sent before
// start + i / rps. Each request is drawn from a weighted mix (Search of `batch` query ids drawn
// uniformly with `seed`, or GetIndex). The report has the fields of ghz's JSON output, so the
// two can be compared run for run (deploy/ghz).
#ifndef RCKNN_CLIENT_LOAD_GENERATOR_H_
#define RCKNN_CLIENT_LOAD_GENERATOR_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/rcknn_client.h"

namespace rcknn::client {

enum class LoadCall { kSearch, kGetIndex };

struct LoadMixEntry {
  LoadCall call = LoadCall::kSearch;
  double weight = 1.0;
};

// Parses "search:1" or "search:9,get_index:1" (weights > 0; a name alone weighs 1).
absl::StatusOr<std::vector<LoadMixEntry>> ParseLoadMix(const std::string& mix);

struct LoadOptions {
  std::string index_id;
  int64_t k = 10;
  int concurrency = 1;
  // Stop after `total` requests (> 0), or else after `duration` (> 0).
  int64_t total = 0;
  absl::Duration duration = absl::ZeroDuration();
  // Target requests per second over all workers; 0: as fast as the answers come back.
  double rps = 0.0;
  int64_t batch = 1;  // query ids per Search request
  std::vector<LoadMixEntry> mix = {LoadMixEntry{}};
  uint64_t seed = 1;
  absl::Duration timeout = absl::InfiniteDuration();  // deadline of each call
  // The latency fields (average, fastest, slowest, distribution) cover only the calls answered
  // OK; count, rps and the code distribution still cover every call.
  bool latency_of_ok_only = false;
};

// ghz's JSON report: durations in nanoseconds.
struct LoadReport {
  int64_t count = 0;
  int64_t total_ns = 0;  // wall time of the whole run
  int64_t average_ns = 0;
  int64_t fastest_ns = 0;
  int64_t slowest_ns = 0;
  double rps = 0.0;
  std::vector<std::pair<int, int64_t>> latency_distribution;  // {percentage, latency ns}
  std::map<std::string, int64_t> status_code_distribution;    // "OK", "NotFound", ...
  std::map<std::string, int64_t> error_distribution;          // "rpc error: code = ..." -> n

  std::string ToJson() const;
};

// Runs the load against the index (GetIndex first, for its number of points). Errors of single
// calls are counted in the report; the call fails only when the run cannot start.
absl::StatusOr<LoadReport> RunLoad(RcknnClient& client, const LoadOptions& options);

// Go's name of a gRPC status code, as ghz reports it ("OK", "InvalidArgument", ...).
std::string GoCodeName(int code);

}  // namespace rcknn::client

#endif  // RCKNN_CLIENT_LOAD_GENERATOR_H_
