// The server's Prometheus metrics (docs/design.md section 6) after known workloads on an in-process
// server without an endpoint: the traversal counters equal the sums of the SearchStats the
// client received, every finished RPC is counted with its code (errors and streams included),
// the index and pool gauges follow the registry, and the exposition passes `promtool check
// metrics`.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

constexpr char kIndex[] = "metrics";

// The value of the series `series` (name with its labels exactly as exposed, e.g.
// `rcknn_subtrees_pruned_total{reason="bound"}`) in `text`; -1 if absent.
double SeriesValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, series) || line.size() <= series.size() ||
        line[series.size()] != ' ') {
      continue;
    }
    double value = 0;
    if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) return value;
  }
  return -1;
}

std::string Handled(const std::string& method, const std::string& code) {
  return absl::StrCat("grpc_server_handled_total{grpc_code=\"", code, "\",grpc_method=\"", method,
                      "\",grpc_service=\"rcknn.v1.Rcknn\"}");
}

struct Sums {
  int64_t queries = 0;
  int64_t evaluations = 0;
  int64_t heap_pushes = 0;
  int64_t nodes_visited = 0;
  int64_t pruned_by_bound = 0;
  int64_t pruned_by_predecessor = 0;

  void Add(const v1::SearchResponse& response) {
    queries += response.num_queries();
    evaluations += response.stats().distance_evaluations();
    heap_pushes += response.stats().heap_pushes();
    nodes_visited += response.stats().nodes_visited();
    pruned_by_bound += response.stats().subtrees_pruned_by_bound();
    pruned_by_predecessor += response.stats().subtrees_pruned_by_predecessor();
  }
};

std::vector<int64_t> QueryIds(int count, int seed, int64_t n) {
  std::vector<int64_t> ids;
  for (int q = 0; q < count; ++q) ids.push_back((seed * 7919 + q * 613) % n);
  return ids;
}

class ServerMetricsWiringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_ = testing::StartTestServer();
    points_ = testing::NormalPoints(kPoints, 2, 5);
    const v1::IndexInfo info = testing::CreateReadyIndex(
        *test_.stub, kIndex, testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 1.0, 32), points_, 700);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }

  std::string Text() const { return test_.server->metrics().TextExposition(); }

  static constexpr int64_t kPoints = 3000;
  testing::TestServer test_;
  core::RowMatrix points_;
};

TEST_F(ServerMetricsWiringTest, TraversalCountersEqualTheStatsReturnedToClients) {
  Sums sums;
  int searches = 0;
  for (int r = 0; r < 6; ++r) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    ASSERT_TRUE(test_.stub
                    ->Search(&context,
                             testing::IdSearch(kIndex, 3 + r, QueryIds(1 + 9 * r, r, kPoints),
                                               /*predecessor_mode=*/r % 2 == 1),
                             &response)
                    .ok());
    sums.Add(response);
    ++searches;
  }
  int streams = 0;
  for (int s = 0; s < 2; ++s) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    auto stream = test_.stub->SearchStream(&context);
    for (int r = 0; r < 5; ++r) {
      ASSERT_TRUE(stream->Write(testing::IdSearch(kIndex, 5, QueryIds(2 + 11 * r, 100 + r, kPoints),
                                                  /*predecessor_mode=*/r == 3)));
    }
    stream->WritesDone();
    v1::SearchResponse response;
    int answers = 0;
    while (stream->Read(&response)) {
      sums.Add(response);
      ++answers;
    }
    ASSERT_TRUE(stream->Finish().ok());
    EXPECT_EQ(answers, 5);
    ++streams;
  }
  ASSERT_GT(sums.evaluations, 0);
  ASSERT_GT(sums.pruned_by_predecessor + sums.pruned_by_bound, 0);

  const std::string text = Text();
  EXPECT_EQ(SeriesValue(text, "rcknn_queries_total"), sums.queries) << text;
  EXPECT_EQ(SeriesValue(text, "rcknn_distance_evaluations_total"), sums.evaluations);
  EXPECT_EQ(SeriesValue(text, "rcknn_heap_pushes_total"), sums.heap_pushes);
  EXPECT_EQ(SeriesValue(text, "rcknn_nodes_visited_total"), sums.nodes_visited);
  EXPECT_EQ(SeriesValue(text, "rcknn_subtrees_pruned_total{reason=\"bound\"}"),
            sums.pruned_by_bound);
  EXPECT_EQ(SeriesValue(text, "rcknn_subtrees_pruned_total{reason=\"predecessor\"}"),
            sums.pruned_by_predecessor);
  // One observation per query and one per batch (a Search, or a SearchStream message).
  EXPECT_EQ(SeriesValue(text, "rcknn_query_distance_evaluations_count"), sums.queries);
  EXPECT_EQ(SeriesValue(text, "rcknn_query_distance_evaluations_sum"), sums.evaluations);
  EXPECT_EQ(SeriesValue(text, "rcknn_search_batch_size_count"), searches + 5 * streams);
  EXPECT_EQ(SeriesValue(text, "rcknn_search_batch_size_sum"), sums.queries);

  EXPECT_EQ(SeriesValue(text, Handled("Search", "OK")), searches);
  EXPECT_EQ(SeriesValue(text, Handled("SearchStream", "OK")), streams);
  EXPECT_EQ(SeriesValue(text, Handled("CreateIndex", "OK")), 1);
  EXPECT_EQ(SeriesValue(text, Handled("UploadPoints", "OK")), 1);
  EXPECT_EQ(SeriesValue(text, Handled("BuildIndex", "OK")), 1);
  EXPECT_EQ(SeriesValue(text,
                        "grpc_server_handling_seconds_count{grpc_method=\"Search\","
                        "grpc_service=\"rcknn.v1.Rcknn\"}"),
            searches);
}

TEST_F(ServerMetricsWiringTest, ErrorsAreCountedWithTheirCodes) {
  int not_found = 0;
  int invalid = 0;
  for (int i = 0; i < 3; ++i) {  // unknown index
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    const grpc::Status status =
        test_.stub->Search(&context, testing::IdSearch("absent", 3, {1}), &response);
    ASSERT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    ++not_found;
  }
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::GetIndexRequest request;
    request.set_index_id("absent");
    v1::IndexInfo info;
    ASSERT_EQ(test_.stub->GetIndex(&context, request, &info).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  for (int i = 0; i < 2; ++i) {  // k = 0
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    const grpc::Status status =
        test_.stub->Search(&context, testing::IdSearch(kIndex, 0, {1}), &response);
    ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    ++invalid;
  }
  {  // a stream that fails on its second message: the answered batch still counts
    grpc::ClientContext context;
    testing::SetDeadline(context);
    auto stream = test_.stub->SearchStream(&context);
    ASSERT_TRUE(stream->Write(testing::IdSearch(kIndex, 3, {1, 2})));
    stream->Write(testing::IdSearch(kIndex, 0, {1, 2}));
    stream->WritesDone();
    v1::SearchResponse response;
    while (stream->Read(&response)) {
    }
    ASSERT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  const std::string text = Text();
  EXPECT_EQ(SeriesValue(text, Handled("Search", "NOT_FOUND")), not_found) << text;
  EXPECT_EQ(SeriesValue(text, Handled("Search", "INVALID_ARGUMENT")), invalid);
  EXPECT_EQ(SeriesValue(text, Handled("GetIndex", "NOT_FOUND")), 1);
  EXPECT_EQ(SeriesValue(text, Handled("SearchStream", "INVALID_ARGUMENT")), 1);
  EXPECT_EQ(SeriesValue(text, "rcknn_queries_total"), 2);
  // Methods not called yet are exported at 0 (InitializeRpcMethod at start-up).
  EXPECT_EQ(SeriesValue(text, Handled("ListIndexes", "OK")), 0);
  EXPECT_EQ(SeriesValue(text,
                        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Check\","
                        "grpc_service=\"grpc.health.v1.Health\"}"),
            0);
}

TEST_F(ServerMetricsWiringTest, IndexAndPoolGaugesFollowTheRegistry) {
  // The build task updates the gauges just after it publishes READY, which WatchIndex may report
  // first: wait for them (bounded).
  std::string text = Text();
  for (int i = 0; i < 500 && SeriesValue(text, "rcknn_index_build_seconds_count") < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    text = Text();
  }
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"ready\"}"), 1) << text;
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"loading\"}"), 0);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_points"), kPoints);
  EXPECT_GT(SeriesValue(text, "rcknn_index_memory_bytes"), 0);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_build_seconds_count"), 1);
  EXPECT_EQ(SeriesValue(text, "rcknn_query_pool_threads"), test_.server->threads());

  ASSERT_TRUE(testing::CreateIndex(*test_.stub, "second",
                                   testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 1.0, 8))
                  .ok());
  ASSERT_TRUE(
      testing::UploadPoints(*test_.stub, "second", testing::NormalPoints(100, 2, 6), 50).ok());
  text = Text();
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"loading\"}"), 1);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_points"), kPoints + 100);

  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::DeleteIndexRequest request;
  request.set_index_id(kIndex);
  v1::DeleteIndexResponse response;
  ASSERT_TRUE(test_.stub->DeleteIndex(&context, request, &response).ok());
  text = Text();
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"ready\"}"), 0);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_points"), 100);
  grpc::ClientContext get_context;
  testing::SetDeadline(get_context);
  v1::GetIndexRequest get;
  get.set_index_id("second");
  v1::IndexInfo second;
  ASSERT_TRUE(test_.stub->GetIndex(&get_context, get, &second).ok());
  EXPECT_EQ(SeriesValue(text, "rcknn_index_memory_bytes"), second.memory_bytes());
}

TEST_F(ServerMetricsWiringTest, ExpositionPassesPromtool) {
  for (int r = 0; r < 3; ++r) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    test_.stub->Search(&context, testing::IdSearch(kIndex, 4, QueryIds(10, r, kPoints)), &response);
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::SearchResponse response;
  test_.stub->Search(&context, testing::IdSearch("absent", 4, {1}), &response);

  const std::string path =
      absl::StrCat(::testing::TempDir(), "/rcknn_server_metrics_", getpid(), ".txt");
  {
    std::ofstream out(path);
    out << Text();
  }
  // A missing promtool is a failure (Debian package `prometheus`, installed by tests/run.sh).
  const int rc = std::system(absl::StrCat("promtool check metrics < ", path).c_str());
  std::remove(path.c_str());
  EXPECT_EQ(rc, 0) << "promtool check metrics failed (or promtool is not installed)";
}

}  // namespace
}  // namespace rcknn
