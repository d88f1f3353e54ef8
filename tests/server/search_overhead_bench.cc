// rcknn-server-bench: what gRPC costs. Builds the gold workload (docs/design.md section 7) both in
// the core library and in an in-process rcknn-server reached over loopback TCP through a real stub,
// then alternates, round by round, the 1,024 gold queries (k = 50) as one core call and as one
// Search call, and times single-query Search calls. Prints one JSON object.
//
//   rcknn-server-bench [--threads=2] [--rounds=7] [--latency_queries=2000] [--data_dir=DIR]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/knn_index.h"
#include "server/logging.h"
#include "tests/server/server_test_util.h"
#include "core/flags_usage.h"
#include "tests/testing/shared_data.h"

ABSL_FLAG(int, threads, 2, "threads of the core arena and of the server pool");
ABSL_FLAG(int, rounds, 7, "alternating timed rounds of the batch");
ABSL_FLAG(int, latency_queries, 2000, "single-query Search calls timed");
ABSL_FLAG(std::string, data_dir, rcknn::testing::DefaultDataDir(),
          "directory of the fixed data sets (tests/data)");
ABSL_FLAG(bool, predecessor, false, "predecessor mode");

namespace rcknn {
namespace {

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double Percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const size_t rank = static_cast<size_t>(std::ceil(p * values.size())) - 1;
  return values[std::min(rank, values.size() - 1)];
}

int Run() {
  const int threads = absl::GetFlag(FLAGS_threads);
  auto set = testing::LoadDataset(absl::GetFlag(FLAGS_data_dir), "gold");
  if (!set.ok()) {
    std::fprintf(stderr, "%s\n", set.status().ToString().c_str());
    return 1;
  }
  tbb::task_arena arena(threads);
  auto index = core::KnnIndex::Build(set->Spec(), set->Data(), &arena);
  if (!index.ok()) return 1;

  server::ServerOptions options;
  options.threads = threads;
  testing::TestServer test = testing::StartTestServer(options);
  const v1::IndexInfo info =
      testing::CreateReadyIndex(*test.stub, "gold", testing::SpecOf(*set), set->points, 8192);
  if (info.state() != v1::INDEX_STATE_READY) {
    std::fprintf(stderr, "server build failed: %s\n", info.error().c_str());
    return 1;
  }

  const bool pred = absl::GetFlag(FLAGS_predecessor);
  const int64_t nq = static_cast<int64_t>(set->query_ids.size());
  core::KnnOptions knn;
  knn.k = set->k;
  knn.predecessor_mode = pred;
  core::QueryBatch batch;
  batch.ids = set->query_ids;
  std::vector<int64_t> ids(nq * knn.k);
  std::vector<double> dists(nq * knn.k);
  const v1::SearchRequest request = testing::IdSearch("gold", set->k, set->query_ids, pred);

  std::vector<double> core_qps;
  std::vector<double> server_qps;
  std::string mismatch;
  for (int round = -1; round < absl::GetFlag(FLAGS_rounds); ++round) {  // round -1 warms up
    absl::Time start = absl::Now();
    if (!(*index)->Search(batch, knn, &arena, nullptr, ids.data(), dists.data()).ok()) return 1;
    const double core_rate = nq / absl::ToDoubleSeconds(absl::Now() - start);
    start = absl::Now();
    grpc::ClientContext context;
    v1::SearchResponse response;
    if (!test.stub->Search(&context, request, &response).ok()) return 1;
    const double server_rate = nq / absl::ToDoubleSeconds(absl::Now() - start);
    if (round < 0) continue;
    core_qps.push_back(core_rate);
    server_qps.push_back(server_rate);
    if (mismatch.empty()) {
      mismatch =
          testing::CompareAnswers(response.neighbor_ids().data(), response.distances().data(),
                                  ids.data(), dists.data(), nq, knn.k);
    }
  }

  std::mt19937_64 engine(7);
  std::uniform_int_distribution<int64_t> uniform(0, set->n - 1);
  std::vector<double> latencies_ms;
  std::vector<double> core_latencies_ms;
  const int latency_queries = absl::GetFlag(FLAGS_latency_queries);
  for (int i = -latency_queries / 10; i < latency_queries; ++i) {
    const int64_t id = uniform(engine);
    const v1::SearchRequest single = testing::IdSearch("gold", set->k, {id}, pred);
    absl::Time start = absl::Now();
    grpc::ClientContext context;
    v1::SearchResponse response;
    if (!test.stub->Search(&context, single, &response).ok()) return 1;
    const double server_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    core::QueryBatch one;
    one.ids = absl::MakeConstSpan(&id, 1);
    start = absl::Now();
    if (!(*index)->Search(one, knn, &arena, nullptr, ids.data(), dists.data()).ok()) return 1;
    const double core_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    if (i >= 0) {
      latencies_ms.push_back(server_ms);
      core_latencies_ms.push_back(core_ms);
    }
  }

  const double core_rate = Median(core_qps);
  const double server_rate = Median(server_qps);
  std::printf(
      "{\"workload\":\"gold\",\"threads\":%d,\"queries\":%lld,\"k\":%lld,\"predecessor_mode\":%s,"
      "\"core_queries_per_second\":%.1f,\"server_queries_per_second\":%.1f,"
      "\"grpc_overhead_percent\":%.1f,\"single_query_latency_ms_p50\":%.3f,"
      "\"single_query_latency_ms_p99\":%.3f,\"core_single_query_ms_p50\":%.3f,"
      "\"core_single_query_ms_p99\":%.3f,\"answers_match_core\":%s}\n",
      threads, static_cast<long long>(nq), static_cast<long long>(knn.k), pred ? "true" : "false",
      core_rate, server_rate, 100.0 * (core_rate / server_rate - 1.0),
      Percentile(latencies_ms, 0.5), Percentile(latencies_ms, 0.99),
      Percentile(core_latencies_ms, 0.5), Percentile(core_latencies_ms, 0.99),
      mismatch.empty() ? "true" : "false");
  if (!mismatch.empty()) std::fprintf(stderr, "answers differ: %s\n", mismatch.c_str());
  return 0;
}

}  // namespace
}  // namespace rcknn

int main(int argc, char** argv) {
  rcknn::core::SetUpFlagsUsage(
      "rcknn-server-bench", "tests/server/search_overhead_bench.cc",
      "gRPC overhead on gold: one Search call against one core-library call, alternated, and "
      "single-query Search latency through a real stub, as JSON (docs/benchmarks.md).\n"
      "Usage: rcknn-server-bench [--threads=2] [--rounds=7] [--latency_queries=2000] "
      "[--predecessor]");
  absl::ParseCommandLine(argc, argv);
  rcknn::server::SetLogLevel(rcknn::server::LogLevel::kWarning);
  return rcknn::Run();
}
