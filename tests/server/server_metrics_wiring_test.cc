// The server's Prometheus metrics (docs/design.md section 6) after known workloads on an in-process
// server without an endpoint: the traversal counters equal the sums of the SearchStats the
// client received, every finished RPC is counted with its code (errors and streams included),
// the index and pool gauges follow the registry, and the exposition passes `promtool check
// metrics`.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using testing::StatusIs;

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

  void Add(const client::SearchResult& result) {
    queries += result.num_queries;
    evaluations += result.stats.distance_evaluations();
    heap_pushes += result.stats.heap_pushes();
    nodes_visited += result.stats.nodes_visited();
    pruned_by_bound += result.stats.subtrees_pruned_by_bound();
    pruned_by_predecessor += result.stats.subtrees_pruned_by_predecessor();
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
    served_.Start(server::ServerOptions(), testing::UploadInChunksOf(700, 2));
    points_ = testing::NormalPoints(kPoints, 2, 5);
    const absl::StatusOr<v1::IndexInfo> info = testing::CreateReadyIndex(
        client(), kIndex, testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 1.0, 32), points_);
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  }
  void TearDown() override { served_.Stop(); }

  client::RcknnClient& client() { return served_.client(); }
  // A client that sends at most `per_request` queries per request: a search of more goes as
  // several requests on one SearchStream.
  std::unique_ptr<client::RcknnClient> StreamingClient(int64_t per_request) {
    client::ClientOptions options;
    options.max_queries_per_request = per_request;
    return testing::MakeClient(served_.test(), options);
  }
  std::string Text() { return served_.server().metrics().TextExposition(); }

  static constexpr int64_t kPoints = 3000;
  testing::ClientOnServer served_;
  core::RowMatrix points_;
};

TEST_F(ServerMetricsWiringTest, TraversalCountersEqualTheStatsReturnedToClients) {
  Sums sums;
  int searches = 0;
  for (int r = 0; r < 6; ++r) {
    const std::vector<int64_t> ids = QueryIds(1 + 9 * r, r, kPoints);
    client::SearchQuery query = testing::IdQuery(kIndex, ids, 3 + r);
    query.predecessor_mode = r % 2 == 1;
    const absl::StatusOr<client::SearchResult> result = client().Search(query);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->requests, 1);  // one unary Search
    sums.Add(*result);
    ++searches;
  }
  // Two searches of 20 queries, each as 5 requests of 4 on one SearchStream.
  const std::unique_ptr<client::RcknnClient> streaming = StreamingClient(4);
  int streams = 0;
  int stream_requests = 0;
  for (int s = 0; s < 2; ++s) {
    const std::vector<int64_t> ids = QueryIds(20, 100 + s, kPoints);
    client::SearchQuery query = testing::IdQuery(kIndex, ids, 5);
    query.predecessor_mode = s == 1;
    const absl::StatusOr<client::SearchResult> result = streaming->Search(query);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->requests, 5);
    sums.Add(*result);
    stream_requests += static_cast<int>(result->requests);
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
  EXPECT_EQ(SeriesValue(text, "rcknn_search_batch_size_count"), searches + stream_requests);
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
  const std::vector<int64_t> one = {1};
  int not_found = 0;
  int invalid = 0;
  for (int i = 0; i < 3; ++i) {  // unknown index
    EXPECT_THAT(client().Search(testing::IdQuery("absent", one, 3)),
                StatusIs(absl::StatusCode::kNotFound, "absent"));
    ++not_found;
  }
  EXPECT_THAT(client().GetIndex("absent"), StatusIs(absl::StatusCode::kNotFound, "absent"));
  for (int i = 0; i < 2; ++i) {  // k = 0
    EXPECT_THAT(client().Search(testing::IdQuery(kIndex, one, 0)),
                StatusIs(absl::StatusCode::kInvalidArgument, "k: must be >= 1"));
    ++invalid;
  }
  {
    // A stream that fails on its second message (an id past the index): the answered batch
    // still counts.
    const std::vector<int64_t> ids = {1, 2, kPoints, 3};
    int64_t answered = 0;
    EXPECT_THAT(StreamingClient(2)->Search(testing::IdQuery(kIndex, ids, 3),
                                           [&](int64_t done, int64_t) { answered = done; }),
                StatusIs(absl::StatusCode::kInvalidArgument, "request 1: query_ids[0]"));
    EXPECT_EQ(answered, 2);
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
  EXPECT_TRUE(
      testing::WaitFor([&] { return SeriesValue(Text(), "rcknn_index_build_seconds_count") >= 1; },
                       absl::Seconds(5)));
  std::string text = Text();
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"ready\"}"), 1) << text;
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"loading\"}"), 0);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_points"), kPoints);
  EXPECT_GT(SeriesValue(text, "rcknn_index_memory_bytes"), 0);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_build_seconds_count"), 1);
  EXPECT_EQ(SeriesValue(text, "rcknn_query_pool_threads"), served_.server().threads());

  ASSERT_TRUE(
      client().CreateIndex("second", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 1.0, 8)).ok());
  const core::RowMatrix second_points = testing::NormalPoints(100, 2, 6);
  ASSERT_TRUE(client().UploadPoints("second", testing::View(second_points)).ok());
  text = Text();
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"loading\"}"), 1);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_points"), kPoints + 100);

  ASSERT_TRUE(client().DeleteIndex(kIndex).ok());
  text = Text();
  EXPECT_EQ(SeriesValue(text, "rcknn_indexes{state=\"ready\"}"), 0);
  EXPECT_EQ(SeriesValue(text, "rcknn_index_points"), 100);
  const absl::StatusOr<v1::IndexInfo> second = client().GetIndex("second");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(SeriesValue(text, "rcknn_index_memory_bytes"), second->memory_bytes());
}

TEST_F(ServerMetricsWiringTest, ExpositionPassesPromtool) {
  for (int r = 0; r < 3; ++r) {
    const std::vector<int64_t> ids = QueryIds(10, r, kPoints);
    EXPECT_TRUE(client().Search(testing::IdQuery(kIndex, ids, 4)).ok());
  }
  const std::vector<int64_t> one = {1};
  EXPECT_THAT(client().Search(testing::IdQuery("absent", one, 4)),
              StatusIs(absl::StatusCode::kNotFound));

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
