#include "tests/server/server_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/testing/random_points.h"

namespace rcknn::testing {

TestServer StartTestServer(server::ServerOptions options) {
  options.listen_address = "127.0.0.1:0";
  // No Prometheus endpoint: tests read RcknnServer::metrics() directly (an Exposer's destructor
  // may block for up to 2 s).
  options.metrics_listen_address.clear();
  if (options.threads == 0) options.threads = 2;
  TestServer test;
  auto started = server::RcknnServer::Start(options);
  if (!started.ok()) {
    std::fprintf(stderr, "cannot start the server: %s\n", started.status().ToString().c_str());
    std::abort();
  }
  test.server = *std::move(started);
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  arguments.SetMaxSendMessageSize(-1);
  test.channel = grpc::CreateCustomChannel(test.server->address(),
                                           grpc::InsecureChannelCredentials(), arguments);
  test.stub = v1::Rcknn::NewStub(test.channel);
  return test;
}

std::unique_ptr<client::RcknnClient> MakeClient(const TestServer& server,
                                                client::ClientOptions options) {
  options.target = server.server->address();
  if (options.timeout > kCallTimeout) options.timeout = kCallTimeout;
  return std::make_unique<client::RcknnClient>(options, server.channel);
}

void ClientOnServer::Start(server::ServerOptions options, client::ClientOptions client_options) {
  options_ = std::move(options);
  client_options_ = std::move(client_options);
  test_ = StartTestServer(options_);
  client_ = MakeClient(test_, client_options_);
}

void ClientOnServer::Stop() {
  client_.reset();
  if (test_.server != nullptr) test_.server->Shutdown(absl::ZeroDuration());
  test_ = TestServer();
}

void ClientOnServer::Restart() {
  Stop();
  Start(options_, client_options_);
}

client::ClientOptions UploadInChunksOf(int64_t rows, int values_per_row) {
  client::ClientOptions options;
  options.upload_chunk_bytes = rows * 9 * values_per_row;
  return options;
}

v1::IndexSpec SpecOf(const Dataset& set) {
  v1::IndexSpec spec;
  spec.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
  spec.set_dimension(set.dimension);
  v1::KernelSpec* kernel = spec.mutable_kernel();
  switch (set.kernel.type) {
    case core::KernelType::kRbf:
      kernel->set_type(v1::KERNEL_RBF);
      break;
    case core::KernelType::kMatern12:
      kernel->set_type(v1::KERNEL_MATERN12);
      break;
    case core::KernelType::kMatern32:
      kernel->set_type(v1::KERNEL_MATERN32);
      break;
    case core::KernelType::kMatern52:
      kernel->set_type(v1::KERNEL_MATERN52);
      break;
  }
  kernel->set_variance(set.kernel.variance);
  for (double l : set.kernel.lengthscales) kernel->add_lengthscales(l);
  for (int64_t id : set.inducing_ids) {
    for (int t = 0; t < set.dimension; ++t) spec.add_inducing_points(set.points(id, t));
  }
  return spec;
}

v1::IndexSpec ResidualSpec(int dimension, v1::KernelType type, double variance, double lengthscale,
                           int64_t m, uint64_t seed) {
  v1::IndexSpec spec;
  spec.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
  spec.set_dimension(dimension);
  spec.mutable_kernel()->set_type(type);
  spec.mutable_kernel()->set_variance(variance);
  spec.mutable_kernel()->add_lengthscales(lengthscale);
  spec.set_inducing_count(m);
  spec.set_inducing_seed(seed);
  return spec;
}

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
}

grpc::Status CreateIndex(v1::Rcknn::Stub& stub, const std::string& id, const v1::IndexSpec& spec) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::CreateIndexRequest request;
  request.set_index_id(id);
  *request.mutable_spec() = spec;
  v1::IndexInfo info;
  return stub.CreateIndex(&context, request, &info);
}

grpc::Status UploadPoints(v1::Rcknn::Stub& stub, const std::string& id,
                          const core::RowMatrix& points, int64_t chunk_points) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::UploadPointsResponse response;
  auto writer = stub.UploadPoints(&context, &response);
  const int64_t d = points.cols();
  for (int64_t begin = 0; begin < points.rows(); begin += chunk_points) {
    const int64_t end = std::min<int64_t>(points.rows(), begin + chunk_points);
    v1::UploadPointsRequest chunk;
    if (begin == 0) chunk.set_index_id(id);
    chunk.mutable_coordinates()->Add(points.data() + begin * d, points.data() + end * d);
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status BuildIndex(v1::Rcknn::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::BuildIndexRequest request;
  request.set_index_id(id);
  v1::IndexInfo info;
  return stub.BuildIndex(&context, request, &info);
}

v1::IndexInfo AwaitBuilt(v1::Rcknn::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  SetDeadline(context);
  v1::GetIndexRequest request;
  request.set_index_id(id);
  auto reader = stub.WatchIndex(&context, request);
  v1::IndexInfo info;
  while (reader->Read(&info)) {
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) info.set_error(absl::StrCat("WatchIndex: ", status.error_message()));
  return info;
}

v1::IndexInfo BuildAndWait(v1::Rcknn::Stub& stub, const std::string& id) {
  if (const grpc::Status status = BuildIndex(stub, id); !status.ok()) {
    v1::IndexInfo info;
    info.set_error(absl::StrCat("BuildIndex: ", status.error_message()));
    return info;
  }
  return AwaitBuilt(stub, id);
}

grpc::Status Search(v1::Rcknn::Stub& stub, const v1::SearchRequest& request,
                    v1::SearchResponse* response) {
  grpc::ClientContext context;
  SetDeadline(context);
  return stub.Search(&context, request, response);
}

v1::IndexInfo CreateReadyIndex(v1::Rcknn::Stub& stub, const std::string& id,
                               const v1::IndexSpec& spec, const core::RowMatrix& points,
                               int64_t chunk_points) {
  v1::IndexInfo info;
  if (grpc::Status status = CreateIndex(stub, id, spec); !status.ok()) {
    info.set_error(absl::StrCat("CreateIndex: ", status.error_message()));
    return info;
  }
  if (grpc::Status status = UploadPoints(stub, id, points, chunk_points); !status.ok()) {
    info.set_error(absl::StrCat("UploadPoints: ", status.error_message()));
    return info;
  }
  return BuildAndWait(stub, id);
}

v1::SearchRequest IdSearch(const std::string& id, int64_t k, const std::vector<int64_t>& ids,
                           bool predecessor_mode) {
  v1::SearchRequest request;
  request.set_index_id(id);
  request.set_k(k);
  request.mutable_query_ids()->Add(ids.begin(), ids.end());
  request.set_predecessor_mode(predecessor_mode);
  return request;
}

std::vector<int64_t> Range(int64_t begin, int64_t end) {
  std::vector<int64_t> ids(end - begin);
  std::iota(ids.begin(), ids.end(), begin);
  return ids;
}

v1::IndexSpec HeavySpec() { return ResidualSpec(3, v1::KERNEL_RBF, 1.0, 1.0, 256, 3); }

v1::IndexInfo CreateHeavyIndex(const TestServer& server, const std::string& id, int64_t points) {
  const core::RowMatrix all = NormalPoints(kHeavyPoints, 3, 11);
  std::unique_ptr<client::RcknnClient> client = MakeClient(server);
  v1::IndexInfo failed;
  absl::Status status = client->CreateIndex(id, HeavySpec()).status();
  if (status.ok()) {
    status = client->UploadPoints(id, {absl::MakeConstSpan(all.data(), points * 3), 3}).status();
  }
  if (status.ok()) status = client->BuildIndex(id).status();
  if (!status.ok()) {
    failed.set_error(status.ToString());
    return failed;
  }
  absl::StatusOr<v1::IndexInfo> info = client->WaitForIndex(id);
  if (!info.ok()) {
    failed.set_error(info.status().ToString());
    return failed;
  }
  return *info;
}

absl::StatusOr<v1::IndexInfo> CreateReadyIndex(client::RcknnClient& client, const std::string& id,
                                               const v1::IndexSpec& spec,
                                               const core::RowMatrix& points) {
  if (absl::StatusOr<v1::IndexInfo> created = client.CreateIndex(id, spec); !created.ok()) {
    return created.status();
  }
  if (auto uploaded = client.UploadPoints(id, View(points)); !uploaded.ok()) {
    return uploaded.status();
  }
  return BuildAndWait(client, id);
}

v1::IndexInfo InfoOf(client::RcknnClient& client, const std::string& id) {
  absl::StatusOr<v1::IndexInfo> info = client.GetIndex(id);
  EXPECT_TRUE(info.ok()) << id << ": " << info.status();
  return info.ok() ? *std::move(info) : v1::IndexInfo();
}

std::vector<std::string> ListIds(client::RcknnClient& client) {
  const absl::StatusOr<std::vector<v1::IndexInfo>> list = client.ListIndexes();
  EXPECT_TRUE(list.ok()) << list.status();
  std::vector<std::string> ids;
  if (list.ok()) {
    for (const v1::IndexInfo& info : *list) ids.push_back(info.index_id());
  }
  return ids;
}

client::SearchQuery IdQuery(const std::string& index_id, const std::vector<int64_t>& ids,
                            int64_t k) {
  client::SearchQuery query;
  query.index_id = index_id;
  query.k = k;
  query.ids = ids;
  return query;
}

client::PointsView View(const core::RowMatrix& points) { return View(points, 0, points.rows()); }

client::PointsView View(const core::RowMatrix& points, int64_t first, int64_t rows) {
  const int d = static_cast<int>(points.cols());
  return {absl::MakeConstSpan(points.data() + first * d, static_cast<size_t>(rows * d)), d};
}

absl::StatusOr<v1::IndexInfo> BuildAndWait(client::RcknnClient& client, const std::string& id) {
  if (absl::StatusOr<v1::IndexInfo> started = client.BuildIndex(id); !started.ok()) {
    return started.status();
  }
  return client.WaitForIndex(id);
}

}  // namespace rcknn::testing
