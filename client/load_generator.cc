#include "client/load_generator.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace rcknn::client {
namespace {

constexpr int kPercentages[] = {10, 25, 50, 75, 90, 95, 99};

// One worker's results, merged at the end (no lock on the request path).
struct WorkerResults {
  int64_t calls = 0;
  std::vector<int64_t> latencies_ns;
  std::map<std::string, int64_t> codes;
  std::map<std::string, int64_t> errors;
};

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonMap(const std::map<std::string, int64_t>& map) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : map) parts.push_back(absl::StrCat(JsonString(key), ":", value));
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

}  // namespace

std::string GoCodeName(int code) {
  static constexpr const char* kNames[] = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  return code >= 0 && code < 17 ? kNames[code] : absl::StrCat("Code(", code, ")");
}

absl::StatusOr<std::vector<LoadMixEntry>> ParseLoadMix(const std::string& mix) {
  std::vector<LoadMixEntry> entries;
  for (absl::string_view part : absl::StrSplit(mix, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> name_weight = absl::StrSplit(part, ':');
    LoadMixEntry entry;
    const absl::string_view name = absl::StripAsciiWhitespace(name_weight.first);
    if (name == "search") {
      entry.call = LoadCall::kSearch;
    } else if (name == "get_index") {
      entry.call = LoadCall::kGetIndex;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--mix: unknown call \"", name, "\" (search, get_index)"));
    }
    if (!name_weight.second.empty() &&
        (!absl::SimpleAtod(name_weight.second, &entry.weight) || !(entry.weight > 0))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--mix: the weight of ", name, " must be a number > 0"));
    }
    entries.push_back(entry);
  }
  if (entries.empty()) return absl::InvalidArgumentError("--mix: name at least one call");
  return entries;
}

std::string LoadReport::ToJson() const {
  std::vector<std::string> distribution;
  for (const auto& [percentage, latency] : latency_distribution) {
    distribution.push_back(
        absl::StrCat("{\"percentage\":", percentage, ",\"latency\":", latency, "}"));
  }
  return absl::StrCat("{\"count\":", count, ",\"total\":", total_ns, ",\"average\":", average_ns,
                      ",\"fastest\":", fastest_ns, ",\"slowest\":", slowest_ns,
                      ",\"rps\":", absl::StrFormat("%.2f", rps), ",\"latencyDistribution\":[",
                      absl::StrJoin(distribution, ","),
                      "],\"statusCodeDistribution\":", JsonMap(status_code_distribution),
                      ",\"errorDistribution\":", JsonMap(error_distribution), "}");
}

absl::StatusOr<LoadReport> RunLoad(RcknnClient& client, const LoadOptions& options) {
  if (options.index_id.empty()) return absl::InvalidArgumentError("--index is required");
  if (options.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be >= 1");
  if (options.total <= 0 && options.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("give --total (requests) or --duration");
  }
  if (options.batch < 1) return absl::InvalidArgumentError("--batch must be >= 1");
  if (options.k < 1) return absl::InvalidArgumentError("--k must be >= 1");
  if (options.rps < 0) return absl::InvalidArgumentError("--rps must be >= 0");
  if (options.mix.empty()) return absl::InvalidArgumentError("--mix: name at least one call");
  absl::StatusOr<v1::IndexInfo> info = client.GetIndex(options.index_id);
  if (!info.ok()) return info.status();
  const int64_t n = info->num_points();
  if (n < 1) return absl::FailedPreconditionError("the index holds no points");

  std::vector<double> weights;
  for (const LoadMixEntry& entry : options.mix) weights.push_back(entry.weight);

  std::atomic<int64_t> next{0};
  const absl::Time start = absl::Now();
  const absl::Time end = options.total > 0 ? absl::InfiniteFuture() : start + options.duration;
  std::vector<WorkerResults> results(static_cast<size_t>(options.concurrency));
  std::vector<std::thread> workers;
  for (int w = 0; w < options.concurrency; ++w) {
    workers.emplace_back([&, w] {
      WorkerResults& out = results[static_cast<size_t>(w)];
      std::mt19937_64 engine(options.seed * 1'000'003 + static_cast<uint64_t>(w));
      std::uniform_int_distribution<int64_t> uniform_id(0, n - 1);
      std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
      v1::SearchRequest search;
      search.set_index_id(options.index_id);
      search.set_k(options.k);
      search.mutable_query_ids()->Resize(static_cast<int>(options.batch), 0);
      v1::GetIndexRequest get;
      get.set_index_id(options.index_id);
      for (;;) {
        const int64_t i = next.fetch_add(1);
        if (options.total > 0 && i >= options.total) return;
        if (options.rps > 0) {
          const absl::Time due = start + absl::Seconds(static_cast<double>(i) / options.rps);
          if (due >= end) return;
          absl::SleepFor(due - absl::Now());
        }
        if (absl::Now() >= end) return;
        const LoadCall call = options.mix[pick(engine)].call;
        grpc::ClientContext context;
        if (options.timeout != absl::InfiniteDuration()) {
          context.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
        }
        grpc::Status status;
        absl::Time sent;
        if (call == LoadCall::kSearch) {
          for (int64_t& id : *search.mutable_query_ids()) id = uniform_id(engine);
          v1::SearchResponse response;
          sent = absl::Now();
          status = client.stub().Search(&context, search, &response);
        } else {
          v1::IndexInfo response;
          sent = absl::Now();
          status = client.stub().GetIndex(&context, get, &response);
        }
        ++out.calls;
        if (status.ok() || !options.latency_of_ok_only) {
          out.latencies_ns.push_back(absl::ToInt64Nanoseconds(absl::Now() - sent));
        }
        const std::string code = GoCodeName(static_cast<int>(status.error_code()));
        ++out.codes[code];
        if (!status.ok()) {
          ++out.errors[absl::StrCat("rpc error: code = ", code,
                                    " desc = ", status.error_message())];
        }
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const int64_t total_ns = absl::ToInt64Nanoseconds(absl::Now() - start);

  LoadReport report;
  std::vector<int64_t> latencies;
  for (const WorkerResults& r : results) {
    report.count += r.calls;
    latencies.insert(latencies.end(), r.latencies_ns.begin(), r.latencies_ns.end());
    for (const auto& [code, count] : r.codes) report.status_code_distribution[code] += count;
    for (const auto& [error, count] : r.errors) report.error_distribution[error] += count;
  }
  std::sort(latencies.begin(), latencies.end());
  report.total_ns = total_ns;
  if (!latencies.empty()) {
    long double sum = 0;
    for (int64_t l : latencies) sum += l;
    report.average_ns = static_cast<int64_t>(sum / latencies.size());
    report.fastest_ns = latencies.front();
    report.slowest_ns = latencies.back();
    for (int p : kPercentages) {
      // Nearest rank.
      const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * latencies.size()));
      report.latency_distribution.emplace_back(
          p, latencies[std::min(latencies.size(), std::max<size_t>(rank, 1)) - 1]);
    }
  }
  report.rps = total_ns > 0 ? report.count / (total_ns * 1e-9) : 0.0;
  return report;
}

}  // namespace rcknn::client
