// rcknn-metrics-dump: prints ServerMetrics' text exposition, with rcknn-router's own families
// (router/router_metrics.h) in the same registry, after a small sample workload that
// touches every family (searches, every RPC of rcknn.v1.Rcknn with a few status codes, builds,
// gauges). Tests feed it to `promtool check metrics` and check the Grafana dashboard's metric
// names against it: it is the real registry text, not a hand-written list.
#include <cstdint>
#include <iostream>
#include <vector>

#include "absl/status/status.h"
#include "core/traversal_stats.h"
#include "router/router_metrics.h"
#include "server/server_metrics.h"

int main() {
  rcknn::server::ServerMetrics metrics;

  constexpr const char* kService = "rcknn.v1.Rcknn";
  for (const char* method : {"CreateIndex", "UploadPoints", "BuildIndex", "GetIndex", "WatchIndex",
                             "ListIndexes", "DeleteIndex", "Search", "SearchStream"}) {
    metrics.InitializeRpcMethod(kService, method);
  }
  metrics.InitializeRpcMethod("grpc.health.v1.Health", "Check");

  for (int batch = 0; batch < 3; ++batch) {
    std::vector<int64_t> evaluations;
    rcknn::core::TraversalStats merged;
    for (int q = 0; q < 64; ++q) {
      rcknn::core::TraversalStats query;
      query.queries = 1;
      query.distance_evaluations = 150 + 37 * q + 1000 * batch;
      query.heap_pushes = 60 + q;
      query.nodes_visited = 80 + q;
      query.pruned_by_bound = 20 + q % 7;
      query.pruned_by_predecessor = q % 3;
      query.brute_force_queries = q % 16 == 0 ? 1 : 0;
      evaluations.push_back(query.distance_evaluations);
      merged.Merge(query);
    }
    metrics.RecordSearch(merged, evaluations);
    metrics.RecordRpc(kService, "Search", absl::StatusCode::kOk, 0.004 * (batch + 1));
  }
  metrics.RecordRpc(kService, "Search", absl::StatusCode::kInvalidArgument, 0.0002);
  metrics.RecordRpc(kService, "Search", absl::StatusCode::kFailedPrecondition, 0.0002);
  metrics.RecordRpc(kService, "GetIndex", absl::StatusCode::kNotFound, 0.0001);
  metrics.RecordRpc(kService, "CreateIndex", absl::StatusCode::kOk, 0.001);
  metrics.RecordRpc(kService, "UploadPoints", absl::StatusCode::kOk, 0.3);
  metrics.RecordRpc(kService, "BuildIndex", absl::StatusCode::kOk, 0.0005);
  metrics.RecordRpc(kService, "SearchStream", absl::StatusCode::kDeadlineExceeded, 30.0);

  metrics.RecordBuild(0.9);
  rcknn::server::IndexStateCounts counts;
  counts.ready = 1;
  counts.loading = 1;
  metrics.SetIndexCounts(counts);
  metrics.SetIndexTotals(32768, 140 << 20);
  metrics.SetPoolThreads(2);

  rcknn::router::RouterMetrics router(metrics.registry());
  for (int64_t shard = 0; shard < 3; ++shard) {
    router.RecordShardCall(shard, "Search", 0, 0.002 * (shard + 1));
    router.RecordShardCall(shard, "GetPoints", 0, 0.0005);
  }
  router.RecordShardCall(1, "Search", 14, 0.001);  // UNAVAILABLE

  std::cout << metrics.TextExposition();
  return std::cout.good() ? 0 : 1;
}
