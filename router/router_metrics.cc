#include "router/router_metrics.h"

#include "absl/strings/str_cat.h"
#include "server/server_metrics.h"

namespace rcknn::router {

RouterMetrics::RouterMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      calls_(prometheus::BuildCounter()
                 .Name("rcknn_router_shard_calls_total")
                 .Help("Calls from the router to shard replicas, by shard, method and code")
                 .Register(*registry_)),
      seconds_(prometheus::BuildHistogram()
                   .Name("rcknn_router_shard_call_seconds")
                   .Help("Latency of the router's calls to shard replicas, by shard and method")
                   .Register(*registry_)) {}

void RouterMetrics::RecordShardCall(int64_t shard, absl::string_view method, int code,
                                    double seconds) {
  prometheus::Counter* counter;
  prometheus::Histogram* histogram;
  {
    absl::MutexLock lock(&mutex_);
    const std::string name(method);
    prometheus::Counter*& c = call_series_[{shard, name, code}];
    if (c == nullptr) {
      c = &calls_.Add({{"shard", absl::StrCat(shard)},
                       {"grpc_method", name},
                       {"grpc_code", std::string(server::GrpcCodeName(code))}});
    }
    counter = c;
    prometheus::Histogram*& h = second_series_[{shard, name}];
    if (h == nullptr) {
      h = &seconds_.Add({{"shard", absl::StrCat(shard)}, {"grpc_method", name}},
                        server::ServerMetrics::RpcSecondsBuckets());
    }
    histogram = h;
  }
  counter->Increment();
  histogram->Observe(seconds);
}

}  // namespace rcknn::router
