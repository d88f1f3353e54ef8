// The router's own metrics, next to the RED metrics it shares with rcknn-server
// (grpc_server_handled_total, grpc_server_handling_seconds in server::ServerMetrics):
//
//   rcknn_router_shard_calls_total{shard, grpc_method, grpc_code}  every call to a shard replica
//   rcknn_router_shard_call_seconds{shard, grpc_method}            its latency (histogram)
//
// `shard` is the shard's number in --shards: low cardinality, never an address or an id.
#ifndef RCKNN_ROUTER_ROUTER_METRICS_H_
#define RCKNN_ROUTER_ROUTER_METRICS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace rcknn::router {

// Built without gRPC (like server::ServerMetrics) so that rcknn-metrics-dump can show it.
class RouterMetrics {
 public:
  explicit RouterMetrics(std::shared_ptr<prometheus::Registry> registry);
  // Thread-safe.
  // `code`: the call's gRPC status code (numbered as google.rpc.Code).
  void RecordShardCall(int64_t shard, absl::string_view method, int code, double seconds);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& calls_;
  prometheus::Family<prometheus::Histogram>& seconds_;
  absl::Mutex mutex_;
  std::map<std::tuple<int64_t, std::string, int>, prometheus::Counter*> call_series_
      ABSL_GUARDED_BY(mutex_);
  std::map<std::tuple<int64_t, std::string>, prometheus::Histogram*> second_series_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace rcknn::router

#endif  // RCKNN_ROUTER_ROUTER_METRICS_H_
