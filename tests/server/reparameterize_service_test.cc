// CreateIndex with source_index_id through a real in-process server and the client library: the
// new index takes its
// source's points without an upload, answers exactly under its own kernel, reports its source
// and its tree, shares the upload files on disk (hard links) so that deleting the source leaves
// it intact across a restart, and every bad request gets its precise code naming the field.
#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/brute_force_knn.h"
#include "core/knn_index.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/proto_conversion.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::StatusIs;

constexpr int64_t kPoints = 400;
constexpr int64_t kK = 8;

v1::CreateIndexRequest FromSource(const std::string& id, const std::string& source,
                                  double lengthscale, v1::SourceTree tree) {
  v1::CreateIndexRequest request;
  request.set_index_id(id);
  request.set_source_index_id(source);
  request.set_source_tree(tree);
  // Only the kernel: dimension and metric come from the source.
  v1::IndexSpec* spec = request.mutable_spec();
  spec->mutable_kernel()->set_type(v1::KERNEL_MATERN32);
  spec->mutable_kernel()->set_variance(2.0);
  spec->mutable_kernel()->add_lengthscales(lengthscale);
  spec->set_inducing_count(16);
  spec->set_inducing_seed(5);
  return request;
}

class ReparameterizeServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    points_ = testing::NormalPoints(kPoints, 2, 11);
    Start();
  }
  void TearDown() override { served_.Stop(); }
  void Start() {
    server::ServerOptions options;
    options.data_dir = data_dir_.string();
    served_.Start(std::move(options));
  }
  void Restart() { served_.Restart(); }
  client::RcknnClient& client() { return served_.client(); }
  // Create (one upload stream), build, and wait: READY.
  void MakeReady(const std::string& id, const v1::IndexSpec& spec) {
    ASSERT_TRUE(client().CreateIndex(id, spec).ok());
    ASSERT_TRUE(client().UploadPoints(id, testing::View(points_)).ok());
    const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client(), id);
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  }
  void MakeSource(const std::string& id) {
    MakeReady(id, testing::ResidualSpec(2, v1::KERNEL_MATERN32, 2.0, 0.6, 16, 5));
  }
  // WaitForIndex: the final IndexInfo (an empty one naming the error if the call failed).
  v1::IndexInfo AwaitBuilt(const std::string& id) {
    absl::StatusOr<v1::IndexInfo> info = client().WaitForIndex(id);
    if (info.ok()) return *std::move(info);
    v1::IndexInfo failed;
    failed.set_error(info.status().ToString());
    return failed;
  }
  // The index `id` must answer every point's k-NN (predecessor mode) as a brute force over
  // `points_` under `spec` does.
  void ExpectExact(const std::string& id, const v1::IndexSpec& spec) {
    v1::IndexSpec normalized;
    absl::StatusOr<core::IndexSpec> core_spec = server::ToCoreSpec(spec, &normalized);
    ASSERT_TRUE(core_spec.ok()) << core_spec.status();
    core::IndexData data;
    data.points = points_;
    absl::StatusOr<std::unique_ptr<core::KnnIndex>> local =
        core::KnnIndex::Build(*core_spec, std::move(data));
    ASSERT_TRUE(local.ok()) << local.status();
    std::vector<int64_t> ids(kPoints);
    for (int64_t i = 0; i < kPoints; ++i) ids[i] = i;
    core::QueryBatch batch;
    batch.ids = ids;
    core::KnnOptions options;
    options.k = kK;
    options.predecessor_mode = true;
    std::vector<int64_t> ref_ids(kPoints * kK);
    std::vector<double> ref(kPoints * kK);
    ASSERT_TRUE(core::BruteForceKnn((*local)->space(), batch, options, nullptr, nullptr,
                                    ref_ids.data(), ref.data())
                    .ok());
    client::SearchQuery query = testing::IdQuery(id, ids, kK);
    query.predecessor_mode = true;
    const absl::StatusOr<client::SearchResult> answer = client().Search(query);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(testing::CompareAnswers(answer->ids.data(), answer->distances.data(),
                                      ref_ids.data(), ref.data(), kPoints, kK),
              "")
        << id;
  }
  std::vector<double> Points(const std::string& id) {
    absl::StatusOr<std::vector<double>> points =
        client().GetPoints(id, testing::Range(0, kPoints));
    EXPECT_TRUE(points.ok()) << points.status();
    return points.ok() ? *std::move(points) : std::vector<double>();
  }
  std::vector<double> Uploaded() const {
    return std::vector<double>(points_.data(), points_.data() + points_.size());
  }
  fs::path IndexDir(const std::string& id) const { return data_dir_ / "indexes" / id; }

  testing::TempDir temp_dir_{"rcknn-reparameterize"};
  const fs::path data_dir_ = temp_dir_.Path("data");
  core::RowMatrix points_;
  testing::ClientOnServer served_;
};

TEST_F(ReparameterizeServiceTest, NewKernelOverTheSourcesPointsWithoutAnUpload) {
  MakeSource("src");
  for (const auto& [id, tree] : std::vector<std::pair<std::string, v1::SourceTree>>{
           {"refit", v1::SOURCE_TREE_REFIT},
           {"rebuild", v1::SOURCE_TREE_REBUILD},
           {"auto", v1::SOURCE_TREE_UNSPECIFIED}}) {
    SCOPED_TRACE(id);
    const v1::CreateIndexRequest request = FromSource(id, "src", 0.66, tree);
    const absl::StatusOr<v1::IndexInfo> created = client().CreateIndex(request);
    ASSERT_TRUE(created.ok()) << created.status();
    EXPECT_EQ(created->source_index_id(), "src");
    EXPECT_EQ(created->num_points(), kPoints);
    EXPECT_NE(created->state(), v1::INDEX_STATE_LOADING);
    const v1::IndexInfo ready = AwaitBuilt(id);
    ASSERT_EQ(ready.state(), v1::INDEX_STATE_READY) << ready.error();
    EXPECT_EQ(ready.spec().dimension(), 2);
    EXPECT_EQ(ready.spec().metric(), v1::METRIC_RESIDUAL_CORRELATION);
    EXPECT_EQ(ready.spec().kernel().lengthscales(0), 0.66);
    if (tree != v1::SOURCE_TREE_UNSPECIFIED) {
      EXPECT_EQ(ready.tree_refitted(), tree == v1::SOURCE_TREE_REFIT);
    }
    EXPECT_EQ(Points(id), Uploaded());
    v1::IndexSpec expected = request.spec();
    expected.set_dimension(2);
    expected.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
    ExpectExact(id, expected);
    // Its points came with it: no upload is taken, and BuildIndex is refused.
    EXPECT_THAT(client().UploadPoints(id, testing::View(points_)),
                StatusIs(absl::StatusCode::kFailedPrecondition, "BuildIndex"));
    EXPECT_THAT(client().BuildIndex(id),
                StatusIs(absl::StatusCode::kFailedPrecondition, "BuildIndex is accepted once"));
  }
  // The source is untouched, and an index of uploaded points reports no source.
  const absl::StatusOr<v1::IndexInfo> source = client().GetIndex("src");
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(source->source_index_id(), "");
  ExpectExact("src", testing::ResidualSpec(2, v1::KERNEL_MATERN32, 2.0, 0.6, 16, 5));
}

TEST_F(ReparameterizeServiceTest, RefusedRequests) {
  MakeSource("src");
  EXPECT_THAT(client().CreateIndex(FromSource("x", "missing", 1.0, v1::SOURCE_TREE_UNSPECIFIED)),
              StatusIs(absl::StatusCode::kNotFound, "missing"));
  ASSERT_TRUE(
      client().CreateIndex("loading", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 1.0, 8)).ok());
  EXPECT_THAT(client().CreateIndex(FromSource("x", "loading", 1.0, v1::SOURCE_TREE_UNSPECIFIED)),
              StatusIs(absl::StatusCode::kFailedPrecondition, "source_index_id"));
  ASSERT_TRUE(client().UploadPoints("loading", testing::View(points_)).ok());
  EXPECT_THAT(client().CreateIndex(FromSource("x", "loading", 1.0, v1::SOURCE_TREE_UNSPECIFIED)),
              StatusIs(absl::StatusCode::kFailedPrecondition, "LOADING"));

  auto invalid = [&](v1::CreateIndexRequest request, const std::string& field) {
    SCOPED_TRACE(field);
    EXPECT_THAT(client().CreateIndex(request),
                StatusIs(absl::StatusCode::kInvalidArgument, field));
  };
  v1::CreateIndexRequest request = FromSource("x", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  request.mutable_spec()->set_dimension(3);
  invalid(request, "spec.dimension");
  request = FromSource("x", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  request.mutable_spec()->set_metric(v1::METRIC_EUCLIDEAN);
  invalid(request, "spec.metric");
  request = FromSource("x", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  request.mutable_spec()->set_factors_supplied(true);
  invalid(request, "spec.factors_supplied");
  request = FromSource("x", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  request.mutable_spec()->mutable_kernel()->set_lengthscales(0, -1.0);
  invalid(request, "spec.kernel.lengthscales");
  request = FromSource("x", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  request.set_source_tree(static_cast<v1::SourceTree>(7));
  invalid(request, "source_tree");
  request = FromSource("x", "src", 1.0, v1::SOURCE_TREE_REFIT);
  request.clear_source_index_id();
  invalid(request, "source_tree");
  request = FromSource("x", "bad/id", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  invalid(request, "source_index_id");
  request = FromSource("bad/id", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED);
  invalid(request, "index_id");
  {
    v1::IndexSpec euclidean;
    euclidean.set_metric(v1::METRIC_EUCLIDEAN);
    euclidean.set_dimension(2);
    MakeReady("euclid", euclidean);
    invalid(FromSource("x", "euclid", 1.0, v1::SOURCE_TREE_UNSPECIFIED), "source_index_id");
  }
  EXPECT_THAT(client().CreateIndex(FromSource("src", "src", 1.0, v1::SOURCE_TREE_UNSPECIFIED)),
              StatusIs(absl::StatusCode::kAlreadyExists, "src"));
  // Nothing of the refused requests was kept.
  const absl::StatusOr<std::vector<v1::IndexInfo>> list = client().ListIndexes();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->size(), 3u);
  EXPECT_FALSE(fs::exists(IndexDir("x")));
}

TEST_F(ReparameterizeServiceTest, SharedFilesOutliveTheSourceAcrossRestarts) {
  MakeSource("src");
  const v1::CreateIndexRequest first = FromSource("derived", "src", 0.8, v1::SOURCE_TREE_REFIT);
  ASSERT_TRUE(client().CreateIndex(first).ok());
  ASSERT_EQ(AwaitBuilt("derived").state(), v1::INDEX_STATE_READY);
  // The upload files are the source's, linked: the same inodes, not copies.
  int linked = 0;
  for (const fs::directory_entry& file : fs::directory_iterator(IndexDir("src"))) {
    const std::string name = file.path().filename().string();
    if (name.rfind("upload-", 0) != 0) continue;
    struct stat a, b;
    ASSERT_EQ(::stat(file.path().c_str(), &a), 0);
    ASSERT_EQ(::stat((IndexDir("derived") / name).c_str(), &b), 0) << name;
    EXPECT_EQ(a.st_ino, b.st_ino) << name;
    ++linked;
  }
  EXPECT_EQ(linked, 1);  // one upload stream: one file
  ASSERT_TRUE(client().DeleteIndex("src").ok());
  // An index created from one that was itself created from a source, after that source is gone.
  const v1::CreateIndexRequest second =
      FromSource("chained", "derived", 1.2, v1::SOURCE_TREE_REBUILD);
  ASSERT_TRUE(client().CreateIndex(second).ok());
  ASSERT_EQ(AwaitBuilt("chained").state(), v1::INDEX_STATE_READY);
  // A directory left by a CreateIndex interrupted before its spec was committed.
  fs::create_directories(IndexDir("ghost"));
  fs::copy_file(IndexDir("derived") / "source.rcknn", IndexDir("ghost") / "source.rcknn");
  Restart();
  EXPECT_FALSE(fs::exists(IndexDir("ghost")));
  for (const auto& [id, request] :
       std::vector<std::pair<std::string, v1::CreateIndexRequest>>{{"derived", first},
                                                                   {"chained", second}}) {
    SCOPED_TRACE(id);
    const v1::IndexInfo restored = AwaitBuilt(id);
    ASSERT_EQ(restored.state(), v1::INDEX_STATE_READY) << restored.error();
    EXPECT_EQ(restored.source_index_id(), request.source_index_id());
    // Which tree it was built with is kept across the restart (tree-refitted.rcknn).
    EXPECT_EQ(restored.tree_refitted(), id == "derived");
    EXPECT_EQ(Points(id), Uploaded());
    v1::IndexSpec expected = request.spec();
    expected.set_dimension(2);
    expected.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
    ExpectExact(id, expected);
  }
  const absl::StatusOr<std::vector<v1::IndexInfo>> list = client().ListIndexes();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->size(), 2u);
}

TEST_F(ReparameterizeServiceTest, AnUnfinishedBuildComesBackLoadingAndBuildsWithoutUploads) {
  MakeSource("src");
  const v1::CreateIndexRequest request = FromSource("derived", "src", 0.8, v1::SOURCE_TREE_REFIT);
  ASSERT_TRUE(client().CreateIndex(request).ok());
  ASSERT_EQ(AwaitBuilt("derived").state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(client().DeleteIndex("src").ok());
  served_.Stop();
  // What a crash before the tree file's commit leaves: the spec, source.rcknn and the linked
  // upload files, no tree.
  ASSERT_TRUE(fs::remove(IndexDir("derived") / "tree.rcknn"));
  Start();
  // Like any interrupted build: LOADING with all its points (not rebuilt by itself).
  absl::StatusOr<v1::IndexInfo> info = client().GetIndex("derived");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::INDEX_STATE_LOADING);
  EXPECT_EQ(info->num_points(), kPoints);
  EXPECT_EQ(info->source_index_id(), "src");
  // Its upload files are its source's: an upload of its own is refused (it would not restore).
  const core::RowMatrix extra = testing::NormalPoints(3, 2, 4);
  EXPECT_THAT(client().UploadPoints("derived", testing::View(extra)),
              StatusIs(absl::StatusCode::kFailedPrecondition, "takes no uploads"));
  info = client().GetIndex("derived");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_points(), kPoints);
  const absl::StatusOr<v1::IndexInfo> built = testing::BuildAndWait(client(), "derived");
  ASSERT_TRUE(built.ok()) << built.status();
  ASSERT_EQ(built->state(), v1::INDEX_STATE_READY) << built->error();
  EXPECT_FALSE(built->tree_refitted());  // built afresh: the source is gone
  v1::IndexSpec expected = request.spec();
  expected.set_dimension(2);
  expected.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
  ExpectExact("derived", expected);
  // And it restores from there, as built afresh: the refitted tree's marker went with it.
  EXPECT_FALSE(fs::exists(IndexDir("derived") / "tree-refitted.rcknn"));
  Restart();
  const v1::IndexInfo restored = AwaitBuilt("derived");
  ASSERT_EQ(restored.state(), v1::INDEX_STATE_READY) << restored.error();
  EXPECT_FALSE(restored.tree_refitted());
  EXPECT_EQ(Points("derived"), Uploaded());
  ExpectExact("derived", expected);
}

}  // namespace
}  // namespace rcknn
