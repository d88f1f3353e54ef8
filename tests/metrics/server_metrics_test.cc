#include "server/server_metrics.h"

#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/traversal_stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"

namespace rcknn::server {
namespace {

using ::testing::HasSubstr;

const prometheus::MetricFamily* FindFamily(const std::vector<prometheus::MetricFamily>& families,
                                           const std::string& name) {
  for (const auto& family : families) {
    if (family.name == name) return &family;
  }
  return nullptr;
}

// The series of `name` whose labels are exactly `labels`; fails the test if there is none.
prometheus::ClientMetric Series(const ServerMetrics& metrics, const std::string& name,
                                const std::map<std::string, std::string>& labels = {}) {
  const auto families = metrics.registry()->Collect();
  const prometheus::MetricFamily* family = FindFamily(families, name);
  if (family == nullptr) {
    ADD_FAILURE() << "no family " << name;
    return {};
  }
  for (const auto& metric : family->metric) {
    std::map<std::string, std::string> have;
    for (const auto& label : metric.label) have[label.name] = label.value;
    if (have == labels) return metric;
  }
  ADD_FAILURE() << "no series of " << name << " with the given labels";
  return {};
}

double CounterValue(const ServerMetrics& metrics, const std::string& name,
                    const std::map<std::string, std::string>& labels = {}) {
  return Series(metrics, name, labels).counter.value;
}

core::TraversalStats Stats(int64_t queries, int64_t evaluations, int64_t pushes, int64_t visited,
                           int64_t by_bound, int64_t by_predecessor, int64_t scanned) {
  core::TraversalStats stats;
  stats.queries = queries;
  stats.distance_evaluations = evaluations;
  stats.heap_pushes = pushes;
  stats.nodes_visited = visited;
  stats.pruned_by_bound = by_bound;
  stats.pruned_by_predecessor = by_predecessor;
  stats.brute_force_queries = scanned;
  return stats;
}

TEST(ServerMetricsTest, EveryFamilyExistsBeforeAnyEvent) {
  ServerMetrics metrics;
  const auto families = metrics.registry()->Collect();
  for (const char* name :
       {"rcknn_distance_evaluations_total", "rcknn_heap_pushes_total", "rcknn_nodes_visited_total",
        "rcknn_subtrees_pruned_total", "rcknn_queries_total", "rcknn_scanned_queries_total",
        "rcknn_query_distance_evaluations", "rcknn_search_batch_size", "rcknn_index_build_seconds",
        "rcknn_indexes", "rcknn_index_points", "rcknn_index_memory_bytes",
        "rcknn_query_pool_threads"}) {
    EXPECT_NE(FindFamily(families, name), nullptr) << name;
  }
  // The gRPC families have no series, so are not exported, until a method is known.
  EXPECT_EQ(FindFamily(families, "grpc_server_handled_total"), nullptr);
  metrics.InitializeRpcMethod("rcknn.v1.Rcknn", "Search");
  const auto with_method = metrics.registry()->Collect();
  EXPECT_NE(FindFamily(with_method, "grpc_server_handled_total"), nullptr);
  EXPECT_NE(FindFamily(with_method, "grpc_server_handling_seconds"), nullptr);
  // Pre-created label combinations read 0.
  EXPECT_EQ(CounterValue(metrics, "rcknn_subtrees_pruned_total", {{"reason", "bound"}}), 0.0);
  EXPECT_EQ(CounterValue(metrics, "rcknn_subtrees_pruned_total", {{"reason", "predecessor"}}), 0.0);
  for (const char* state : {"loading", "building", "ready", "failed"}) {
    EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", state}}).gauge.value, 0.0) << state;
  }
  EXPECT_EQ(Series(metrics, "rcknn_query_distance_evaluations").histogram.sample_count, 0u);
}

TEST(ServerMetricsTest, SearchCountersAreSumsOfTheBatches) {
  ServerMetrics metrics;
  const std::vector<int64_t> batch1 = {0, 1, 2, 3, 50, 32768};
  const std::vector<int64_t> batch2 = {100};
  const std::vector<int64_t> batch3 = {7, 8, 9, 1 << 24, (1 << 24) + 1, 4096, 4097, 5000};
  metrics.RecordSearch(Stats(6, 32824, 70, 40, 11, 3, 1), batch1);
  metrics.RecordSearch(Stats(1, 100, 9, 8, 7, 0, 0), batch2);
  metrics.RecordSearch(Stats(8, 33563156, 1000, 900, 800, 700, 2), batch3);

  EXPECT_EQ(CounterValue(metrics, "rcknn_queries_total"), 15.0);
  EXPECT_EQ(CounterValue(metrics, "rcknn_distance_evaluations_total"), 32824.0 + 100 + 33563156);
  EXPECT_EQ(CounterValue(metrics, "rcknn_heap_pushes_total"), 70.0 + 9 + 1000);
  EXPECT_EQ(CounterValue(metrics, "rcknn_nodes_visited_total"), 40.0 + 8 + 900);
  EXPECT_EQ(CounterValue(metrics, "rcknn_subtrees_pruned_total", {{"reason", "bound"}}),
            11.0 + 7 + 800);
  EXPECT_EQ(CounterValue(metrics, "rcknn_subtrees_pruned_total", {{"reason", "predecessor"}}),
            3.0 + 0 + 700);
  EXPECT_EQ(CounterValue(metrics, "rcknn_scanned_queries_total"), 3.0);

  // One observation per query; the buckets agree with observing each value on its own.
  prometheus::Histogram reference(ServerMetrics::QueryEvaluationBuckets());
  double sum = 0.0;
  for (const auto* batch : {&batch1, &batch2, &batch3}) {
    for (int64_t value : *batch) {
      reference.Observe(static_cast<double>(value));
      sum += static_cast<double>(value);
    }
  }
  const prometheus::ClientMetric::Histogram per_query =
      Series(metrics, "rcknn_query_distance_evaluations").histogram;
  const prometheus::ClientMetric::Histogram expected = reference.Collect().histogram;
  EXPECT_EQ(per_query.sample_count, 15u);
  EXPECT_EQ(per_query.sample_sum, sum);
  ASSERT_EQ(per_query.bucket.size(), expected.bucket.size());
  for (size_t i = 0; i < expected.bucket.size(); ++i) {
    EXPECT_EQ(per_query.bucket[i].upper_bound, expected.bucket[i].upper_bound) << i;
    EXPECT_EQ(per_query.bucket[i].cumulative_count, expected.bucket[i].cumulative_count) << i;
  }
  // 1 << 24 is the last finite bound (le is inclusive); (1 << 24) + 1 lands in +Inf only.
  EXPECT_EQ(per_query.bucket[per_query.bucket.size() - 2].cumulative_count, 14u);

  const prometheus::ClientMetric::Histogram batch_size =
      Series(metrics, "rcknn_search_batch_size").histogram;
  EXPECT_EQ(batch_size.sample_count, 3u);
  EXPECT_EQ(batch_size.sample_sum, 15.0);
}

TEST(ServerMetricsTest, EmptyBatchRecordsNothing) {
  ServerMetrics metrics;
  metrics.RecordSearch(core::TraversalStats{}, {});
  EXPECT_EQ(CounterValue(metrics, "rcknn_queries_total"), 0.0);
  EXPECT_EQ(Series(metrics, "rcknn_search_batch_size").histogram.sample_count, 0u);
}

TEST(ServerMetricsTest, RpcsAreCountedPerMethodAndCode) {
  ServerMetrics metrics;
  for (int i = 0; i < 3; ++i) metrics.RecordRpc("rcknn.v1.Rcknn", "Search", 0, 0.002);
  metrics.RecordRpc("rcknn.v1.Rcknn", "Search", absl::StatusCode::kInvalidArgument, 0.0001);
  metrics.RecordRpc("rcknn.v1.Rcknn", "Search", absl::StatusCode::kInvalidArgument, 0.0001);
  metrics.RecordRpc("rcknn.v1.Rcknn", "GetIndex", 5, 0.0003);  // grpc::StatusCode::NOT_FOUND
  metrics.RecordRpc("rcknn.v1.Rcknn", "GetIndex", 99, 0.0003);
  metrics.RecordRpc("rcknn.v1.Rcknn", "GetIndex", -1, 0.0003);

  auto handled = [&](const char* method, const char* code) {
    return CounterValue(
        metrics, "grpc_server_handled_total",
        {{"grpc_service", "rcknn.v1.Rcknn"}, {"grpc_method", method}, {"grpc_code", code}});
  };
  EXPECT_EQ(handled("Search", "OK"), 3.0);
  EXPECT_EQ(handled("Search", "INVALID_ARGUMENT"), 2.0);
  EXPECT_EQ(handled("GetIndex", "NOT_FOUND"), 1.0);
  EXPECT_EQ(handled("GetIndex", "UNKNOWN"), 2.0);

  const auto search_seconds =
      Series(metrics, "grpc_server_handling_seconds",
             {{"grpc_service", "rcknn.v1.Rcknn"}, {"grpc_method", "Search"}})
          .histogram;
  EXPECT_EQ(search_seconds.sample_count, 5u);
  EXPECT_DOUBLE_EQ(search_seconds.sample_sum, 3 * 0.002 + 2 * 0.0001);
  EXPECT_EQ(search_seconds.bucket.front().upper_bound, 0.0001);
  EXPECT_EQ(search_seconds.bucket.front().cumulative_count, 2u);
  EXPECT_EQ(Series(metrics, "grpc_server_handling_seconds",
                   {{"grpc_service", "rcknn.v1.Rcknn"}, {"grpc_method", "GetIndex"}})
                .histogram.sample_count,
            3u);
}

TEST(ServerMetricsTest, InitializedMethodsReadZero) {
  ServerMetrics metrics;
  metrics.InitializeRpcMethod("rcknn.v1.Rcknn", "BuildIndex");
  EXPECT_EQ(
      CounterValue(
          metrics, "grpc_server_handled_total",
          {{"grpc_service", "rcknn.v1.Rcknn"}, {"grpc_method", "BuildIndex"}, {"grpc_code", "OK"}}),
      0.0);
  EXPECT_EQ(Series(metrics, "grpc_server_handling_seconds",
                   {{"grpc_service", "rcknn.v1.Rcknn"}, {"grpc_method", "BuildIndex"}})
                .histogram.sample_count,
            0u);
}

TEST(ServerMetricsTest, MethodLabelsAreBounded) {
  ServerMetrics metrics;
  const int extra = 10;
  for (int i = 0; i < ServerMetrics::kMaxRpcMethods + extra; ++i) {
    metrics.RecordRpc("probe.Service", "Method" + std::to_string(i), 12, 0.001);
  }
  const auto families = metrics.registry()->Collect();
  const prometheus::MetricFamily* seconds = FindFamily(families, "grpc_server_handling_seconds");
  ASSERT_NE(seconds, nullptr);
  EXPECT_EQ(seconds->metric.size(), static_cast<size_t>(ServerMetrics::kMaxRpcMethods) + 1);
  EXPECT_EQ(
      CounterValue(
          metrics, "grpc_server_handled_total",
          {{"grpc_service", "other"}, {"grpc_method", "other"}, {"grpc_code", "UNIMPLEMENTED"}}),
      static_cast<double>(extra));
  // Pairs seen before the limit keep their own series.
  metrics.RecordRpc("probe.Service", "Method0", 12, 0.001);
  EXPECT_EQ(CounterValue(metrics, "grpc_server_handled_total",
                         {{"grpc_service", "probe.Service"},
                          {"grpc_method", "Method0"},
                          {"grpc_code", "UNIMPLEMENTED"}}),
            2.0);
}

TEST(ServerMetricsTest, CodeNamesAndMethodSplitting) {
  EXPECT_EQ(GrpcCodeName(0), "OK");
  EXPECT_EQ(GrpcCodeName(3), "INVALID_ARGUMENT");
  EXPECT_EQ(GrpcCodeName(4), "DEADLINE_EXCEEDED");
  EXPECT_EQ(GrpcCodeName(8), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(GrpcCodeName(9), "FAILED_PRECONDITION");
  EXPECT_EQ(GrpcCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(17), "UNKNOWN");
  // Same numbering as absl::StatusCode.
  EXPECT_EQ(GrpcCodeName(static_cast<int>(absl::StatusCode::kCancelled)), "CANCELLED");
  EXPECT_EQ(GrpcCodeName(static_cast<int>(absl::StatusCode::kDataLoss)), "DATA_LOSS");

  auto [service, method] = SplitGrpcMethod("/rcknn.v1.Rcknn/Search");
  EXPECT_EQ(service, "rcknn.v1.Rcknn");
  EXPECT_EQ(method, "Search");
  auto [no_service, whole] = SplitGrpcMethod("Search");
  EXPECT_EQ(no_service, "");
  EXPECT_EQ(whole, "Search");
}

TEST(ServerMetricsTest, BuildsAndGauges) {
  ServerMetrics metrics;
  metrics.RecordBuild(0.8);
  metrics.RecordBuild(12.0);
  IndexStateCounts counts;
  counts.loading = 1;
  counts.building = 2;
  counts.ready = 3;
  counts.failed = 4;
  metrics.SetIndexCounts(counts);
  metrics.SetIndexTotals(32768, 123456789);
  metrics.SetPoolThreads(2);

  const auto build = Series(metrics, "rcknn_index_build_seconds").histogram;
  EXPECT_EQ(build.sample_count, 2u);
  EXPECT_DOUBLE_EQ(build.sample_sum, 12.8);
  EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", "loading"}}).gauge.value, 1.0);
  EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", "building"}}).gauge.value, 2.0);
  EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", "ready"}}).gauge.value, 3.0);
  EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", "failed"}}).gauge.value, 4.0);
  EXPECT_EQ(Series(metrics, "rcknn_index_points").gauge.value, 32768.0);
  EXPECT_EQ(Series(metrics, "rcknn_index_memory_bytes").gauge.value, 123456789.0);
  EXPECT_EQ(Series(metrics, "rcknn_query_pool_threads").gauge.value, 2.0);

  // Gauges are set, not added to.
  IndexStateCounts one_ready;
  one_ready.ready = 1;
  metrics.SetIndexCounts(one_ready);
  EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", "failed"}}).gauge.value, 0.0);
  EXPECT_EQ(Series(metrics, "rcknn_indexes", {{"state", "ready"}}).gauge.value, 1.0);
}

TEST(ServerMetricsTest, ConcurrentRecordingLosesNothing) {
  ServerMetrics metrics;
  constexpr int kThreads = 4;
  constexpr int kRounds = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      const std::vector<int64_t> evaluations = {10, 20};
      for (int i = 0; i < kRounds; ++i) {
        metrics.RecordSearch(Stats(2, 30, 1, 1, 1, 1, 0), evaluations);
        metrics.RecordRpc("rcknn.v1.Rcknn", t % 2 == 0 ? "Search" : "GetIndex", i % 3, 0.001);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(CounterValue(metrics, "rcknn_queries_total"), 2.0 * kThreads * kRounds);
  EXPECT_EQ(Series(metrics, "rcknn_query_distance_evaluations").histogram.sample_count,
            2u * kThreads * kRounds);
  double handled = 0.0;
  for (const char* method : {"Search", "GetIndex"}) {
    for (const char* code : {"OK", "CANCELLED", "UNKNOWN"}) {
      handled += CounterValue(
          metrics, "grpc_server_handled_total",
          {{"grpc_service", "rcknn.v1.Rcknn"}, {"grpc_method", method}, {"grpc_code", code}});
    }
  }
  EXPECT_EQ(handled, static_cast<double>(kThreads * kRounds));
}

TEST(ServerMetricsTest, RejectedSearchesAreCountedByReason) {
  ServerMetrics metrics;
  // Both reasons read 0 before the first refusal.
  EXPECT_EQ(CounterValue(metrics, "rcknn_search_rejected_total", {{"reason", "queue_full"}}), 0.0);
  EXPECT_EQ(CounterValue(metrics, "rcknn_search_rejected_total", {{"reason", "memory"}}), 0.0);
  metrics.RecordSearchRejected("queue_full");
  metrics.RecordSearchRejected("queue_full");
  metrics.RecordSearchRejected("memory");
  EXPECT_EQ(CounterValue(metrics, "rcknn_search_rejected_total", {{"reason", "queue_full"}}), 2.0);
  EXPECT_EQ(CounterValue(metrics, "rcknn_search_rejected_total", {{"reason", "memory"}}), 1.0);
}

TEST(ServerMetricsTest, TextExpositionNamesEveryFamilyWithItsType) {
  ServerMetrics metrics;
  metrics.RecordSearch(Stats(1, 5, 1, 1, 0, 0, 0), std::vector<int64_t>{5});
  metrics.RecordRpc("rcknn.v1.Rcknn", "Search", 0, 0.001);
  const std::string text = metrics.TextExposition();
  EXPECT_THAT(text, HasSubstr("# TYPE rcknn_queries_total counter\n"));
  EXPECT_THAT(text, HasSubstr("rcknn_queries_total 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE rcknn_query_distance_evaluations histogram\n"));
  EXPECT_THAT(text, HasSubstr("rcknn_query_distance_evaluations_count 1\n"));
  EXPECT_THAT(text, HasSubstr("rcknn_subtrees_pruned_total{reason=\"predecessor\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE rcknn_indexes gauge\n"));
  EXPECT_THAT(text, HasSubstr("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Search\","
                              "grpc_service=\"rcknn.v1.Rcknn\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE grpc_server_handling_seconds histogram\n"));
}

}  // namespace
}  // namespace rcknn::server
