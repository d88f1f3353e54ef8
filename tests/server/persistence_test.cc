// --data_dir against in-process servers on port 0, each test with its own temporary directory:
// built indexes come back after a restart answering bit for bit as before (computed factors,
// supplied factors, Euclidean), LOADING indexes come back LOADING and keep taking uploads, deleted
// indexes and failed uploads leave nothing behind, a second server cannot share the directory,
// a corrupt file fails its own index only, naming the file and leaving it in place, and so does
// an index that does not fit --max_memory_bytes at start-up, until a server with more starts.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "core/index_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"
#include "tests/testing/shared_data.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

namespace fs = std::filesystem;

using ::testing::HasSubstr;

constexpr int kDimension = 3;

v1::IndexSpec EuclideanSpec() {
  v1::IndexSpec spec;
  spec.set_metric(v1::METRIC_EUCLIDEAN);
  spec.set_dimension(kDimension);
  return spec;
}

v1::IndexSpec SuppliedSpec() {
  v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_MATERN32, 1.0, 1.0, 16);
  spec.clear_inducing_count();
  spec.set_factors_supplied(true);
  return spec;
}

std::vector<std::string> ListIds(v1::Rcknn::Stub& stub) {
  v1::ListIndexesResponse response;
  EXPECT_TRUE(testing::ListIndexes(stub, &response).ok());
  std::vector<std::string> ids;
  for (const v1::IndexInfo& info : response.indexes()) ids.push_back(info.index_id());
  return ids;
}

// Searches of an index whose answers are compared across restarts: stored ids (plain and
// predecessor mode) and, unless the factors were supplied, out-of-sample points.
std::vector<v1::SearchRequest> Probes(const std::string& id, int64_t n, bool by_points) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; i += 7) ids.push_back(i);
  std::vector<v1::SearchRequest> probes = {testing::IdSearch(id, 10, ids),
                                           testing::IdSearch(id, 4, ids, true)};
  if (by_points) {
    v1::SearchRequest request;
    request.set_index_id(id);
    request.set_k(10);
    const core::RowMatrix points = testing::NormalPoints(50, kDimension, 99);
    request.mutable_query_points()->Add(points.data(), points.data() + points.size());
    probes.push_back(request);
  }
  return probes;
}

// The answers to `probes`, concatenated; empty if a search failed.
struct Answers {
  std::vector<int64_t> ids;
  std::vector<double> distances;
};

Answers Answer(v1::Rcknn::Stub& stub, const std::vector<v1::SearchRequest>& probes) {
  Answers answers;
  for (const v1::SearchRequest& probe : probes) {
    v1::SearchResponse response;
    const grpc::Status status = testing::Search(stub, probe, &response);
    EXPECT_TRUE(status.ok()) << probe.index_id() << ": " << status.error_message();
    if (!status.ok()) return Answers();
    answers.ids.insert(answers.ids.end(), response.neighbor_ids().begin(),
                       response.neighbor_ids().end());
    answers.distances.insert(answers.distances.end(), response.distances().begin(),
                             response.distances().end());
  }
  return answers;
}

// Bit for bit: +infinity padding included, and no tolerance on the distances.
void ExpectIdentical(const Answers& got, const Answers& want, const std::string& id) {
  ASSERT_FALSE(want.ids.empty()) << id;
  EXPECT_EQ(got.ids, want.ids) << id;
  ASSERT_EQ(got.distances.size(), want.distances.size()) << id;
  for (size_t i = 0; i < want.distances.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got.distances[i], &want.distances[i], sizeof(double)), 0)
        << id << ": distance " << i << ": " << got.distances[i] << " vs " << want.distances[i];
  }
}

// Flips one bit of a payload byte (past the 48-byte header) and returns the new content.
std::string FlipPayloadByte(const fs::path& path) {
  std::string bytes = testing::ReadBytes(path);
  EXPECT_GT(bytes.size(), 100u) << path;
  bytes[48 + (bytes.size() - 48) / 2] ^= 0x10;
  EXPECT_TRUE(testing::WriteBytes(path, bytes)) << path;
  return bytes;
}

std::set<std::string> FilesIn(const fs::path& dir) {
  std::set<std::string> names;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    names.insert(entry.path().filename().string());
  }
  return names;
}

class PersistenceTest : public ::testing::Test {
 protected:
  // Stops the server before the directory is removed.
  void TearDown() override { test_ = testing::TestServer(); }

  server::ServerOptions Options() const {
    server::ServerOptions options;
    options.data_dir = data_dir_.string();
    return options;
  }
  // Stops the running server (if any), then starts one on the same data directory.
  void Restart() {
    if (test_.server != nullptr) test_.server->Shutdown(absl::ZeroDuration());
    test_ = testing::TestServer();  // releases the directory's lock
    test_ = testing::StartTestServer(Options());
  }
  v1::Rcknn::Stub& stub() { return *test_.stub; }
  fs::path IndexDir(const std::string& id) const { return data_dir_ / "indexes" / id; }

  testing::TempDir temp_dir_{"rcknn-persistence"};
  const fs::path data_dir_ = temp_dir_.Path("data");  // the server creates it
  testing::TestServer test_;
};

TEST_F(PersistenceTest, BuiltIndexesComeBackAnsweringBitForBit) {
  Restart();
  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 21);
  const core::RowMatrix factors = testing::NormalPoints(n, 16, 22, 0.3);
  std::vector<double> variances(n);
  const core::RowMatrix z = testing::NormalPoints(n, 1, 23);
  for (int64_t i = 0; i < n; ++i) variances[i] = 0.05 + 0.5 * std::abs(z(i, 0));

  struct Case {
    std::string id;
    v1::IndexSpec spec;
    bool supplied;
  };
  const std::vector<Case> cases = {
      {"computed", testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 64, 5), false},
      {"supplied", SuppliedSpec(), true},
      {"euclidean", EuclideanSpec(), false}};
  std::vector<v1::IndexInfo> before;
  std::vector<Answers> answers;
  for (const Case& c : cases) {
    ASSERT_TRUE(testing::CreateIndex(stub(), c.id, c.spec).ok()) << c.id;
    // Three uploads of uneven size, each in several chunks.
    for (auto [first, rows] : {std::pair<int64_t, int64_t>{0, 1000}, {1000, 1500}, {2500, 500}}) {
      const grpc::Status status =
          testing::UploadPoints(stub(), c.id, points, first, rows, 400,
                                c.supplied ? &factors : nullptr, c.supplied ? &variances : nullptr);
      ASSERT_TRUE(status.ok()) << c.id << ": " << status.error_message();
    }
    const v1::IndexInfo info = testing::BuildAndWait(stub(), c.id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << c.id << ": " << info.error();
    before.push_back(testing::GetIndex(stub(), c.id));
    answers.push_back(Answer(stub(), Probes(c.id, n, !c.supplied)));
    EXPECT_TRUE(fs::exists(IndexDir(c.id) / "tree.rcknn")) << c.id;
    EXPECT_TRUE(fs::exists(IndexDir(c.id) / "upload-000003.rcknn")) << c.id;
  }

  Restart();
  EXPECT_THAT(ListIds(stub()),
              ::testing::UnorderedElementsAre("computed", "supplied", "euclidean"));
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string& id = cases[i].id;
    const v1::IndexInfo info = testing::AwaitBuilt(stub(), id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << id << ": " << info.error();
    const v1::IndexInfo after = testing::GetIndex(stub(), id);
    EXPECT_EQ(after.num_points(), n) << id;
    EXPECT_EQ(after.build_seconds(), before[i].build_seconds()) << id;
    EXPECT_EQ(after.factor_seconds(), before[i].factor_seconds()) << id;
    EXPECT_EQ(after.tree_seconds(), before[i].tree_seconds()) << id;
    EXPECT_EQ(after.memory_bytes(), before[i].memory_bytes()) << id;
    EXPECT_EQ(after.spec().SerializeAsString(), before[i].spec().SerializeAsString()) << id;
    ExpectIdentical(Answer(stub(), Probes(id, n, !cases[i].supplied)), answers[i], id);
  }
  // A restored index is saved as it was: a second restart restores it again.
  Restart();
  ASSERT_EQ(testing::AwaitBuilt(stub(), "computed").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(stub(), Probes("computed", n, true)), answers[0], "computed");
}

// Raw little-endian float64 values, `columns` per row.
core::RowMatrix ReadRows(const fs::path& path, int64_t columns) {
  const std::string bytes = testing::ReadBytes(path);
  const int64_t values = static_cast<int64_t>(bytes.size() / sizeof(double));
  EXPECT_TRUE(values > 0 && values % columns == 0) << path;
  core::RowMatrix rows(values / columns, columns);
  std::memcpy(rows.data(), bytes.data(), values * sizeof(double));
  return rows;
}

// A data directory written by an earlier server (tests/data/data_dir_v1, format version 1: a
// Euclidean index and one with supplied factors, each one upload and a tree) comes back READY
// and answers bit for bit as the same points built again by this server.
TEST_F(PersistenceTest, DataDirOfFormatVersion1ComesBack) {
  const fs::path source = fs::path(testing::DefaultDataDir()) / "data_dir_v1";
  fs::create_directories(data_dir_);
  fs::copy(source / "indexes", data_dir_ / "indexes", fs::copy_options::recursive);
  Restart();
  struct Case {
    std::string id;
    int dimension;
    int factor_columns;  // 0: none
  };
  for (const Case& c : {Case{"euclid", 3, 0}, Case{"supplied", 2, 6}}) {
    SCOPED_TRACE(c.id);
    const v1::IndexInfo info = testing::AwaitBuilt(stub(), c.id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
    const core::RowMatrix points = ReadRows(source / (c.id + ".points.f64"), c.dimension);
    ASSERT_EQ(info.num_points(), points.rows());
    const std::string rebuilt = c.id + "_rebuilt";
    ASSERT_TRUE(testing::CreateIndex(stub(), rebuilt, info.spec()).ok());
    core::RowMatrix factors;
    std::vector<double> variances;
    if (c.factor_columns > 0) {
      factors = ReadRows(source / (c.id + ".factors.f64"), c.factor_columns);
      const core::RowMatrix p = ReadRows(source / (c.id + ".variances.f64"), 1);
      variances.assign(p.data(), p.data() + p.size());
    }
    const grpc::Status uploaded = testing::UploadPoints(
        stub(), rebuilt, points, 0, points.rows(), 100, c.factor_columns > 0 ? &factors : nullptr,
        c.factor_columns > 0 ? &variances : nullptr);
    ASSERT_TRUE(uploaded.ok()) << uploaded.error_message();
    ASSERT_EQ(testing::BuildAndWait(stub(), rebuilt).state(), v1::INDEX_STATE_READY);
    ExpectIdentical(Answer(stub(), Probes(c.id, points.rows(), false)),
                    Answer(stub(), Probes(rebuilt, points.rows(), false)), c.id);
  }
}

TEST_F(PersistenceTest, LoadingIndexComesBackLoadingAndCanBeBuilt) {
  Restart();
  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 31);
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_MATERN52, 1.0, 0.8, 48);
  ASSERT_TRUE(testing::CreateIndex(stub(), "loading", spec).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "loading", points, 0, 1200, 500).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "loading", points, 1200, 800, 500).ok());

  Restart();
  v1::IndexInfo info = testing::GetIndex(stub(), "loading");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), 2000);
  EXPECT_EQ(info.memory_bytes(), 2000 * kDimension * 8);
  v1::UploadPointsResponse uploaded;
  ASSERT_TRUE(
      testing::UploadPoints(stub(), "loading", points, 2000, 1000, 500, nullptr, nullptr, &uploaded)
          .ok());
  EXPECT_EQ(uploaded.total_points(), n);
  EXPECT_TRUE(fs::exists(IndexDir("loading") / "upload-000003.rcknn"));
  info = testing::BuildAndWait(stub(), "loading");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_EQ(info.num_points(), n);

  // The same points uploaded at once to a server without --data_dir give the same answers.
  testing::TestServer reference = testing::StartTestServer();
  ASSERT_EQ(testing::CreateReadyIndex(*reference.stub, "loading", spec, points, 700).state(),
            v1::INDEX_STATE_READY);
  const std::vector<v1::SearchRequest> probes = Probes("loading", n, true);
  const Answers want = Answer(*reference.stub, probes);
  const Answers got = Answer(stub(), probes);
  ASSERT_EQ(got.ids.size(), want.ids.size());
  int64_t offset = 0;
  for (const v1::SearchRequest& probe : probes) {
    const int64_t queries = probe.query_ids().empty() ? probe.query_points().size() / kDimension
                                                      : probe.query_ids().size();
    EXPECT_EQ(testing::CompareAnswers(got.ids.data() + offset, got.distances.data() + offset,
                                      want.ids.data() + offset, want.distances.data() + offset,
                                      queries, probe.k()),
              "");
    offset += queries * probe.k();
  }
  Restart();
  ASSERT_EQ(testing::AwaitBuilt(stub(), "loading").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(stub(), probes), got, "loading");
}

TEST_F(PersistenceTest, FailedUploadLeavesNoFile) {
  Restart();
  const core::RowMatrix points = testing::NormalPoints(600, kDimension, 41);
  ASSERT_TRUE(testing::CreateIndex(stub(), "partial", EuclideanSpec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "partial", points, 0, 300, 100).ok());
  {
    // Two good chunks, then one with a NaN: INVALID_ARGUMENT mid-stream.
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::UploadPointsResponse response;
    auto writer = stub().UploadPoints(&context, &response);
    for (int chunk = 0; chunk < 3; ++chunk) {
      v1::UploadPointsRequest request;
      request.set_index_id("partial");
      const double* rows = points.data() + (300 + chunk * 100) * kDimension;
      request.mutable_coordinates()->Add(rows, rows + 100 * kDimension);
      if (chunk == 2) request.set_coordinates(7, std::numeric_limits<double>::quiet_NaN());
      if (!writer->Write(request)) break;
    }
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_THAT(FilesIn(IndexDir("partial")),
              ::testing::ElementsAre("spec.rcknn", "upload-000001.rcknn"));
  Restart();
  const v1::IndexInfo info = testing::GetIndex(stub(), "partial");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), 300);
  // The next acknowledged upload takes the next number.
  v1::UploadPointsResponse uploaded;
  ASSERT_TRUE(
      testing::UploadPoints(stub(), "partial", points, 300, 300, 100, nullptr, nullptr, &uploaded)
          .ok());
  EXPECT_EQ(uploaded.total_points(), 600);
  EXPECT_THAT(FilesIn(IndexDir("partial")),
              ::testing::ElementsAre("spec.rcknn", "upload-000001.rcknn", "upload-000002.rcknn"));
}

TEST_F(PersistenceTest, DeletedIndexesDoNotComeBack) {
  Restart();
  const core::RowMatrix points = testing::NormalPoints(500, kDimension, 51);
  ASSERT_EQ(testing::CreateReadyIndex(stub(), "ready", EuclideanSpec(), points, 200).state(),
            v1::INDEX_STATE_READY);
  ASSERT_TRUE(testing::CreateIndex(stub(), "loading", EuclideanSpec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "loading", points, 0, 200, 100).ok());
  ASSERT_TRUE(testing::CreateIndex(stub(), "kept", EuclideanSpec()).ok());
  ASSERT_TRUE(fs::exists(IndexDir("ready")));
  ASSERT_TRUE(fs::exists(IndexDir("loading")));
  ASSERT_TRUE(testing::DeleteIndex(stub(), "ready").ok());
  ASSERT_TRUE(testing::DeleteIndex(stub(), "loading").ok());
  EXPECT_FALSE(fs::exists(IndexDir("ready")));
  EXPECT_FALSE(fs::exists(IndexDir("loading")));
  EXPECT_THAT(FilesIn(data_dir_ / "trash"), ::testing::IsEmpty());
  Restart();
  EXPECT_THAT(ListIds(stub()), ::testing::ElementsAre("kept"));
  grpc::Status status;
  testing::GetIndex(stub(), "ready", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  // The id is free again.
  EXPECT_TRUE(testing::CreateIndex(stub(), "ready", EuclideanSpec()).ok());
}

TEST_F(PersistenceTest, SecondServerOnTheSameDataDirIsRefused) {
  Restart();
  ASSERT_TRUE(testing::CreateIndex(stub(), "first", EuclideanSpec()).ok());
  server::ServerOptions options = Options();
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address.clear();
  options.threads = 1;
  auto second = server::RcknnServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(data_dir_.string()));
  // The first server is untouched by the attempt.
  EXPECT_TRUE(testing::CreateIndex(stub(), "second", EuclideanSpec()).ok());
  EXPECT_THAT(ListIds(stub()), ::testing::ElementsAre("first", "second"));
  // Once it has stopped, the directory can be used again.
  test_.server->Shutdown(absl::ZeroDuration());
  test_ = testing::TestServer();
  auto third = server::RcknnServer::Start(options);
  ASSERT_TRUE(third.ok()) << third.status();
}

TEST_F(PersistenceTest, CorruptFileFailsOnlyItsIndex) {
  Restart();
  const int64_t n = 1500;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 61);
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 32);
  for (const char* id : {"good", "bad-upload", "bad-tree"}) {
    ASSERT_TRUE(testing::CreateIndex(stub(), id, spec).ok());
    ASSERT_TRUE(testing::UploadPoints(stub(), id, points, 0, 1000, 500).ok());
    ASSERT_TRUE(testing::UploadPoints(stub(), id, points, 1000, 500, 500).ok());
    ASSERT_EQ(testing::BuildAndWait(stub(), id).state(), v1::INDEX_STATE_READY) << id;
  }
  const std::vector<v1::SearchRequest> probes = Probes("good", n, true);
  const Answers want = Answer(stub(), probes);
  test_.server->Shutdown(absl::ZeroDuration());
  test_ = testing::TestServer();

  const fs::path bad_upload = IndexDir("bad-upload") / "upload-000001.rcknn";
  const fs::path bad_tree = IndexDir("bad-tree") / "tree.rcknn";
  const std::string upload_bytes = FlipPayloadByte(bad_upload);
  const std::string tree_bytes = FlipPayloadByte(bad_tree);

  Restart();
  const v1::IndexInfo good = testing::AwaitBuilt(stub(), "good");
  ASSERT_EQ(good.state(), v1::INDEX_STATE_READY) << good.error();
  ExpectIdentical(Answer(stub(), probes), want, "good");
  for (const auto& [id, file] :
       {std::pair<std::string, fs::path>{"bad-upload", bad_upload}, {"bad-tree", bad_tree}}) {
    const v1::IndexInfo info = testing::AwaitBuilt(stub(), id);
    EXPECT_EQ(info.state(), v1::INDEX_STATE_FAILED) << id;
    EXPECT_THAT(info.error(), HasSubstr(file.filename().string())) << id;
    EXPECT_THAT(info.error(), HasSubstr("checksum")) << id;
    EXPECT_EQ(info.memory_bytes(), 0) << id;
    v1::SearchResponse response;
    const grpc::Status status = testing::Search(stub(), testing::IdSearch(id, 3, {0}), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << id;
    EXPECT_THAT(status.error_message(), HasSubstr("FAILED")) << id;
  }
  // Nothing of a FAILED index is removed or rewritten behind the operator's back.
  EXPECT_EQ(testing::ReadBytes(bad_upload), upload_bytes);
  EXPECT_EQ(testing::ReadBytes(bad_tree), tree_bytes);
  EXPECT_TRUE(fs::exists(IndexDir("bad-upload") / "upload-000002.rcknn"));
  EXPECT_TRUE(fs::exists(IndexDir("bad-tree") / "upload-000001.rcknn"));
  // Only the good index holds memory.
  EXPECT_EQ(test_.server->memory_budget().used(), good.memory_bytes());

  // A restart finds them FAILED again, for the same reasons.
  Restart();
  EXPECT_EQ(testing::AwaitBuilt(stub(), "bad-upload").state(), v1::INDEX_STATE_FAILED);
  EXPECT_EQ(testing::AwaitBuilt(stub(), "bad-tree").state(), v1::INDEX_STATE_FAILED);
  ASSERT_EQ(testing::AwaitBuilt(stub(), "good").state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(testing::DeleteIndex(stub(), "bad-upload").ok());
  ASSERT_TRUE(testing::DeleteIndex(stub(), "bad-tree").ok());
  EXPECT_FALSE(fs::exists(IndexDir("bad-upload")));
  EXPECT_FALSE(fs::exists(IndexDir("bad-tree")));
  Restart();
  EXPECT_THAT(ListIds(stub()), ::testing::ElementsAre("good"));
  ASSERT_EQ(testing::AwaitBuilt(stub(), "good").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(stub(), probes), want, "good");
}

TEST_F(PersistenceTest, IndexOverTheBudgetAtStartFailsAndComesBackWithMore) {
  Restart();
  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 81);
  ASSERT_EQ(testing::CreateReadyIndex(stub(), "big", EuclideanSpec(), points, 1000).state(),
            v1::INDEX_STATE_READY);
  ASSERT_TRUE(testing::CreateIndex(stub(), "small", EuclideanSpec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "small", points, 0, 100, 100).ok());
  const std::vector<v1::SearchRequest> probes = Probes("big", n, true);
  const Answers want = Answer(stub(), probes);
  test_.server->Shutdown(absl::ZeroDuration());
  test_ = testing::TestServer();

  // Room for the points, not for restoring the tree: "big" is FAILED, "small" is loaded.
  server::ServerOptions options = Options();
  options.max_memory_bytes = 256 << 10;
  test_ = testing::StartTestServer(options);
  const v1::IndexInfo big = testing::AwaitBuilt(stub(), "big");
  EXPECT_EQ(big.state(), v1::INDEX_STATE_FAILED);
  EXPECT_THAT(big.error(), HasSubstr("--max_memory_bytes"));
  const v1::IndexInfo small = testing::GetIndex(stub(), "small");
  EXPECT_EQ(small.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(small.num_points(), 100);
  EXPECT_EQ(test_.server->memory_budget().used(), small.memory_bytes());
  EXPECT_TRUE(fs::exists(IndexDir("big") / "tree.rcknn"));

  // With the default budget it is READY again, answering as before.
  Restart();
  ASSERT_EQ(testing::AwaitBuilt(stub(), "big").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(stub(), probes), want, "big");
}

// A data directory written by a server that computed V and p with other rounding (another CPU
// or rcknn version): the saved fingerprint no longer matches the recomputed factors. The index
// comes back READY over a tree built again (core::KnnIndex::Restore), which is saved, so the
// next start-up adopts it.
TEST_F(PersistenceTest, TreeOverOtherRoundedFactorsIsRebuiltAndSaved) {
  Restart();
  const int64_t n = 1200;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 91);
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 32);
  ASSERT_TRUE(testing::CreateIndex(stub(), "old", spec).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "old", points, 0, n, 600).ok());
  ASSERT_EQ(testing::BuildAndWait(stub(), "old").state(), v1::INDEX_STATE_READY);
  const std::vector<v1::SearchRequest> probes = Probes("old", n, true);
  const Answers want = Answer(stub(), probes);
  test_.server->Shutdown(absl::ZeroDuration());
  test_ = testing::TestServer();

  // The tree file of IndexStore::WriteTree, with the fingerprint of KnnIndex::Save changed.
  const fs::path tree_file = IndexDir("old") / "tree.rcknn";
  auto read_fingerprint = [&](bool flip) {
    absl::StatusOr<core::IndexFileContents> contents = core::ReadIndexFile(tree_file.string());
    EXPECT_TRUE(contents.ok()) << contents.status();
    if (!contents.ok()) return uint64_t{0};
    const uint64_t fingerprint = contents->header.space_fingerprint;
    if (flip) {
      core::IndexFileHeader header = contents->header;
      header.space_fingerprint ^= uint64_t{1};
      EXPECT_TRUE(
          core::WriteIndexFile(tree_file.string(), header, contents->tree.storage()).ok());
    }
    return fingerprint;
  };
  const uint64_t fingerprint = read_fingerprint(/*flip=*/true);
  ASSERT_EQ(read_fingerprint(/*flip=*/false), fingerprint ^ uint64_t{1});

  Restart();
  const v1::IndexInfo info = testing::AwaitBuilt(stub(), "old");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  // Here the factors are in fact computed as before, so the answers are too.
  ExpectIdentical(Answer(stub(), probes), want, "old");
  // The rebuilt tree was saved with the fingerprint of this server's factors.
  test_.server->Shutdown(absl::ZeroDuration());
  test_ = testing::TestServer();
  EXPECT_EQ(read_fingerprint(/*flip=*/false), fingerprint);
  Restart();
  ASSERT_EQ(testing::AwaitBuilt(stub(), "old").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(stub(), probes), want, "old");
}

TEST(NoDataDirTest, NothingIsKept) {
  const fs::path cwd = fs::current_path();
  const std::set<std::string> files_before = FilesIn(cwd);
  server::ServerOptions options;
  ASSERT_TRUE(options.data_dir.empty());
  {
    testing::TestServer test = testing::StartTestServer(options);
    ASSERT_EQ(testing::CreateReadyIndex(*test.stub, "memory", EuclideanSpec(),
                                        testing::NormalPoints(300, kDimension, 71), 100)
                  .state(),
              v1::INDEX_STATE_READY);
    ASSERT_TRUE(testing::CreateIndex(*test.stub, "loading", EuclideanSpec()).ok());
    test.server->Shutdown(absl::ZeroDuration());
  }
  testing::TestServer test = testing::StartTestServer(options);
  EXPECT_THAT(ListIds(*test.stub), ::testing::IsEmpty());
  EXPECT_EQ(FilesIn(cwd), files_before);
}

}  // namespace
}  // namespace rcknn
