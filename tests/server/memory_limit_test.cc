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
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

using ::testing::HasSubstr;

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
int64_t IndexedMemory(v1::Rcknn::Stub& stub) {
  v1::ListIndexesResponse response;
  EXPECT_TRUE(testing::ListIndexes(stub, &response).ok());
  int64_t bytes = 0;
  for (const v1::IndexInfo& info : response.indexes()) bytes += info.memory_bytes();
  return bytes;
}

// Same ids and the same distances to the bit: both answers come from one immutable index.
bool SameAnswer(const v1::SearchResponse& a, const v1::SearchResponse& b) {
  return a.neighbor_ids_size() == b.neighbor_ids_size() &&
         std::equal(a.neighbor_ids().begin(), a.neighbor_ids().end(), b.neighbor_ids().begin()) &&
         a.distances_size() == b.distances_size() &&
         std::memcmp(a.distances().data(), b.distances().data(),
                     sizeof(double) * a.distances_size()) == 0;
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
  ASSERT_TRUE(testing::WriteBytes(root.Path("system.slice/rcknn-server.service/memory.max"),
                                  "max\n"));
  EXPECT_EQ(usable(), physical);
  ASSERT_TRUE(testing::WriteBytes(root.Path("system.slice/rcknn-server.service/memory.max"),
                                  "500000000\n"));
  EXPECT_EQ(usable(), std::min<int64_t>(physical, 500000000));
  ASSERT_TRUE(testing::WriteBytes(root.Path("system.slice/memory.max"), "400000000\n"));
  EXPECT_EQ(usable(), std::min<int64_t>(physical, 400000000));
  EXPECT_EQ(server::ResolveMemoryLimit(0, root.path(), self),
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
  testing::TestServer test = testing::StartTestServer(options);
  const server::MemoryBudget& budget = test.server->memory_budget();
  EXPECT_EQ(budget.limit(), 1 << 20);
  EXPECT_EQ(budget.used(), 0);
  const core::RowMatrix points = testing::NormalPoints(60000, kDimension, 1);
  ASSERT_TRUE(testing::CreateIndex(*test.stub, "a", EuclideanSpec()).ok());
  ASSERT_TRUE(testing::UploadPoints(*test.stub, "a", points, 0, 2000, 500).ok());
  const int64_t held = budget.used();
  EXPECT_EQ(held, 2000 * kPointBytes);
  EXPECT_EQ(testing::GetIndex(*test.stub, "a").memory_bytes(), held);

  // 50,000 points (1.2 MB) in chunks of 1,000: refused at the chunk that crosses the limit.
  const grpc::Status status = testing::UploadPoints(*test.stub, "a", points, 2000, 50000, 1000);
  EXPECT_THAT(status,
              testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_memory_bytes"));
  EXPECT_THAT(status.error_message(), HasSubstr("index a"));
  EXPECT_EQ(budget.used(), held);
  const v1::IndexInfo info = testing::GetIndex(*test.stub, "a");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), 2000);
  EXPECT_EQ(info.memory_bytes(), held);

  // What still fits is taken, and counted.
  ASSERT_TRUE(testing::UploadPoints(*test.stub, "a", points, 2000, 10000, 1000).ok());
  EXPECT_EQ(budget.used(), 12000 * kPointBytes);
  EXPECT_EQ(testing::GetIndex(*test.stub, "a").memory_bytes(), 12000 * kPointBytes);
  ASSERT_TRUE(testing::DeleteIndex(*test.stub, "a").ok());
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
  testing::TestServer test = testing::StartTestServer(options);
  v1::Rcknn::Stub& stub = *test.stub;
  const server::MemoryBudget& budget = test.server->memory_budget();
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 2);
  ASSERT_TRUE(testing::CreateIndex(stub, "target", spec).ok());
  ASSERT_TRUE(testing::UploadPoints(stub, "target", points, 0, n, 500).ok());
  ASSERT_EQ(budget.used(), upload_bytes);

  // Another index's points leave room for only half the build.
  const int64_t hog_points = (budget.limit() - upload_bytes - estimate / 2) / kPointBytes;
  const core::RowMatrix hog = testing::NormalPoints(hog_points, kDimension, 3);
  ASSERT_TRUE(testing::CreateIndex(stub, "hog", EuclideanSpec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub, "hog", hog, 0, hog_points, 1000).ok());
  const int64_t before = budget.used();
  grpc::Status status = testing::BuildIndex(stub, "target");
  EXPECT_THAT(status,
              testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_memory_bytes"));
  EXPECT_THAT(status.error_message(), HasSubstr("target"));
  EXPECT_EQ(budget.used(), before);
  v1::IndexInfo info = testing::GetIndex(stub, "target");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), n);
  EXPECT_EQ(info.memory_bytes(), upload_bytes);

  // Deleting the other index frees exactly its memory, and the build then fits.
  const int64_t hog_bytes = testing::GetIndex(stub, "hog").memory_bytes();
  EXPECT_EQ(hog_bytes, hog_points * kPointBytes);
  ASSERT_TRUE(testing::DeleteIndex(stub, "hog").ok());
  EXPECT_EQ(budget.used(), before - hog_bytes);
  info = testing::BuildAndWait(stub, "target");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  // V alone is n x m doubles; the estimate bounds the whole index from above.
  const int64_t index_bytes = info.memory_bytes();
  EXPECT_GE(index_bytes, n * m * 8);
  EXPECT_LE(index_bytes, estimate);
  EXPECT_EQ(budget.used(), index_bytes);
  EXPECT_EQ(IndexedMemory(stub), index_bytes);

  // 2,000 queries x k = 500: 16 MB of answer, far over what is left.
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  v1::SearchResponse response;
  status = testing::Search(stub, testing::IdSearch("target", 500, ids), &response);
  EXPECT_THAT(status,
              testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_memory_bytes"));
  EXPECT_EQ(budget.used(), index_bytes);
  // A smaller answer fits; its reservation ends with the call.
  status = testing::Search(stub, testing::IdSearch("target", 10, ids), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.num_queries(), n);
  EXPECT_EQ(budget.used(), index_bytes);

  ASSERT_TRUE(testing::DeleteIndex(stub, "target").ok());
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryLimitTest, MemoryBytesOfLoadingAndReadyIndexes) {
  testing::TestServer test = testing::StartTestServer();
  v1::Rcknn::Stub& stub = *test.stub;
  const server::MemoryBudget& budget = test.server->memory_budget();
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
    ASSERT_TRUE(testing::CreateIndex(stub, c.id, c.spec).ok());
    EXPECT_EQ(testing::GetIndex(stub, c.id).memory_bytes(), 0);
    ASSERT_TRUE(testing::UploadPoints(stub, c.id, points, 0, n, 1000).ok());
    EXPECT_EQ(testing::GetIndex(stub, c.id).memory_bytes(), n * kPointBytes) << c.id;
    EXPECT_EQ(budget.used(), total + n * kPointBytes) << c.id;
    const v1::IndexInfo info = testing::BuildAndWait(stub, c.id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
    EXPECT_GE(info.memory_bytes(), c.lower_bound) << c.id;
    EXPECT_LE(info.memory_bytes(), BuildEstimate(c.spec, n)) << c.id;
    EXPECT_EQ(testing::GetIndex(stub, c.id).memory_bytes(), info.memory_bytes()) << c.id;
    total += info.memory_bytes();
    EXPECT_EQ(budget.used(), total) << c.id;
  }
  EXPECT_EQ(IndexedMemory(stub), total);
  for (const Case& c : cases) {
    const int64_t bytes = testing::GetIndex(stub, c.id).memory_bytes();
    const int64_t before = budget.used();
    ASSERT_TRUE(testing::DeleteIndex(stub, c.id).ok());
    EXPECT_EQ(before - budget.used(), bytes) << c.id;
  }
  EXPECT_EQ(budget.used(), 0);
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
  testing::TestServer test = testing::StartTestServer(options);
  v1::Rcknn::Stub& stub = *test.stub;
  const server::MemoryBudget& budget = test.server->memory_budget();
  LoadResult result;

  const int64_t ref_n = 4000;
  const v1::IndexInfo ref = testing::CreateReadyIndex(
      stub, "ref", testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 32, 7),
      testing::NormalPoints(ref_n, kDimension, 5), 1000);
  EXPECT_EQ(ref.state(), v1::INDEX_STATE_READY) << ref.error();
  std::vector<v1::SearchRequest> searches;
  std::vector<v1::SearchResponse> references;
  for (int s = 0; s < 6; ++s) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 64; ++i) ids.push_back((s * 613 + i * 59) % ref_n);
    searches.push_back(testing::IdSearch("ref", 5 + 5 * s, ids, s % 2 == 1));
    references.emplace_back();
    EXPECT_TRUE(testing::Search(stub, searches.back(), &references.back()).ok());
  }
  EXPECT_TRUE(testing::CreateIndex(stub, "shared", EuclideanSpec()).ok());
  const core::RowMatrix points = testing::NormalPoints(kRounds * kOwnUpload, kDimension, 6);

  absl::Mutex mutex;
  std::atomic<int64_t> shared_points{0};
  std::map<std::string, int64_t> own_points;  // guarded by mutex
  auto record = [&](const std::string& what, const grpc::Status& status) {
    absl::MutexLock lock(&mutex);
    if (status.ok()) {
      ++result.ok;
    } else if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++result.refused;
    } else {
      result.errors.push_back(
          absl::StrCat(what, ": code ", status.error_code(), ": ", status.error_message()));
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
      if (!record("CreateIndex " + own, testing::CreateIndex(stub, own, EuclideanSpec()))) return;
      int64_t points_in_own = 0;
      for (int round = 0; round < kRounds; ++round) {
        switch ((c + round) % 4) {
          case 0:
            if (record("UploadPoints " + own,
                       testing::UploadPoints(stub, own, points, round * kOwnUpload, kOwnUpload,
                                             250))) {
              points_in_own += kOwnUpload;
            }
            break;
          case 1:
            if (record("UploadPoints shared",
                       testing::UploadPoints(stub, "shared", points, round * kOwnUpload,
                                             kSharedUpload, 100))) {
              shared_points += kSharedUpload;
            }
            break;
          case 2: {
            const int s = (c * 7 + round) % static_cast<int>(searches.size());
            v1::SearchResponse response;
            if (record("Search ref", testing::Search(stub, searches[s], &response)) &&
                !SameAnswer(response, references[s])) {
              fail(absl::StrCat("Search ref: search ", s, " answered differently"));
            }
            break;
          }
          case 3: {
            grpc::Status status;
            testing::GetIndex(stub, round % 2 == 0 ? "ref" : own, &status);
            record("GetIndex", status);
            break;
          }
        }
      }
      if (points_in_own > 0) {
        const grpc::Status status = testing::BuildIndex(stub, own);
        if (record("BuildIndex " + own, status)) {
          const v1::IndexInfo info = testing::AwaitBuilt(stub, own);
          if (info.state() != v1::INDEX_STATE_READY) {
            fail(absl::StrCat(own, ": build ended ", v1::IndexState_Name(info.state()), ": ",
                              info.error()));
          }
        } else if (testing::GetIndex(stub, own).state() != v1::INDEX_STATE_LOADING) {
          fail(absl::StrCat(own, ": a refused build left the index not LOADING"));
        }
      }
      {
        absl::MutexLock lock(&mutex);
        own_points[own] = points_in_own;
      }
      // A third of the clients delete their index: its memory must go back.
      if (c % 3 == 0) record("DeleteIndex " + own, testing::DeleteIndex(stub, own));
    });
  }
  for (std::thread& client : clients) client.join();

  // Every index holds what was acknowledged, and the budget holds exactly the indexes.
  for (const auto& [id, n] : own_points) {
    grpc::Status status;
    const v1::IndexInfo info = testing::GetIndex(stub, id, &status);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) continue;  // deleted
    EXPECT_EQ(info.num_points(), n) << id;
  }
  const v1::IndexInfo shared = testing::GetIndex(stub, "shared");
  EXPECT_EQ(shared.num_points(), shared_points.load());
  EXPECT_EQ(shared.memory_bytes(), shared_points.load() * kPointBytes);
  EXPECT_EQ(budget.used(), IndexedMemory(stub));
  EXPECT_LE(budget.used(), budget.limit());
  // The server still answers, exactly.
  for (size_t s = 0; s < searches.size(); ++s) {
    v1::SearchResponse response;
    EXPECT_TRUE(testing::Search(stub, searches[s], &response).ok());
    EXPECT_TRUE(SameAnswer(response, references[s])) << "search " << s;
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
