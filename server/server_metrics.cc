#include "server/server_metrics.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace rcknn::server {
namespace {

constexpr std::array<absl::string_view, 17> kGrpcCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};
constexpr int kUnknownCode = 2;
constexpr absl::string_view kOther = "other";

int NormalizeCode(int code) {
  return code >= 0 && code < static_cast<int>(kGrpcCodeNames.size()) ? code : kUnknownCode;
}

// `count` bounds start, start * factor, start * factor^2, ...
std::vector<double> Exponential(double start, double factor, int count) {
  std::vector<double> bounds;
  bounds.reserve(count);
  double bound = start;
  for (int i = 0; i < count; ++i) {
    bounds.push_back(bound);
    bound *= factor;
  }
  return bounds;
}

prometheus::Counter& AddCounter(prometheus::Registry& registry, const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Gauge& AddGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram& AddHistogram(prometheus::Registry& registry, const std::string& name,
                                    const std::string& help, std::vector<double> bounds) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(
      {}, std::move(bounds));
}

}  // namespace

absl::string_view GrpcCodeName(int code) { return kGrpcCodeNames[NormalizeCode(code)]; }

std::pair<absl::string_view, absl::string_view> SplitGrpcMethod(absl::string_view full_method) {
  if (full_method.size() > 1 && full_method[0] == '/') {
    const size_t slash = full_method.find('/', 1);
    if (slash != absl::string_view::npos && slash + 1 < full_method.size()) {
      return {full_method.substr(1, slash - 1), full_method.substr(slash + 1)};
    }
  }
  return {absl::string_view(), full_method};
}

std::vector<double> ServerMetrics::QueryEvaluationBuckets() {
  // Powers of two from 1 to 2^24: a query evaluates between a handful of distances (a dense
  // index that prunes well) and every point (a scan of up to ~10^7 points).
  return Exponential(1.0, 2.0, 25);
}

std::vector<double> ServerMetrics::BatchSizeBuckets() {
  // Powers of two from 1 (a single query) to 2^20 (a large Vecchia job in one batch).
  return Exponential(1.0, 2.0, 21);
}

std::vector<double> ServerMetrics::RpcSecondsBuckets() {
  // 100 us (a small search, GetIndex) to 1000 s (a long upload or watch stream). Literals, not
  // products, so the `le` labels print short.
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,  0.1,   0.25,
          0.5,    1.0,     2.5,    5.0,   10.0,   25.0,  50.0, 100.0, 250.0, 500.0, 1000.0};
}

std::vector<double> ServerMetrics::BuildSecondsBuckets() {
  // 10 ms (a tiny index) to about three hours (the largest indexes).
  return {0.01, 0.025, 0.05,  0.1,   0.25,  0.5,    1.0,    2.5,    5.0,    10.0,
          25.0, 50.0,  100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0};
}

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      queries_(AddCounter(*registry_, "rcknn_queries_total",
                          "Search queries answered (one per query id or query point).")),
      distance_evaluations_(AddCounter(*registry_, "rcknn_distance_evaluations_total",
                                       "Residual correlation distances evaluated by searches.")),
      heap_pushes_(AddCounter(*registry_, "rcknn_heap_pushes_total",
                              "Entries pushed onto search priority queues.")),
      nodes_visited_(
          AddCounter(*registry_, "rcknn_nodes_visited_total", "Tree nodes visited by searches.")),
      pruned_family_(prometheus::BuildCounter()
                         .Name("rcknn_subtrees_pruned_total")
                         .Help("Subtrees skipped by searches, by reason: bound (lower bound above "
                               "the current k-th distance) or predecessor (every id too large).")
                         .Register(*registry_)),
      pruned_by_bound_(pruned_family_.Add({{"reason", "bound"}})),
      pruned_by_predecessor_(pruned_family_.Add({{"reason", "predecessor"}})),
      scanned_queries_(AddCounter(*registry_, "rcknn_scanned_queries_total",
                                  "Queries answered by the blocked brute-force scan fall-back.")),
      query_evaluations_(AddHistogram(*registry_, "rcknn_query_distance_evaluations",
                                      "Distance evaluations per search query.",
                                      QueryEvaluationBuckets())),
      batch_size_(AddHistogram(*registry_, "rcknn_search_batch_size",
                               "Queries per search batch (a Search request or one SearchStream "
                               "message).",
                               BatchSizeBuckets())),
      query_evaluation_bounds_(QueryEvaluationBuckets()),
      handled_family_(prometheus::BuildCounter()
                          .Name("grpc_server_handled_total")
                          .Help("RPCs completed on the server, by method and status code.")
                          .Register(*registry_)),
      handling_seconds_family_(prometheus::BuildHistogram()
                                   .Name("grpc_server_handling_seconds")
                                   .Help("Wall time of RPCs on the server, from arrival to the "
                                         "final status, by method.")
                                   .Register(*registry_)),
      build_seconds_(AddHistogram(*registry_, "rcknn_index_build_seconds",
                                  "Wall time of successful index builds.", BuildSecondsBuckets())),
      indexes_family_(prometheus::BuildGauge()
                          .Name("rcknn_indexes")
                          .Help("Indexes on the server, by state.")
                          .Register(*registry_)),
      indexes_loading_(indexes_family_.Add({{"state", "loading"}})),
      indexes_building_(indexes_family_.Add({{"state", "building"}})),
      indexes_ready_(indexes_family_.Add({{"state", "ready"}})),
      indexes_failed_(indexes_family_.Add({{"state", "failed"}})),
      index_points_(
          AddGauge(*registry_, "rcknn_index_points", "Points held by all indexes together.")),
      index_memory_bytes_(AddGauge(*registry_, "rcknn_index_memory_bytes",
                                   "Memory held by all indexes together, in bytes.")),
      pool_threads_(AddGauge(*registry_, "rcknn_query_pool_threads",
                             "Threads of the server's query arena.")),
      memory_reserved_bytes_(AddGauge(
          *registry_, "rcknn_memory_reserved_bytes",
          "Bytes reserved against --max_memory_bytes: indexes, uploads and builds in progress, "
          "search answers.")),
      memory_limit_bytes_(AddGauge(*registry_, "rcknn_memory_limit_bytes",
                                   "The --max_memory_bytes limit.")),
      rejected_family_(prometheus::BuildCounter()
                           .Name("rcknn_search_rejected_total")
                           .Help("Search requests (or SearchStream messages) refused before they "
                                 "ran, by reason: queue_full (--max_queued_queries) or memory "
                                 "(--max_memory_bytes).")
                           .Register(*registry_)),
      rejected_queue_full_(rejected_family_.Add({{"reason", "queue_full"}})),
      rejected_memory_(rejected_family_.Add({{"reason", "memory"}})) {}

void ServerMetrics::RecordSearchRejected(absl::string_view reason) {
  (reason == "memory" ? rejected_memory_ : rejected_queue_full_).Increment();
}

void ServerMetrics::RecordSearch(const core::TraversalStats& merged,
                                 absl::Span<const int64_t> per_query_evaluations) {
  assert(static_cast<int64_t>(per_query_evaluations.size()) == merged.queries);
  if (merged.queries <= 0 && per_query_evaluations.empty()) return;

  queries_.Increment(static_cast<double>(merged.queries));
  distance_evaluations_.Increment(static_cast<double>(merged.distance_evaluations));
  heap_pushes_.Increment(static_cast<double>(merged.heap_pushes));
  nodes_visited_.Increment(static_cast<double>(merged.nodes_visited));
  pruned_by_bound_.Increment(static_cast<double>(merged.pruned_by_bound));
  pruned_by_predecessor_.Increment(static_cast<double>(merged.pruned_by_predecessor));
  scanned_queries_.Increment(static_cast<double>(merged.brute_force_queries));
  batch_size_.Observe(static_cast<double>(merged.queries));

  // Bucketed here and handed over in one call: the histogram takes a lock per call, and a batch
  // can hold a million queries. Same bucket rule as Histogram::Observe (value <= upper bound).
  std::vector<double> bucket_increments(query_evaluation_bounds_.size() + 1, 0.0);
  double sum = 0.0;
  for (const int64_t evaluations : per_query_evaluations) {
    const double value = static_cast<double>(evaluations);
    const auto bucket =
        std::lower_bound(query_evaluation_bounds_.begin(), query_evaluation_bounds_.end(), value) -
        query_evaluation_bounds_.begin();
    bucket_increments[bucket] += 1.0;
    sum += value;
  }
  query_evaluations_.ObserveMultiple(bucket_increments, sum);
}

ServerMetrics::MethodSeries& ServerMetrics::FindMethodLocked(absl::string_view service,
                                                             absl::string_view method) {
  std::string key = absl::StrCat(service, "/", method);
  auto it = methods_.find(key);
  if (it != methods_.end()) return *it->second;
  if (static_cast<int>(methods_.size()) >= kMaxRpcMethods) {
    service = kOther;
    method = kOther;
    key = absl::StrCat(kOther, "/", kOther);
    it = methods_.find(key);
    if (it != methods_.end()) return *it->second;
  }
  auto series = std::make_unique<MethodSeries>();
  series->service = std::string(service);
  series->method = std::string(method);
  series->seconds = &handling_seconds_family_.Add(
      {{"grpc_service", series->service}, {"grpc_method", series->method}}, RpcSecondsBuckets());
  MethodSeries& result = *series;
  methods_.emplace(std::move(key), std::move(series));
  return result;
}

prometheus::Counter& ServerMetrics::HandledLocked(MethodSeries& series, int code) {
  prometheus::Counter*& counter = series.handled[code];
  if (counter == nullptr) {
    counter = &handled_family_.Add({{"grpc_service", series.service},
                                    {"grpc_method", series.method},
                                    {"grpc_code", std::string(kGrpcCodeNames[code])}});
  }
  return *counter;
}

void ServerMetrics::RecordRpc(absl::string_view service, absl::string_view method, int code,
                              double seconds) {
  prometheus::Counter* handled;
  prometheus::Histogram* latency;
  {
    absl::MutexLock lock(&rpc_mutex_);
    MethodSeries& series = FindMethodLocked(service, method);
    handled = &HandledLocked(series, NormalizeCode(code));
    latency = series.seconds;
  }
  // The metrics synchronize themselves and outlive every caller: no lock needed to update them.
  handled->Increment();
  latency->Observe(std::isfinite(seconds) && seconds > 0.0 ? seconds : 0.0);
}

void ServerMetrics::RecordRpc(absl::string_view service, absl::string_view method,
                              absl::StatusCode code, double seconds) {
  RecordRpc(service, method, static_cast<int>(code), seconds);
}

void ServerMetrics::InitializeRpcMethod(absl::string_view service, absl::string_view method) {
  absl::MutexLock lock(&rpc_mutex_);
  HandledLocked(FindMethodLocked(service, method), 0);
}

void ServerMetrics::RecordBuild(double seconds) {
  build_seconds_.Observe(std::isfinite(seconds) && seconds > 0.0 ? seconds : 0.0);
}

void ServerMetrics::SetIndexCounts(const IndexStateCounts& counts) {
  indexes_loading_.Set(static_cast<double>(counts.loading));
  indexes_building_.Set(static_cast<double>(counts.building));
  indexes_ready_.Set(static_cast<double>(counts.ready));
  indexes_failed_.Set(static_cast<double>(counts.failed));
}

void ServerMetrics::SetIndexTotals(int64_t points, int64_t memory_bytes) {
  index_points_.Set(static_cast<double>(points));
  index_memory_bytes_.Set(static_cast<double>(memory_bytes));
}

void ServerMetrics::SetPoolThreads(int threads) { pool_threads_.Set(threads); }

void ServerMetrics::SetMemory(int64_t reserved_bytes, int64_t limit_bytes) {
  memory_reserved_bytes_.Set(static_cast<double>(reserved_bytes));
  memory_limit_bytes_.Set(static_cast<double>(limit_bytes));
}

std::string ServerMetrics::TextExposition() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace rcknn::server
