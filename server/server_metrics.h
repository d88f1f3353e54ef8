// The Prometheus metrics of docs/design.md section 6, owned in one registry that the server exposes at
// /metrics (prometheus::Exposer, on its own port) and that tests serialize directly.
//
// Every family is created once, in the constructor; label combinations that should read 0 before
// their first event (both prune reasons, every index state) are created there too. The gRPC
// families get their series per method, so they are exported once a method has been recorded or
// named with InitializeRpcMethod (the server names all of its methods at start-up). Recording is
// cheap and thread-safe, and happens at most once per batch or per RPC: traversal counters reach
// this class already merged (core::TraversalStats), never from inside a traversal loop.
//
// Families (names fixed by docs/design.md; labels low-cardinality):
//   rcknn_queries_total, rcknn_distance_evaluations_total, rcknn_heap_pushes_total,
//   rcknn_nodes_visited_total, rcknn_subtrees_pruned_total{reason="bound"|"predecessor"},
//   rcknn_scanned_queries_total                         counters, summed over all searches
//   rcknn_query_distance_evaluations                    histogram, one observation per query
//   rcknn_search_batch_size                             histogram, queries per search batch
//   grpc_server_handled_total{grpc_service,grpc_method,grpc_code}   counter, one per finished RPC
//   grpc_server_handling_seconds{grpc_service,grpc_method}          histogram, RPC latency
//   rcknn_index_build_seconds                           histogram, one per successful build
//   rcknn_indexes{state="loading"|"building"|"ready"|"failed"}     gauge
//   rcknn_index_points, rcknn_index_memory_bytes        gauges, totals over all indexes
//   rcknn_query_pool_threads                            gauge
//   rcknn_memory_reserved_bytes, rcknn_memory_limit_bytes  gauges, the --max_memory_bytes budget
//   rcknn_search_rejected_total{reason="queue_full"|"memory"}  counter, searches refused before
//                                                       they ran (admission control, memory)
//
// grpc_service / grpc_method take the names of the RPCs the server handles. A client can send any
// method name, so at most kMaxRpcMethods distinct (service, method) pairs get their own series;
// later ones are counted under grpc_service="other", grpc_method="other".
#ifndef RCKNN_SERVER_SERVER_METRICS_H_
#define RCKNN_SERVER_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/traversal_stats.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace rcknn::server {

// Number of indexes in each state, for rcknn_indexes{state}.
struct IndexStateCounts {
  int64_t loading = 0;
  int64_t building = 0;
  int64_t ready = 0;
  int64_t failed = 0;
};

// The canonical gRPC name of a status code ("OK", "INVALID_ARGUMENT", ...). grpc::StatusCode and
// absl::StatusCode share the numbering 0..16; any other value is reported as "UNKNOWN", which is
// what gRPC itself does with a code it does not know.
absl::string_view GrpcCodeName(int code);

// Splits "/package.Service/Method" (what gRPC reports as a call's method) into
// {"package.Service", "Method"}. A string without that shape comes back whole as the method,
// with an empty service.
std::pair<absl::string_view, absl::string_view> SplitGrpcMethod(absl::string_view full_method);

class ServerMetrics {
 public:
  // (service, method) pairs that get series of their own; see the file comment.
  static constexpr int kMaxRpcMethods = 64;

  ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // One search batch (a Search request, or one SearchStream message): `merged` is the batch's
  // TraversalStats merged over its queries, and `per_query_evaluations` holds each query's
  // distance evaluations, one entry per query (its size is merged.queries). Adds the counters,
  // observes every entry in rcknn_query_distance_evaluations and merged.queries in
  // rcknn_search_batch_size. A batch without queries records nothing.
  void RecordSearch(const core::TraversalStats& merged,
                    absl::Span<const int64_t> per_query_evaluations);

  // One finished RPC: its service ("rcknn.v1.Rcknn"), method ("Search"), final status code and
  // wall time in seconds. The int overload takes grpc::StatusCode values unchanged.
  void RecordRpc(absl::string_view service, absl::string_view method, int code, double seconds);
  void RecordRpc(absl::string_view service, absl::string_view method, absl::StatusCode code,
                 double seconds);

  // Creates the series of one RPC method ahead of its first call (handled with code OK, and its
  // latency histogram), so dashboards show it at 0 rather than absent. Counts toward
  // kMaxRpcMethods.
  void InitializeRpcMethod(absl::string_view service, absl::string_view method);

  // One search request refused before it ran: `reason` "queue_full" (--max_queued_queries) or
  // "memory" (--max_memory_bytes).
  void RecordSearchRejected(absl::string_view reason);

  // One successful index build and its wall time in seconds. Failed builds show up in
  // rcknn_indexes{state="failed"} instead.
  void RecordBuild(double seconds);

  // Gauges, set to the current values (not increments).
  void SetIndexCounts(const IndexStateCounts& counts);
  void SetIndexTotals(int64_t points, int64_t memory_bytes);
  void SetPoolThreads(int threads);
  void SetMemory(int64_t reserved_bytes, int64_t limit_bytes);

  // For prometheus::Exposer::RegisterCollectable.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The whole registry in the Prometheus text exposition format (version 0.0.4).
  std::string TextExposition() const;

  // Bucket upper bounds (the +Inf bucket is implicit), exposed for tests.
  static std::vector<double> QueryEvaluationBuckets();
  static std::vector<double> BatchSizeBuckets();
  static std::vector<double> RpcSecondsBuckets();
  static std::vector<double> BuildSecondsBuckets();

 private:
  static constexpr int kNumGrpcCodes = 17;

  // The series of one (service, method) pair; codes are created on first use.
  struct MethodSeries {
    std::string service;
    std::string method;
    prometheus::Histogram* seconds = nullptr;
    std::array<prometheus::Counter*, kNumGrpcCodes> handled{};
  };

  // Finds or creates the series of (service, method), collapsing to "other" past the limit.
  MethodSeries& FindMethodLocked(absl::string_view service, absl::string_view method)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(rpc_mutex_);
  prometheus::Counter& HandledLocked(MethodSeries& series, int code)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(rpc_mutex_);

  const std::shared_ptr<prometheus::Registry> registry_;

  // Search.
  prometheus::Counter& queries_;
  prometheus::Counter& distance_evaluations_;
  prometheus::Counter& heap_pushes_;
  prometheus::Counter& nodes_visited_;
  prometheus::Family<prometheus::Counter>& pruned_family_;
  prometheus::Counter& pruned_by_bound_;
  prometheus::Counter& pruned_by_predecessor_;
  prometheus::Counter& scanned_queries_;
  prometheus::Histogram& query_evaluations_;
  prometheus::Histogram& batch_size_;
  const std::vector<double> query_evaluation_bounds_;

  // RPCs.
  prometheus::Family<prometheus::Counter>& handled_family_;
  prometheus::Family<prometheus::Histogram>& handling_seconds_family_;
  absl::Mutex rpc_mutex_;
  // Keyed by service + '/' + method.
  absl::flat_hash_map<std::string, std::unique_ptr<MethodSeries>> methods_
      ABSL_GUARDED_BY(rpc_mutex_);

  // Indexes and the query pool.
  prometheus::Histogram& build_seconds_;
  prometheus::Family<prometheus::Gauge>& indexes_family_;
  prometheus::Gauge& indexes_loading_;
  prometheus::Gauge& indexes_building_;
  prometheus::Gauge& indexes_ready_;
  prometheus::Gauge& indexes_failed_;
  prometheus::Gauge& index_points_;
  prometheus::Gauge& index_memory_bytes_;
  prometheus::Gauge& pool_threads_;
  prometheus::Gauge& memory_reserved_bytes_;
  prometheus::Gauge& memory_limit_bytes_;
  prometheus::Family<prometheus::Counter>& rejected_family_;
  prometheus::Counter& rejected_queue_full_;
  prometheus::Counter& rejected_memory_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_SERVER_METRICS_H_
