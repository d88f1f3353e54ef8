// The client library (client/rcknn_client.h) against an in-process server: chunked uploads,
// builds followed to READY, and searches split under the message size limit into many requests
// on one SearchStream, whose concatenated answers equal one big request's.
#include "client/rcknn_client.h"

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

TEST(RcknnClientTest, UploadBuildAndSearchInManyRequests) {
  server::ServerOptions options;
  options.max_message_bytes = 256 << 10;
  testing::TestServer test = testing::StartTestServer(options);

  client::ClientOptions client_options;

  client_options.timeout = testing::kCallTimeout;
  client_options.target = test.server->address();
  client_options.max_message_bytes = options.max_message_bytes;
  client_options.upload_chunk_bytes = 32 << 10;
  client::RcknnClient client(client_options);

  const int64_t n = 5000;
  const core::RowMatrix points = testing::NormalPoints(n, 2, 21);
  ASSERT_TRUE(
      client.CreateIndex("c", testing::ResidualSpec(2, v1::KERNEL_MATERN32, 1.5, 0.5, 64)).ok());
  auto uploaded = client.UploadPoints(
      "c", client::PointsView{absl::MakeConstSpan(points.data(), points.size()), 2});
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_EQ(uploaded->total_points(), n);
  ASSERT_TRUE(client.BuildIndex("c").ok());
  int updates = 0;
  auto info = client.WaitForIndex("c", [&](const v1::IndexInfo&) { ++updates; });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::INDEX_STATE_READY);
  EXPECT_GE(updates, 1);

  // Every id in predecessor mode, k = 20: about 1.8 MB of answers, many requests of 256 KiB.
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  client::SearchQuery query;
  query.index_id = "c";
  query.k = 20;
  query.ids = ids;
  query.predecessor_mode = true;
  auto split = client.Search(query);
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_GT(split->requests, 5);
  EXPECT_EQ(split->num_queries, n);
  ASSERT_EQ(split->ids.size(), static_cast<size_t>(n * 20));
  EXPECT_GT(split->stats.distance_evaluations(), 0);
  EXPECT_EQ(split->ids[0], -1);  // query 0 has no predecessor

  // The same queries in unary requests of 100 through the stub, concatenated.
  std::vector<int64_t> ref_ids;
  std::vector<double> ref_dists;
  for (int64_t first = 0; first < n; first += 100) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse part;
    const std::vector<int64_t> part_ids(ids.begin() + first, ids.begin() + first + 100);
    ASSERT_TRUE(
        test.stub->Search(&context, testing::IdSearch("c", 20, part_ids, true), &part).ok());
    ref_ids.insert(ref_ids.end(), part.neighbor_ids().begin(), part.neighbor_ids().end());
    ref_dists.insert(ref_dists.end(), part.distances().begin(), part.distances().end());
  }
  EXPECT_EQ(testing::CompareAnswers(split->ids.data(), split->distances.data(), ref_ids.data(),
                                    ref_dists.data(), n, 20),
            "");

  // Out-of-sample points are split the same way.
  const core::RowMatrix queries = testing::NormalPoints(3000, 2, 22);
  client::SearchQuery by_point;
  by_point.index_id = "c";
  by_point.k = 20;
  by_point.points = client::PointsView{absl::MakeConstSpan(queries.data(), queries.size()), 2};
  auto points_result = client.Search(by_point);
  ASSERT_TRUE(points_result.ok()) << points_result.status();
  EXPECT_GT(points_result->requests, 1);
  EXPECT_EQ(points_result->num_queries, 3000);

  // Errors come back as absl::Status with the server's code and message.
  query.k = 0;
  auto bad = client.Search(query);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.DeleteIndex("missing").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(client.DeleteIndex("c").ok());
  auto listed = client.ListIndexes();
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

// SearchRequest.raw_answer: the server fills neighbor_ids_raw / distances_raw (little-endian
// int64 / float64) and leaves the repeated fields empty; the client decodes either layout into
// the same bits, in one request or split over a SearchStream.
TEST(RcknnClientTest, RawAnswersEqualPackedOnes) {
  server::ServerOptions options;
  options.max_message_bytes = 256 << 10;
  testing::TestServer test = testing::StartTestServer(options);
  client::ClientOptions raw_options;
  raw_options.target = test.server->address();
  raw_options.max_message_bytes = options.max_message_bytes;
  client::ClientOptions packed_options = raw_options;
  packed_options.raw_answers = false;
  client::RcknnClient raw_client(raw_options);
  client::RcknnClient packed_client(packed_options);

  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, 2, 31);
  ASSERT_TRUE(
      raw_client.CreateIndex("r", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 64)).ok());
  ASSERT_TRUE(raw_client
                  .UploadPoints("r", client::PointsView{
                                         absl::MakeConstSpan(points.data(), points.size()), 2})
                  .ok());
  ASSERT_TRUE(raw_client.BuildIndex("r").ok());
  ASSERT_TRUE(raw_client.WaitForIndex("r").ok());

  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  for (const int64_t count : {int64_t{50}, n}) {
    client::SearchQuery query;
    query.index_id = "r";
    query.k = 15;
    query.ids = absl::MakeConstSpan(ids.data(), static_cast<size_t>(count));
    query.predecessor_mode = true;
    auto raw = raw_client.Search(query);
    auto packed = packed_client.Search(query);
    ASSERT_TRUE(raw.ok()) << raw.status();
    ASSERT_TRUE(packed.ok()) << packed.status();
    EXPECT_EQ(raw->requests, packed->requests);
    EXPECT_EQ(raw->requests > 1, count == n);
    EXPECT_EQ(raw->ids, packed->ids);
    EXPECT_EQ(raw->distances, packed->distances);  // bit for bit (+inf padding included)
  }

  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::SearchRequest request = testing::IdSearch("r", 15, {0, 7, 2999}, true);
  request.set_raw_answer(true);
  v1::SearchResponse response;
  ASSERT_TRUE(test.stub->Search(&context, request, &response).ok());
  EXPECT_EQ(response.neighbor_ids_size(), 0);
  EXPECT_EQ(response.distances_size(), 0);
  ASSERT_EQ(response.neighbor_ids_raw().size(), 3u * 15 * 8);
  ASSERT_EQ(response.distances_raw().size(), 3u * 15 * 8);
  // Query 0 has no predecessor: its row is padding; bytes are little-endian.
  const auto* bytes = reinterpret_cast<const unsigned char*>(response.neighbor_ids_raw().data());
  for (int b = 0; b < 8; ++b) EXPECT_EQ(bytes[b], 0xff);
  const auto* dists = reinterpret_cast<const unsigned char*>(response.distances_raw().data());
  EXPECT_EQ(dists[7], 0x7f);  // +inf = 0x7ff0000000000000, most significant byte last
  EXPECT_EQ(dists[6], 0xf0);
  int64_t first_of_7;
  std::memcpy(&first_of_7, response.neighbor_ids_raw().data() + 15 * 8, 8);
  EXPECT_GE(first_of_7, 0);
  EXPECT_LT(first_of_7, 7);
}

}  // namespace
}  // namespace rcknn
