// The asynchronous service core against an in-process server, through the client library (the
// raw stub only to hold streams open, which the library never does): answer sizes for any k (no
// overflow), admission control (--max_queued_queries) for Search and SearchStream, no thread per
// stream or per watch, WatchIndex woken by changes, and the option checks of --io_threads and
// --max_queued_queries.
#include <dirent.h>

#include <cstdint>
#include <future>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using testing::StatusIs;
using ::testing::HasSubstr;

using testing::HeavySpec;
using testing::IdQuery;
using testing::Range;
using testing::WaitFor;

constexpr int64_t kPoints = 4096;

// Threads of this process (the server is in-process).
int ThreadCount() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

client::SearchQuery IdQuery(const std::vector<int64_t>& ids, int64_t k) {
  return testing::IdQuery("idx", ids, k);
}

TEST(AsyncServiceTest, HugeKIsRefusedNamingKWithTheRightSize) {
  testing::TestServer server = testing::StartTestServer();
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(server);
  ASSERT_TRUE(client->CreateIndex("idx", HeavySpec()).ok());
  const core::RowMatrix points = testing::NormalPoints(kPoints, 3, 5);
  ASSERT_TRUE(client->UploadPoints("idx", {absl::MakeConstSpan(points.data(), points.size()), 3})
                  .ok());
  ASSERT_TRUE(client->BuildIndex("idx").ok());
  absl::StatusOr<v1::IndexInfo> info = client->WaitForIndex("idx");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();

  const std::vector<int64_t> one = {7};
  const std::vector<int64_t> two = {7, 8};
  // k x 18 bytes per entry overflows int64 for both: the size is "more than" int64 can hold.
  const std::string past_int64 =
      absl::StrCat("more than ", std::numeric_limits<int64_t>::max(), " bytes");
  for (int64_t k : {int64_t{1} << 62, std::numeric_limits<int64_t>::max()}) {
    SCOPED_TRACE(k);
    EXPECT_THAT(client->Search(IdQuery(one, k)),
                StatusIs(absl::StatusCode::kResourceExhausted, absl::StrCat("k: ", k)));
    EXPECT_THAT(client->Search(IdQuery(one, k)),
                StatusIs(absl::StatusCode::kResourceExhausted, past_int64));
    // Two queries go on one SearchStream (the client sends one query per request for such k).
    EXPECT_THAT(client->Search(IdQuery(two, k)),
                StatusIs(absl::StatusCode::kResourceExhausted, "request 0: k: "));
  }
  // A k whose answer fits int64 but not a message: its size, exactly, and no advice about the
  // number of queries. The client library asks for the raw layout (16 bytes an entry, plus 256
  // of framing); the packed one takes 18 when k >= n (a padding id of -1 is a 10-byte varint).
  const absl::StatusOr<client::SearchResult> large = client->Search(IdQuery(one, 100'000'000));
  EXPECT_THAT(large, StatusIs(absl::StatusCode::kResourceExhausted,
                              "an answer of 1600000256 bytes for a single query"));
  client::ClientOptions packed;
  packed.raw_answers = false;
  EXPECT_THAT(testing::MakeClient(server, packed)->Search(IdQuery(one, 100'000'000)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       "an answer of 1800000256 bytes for a single query"));
  EXPECT_THAT(large, StatusIs(absl::StatusCode::kResourceExhausted, "--max_message_bytes"));
  EXPECT_THAT(large.status().message(), ::testing::Not(HasSubstr("fewer queries")));
  // Many queries with k < n (10 bytes an entry): the whole answer's size, with the advice about
  // queries. A client told of a larger limit than the server's, so that it sends them in one,
  // asking for the packed layout.
  client::ClientOptions unsplit;
  unsplit.max_message_bytes = int64_t{1} << 30;
  unsplit.raw_answers = false;
  const std::vector<int64_t> many = Range(0, 4000);
  const absl::StatusOr<client::SearchResult> whole =
      testing::MakeClient(server, unsplit)->Search(IdQuery(many, 2000));
  EXPECT_THAT(whole, StatusIs(absl::StatusCode::kResourceExhausted,
                              "the answer (4000 queries x k = 2000) would take 80000256 bytes"));
  EXPECT_THAT(whole, StatusIs(absl::StatusCode::kResourceExhausted, "fewer queries"));
  // A k the answer can hold still works.
  absl::StatusOr<client::SearchResult> fine = client->Search(IdQuery(one, 5000));
  ASSERT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(fine->ids.size(), 5000u);
  EXPECT_EQ(fine->ids[kPoints - 1], -1);  // padding past the other n - 1 points
}

// One pool thread and one slice per batch, so that a running batch holds the pool for seconds and
// what arrives meanwhile waits to start.
class AdmissionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options;
    options.threads = 1;
    options.slice_queries = 16384;
    options.max_queued_queries = 64;
    server_ = new testing::TestServer(testing::StartTestServer(options));
    const v1::IndexInfo info = testing::CreateHeavyIndex(*server_, "idx");
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }
  static void TearDownTestSuite() { delete server_; }

  // Starts a search of every id that holds the pool until `canceller` cancels it.
  std::future<absl::StatusOr<client::SearchResult>> Occupy(client::CallCanceller* canceller) {
    auto search = Start(Range(0, testing::kHeavyPoints), 30, canceller);
    EXPECT_TRUE(WaitFor([] {
      return server_->server->searches_in_flight() == 1 && server_->server->queued_queries() == 0;
    }));
    return search;
  }

  // A search of `ids` on a thread of its own.
  std::future<absl::StatusOr<client::SearchResult>> Start(std::vector<int64_t> ids, int64_t k,
                                                          client::CallCanceller* canceller =
                                                              nullptr) {
    return std::async(std::launch::async, [this, ids = std::move(ids), k, canceller] {
      client::SearchQuery query = IdQuery(ids, k);
      query.canceller = canceller;
      return client_->Search(query);
    });
  }

  static std::string Rejected(absl::string_view reason) {
    const std::string text = server_->server->metrics().TextExposition();
    const std::string series =
        absl::StrCat("rcknn_search_rejected_total{reason=\"", reason, "\"} ");
    const size_t at = text.find(series);
    if (at == std::string::npos) return "absent";
    const size_t value = at + series.size();
    return text.substr(value, text.find('\n', value) - value);
  }

  static testing::TestServer* server_;
  std::unique_ptr<client::RcknnClient> client_ = testing::MakeClient(*server_);
};

testing::TestServer* AdmissionTest::server_ = nullptr;

TEST_F(AdmissionTest, SearchBeyondTheQueueBoundIsRefusedAtOnce) {
  EXPECT_EQ(Rejected("queue_full"), "0");
  client::CallCanceller running;
  auto occupied = Occupy(&running);
  // 40 queries wait to start (under the bound of 64); the next 40 would exceed it.
  auto queued = Start(Range(0, 40), 5);
  ASSERT_TRUE(WaitFor([] { return server_->server->queued_queries() == 40; }));
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(*server_);
  const std::vector<int64_t> ids = Range(100, 140);
  const absl::Time start = absl::Now();
  EXPECT_THAT(client->Search(IdQuery(ids, 5)),
              StatusIs(absl::StatusCode::kResourceExhausted, "--max_queued_queries = 64"));
  // Refused without waiting for the pool, which stays busy for seconds.
  EXPECT_EQ(server_->server->searches_in_flight(), 2);
  std::printf("refused in %.2f ms\n", absl::ToDoubleMilliseconds(absl::Now() - start));
  // A SearchStream request is refused the same way, and the stream ends naming it.
  const std::vector<int64_t> many = Range(0, 80);
  client::ClientOptions small;
  small.max_queries_per_request = 40;
  std::unique_ptr<client::RcknnClient> streaming = testing::MakeClient(*server_, small);
  EXPECT_THAT(streaming->Search(IdQuery(many, 5)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       "request 0: the server is overloaded"));
  // A batch that fits under the bound is still admitted: 64 - 40 = 24.
  auto admitted = Start(Range(0, 24), 5);
  ASSERT_TRUE(WaitFor([] { return server_->server->queued_queries() == 64; }));
  EXPECT_EQ(Rejected("queue_full"), "2");

  // Cancelling the running batch frees the pool: the waiting ones then run and succeed.
  running.Cancel();
  EXPECT_THAT(occupied.get(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_TRUE(queued.get().ok());
  EXPECT_TRUE(admitted.get().ok());
  EXPECT_TRUE(client->Search(IdQuery(ids, 5)).ok());
  EXPECT_EQ(server_->server->queued_queries(), 0);
}

TEST_F(AdmissionTest, ABatchLargerThanTheBoundRunsWhenNothingWaits) {
  // 100 queries > the bound of 64, admitted because nothing waits to start.
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(*server_);
  const std::vector<int64_t> ids = Range(0, 100);
  absl::StatusOr<client::SearchResult> result = client->Search(IdQuery(ids, 5));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_queries, 100);
}

TEST(AsyncServiceTest, StreamsTakeNoThreadEach) {
  testing::TestServer server = testing::StartTestServer();
  ASSERT_EQ(testing::CreateHeavyIndex(server, "idx", 2000).state(), v1::INDEX_STATE_READY);
  // Warm up: one stream answered, so that gRPC's own threads exist before counting.
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(server);
  client::ClientOptions one_per_request;
  one_per_request.max_queries_per_request = 1;
  ASSERT_TRUE(testing::MakeClient(server, one_per_request)
                  ->Search(IdQuery({1, 2, 3}, 5))
                  .ok());
  const int before = ThreadCount();
  constexpr int kStreams = 64;
  // The raw stub: 64 streams held open at once, which the client library never does.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::SearchRequest, v1::SearchResponse>>>
      streams;
  for (int s = 0; s < kStreams; ++s) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    testing::SetDeadline(*contexts.back());
    streams.push_back(server.stub->SearchStream(contexts.back().get()));
    // One answered request each: the stream is open on the server, its reactor idle.
    ASSERT_TRUE(streams.back()->Write(testing::IdSearch("idx", 5, {s})));
    v1::SearchResponse response;
    ASSERT_TRUE(streams.back()->Read(&response));
    EXPECT_EQ(response.neighbor_ids_size(), 5);
  }
  const int during = ThreadCount();
  EXPECT_LT(during - before, kStreams / 4) << before << " threads before, " << during << " with "
                                           << kStreams << " open streams";
  for (auto& stream : streams) {
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
}

// WatchIndex is a reactor woken by the index's changes: open watches hold no thread, a change
// reaches every one of them at once, and a cancelled or deleted watch ends and unregisters.
TEST(AsyncServiceTest, WatchesAreWokenByChangesAndEndWhenCancelled) {
  testing::TestServer server = testing::StartTestServer();
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(server);
  ASSERT_TRUE(client->CreateIndex("idx", HeavySpec()).ok());
  ASSERT_TRUE(client->GetIndex("idx").ok());  // gRPC's own threads exist before counting
  const int before = ThreadCount();
  constexpr int kWatches = 64;
  // The raw stub: 64 watches held open at once, which the client library never does.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::IndexInfo>>> watches;
  v1::GetIndexRequest request;
  request.set_index_id("idx");
  for (int w = 0; w < kWatches; ++w) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    testing::SetDeadline(*contexts.back());
    watches.push_back(server.stub->WatchIndex(contexts.back().get(), request));
    v1::IndexInfo info;
    ASSERT_TRUE(watches.back()->Read(&info));  // the first report: LOADING, no points
    EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
    EXPECT_EQ(info.num_points(), 0);
  }
  EXPECT_EQ(server.server->open_watches(), kWatches);
  const int during = ThreadCount();
  EXPECT_LT(during - before, kWatches / 4) << before << " threads before, " << during << " with "
                                           << kWatches << " open watches";

  // An upload changes the index: every watch reports it, without waiting for a poll.
  const core::RowMatrix points = testing::NormalPoints(100, 3, 5);
  ASSERT_TRUE(client->UploadPoints("idx", {absl::MakeConstSpan(points.data(), points.size()), 3})
                  .ok());
  const absl::Time uploaded = absl::Now();
  for (auto& watch : watches) {
    v1::IndexInfo info;
    ASSERT_TRUE(watch->Read(&info));
    EXPECT_EQ(info.num_points(), 100);
  }
  const absl::Duration delivered = absl::Now() - uploaded;
  // A hang detector, not a timing target: the reports follow the change, not a timer.
  EXPECT_LT(delivered, absl::Seconds(5));
  std::printf("one upload reported to %d watches in %.2f ms\n", kWatches,
              absl::ToDoubleMilliseconds(delivered));

  // Cancelled watches end CANCELLED and leave the index's watchers.
  for (int w = 0; w < kWatches / 2; ++w) contexts[w]->TryCancel();
  for (int w = 0; w < kWatches / 2; ++w) {
    v1::IndexInfo info;
    EXPECT_FALSE(watches[w]->Read(&info));
    EXPECT_THAT(watches[w]->Finish(), StatusIs(grpc::StatusCode::CANCELLED));
  }
  EXPECT_TRUE(WaitFor([&] { return server.server->open_watches() == kWatches / 2; }))
      << server.server->open_watches() << " watches open";
  // Deleting the index ends the others, NOT_FOUND.
  ASSERT_TRUE(client->DeleteIndex("idx").ok());
  for (int w = kWatches / 2; w < kWatches; ++w) {
    v1::IndexInfo info;
    EXPECT_FALSE(watches[w]->Read(&info));
    EXPECT_THAT(watches[w]->Finish(), StatusIs(grpc::StatusCode::NOT_FOUND, "idx was deleted"));
  }
  EXPECT_TRUE(WaitFor([&] { return server.server->open_watches() == 0; }));
}

// A watch of an index that is not going anywhere ends UNAVAILABLE at shutdown, so a graceful
// shutdown does not wait out its grace for it.
TEST(AsyncServiceTest, ShutdownEndsOpenWatches) {
  testing::TestServer server = testing::StartTestServer();
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(server);
  ASSERT_TRUE(client->CreateIndex("idx", HeavySpec()).ok());
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::GetIndexRequest request;
  request.set_index_id("idx");
  std::unique_ptr<grpc::ClientReader<v1::IndexInfo>> watch =
      server.stub->WatchIndex(&context, request);
  v1::IndexInfo info;
  ASSERT_TRUE(watch->Read(&info));
  const absl::Time start = absl::Now();
  server.server->Shutdown(absl::Seconds(60));
  EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << "the shutdown waited for the watch";
  EXPECT_FALSE(watch->Read(&info));
  EXPECT_THAT(watch->Finish(), StatusIs(grpc::StatusCode::UNAVAILABLE, "shutting down"));
}

TEST(AsyncServiceTest, OptionsAreChecked) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address.clear();
  options.io_threads = 0;
  EXPECT_THAT(server::RcknnServer::Start(options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "--io_threads"));
  options.io_threads = 2;
  options.max_queued_queries = -1;
  EXPECT_THAT(server::RcknnServer::Start(options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "--max_queued_queries"));
}

}  // namespace
}  // namespace rcknn
