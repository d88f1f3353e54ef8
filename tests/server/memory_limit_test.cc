// --max_memory_bytes against in-process servers on port 0: uploads, builds and searches that do
// not fit are refused with RESOURCE_EXHAUSTED naming the flag and change nothing; GetIndex
// reports each index's memory and the budget holds exactly the sum of it; and many more clients
// than pool threads, mixing every call, each end OK or RESOURCE_EXHAUSTED, with exact answers and
// no reservation left behind.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/array_cache.h"
#include "core/knn_index.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/build_spec.h"
#include "server/memory_budget.h"
#include "server/proto_conversion.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

using testing::StatusIs;

constexpr int kDimension = 3;
constexpr int64_t kPointBytes = kDimension * sizeof(double);

v1::IndexSpec EuclideanSpec() {
  v1::IndexSpec spec;
  spec.set_metric(v1::METRIC_EUCLIDEAN);
  spec.set_dimension(kDimension);
  return spec;
}

// What BuildIndex reserves for `spec` over `n` points.
int64_t BuildEstimate(const v1::IndexSpec& spec, int64_t n) {
  v1::IndexSpec normalized;
  absl::StatusOr<core::IndexSpec> core_spec = server::ToCoreSpec(spec, &normalized);
  EXPECT_TRUE(core_spec.ok()) << core_spec.status();
  absl::StatusOr<core::IndexSpec> build_spec =
      server::SpecForBuild(*core_spec, spec.has_inducing_count(), n);
  EXPECT_TRUE(build_spec.ok()) << build_spec.status();
  return core::KnnIndex::EstimateBuildBytes(*build_spec, n);
}

// Sum of GetIndex's memory_bytes over every index (ListIndexes).
int64_t IndexedMemory(client::RcknnClient& client) {
  const absl::StatusOr<std::vector<v1::IndexInfo>> list = client.ListIndexes();
  EXPECT_TRUE(list.ok()) << list.status();
  int64_t bytes = 0;
  if (list.ok()) {
    for (const v1::IndexInfo& info : *list) bytes += info.memory_bytes();
  }
  return bytes;
}

// Same ids and the same distances to the bit: both answers come from one immutable index.
bool SameAnswer(const client::SearchResult& a, const client::SearchResult& b) {
  return a.ids == b.ids && a.distances.size() == b.distances.size() &&
         std::memcmp(a.distances.data(), b.distances.data(), sizeof(double) * a.distances.size()) ==
             0;
}

TEST(MemoryLimitTest, DefaultLimitFollowsTheCgroupMemoryLimit) {
  namespace fs = std::filesystem;
  testing::TempDir root;
  const std::string self = root.Path("proc_self_cgroup");
  auto usable = [&] { return server::UsableMemoryBytes(root.path(), self); };
  const int64_t physical = usable();  // no cgroup files at all
  ASSERT_GT(physical, 0);
  EXPECT_EQ(server::ResolveMemoryLimit(12345, root.path(), self), 12345);
  EXPECT_EQ(server::ResolveMemoryLimit(0, root.path(), self),
            static_cast<int64_t>(0.8 * static_cast<double>(physical)));

  // cgroup v1: the process in /app/job; no limit there (a huge number), 1 GB on /app.
  ASSERT_TRUE(testing::WriteBytes(self, "9:memory:/app/job\n8:pids:/app/job\n"));
  fs::create_directories(root.Path("memory/app/job"));
  ASSERT_TRUE(testing::WriteBytes(root.Path("memory/app/job/memory.limit_in_bytes"),
                                  "9223372036854771712\n"));
  EXPECT_EQ(usable(), physical);
  ASSERT_TRUE(testing::WriteBytes(root.Path("memory/app/memory.limit_in_bytes"), "1000000000\n"));
  EXPECT_EQ(usable(), std::min<int64_t>(physical, 1000000000));

  // cgroup v2: a systemd service; "max" means no limit, MemoryMax= on the service binds, and so
  // does a lower limit on its slice.
  ASSERT_TRUE(testing::WriteBytes(self, "0::/system.slice/rcknn-server.service\n"));
  fs::create_directories(root.Path("system.slice/rcknn-server.service"));
  ASSERT_TRUE(
      testing::WriteBytes(root.Path("system.slice/rcknn-server.service/memory.max"), "max\n"));
  EXPECT_EQ(usable(), physical);
  ASSERT_TRUE(testing::WriteBytes(root.Path("system.slice/rcknn-server.service/memory.max"),
                                  "500000000\n"));
  EXPECT_EQ(usable(), std::min<int64_t>(physical, 500000000));
  ASSERT_TRUE(testing::WriteBytes(root.Path("system.slice/memory.max"), "400000000\n"));
  EXPECT_EQ(usable(), std::min<int64_t>(physical, 400000000));
  EXPECT_EQ(
      server::ResolveMemoryLimit(0, root.path(), self),
      static_cast<int64_t>(0.8 * static_cast<double>(std::min<int64_t>(physical, 400000000))));

  // A container with its own cgroup namespace sees itself at the root.
  ASSERT_TRUE(testing::WriteBytes(self, "0::/\n"));
  ASSERT_TRUE(testing::WriteBytes(root.Path("memory.max"), "300000000\n"));
  EXPECT_EQ(usable(), std::min<int64_t>(physical, 300000000));
}

// The start-up line prints the limit for people and keeps the exact count for scripts.
TEST(MemoryLimitTest, FormatBytesGivesBinaryUnitsAndTheExactCount) {
  EXPECT_EQ(server::FormatBytes(0), "0 bytes");
  EXPECT_EQ(server::FormatBytes(1023), "1023 bytes");
  EXPECT_EQ(server::FormatBytes(1024), "1.0 KiB (1024 bytes)");
  EXPECT_EQ(server::FormatBytes(1536), "1.5 KiB (1536 bytes)");
  EXPECT_EQ(server::FormatBytes(int64_t{64} << 20), "64.0 MiB (67108864 bytes)");
  EXPECT_EQ(server::FormatBytes(6442450944), "6.0 GiB (6442450944 bytes)");
  EXPECT_EQ(server::FormatBytes(20615843840), "19.2 GiB (20615843840 bytes)");
  EXPECT_EQ(server::FormatBytes(int64_t{3} << 40), "3.0 TiB (3298534883328 bytes)");
  EXPECT_EQ(server::FormatBytes(std::numeric_limits<int64_t>::max()),
            "8.0 EiB (9223372036854775807 bytes)");
}

TEST(MemoryLimitTest, UploadOverTheBudgetIsRefusedAndChangesNothing) {
  server::ServerOptions options;
  options.max_memory_bytes = 1 << 20;
  testing::ClientOnServer served;
  served.Start(options, testing::UploadInChunksOf(1000, kDimension));
  client::RcknnClient& client = served.client();
  const server::MemoryBudget& budget = served.server().memory_budget();
  EXPECT_EQ(budget.limit(), 1 << 20);
  EXPECT_EQ(budget.used(), 0);
  const core::RowMatrix points = testing::NormalPoints(60000, kDimension, 1);
  ASSERT_TRUE(client.CreateIndex("a", EuclideanSpec()).ok());
  ASSERT_TRUE(client.UploadPoints("a", testing::View(points, 0, 2000)).ok());
  const int64_t held = budget.used();
  EXPECT_EQ(held, 2000 * kPointBytes);
  EXPECT_EQ(testing::InfoOf(client, "a").memory_bytes(), held);

  // 50,000 points (1.2 MB) in chunks of 1,000: refused at the chunk that crosses the limit.
  const absl::StatusOr<v1::UploadPointsResponse> refused =
      client.UploadPoints("a", testing::View(points, 2000, 50000));
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted, "--max_memory_bytes"));
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted, "index a"));
  EXPECT_EQ(budget.used(), held);
  const v1::IndexInfo info = testing::InfoOf(client, "a");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), 2000);
  EXPECT_EQ(info.memory_bytes(), held);

  // What still fits is taken, and counted.
  ASSERT_TRUE(client.UploadPoints("a", testing::View(points, 2000, 10000)).ok());
  EXPECT_EQ(budget.used(), 12000 * kPointBytes);
  EXPECT_EQ(testing::InfoOf(client, "a").memory_bytes(), 12000 * kPointBytes);
  ASSERT_TRUE(client.DeleteIndex("a").ok());
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryLimitTest, BuildAndSearchOverTheBudgetAreRefused) {
  const int64_t n = 2000;
  const int64_t m = 32;
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, m);
  const int64_t upload_bytes = n * kPointBytes;
  const int64_t estimate = BuildEstimate(spec, n);
  ASSERT_GT(estimate, n * m * 8);
  server::ServerOptions options;
  options.max_memory_bytes = upload_bytes + estimate + (64 << 10);
  testing::ClientOnServer served;
  served.Start(options, testing::UploadInChunksOf(500, kDimension));
  client::RcknnClient& client = served.client();
  const server::MemoryBudget& budget = served.server().memory_budget();
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 2);
  ASSERT_TRUE(client.CreateIndex("target", spec).ok());
  ASSERT_TRUE(client.UploadPoints("target", testing::View(points)).ok());
  ASSERT_EQ(budget.used(), upload_bytes);

  // Another index's points leave room for only half the build.
  const int64_t hog_points = (budget.limit() - upload_bytes - estimate / 2) / kPointBytes;
  const core::RowMatrix hog = testing::NormalPoints(hog_points, kDimension, 3);
  ASSERT_TRUE(client.CreateIndex("hog", EuclideanSpec()).ok());
  ASSERT_TRUE(client.UploadPoints("hog", testing::View(hog)).ok());
  const int64_t before = budget.used();
  const absl::StatusOr<v1::IndexInfo> refused = client.BuildIndex("target");
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted, "--max_memory_bytes"));
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted, "target"));
  EXPECT_EQ(budget.used(), before);
  v1::IndexInfo info = testing::InfoOf(client, "target");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), n);
  EXPECT_EQ(info.memory_bytes(), upload_bytes);

  // Deleting the other index frees exactly its memory, and the build then fits.
  const int64_t hog_bytes = testing::InfoOf(client, "hog").memory_bytes();
  EXPECT_EQ(hog_bytes, hog_points * kPointBytes);
  ASSERT_TRUE(client.DeleteIndex("hog").ok());
  EXPECT_EQ(budget.used(), before - hog_bytes);
  const absl::StatusOr<v1::IndexInfo> built = testing::BuildAndWait(client, "target");
  ASSERT_TRUE(built.ok()) << built.status();
  ASSERT_EQ(built->state(), v1::INDEX_STATE_READY) << built->error();
  // V alone is n x m doubles; the estimate bounds the whole index from above.
  const int64_t index_bytes = built->memory_bytes();
  EXPECT_GE(index_bytes, n * m * 8);
  EXPECT_LE(index_bytes, estimate);
  EXPECT_EQ(budget.used(), index_bytes);
  EXPECT_EQ(IndexedMemory(client), index_bytes);

  // 2,000 queries x k = 500: 16 MB of answer, far over what is left.
  const std::vector<int64_t> ids = testing::Range(0, n);
  EXPECT_THAT(client.Search(testing::IdQuery("target", ids, 500)),
              StatusIs(absl::StatusCode::kResourceExhausted, "--max_memory_bytes"));
  EXPECT_EQ(budget.used(), index_bytes);
  // A smaller answer fits; its reservation ends with the call.
  const absl::StatusOr<client::SearchResult> result =
      client.Search(testing::IdQuery("target", ids, 10));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_queries, n);
  EXPECT_EQ(result->requests, 1);
  EXPECT_EQ(budget.used(), index_bytes);

  ASSERT_TRUE(client.DeleteIndex("target").ok());
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryLimitTest, MemoryBytesOfLoadingAndReadyIndexes) {
  // The indexes alone: a deleted index's V is not kept here (that is
  // FreedFactorMemoryIsKeptCountedAndGivenBack).
  server::ServerOptions options;
  options.keep_freed_memory = absl::ZeroDuration();
  testing::ClientOnServer served;
  served.Start(options, testing::UploadInChunksOf(1000, kDimension));
  client::RcknnClient& client = served.client();
  const server::MemoryBudget& budget = served.server().memory_budget();
  EXPECT_GT(budget.limit(), int64_t{1} << 20);  // 80% of the machine
  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 4);
  struct Case {
    std::string id;
    v1::IndexSpec spec;
    int64_t lower_bound;  // of the READY index
  };
  const std::vector<Case> cases = {
      {"residual", testing::ResidualSpec(kDimension, v1::KERNEL_MATERN32, 1.0, 1.0, 64),
       n * 64 * 8},
      {"euclidean", EuclideanSpec(), n * kPointBytes}};
  int64_t total = 0;
  for (const Case& c : cases) {
    ASSERT_TRUE(client.CreateIndex(c.id, c.spec).ok());
    EXPECT_EQ(testing::InfoOf(client, c.id).memory_bytes(), 0);
    ASSERT_TRUE(client.UploadPoints(c.id, testing::View(points)).ok());
    EXPECT_EQ(testing::InfoOf(client, c.id).memory_bytes(), n * kPointBytes) << c.id;
    EXPECT_EQ(budget.used(), total + n * kPointBytes) << c.id;
    const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client, c.id);
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
    EXPECT_GE(info->memory_bytes(), c.lower_bound) << c.id;
    EXPECT_LE(info->memory_bytes(), BuildEstimate(c.spec, n)) << c.id;
    EXPECT_EQ(testing::InfoOf(client, c.id).memory_bytes(), info->memory_bytes()) << c.id;
    total += info->memory_bytes();
    EXPECT_EQ(budget.used(), total) << c.id;
  }
  EXPECT_EQ(IndexedMemory(client), total);
  for (const Case& c : cases) {
    const int64_t bytes = testing::InfoOf(client, c.id).memory_bytes();
    const int64_t before = budget.used();
    ASSERT_TRUE(client.DeleteIndex(c.id).ok());
    EXPECT_EQ(before - budget.used(), bytes) << c.id;
  }
  EXPECT_EQ(budget.used(), 0);
}

// ServerOptions::keep_freed_memory: a deleted index's V is kept (core::ArrayCache) and counted
// in the budget, the next index of the same size reuses it, and a reservation that fits only
// without it gets the memory back instead of a refusal. 5,000 points x m = 64: a 2.4 MiB V,
// above the size kept arrays start at.
TEST(MemoryLimitTest, FreedFactorMemoryIsKeptCountedAndGivenBack) {
  const int64_t n = 5000;
  const int64_t m = 64;
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, m);
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 6);
  core::ArrayCache& cache = core::ArrayCache::Default();
  {
    server::ServerOptions options;
    options.max_memory_bytes = int64_t{64} << 20;
    options.keep_freed_memory = absl::Hours(1);
    testing::ClientOnServer served;
    served.Start(options, testing::UploadInChunksOf(1000, kDimension));
    client::RcknnClient& client = served.client();
    const server::MemoryBudget& budget = served.server().memory_budget();
    auto build = [&](const std::string& id) {
      ASSERT_TRUE(client.CreateIndex(id, spec).ok());
      ASSERT_TRUE(client.UploadPoints(id, testing::View(points)).ok());
      const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client, id);
      ASSERT_TRUE(info.ok()) << info.status();
      ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
    };
    build("first");
    const absl::StatusOr<client::SearchResult> before =
        client.Search(testing::IdQuery("first", testing::Range(0, 100), 10));
    ASSERT_TRUE(before.ok()) << before.status();
    ASSERT_EQ(cache.kept_bytes(), 0);
    // The index's last reference may go after DeleteIndex has answered (a finishing call).
    auto wait_for_kept = [&] {
      const absl::Time deadline = absl::Now() + absl::Seconds(30);
      while (cache.kept_bytes() == 0 && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      return cache.kept_bytes();
    };
    ASSERT_TRUE(client.DeleteIndex("first").ok());
    const int64_t kept = wait_for_kept();
    EXPECT_GE(kept, n * m * 8);
    EXPECT_EQ(budget.used(), kept);

    const int64_t reused = cache.reused();
    build("second");
    EXPECT_EQ(cache.reused(), reused + 1);
    EXPECT_EQ(cache.kept_bytes(), 0);
    const int64_t index_bytes = testing::InfoOf(client, "second").memory_bytes();
    EXPECT_EQ(budget.used(), index_bytes);
    // The same points and kernel: the same answers, to the bit, in reused memory.
    const absl::StatusOr<client::SearchResult> after =
        client.Search(testing::IdQuery("second", testing::Range(0, 100), 10));
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_TRUE(SameAnswer(*before, *after));

    ASSERT_TRUE(client.DeleteIndex("second").ok());
    ASSERT_GT(wait_for_kept(), 0);
    ASSERT_EQ(budget.used(), cache.kept_bytes());
    // Points that fit only if the kept memory goes.
    const int64_t hog_points = (budget.limit() - cache.kept_bytes() / 2) / kPointBytes;
    ASSERT_TRUE(client.CreateIndex("hog", EuclideanSpec()).ok());
    ASSERT_TRUE(client.UploadPoints("hog", testing::View(testing::NormalPoints(
                                               hog_points, kDimension, 7)))
                    .ok());
    EXPECT_EQ(cache.kept_bytes(), 0);
    EXPECT_EQ(budget.used(), hog_points * kPointBytes);
    ASSERT_TRUE(client.DeleteIndex("hog").ok());
    EXPECT_EQ(budget.used(), 0);
  }
  // The server that configured the cache takes it down with it.
  EXPECT_EQ(cache.kept_bytes(), 0);
  {
    server::ServerOptions options;
    options.keep_freed_memory = absl::ZeroDuration();
    testing::ClientOnServer served;
    served.Start(options, testing::UploadInChunksOf(1000, kDimension));
    client::RcknnClient& client = served.client();
    ASSERT_TRUE(client.CreateIndex("plain", spec).ok());
    ASSERT_TRUE(client.UploadPoints("plain", testing::View(points)).ok());
    const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client, "plain");
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_TRUE(client.DeleteIndex("plain").ok());
    EXPECT_EQ(cache.kept_bytes(), 0);
    EXPECT_EQ(served.server().memory_budget().used(), 0);
  }
}

// Many more clients than pool threads, each mixing uploads to its own index and to a shared one,
// searches on a READY index, GetIndex, and a build of its own index.
struct LoadResult {
  int64_t ok = 0;
  int64_t refused = 0;
  std::vector<std::string> errors;  // calls that ended otherwise, or wrong answers
};

constexpr int kClients = 20;
constexpr int kRounds = 8;
constexpr int64_t kOwnUpload = 1000;
constexpr int64_t kSharedUpload = 500;

LoadResult RunLoad(int64_t max_memory_bytes) {
  server::ServerOptions options;
  options.threads = 2;
  options.max_memory_bytes = max_memory_bytes;
  testing::ClientOnServer served;
  // Uploads to an index of one's own go in chunks of 250 points, to the shared one in chunks of
  // 100; one client library instance of each kind serves every client thread.
  served.Start(options, testing::UploadInChunksOf(250, kDimension));
  client::RcknnClient& client = served.client();
  const std::unique_ptr<client::RcknnClient> shared_client =
      testing::MakeClient(served.test(), testing::UploadInChunksOf(100, kDimension));
  const server::MemoryBudget& budget = served.server().memory_budget();
  LoadResult result;

  const int64_t ref_n = 4000;
  const absl::StatusOr<v1::IndexInfo> ref = testing::CreateReadyIndex(
      client, "ref", testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 32, 7),
      testing::NormalPoints(ref_n, kDimension, 5));
  EXPECT_TRUE(ref.ok()) << ref.status();
  if (ref.ok()) {
    EXPECT_EQ(ref->state(), v1::INDEX_STATE_READY) << ref->error();
  }
  std::vector<std::vector<int64_t>> search_ids;
  for (int s = 0; s < 6; ++s) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 64; ++i) ids.push_back((s * 613 + i * 59) % ref_n);
    search_ids.push_back(std::move(ids));
  }
  std::vector<client::SearchQuery> searches;
  std::vector<client::SearchResult> references;
  for (int s = 0; s < 6; ++s) {
    searches.push_back(testing::IdQuery("ref", search_ids[s], 5 + 5 * s));
    searches.back().predecessor_mode = s % 2 == 1;
    absl::StatusOr<client::SearchResult> reference = client.Search(searches.back());
    EXPECT_TRUE(reference.ok()) << reference.status();
    references.push_back(reference.ok() ? *std::move(reference) : client::SearchResult());
  }
  EXPECT_TRUE(client.CreateIndex("shared", EuclideanSpec()).ok());
  const core::RowMatrix points = testing::NormalPoints(kRounds * kOwnUpload, kDimension, 6);

  absl::Mutex mutex;
  std::atomic<int64_t> shared_points{0};
  std::map<std::string, int64_t> own_points;  // guarded by mutex
  auto record = [&](const std::string& what, const absl::Status& status) {
    absl::MutexLock lock(&mutex);
    if (status.ok()) {
      ++result.ok;
    } else if (status.code() == absl::StatusCode::kResourceExhausted) {
      ++result.refused;
    } else {
      result.errors.push_back(absl::StrCat(what, ": ", status.ToString()));
    }
    return status.ok();
  };
  auto fail = [&](const std::string& what) {
    absl::MutexLock lock(&mutex);
    result.errors.push_back(what);
  };
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      const std::string own = absl::StrCat("own-", c);
      if (!record("CreateIndex " + own, client.CreateIndex(own, EuclideanSpec()).status())) return;
      int64_t points_in_own = 0;
      for (int round = 0; round < kRounds; ++round) {
        switch ((c + round) % 4) {
          case 0:
            if (record(
                    "UploadPoints " + own,
                    client.UploadPoints(own, testing::View(points, round * kOwnUpload, kOwnUpload))
                        .status())) {
              points_in_own += kOwnUpload;
            }
            break;
          case 1:
            if (record("UploadPoints shared",
                       shared_client
                           ->UploadPoints("shared",
                                          testing::View(points, round * kOwnUpload, kSharedUpload))
                           .status())) {
              shared_points += kSharedUpload;
            }
            break;
          case 2: {
            const int s = (c * 7 + round) % static_cast<int>(searches.size());
            const absl::StatusOr<client::SearchResult> answer = client.Search(searches[s]);
            if (record("Search ref", answer.status()) && !SameAnswer(*answer, references[s])) {
              fail(absl::StrCat("Search ref: search ", s, " answered differently"));
            }
            break;
          }
          case 3:
            record("GetIndex", client.GetIndex(round % 2 == 0 ? "ref" : own).status());
            break;
        }
      }
      if (points_in_own > 0) {
        if (record("BuildIndex " + own, client.BuildIndex(own).status())) {
          const absl::StatusOr<v1::IndexInfo> info = client.WaitForIndex(own);
          if (!info.ok()) {
            fail(absl::StrCat(own, ": WaitForIndex: ", info.status().ToString()));
          } else if (info->state() != v1::INDEX_STATE_READY) {
            fail(absl::StrCat(own, ": build ended ", v1::IndexState_Name(info->state()), ": ",
                              info->error()));
          }
        } else if (const absl::StatusOr<v1::IndexInfo> info = client.GetIndex(own);
                   !info.ok() || info->state() != v1::INDEX_STATE_LOADING) {
          fail(absl::StrCat(own, ": a refused build left the index not LOADING"));
        }
      }
      {
        absl::MutexLock lock(&mutex);
        own_points[own] = points_in_own;
      }
      // A third of the clients delete their index: its memory must go back.
      if (c % 3 == 0) record("DeleteIndex " + own, client.DeleteIndex(own));
    });
  }
  for (std::thread& thread : clients) thread.join();

  // Every index holds what was acknowledged, and the budget holds exactly the indexes.
  for (const auto& [id, n] : own_points) {
    const absl::StatusOr<v1::IndexInfo> info = client.GetIndex(id);
    if (absl::IsNotFound(info.status())) continue;  // deleted
    EXPECT_TRUE(info.ok()) << info.status();
    if (info.ok()) {
      EXPECT_EQ(info->num_points(), n) << id;
    }
  }
  const v1::IndexInfo shared = testing::InfoOf(client, "shared");
  EXPECT_EQ(shared.num_points(), shared_points.load());
  EXPECT_EQ(shared.memory_bytes(), shared_points.load() * kPointBytes);
  EXPECT_EQ(budget.used(), IndexedMemory(client));
  EXPECT_LE(budget.used(), budget.limit());
  // The server still answers, exactly.
  for (size_t s = 0; s < searches.size(); ++s) {
    const absl::StatusOr<client::SearchResult> answer = client.Search(searches[s]);
    EXPECT_TRUE(answer.ok()) << answer.status();
    if (answer.ok()) {
      EXPECT_TRUE(SameAnswer(*answer, references[s])) << "search " << s;
    }
  }
  std::printf("%lld calls OK, %lld refused (budget %lld bytes, %lld held at the end)\n",
              static_cast<long long>(result.ok), static_cast<long long>(result.refused),
              static_cast<long long>(budget.limit()), static_cast<long long>(budget.used()));
  return result;
}

TEST(MemoryLimitLoadTest, ManyClientsUnderATightBudget) {
  // Room for the READY index, a third of what the clients upload and one build at a time: the
  // builds alone would need many times that, so some calls must be refused.
  const int64_t ref_bytes_bound =
      BuildEstimate(testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 32, 7), 4000);
  const int64_t uploads = kClients * (kRounds / 4) * (kOwnUpload + kSharedUpload) * kPointBytes;
  const int64_t build = BuildEstimate(EuclideanSpec(), (kRounds / 4) * kOwnUpload);
  const LoadResult result = RunLoad(ref_bytes_bound + uploads / 3 + build);
  EXPECT_THAT(result.errors, ::testing::IsEmpty());
  EXPECT_GT(result.refused, 0);
  EXPECT_GT(result.ok, kClients * kRounds / 2);
}

TEST(MemoryLimitLoadTest, ManyClientsWithoutRefusals) {
  const LoadResult result = RunLoad(0);
  EXPECT_THAT(result.errors, ::testing::IsEmpty());
  EXPECT_EQ(result.refused, 0);
}

}  // namespace
}  // namespace rcknn
