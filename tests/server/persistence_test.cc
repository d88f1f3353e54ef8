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
#include <memory>
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

// A search of an index whose answers are compared across restarts, owning its queries.
struct Probe {
  std::string index_id;
  int64_t k = 0;
  std::vector<int64_t> ids;  // or
  core::RowMatrix points;
  bool predecessor_mode = false;

  int64_t num_queries() const { return ids.empty() ? points.rows() : ids.size(); }
  client::SearchQuery Query() const {
    client::SearchQuery query;
    query.index_id = index_id;
    query.k = k;
    if (ids.empty()) {
      query.points = testing::View(points);
    } else {
      query.ids = ids;
    }
    query.predecessor_mode = predecessor_mode;
    return query;
  }
};

// Stored ids (plain and predecessor mode) and, unless the factors were supplied, out-of-sample
// points.
std::vector<Probe> Probes(const std::string& id, int64_t n, bool by_points) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; i += 7) ids.push_back(i);
  std::vector<Probe> probes = {{id, 10, ids, {}, false}, {id, 4, ids, {}, true}};
  if (by_points) probes.push_back({id, 10, {}, testing::NormalPoints(50, kDimension, 99), false});
  return probes;
}

// The answers to `probes`, concatenated; empty if a search failed.
struct Answers {
  std::vector<int64_t> ids;
  std::vector<double> distances;
};

Answers Answer(client::RcknnClient& client, const std::vector<Probe>& probes) {
  Answers answers;
  for (const Probe& probe : probes) {
    const absl::StatusOr<client::SearchResult> result = client.Search(probe.Query());
    EXPECT_TRUE(result.ok()) << probe.index_id << ": " << result.status();
    if (!result.ok()) return Answers();
    answers.ids.insert(answers.ids.end(), result->ids.begin(), result->ids.end());
    answers.distances.insert(answers.distances.end(), result->distances.begin(),
                             result->distances.end());
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

// Rows [first, first + rows) of `points` in one UploadPoints stream, with the same rows of
// `factors` and `variances` when given (both or neither).
absl::Status Upload(client::RcknnClient& client, const std::string& id,
                    const core::RowMatrix& points, int64_t first, int64_t rows,
                    const core::RowMatrix* factors = nullptr,
                    const std::vector<double>* variances = nullptr) {
  absl::Span<const double> factor_rows;
  absl::Span<const double> variance_rows;
  int64_t columns = 0;
  if (factors != nullptr) {
    columns = factors->cols();
    factor_rows = absl::MakeConstSpan(factors->data() + first * columns, rows * columns);
    variance_rows = absl::MakeConstSpan(variances->data() + first, rows);
  }
  return client
      .UploadPoints(id, testing::View(points, first, rows), factor_rows, columns, variance_rows)
      .status();
}

// WatchIndex to the end: the final IndexInfo (READY or FAILED); a failed call fails the test.
v1::IndexInfo Watch(client::RcknnClient& client, const std::string& id) {
  absl::StatusOr<v1::IndexInfo> info = client.WaitForIndex(id);
  EXPECT_TRUE(info.ok()) << id << ": " << info.status();
  return info.ok() ? *std::move(info) : v1::IndexInfo();
}

// BuildIndex, then Watch.
v1::IndexInfo Build(client::RcknnClient& client, const std::string& id) {
  const absl::StatusOr<v1::IndexInfo> started = client.BuildIndex(id);
  EXPECT_TRUE(started.ok()) << id << ": " << started.status();
  return started.ok() ? Watch(client, id) : v1::IndexInfo();
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
  void TearDown() override { served_.Stop(); }

  server::ServerOptions Options() const {
    server::ServerOptions options;
    options.data_dir = data_dir_.string();
    return options;
  }
  // Stops the running server (if any), then starts one with Options(): the data directory's lock
  // is released first. Uploads go in chunks of 400 points, so each upload below is several.
  void Restart(server::ServerOptions options) {
    served_.Stop();
    served_.Start(std::move(options), testing::UploadInChunksOf(400, kDimension));
  }
  void Restart() { Restart(Options()); }
  client::RcknnClient& client() { return served_.client(); }
  fs::path IndexDir(const std::string& id) const { return data_dir_ / "indexes" / id; }

  testing::TempDir temp_dir_{"rcknn-persistence"};
  const fs::path data_dir_ = temp_dir_.Path("data");  // the server creates it
  testing::ClientOnServer served_;
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
    ASSERT_TRUE(client().CreateIndex(c.id, c.spec).ok()) << c.id;
    // Three uploads of uneven size, each in several chunks.
    for (auto [first, rows] : {std::pair<int64_t, int64_t>{0, 1000}, {1000, 1500}, {2500, 500}}) {
      const absl::Status status =
          Upload(client(), c.id, points, first, rows, c.supplied ? &factors : nullptr,
                 c.supplied ? &variances : nullptr);
      ASSERT_TRUE(status.ok()) << c.id << ": " << status;
    }
    const v1::IndexInfo info = Build(client(), c.id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << c.id << ": " << info.error();
    before.push_back(testing::InfoOf(client(), c.id));
    answers.push_back(Answer(client(), Probes(c.id, n, !c.supplied)));
    EXPECT_TRUE(fs::exists(IndexDir(c.id) / "tree.rcknn")) << c.id;
    EXPECT_TRUE(fs::exists(IndexDir(c.id) / "upload-000003.rcknn")) << c.id;
  }

  Restart();
  EXPECT_THAT(testing::ListIds(client()),
              ::testing::UnorderedElementsAre("computed", "supplied", "euclidean"));
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string& id = cases[i].id;
    const v1::IndexInfo info = Watch(client(), id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << id << ": " << info.error();
    const v1::IndexInfo after = testing::InfoOf(client(), id);
    EXPECT_EQ(after.num_points(), n) << id;
    EXPECT_EQ(after.build_seconds(), before[i].build_seconds()) << id;
    EXPECT_EQ(after.factor_seconds(), before[i].factor_seconds()) << id;
    EXPECT_EQ(after.tree_seconds(), before[i].tree_seconds()) << id;
    EXPECT_EQ(after.memory_bytes(), before[i].memory_bytes()) << id;
    EXPECT_EQ(after.spec().SerializeAsString(), before[i].spec().SerializeAsString()) << id;
    ExpectIdentical(Answer(client(), Probes(id, n, !cases[i].supplied)), answers[i], id);
  }
  // A restored index is saved as it was: a second restart restores it again.
  Restart();
  ASSERT_EQ(Watch(client(), "computed").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(client(), Probes("computed", n, true)), answers[0], "computed");
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
    const v1::IndexInfo info = Watch(client(), c.id);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
    const core::RowMatrix points = ReadRows(source / (c.id + ".points.f64"), c.dimension);
    ASSERT_EQ(info.num_points(), points.rows());
    const std::string rebuilt = c.id + "_rebuilt";
    ASSERT_TRUE(client().CreateIndex(rebuilt, info.spec()).ok());
    core::RowMatrix factors;
    std::vector<double> variances;
    if (c.factor_columns > 0) {
      factors = ReadRows(source / (c.id + ".factors.f64"), c.factor_columns);
      const core::RowMatrix p = ReadRows(source / (c.id + ".variances.f64"), 1);
      variances.assign(p.data(), p.data() + p.size());
    }
    const absl::Status uploaded = Upload(client(), rebuilt, points, 0, points.rows(),
                                         c.factor_columns > 0 ? &factors : nullptr,
                                         c.factor_columns > 0 ? &variances : nullptr);
    ASSERT_TRUE(uploaded.ok()) << uploaded;
    ASSERT_EQ(Build(client(), rebuilt).state(), v1::INDEX_STATE_READY);
    ExpectIdentical(Answer(client(), Probes(c.id, points.rows(), false)),
                    Answer(client(), Probes(rebuilt, points.rows(), false)), c.id);
  }
}

TEST_F(PersistenceTest, LoadingIndexComesBackLoadingAndCanBeBuilt) {
  Restart();
  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 31);
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_MATERN52, 1.0, 0.8, 48);
  ASSERT_TRUE(client().CreateIndex("loading", spec).ok());
  ASSERT_TRUE(Upload(client(), "loading", points, 0, 1200).ok());
  ASSERT_TRUE(Upload(client(), "loading", points, 1200, 800).ok());

  Restart();
  v1::IndexInfo info = testing::InfoOf(client(), "loading");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), 2000);
  EXPECT_EQ(info.memory_bytes(), 2000 * kDimension * 8);
  const absl::StatusOr<v1::UploadPointsResponse> uploaded =
      client().UploadPoints("loading", testing::View(points, 2000, 1000));
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_EQ(uploaded->total_points(), n);
  EXPECT_TRUE(fs::exists(IndexDir("loading") / "upload-000003.rcknn"));
  info = Build(client(), "loading");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_EQ(info.num_points(), n);

  // The same points uploaded at once to a server without --data_dir give the same answers.
  testing::ClientOnServer reference;
  reference.Start(server::ServerOptions());
  const absl::StatusOr<v1::IndexInfo> ready =
      testing::CreateReadyIndex(reference.client(), "loading", spec, points);
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->state(), v1::INDEX_STATE_READY);
  const std::vector<Probe> probes = Probes("loading", n, true);
  const Answers want = Answer(reference.client(), probes);
  const Answers got = Answer(client(), probes);
  ASSERT_EQ(got.ids.size(), want.ids.size());
  int64_t offset = 0;
  for (const Probe& probe : probes) {
    EXPECT_EQ(testing::CompareAnswers(got.ids.data() + offset, got.distances.data() + offset,
                                      want.ids.data() + offset, want.distances.data() + offset,
                                      probe.num_queries(), probe.k),
              "");
    offset += probe.num_queries() * probe.k;
  }
  Restart();
  ASSERT_EQ(Watch(client(), "loading").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(client(), probes), got, "loading");
}

TEST_F(PersistenceTest, FailedUploadLeavesNoFile) {
  Restart();
  core::RowMatrix points = testing::NormalPoints(600, kDimension, 41);
  ASSERT_TRUE(client().CreateIndex("partial", EuclideanSpec()).ok());
  ASSERT_TRUE(Upload(client(), "partial", points, 0, 300).ok());
  {
    // Chunks of 100 points: two good ones, then one with a NaN: INVALID_ARGUMENT mid-stream.
    const std::unique_ptr<client::RcknnClient> chunked =
        testing::MakeClient(served_.test(), testing::UploadInChunksOf(100, kDimension));
    core::RowMatrix bad = points.middleRows(300, 300);
    bad(200 + 2, 1) = std::numeric_limits<double>::quiet_NaN();
    EXPECT_THAT(chunked->UploadPoints("partial", testing::View(bad)),
                testing::StatusIs(absl::StatusCode::kInvalidArgument, "coordinates"));
  }
  EXPECT_THAT(FilesIn(IndexDir("partial")),
              ::testing::ElementsAre("spec.rcknn", "upload-000001.rcknn"));
  Restart();
  const v1::IndexInfo info = testing::InfoOf(client(), "partial");
  EXPECT_EQ(info.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info.num_points(), 300);
  // The next acknowledged upload takes the next number.
  const absl::StatusOr<v1::UploadPointsResponse> uploaded =
      client().UploadPoints("partial", testing::View(points, 300, 300));
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_EQ(uploaded->total_points(), 600);
  EXPECT_THAT(FilesIn(IndexDir("partial")),
              ::testing::ElementsAre("spec.rcknn", "upload-000001.rcknn", "upload-000002.rcknn"));
}

TEST_F(PersistenceTest, DeletedIndexesDoNotComeBack) {
  Restart();
  const core::RowMatrix points = testing::NormalPoints(500, kDimension, 51);
  const absl::StatusOr<v1::IndexInfo> ready =
      testing::CreateReadyIndex(client(), "ready", EuclideanSpec(), points);
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(client().CreateIndex("loading", EuclideanSpec()).ok());
  ASSERT_TRUE(Upload(client(), "loading", points, 0, 200).ok());
  ASSERT_TRUE(client().CreateIndex("kept", EuclideanSpec()).ok());
  ASSERT_TRUE(fs::exists(IndexDir("ready")));
  ASSERT_TRUE(fs::exists(IndexDir("loading")));
  ASSERT_TRUE(client().DeleteIndex("ready").ok());
  ASSERT_TRUE(client().DeleteIndex("loading").ok());
  EXPECT_FALSE(fs::exists(IndexDir("ready")));
  EXPECT_FALSE(fs::exists(IndexDir("loading")));
  EXPECT_THAT(FilesIn(data_dir_ / "trash"), ::testing::IsEmpty());
  Restart();
  EXPECT_THAT(testing::ListIds(client()), ::testing::ElementsAre("kept"));
  EXPECT_THAT(client().GetIndex("ready"), testing::StatusIs(absl::StatusCode::kNotFound, "ready"));
  // The id is free again.
  EXPECT_TRUE(client().CreateIndex("ready", EuclideanSpec()).ok());
}

TEST_F(PersistenceTest, SecondServerOnTheSameDataDirIsRefused) {
  Restart();
  ASSERT_TRUE(client().CreateIndex("first", EuclideanSpec()).ok());
  server::ServerOptions options = Options();
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address.clear();
  options.threads = 1;
  EXPECT_THAT(server::RcknnServer::Start(options),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, data_dir_.string()));
  // The first server is untouched by the attempt.
  EXPECT_TRUE(client().CreateIndex("second", EuclideanSpec()).ok());
  EXPECT_THAT(testing::ListIds(client()), ::testing::ElementsAre("first", "second"));
  // Once it has stopped, the directory can be used again.
  served_.Stop();
  auto third = server::RcknnServer::Start(options);
  ASSERT_TRUE(third.ok()) << third.status();
}

TEST_F(PersistenceTest, CorruptFileFailsOnlyItsIndex) {
  Restart();
  const int64_t n = 1500;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 61);
  const v1::IndexSpec spec = testing::ResidualSpec(kDimension, v1::KERNEL_RBF, 1.0, 1.0, 32);
  for (const char* id : {"good", "bad-upload", "bad-tree"}) {
    ASSERT_TRUE(client().CreateIndex(id, spec).ok());
    ASSERT_TRUE(Upload(client(), id, points, 0, 1000).ok());
    ASSERT_TRUE(Upload(client(), id, points, 1000, 500).ok());
    ASSERT_EQ(Build(client(), id).state(), v1::INDEX_STATE_READY) << id;
  }
  const std::vector<Probe> probes = Probes("good", n, true);
  const Answers want = Answer(client(), probes);
  served_.Stop();

  const fs::path bad_upload = IndexDir("bad-upload") / "upload-000001.rcknn";
  const fs::path bad_tree = IndexDir("bad-tree") / "tree.rcknn";
  const std::string upload_bytes = FlipPayloadByte(bad_upload);
  const std::string tree_bytes = FlipPayloadByte(bad_tree);

  Restart();
  const v1::IndexInfo good = Watch(client(), "good");
  ASSERT_EQ(good.state(), v1::INDEX_STATE_READY) << good.error();
  ExpectIdentical(Answer(client(), probes), want, "good");
  const std::vector<int64_t> zero = {0};
  for (const auto& [id, file] :
       {std::pair<std::string, fs::path>{"bad-upload", bad_upload}, {"bad-tree", bad_tree}}) {
    const v1::IndexInfo info = Watch(client(), id);
    EXPECT_EQ(info.state(), v1::INDEX_STATE_FAILED) << id;
    EXPECT_THAT(info.error(), HasSubstr(file.filename().string())) << id;
    EXPECT_THAT(info.error(), HasSubstr("checksum")) << id;
    EXPECT_EQ(info.memory_bytes(), 0) << id;
    EXPECT_THAT(client().Search(testing::IdQuery(id, zero, 3)),
                testing::StatusIs(absl::StatusCode::kFailedPrecondition, "FAILED"))
        << id;
  }
  // Nothing of a FAILED index is removed or rewritten behind the operator's back.
  EXPECT_EQ(testing::ReadBytes(bad_upload), upload_bytes);
  EXPECT_EQ(testing::ReadBytes(bad_tree), tree_bytes);
  EXPECT_TRUE(fs::exists(IndexDir("bad-upload") / "upload-000002.rcknn"));
  EXPECT_TRUE(fs::exists(IndexDir("bad-tree") / "upload-000001.rcknn"));
  // Only the good index holds memory.
  EXPECT_EQ(served_.server().memory_budget().used(), good.memory_bytes());

  // A restart finds them FAILED again, for the same reasons.
  Restart();
  EXPECT_EQ(Watch(client(), "bad-upload").state(), v1::INDEX_STATE_FAILED);
  EXPECT_EQ(Watch(client(), "bad-tree").state(), v1::INDEX_STATE_FAILED);
  ASSERT_EQ(Watch(client(), "good").state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(client().DeleteIndex("bad-upload").ok());
  ASSERT_TRUE(client().DeleteIndex("bad-tree").ok());
  EXPECT_FALSE(fs::exists(IndexDir("bad-upload")));
  EXPECT_FALSE(fs::exists(IndexDir("bad-tree")));
  Restart();
  EXPECT_THAT(testing::ListIds(client()), ::testing::ElementsAre("good"));
  ASSERT_EQ(Watch(client(), "good").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(client(), probes), want, "good");
}

TEST_F(PersistenceTest, IndexOverTheBudgetAtStartFailsAndComesBackWithMore) {
  Restart();
  const int64_t n = 3000;
  const core::RowMatrix points = testing::NormalPoints(n, kDimension, 81);
  const absl::StatusOr<v1::IndexInfo> ready =
      testing::CreateReadyIndex(client(), "big", EuclideanSpec(), points);
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(client().CreateIndex("small", EuclideanSpec()).ok());
  ASSERT_TRUE(Upload(client(), "small", points, 0, 100).ok());
  const std::vector<Probe> probes = Probes("big", n, true);
  const Answers want = Answer(client(), probes);

  // Room for the points, not for restoring the tree: "big" is FAILED, "small" is loaded.
  server::ServerOptions options = Options();
  options.max_memory_bytes = 256 << 10;
  Restart(options);
  const v1::IndexInfo big = Watch(client(), "big");
  EXPECT_EQ(big.state(), v1::INDEX_STATE_FAILED);
  EXPECT_THAT(big.error(), HasSubstr("--max_memory_bytes"));
  const v1::IndexInfo small = testing::InfoOf(client(), "small");
  EXPECT_EQ(small.state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(small.num_points(), 100);
  EXPECT_EQ(served_.server().memory_budget().used(), small.memory_bytes());
  EXPECT_TRUE(fs::exists(IndexDir("big") / "tree.rcknn"));

  // With the default budget it is READY again, answering as before.
  Restart();
  ASSERT_EQ(Watch(client(), "big").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(client(), probes), want, "big");
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
  ASSERT_TRUE(client().CreateIndex("old", spec).ok());
  ASSERT_TRUE(Upload(client(), "old", points, 0, n).ok());
  ASSERT_EQ(Build(client(), "old").state(), v1::INDEX_STATE_READY);
  const std::vector<Probe> probes = Probes("old", n, true);
  const Answers want = Answer(client(), probes);
  served_.Stop();

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
      EXPECT_TRUE(core::WriteIndexFile(tree_file.string(), header, contents->tree.storage()).ok());
    }
    return fingerprint;
  };
  const uint64_t fingerprint = read_fingerprint(/*flip=*/true);
  ASSERT_EQ(read_fingerprint(/*flip=*/false), fingerprint ^ uint64_t{1});

  Restart();
  const v1::IndexInfo info = Watch(client(), "old");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  // Here the factors are in fact computed as before, so the answers are too.
  ExpectIdentical(Answer(client(), probes), want, "old");
  // The rebuilt tree was saved with the fingerprint of this server's factors.
  served_.Stop();
  EXPECT_EQ(read_fingerprint(/*flip=*/false), fingerprint);
  Restart();
  ASSERT_EQ(Watch(client(), "old").state(), v1::INDEX_STATE_READY);
  ExpectIdentical(Answer(client(), probes), want, "old");
}

TEST(NoDataDirTest, NothingIsKept) {
  const fs::path cwd = fs::current_path();
  const std::set<std::string> files_before = FilesIn(cwd);
  server::ServerOptions options;
  ASSERT_TRUE(options.data_dir.empty());
  testing::ClientOnServer served;
  served.Start(options);
  const absl::StatusOr<v1::IndexInfo> ready = testing::CreateReadyIndex(
      served.client(), "memory", EuclideanSpec(), testing::NormalPoints(300, kDimension, 71));
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(served.client().CreateIndex("loading", EuclideanSpec()).ok());
  served.Restart();
  EXPECT_THAT(testing::ListIds(served.client()), ::testing::IsEmpty());
  EXPECT_EQ(FilesIn(cwd), files_before);
}

}  // namespace
}  // namespace rcknn
