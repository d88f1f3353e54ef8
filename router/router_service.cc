#include "router/router_service.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_callback.h"
#include "absl/time/clock.h"
#include "core/knn_query.h"
#include "core/random.h"
#include "core/residual_correlation.h"
#include "core/status_macros.h"
#include "server/proto_conversion.h"

namespace rcknn::router {
namespace {

using server::ToGrpcStatus;

constexpr absl::Duration kWatchInterval = absl::Milliseconds(100);

absl::Status ToAbsl(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::Status Invalid(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", message));
}

absl::Status ValidateRouterIndexId(const std::string& id) {
  if (id.size() > kMaxRouterIndexIdLength) {
    return Invalid("index_id", absl::StrCat("is ", id.size(),
                                            " characters long, the limit through rcknn-router is ",
                                            kMaxRouterIndexIdLength));
  }
  return server::ValidateIndexId(id);
}

// Order of the states from least to most advanced, for the aggregate.
int Rank(v1::IndexState state) {
  switch (state) {
    case v1::INDEX_STATE_LOADING:
      return 0;
    case v1::INDEX_STATE_BUILDING:
      return 1;
    case v1::INDEX_STATE_READY:
      return 2;
    default:
      return 3;
  }
}

std::string StateName(v1::IndexState state) {
  absl::string_view name = v1::IndexState_Name(state);
  absl::ConsumePrefix(&name, "INDEX_STATE_");
  return std::string(name);
}

absl::Status NoShardsYet() {
  return absl::UnavailableError("rcknn-router has discovered no shard yet (--shards_dns)");
}

bool IsTerminal(v1::IndexState state) {
  return state == v1::INDEX_STATE_READY || state == v1::INDEX_STATE_FAILED;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Index layouts and aggregated IndexInfo.

absl::StatusOr<ShardLayout> RouterService::Resolve(const grpc::ServerContextBase* context,
                                                   const std::string& id) {
  {
    absl::MutexLock lock(&mutex_);
    auto it = layouts_.find(id);
    if (it != layouts_.end()) return it->second;
  }
  if (cluster_->size() == 0) return NoShardsYet();
  v1::ListIndexesResponse listed;
  std::vector<ShardCluster::Call> calls(1);
  calls[0].shard = 0;
  calls[0].issue = [&listed](v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                             std::function<void(grpc::Status)> done) {
    static const v1::ListIndexesRequest kRequest;
    listed.Clear();
    stub->async()->ListIndexes(ctx, &kRequest, &listed, std::move(done));
  };
  cluster_->Run(calls, context, "ListIndexes");
  if (!calls[0].status.ok()) return ToAbsl(calls[0].status);
  for (const v1::IndexInfo& info : listed.indexes()) {
    std::optional<ParsedShardIndexId> parsed = ParseShardIndexId(info.index_id());
    if (!parsed.has_value() || parsed->index_id != id || parsed->shard != 0) continue;
    if (parsed->layout.shards > cluster_->size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "index ", id, " is spread over ", parsed->layout.shards,
          " shards, but rcknn-router knows only ", cluster_->size()));
    }
    absl::MutexLock lock(&mutex_);
    layouts_[id] = parsed->layout;
    return parsed->layout;
  }
  return absl::NotFoundError(absl::StrCat("no index ", id));
}

void RouterService::Forget(const std::string& id) {
  absl::MutexLock lock(&mutex_);
  layouts_.erase(id);
  ready_.erase(id);
}

absl::StatusOr<std::vector<std::vector<v1::IndexInfo>>> RouterService::ShardInfos(
    const grpc::ServerContextBase* context, const std::string& id, const ShardLayout& layout,
    bool all_replicas) {
  std::vector<std::vector<v1::IndexInfo>> infos(layout.shards);
  std::vector<v1::GetIndexRequest> requests(layout.shards);
  std::vector<ShardCluster::Call> calls;
  for (int64_t s = 0; s < layout.shards; ++s) {
    requests[s].set_index_id(ShardIndexId(id, s, layout));
    infos[s].resize(all_replicas ? cluster_->replicas(s) : 1);
    for (int64_t r = 0; r < static_cast<int64_t>(infos[s].size()); ++r) {
      ShardCluster::Call call;
      call.shard = s;
      call.replica = all_replicas ? r : -1;
      v1::IndexInfo* out = &infos[s][r];
      const v1::GetIndexRequest* request = &requests[s];
      call.issue = [out, request](v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                                  std::function<void(grpc::Status)> done) {
        out->Clear();
        stub->async()->GetIndex(ctx, request, out, std::move(done));
      };
      calls.push_back(std::move(call));
    }
  }
  cluster_->Run(calls, context, "GetIndex");
  if (grpc::Status status = ShardCluster::FirstError(calls); !status.ok()) {
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) Forget(id);
    return ToAbsl(status);
  }
  return infos;
}

absl::Status RouterService::Aggregate(const grpc::ServerContextBase* context,
                                      const std::string& id, v1::IndexInfo* out) {
  absl::StatusOr<ShardLayout> layout = Resolve(context, id);
  if (!layout.ok()) return layout.status();
  absl::StatusOr<std::vector<std::vector<v1::IndexInfo>>> infos =
      ShardInfos(context, id, *layout, false);
  if (!infos.ok()) return infos.status();
  out->Clear();
  out->set_index_id(id);
  *out->mutable_spec() = (*infos)[0][0].spec();
  int rank = -1;
  v1::IndexState state = v1::INDEX_STATE_LOADING;
  double weighted_progress = 0.0;
  std::string errors;
  for (int64_t s = 0; s < layout->shards; ++s) {
    const v1::IndexInfo& info = (*infos)[s][0];
    out->set_num_points(out->num_points() + info.num_points());
    out->set_memory_bytes(out->memory_bytes() + info.memory_bytes());
    out->set_build_seconds(std::max(out->build_seconds(), info.build_seconds()));
    out->set_factor_seconds(std::max(out->factor_seconds(), info.factor_seconds()));
    out->set_tree_seconds(std::max(out->tree_seconds(), info.tree_seconds()));
    if (info.state() == v1::INDEX_STATE_FAILED) {
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", cluster_->Name(s), ": ", info.error());
    }
    // A shard without points is never built: it says nothing about the index's state.
    if (info.num_points() == 0) continue;
    weighted_progress += info.build_progress() * static_cast<double>(info.num_points());
    const int r = Rank(info.state());
    if (info.state() == v1::INDEX_STATE_FAILED) {
      state = v1::INDEX_STATE_FAILED;
      rank = 3;
    } else if (rank != 3 && (rank < 0 || r < rank)) {
      state = info.state();
      rank = r;
    }
    if (info.spec().has_inducing_count()) {
      out->mutable_spec()->set_inducing_count(info.spec().inducing_count());
    }
  }
  out->set_state(state);
  out->set_error(errors);
  if (out->num_points() > 0) {
    out->set_build_progress(weighted_progress / static_cast<double>(out->num_points()));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReadyView> RouterService::Ready(const grpc::ServerContextBase* context,
                                               const std::string& id) {
  {
    absl::MutexLock lock(&mutex_);
    auto it = ready_.find(id);
    if (it != ready_.end()) return it->second;
  }
  absl::StatusOr<ShardLayout> layout = Resolve(context, id);
  if (!layout.ok()) return layout.status();
  absl::StatusOr<std::vector<std::vector<v1::IndexInfo>>> infos =
      ShardInfos(context, id, *layout, false);
  if (!infos.ok()) return infos.status();
  ReadyView view;
  view.layout = *layout;
  view.dimension = (*infos)[0][0].spec().dimension();
  for (int64_t s = 0; s < layout->shards; ++s) {
    const v1::IndexInfo& info = (*infos)[s][0];
    view.sizes.push_back(info.num_points());
    view.n += info.num_points();
  }
  for (int64_t s = 0; s < layout->shards; ++s) {
    const v1::IndexInfo& info = (*infos)[s][0];
    if (info.num_points() > 0 && info.state() != v1::INDEX_STATE_READY) {
      return absl::FailedPreconditionError(absl::StrCat(
          "index ", id, " is ", StateName(info.state()), " (", cluster_->Name(s),
          "), not READY; ", info.state() == v1::INDEX_STATE_LOADING ? "call BuildIndex first"
                                                                     : "wait for it"));
    }
    if (info.num_points() != view.layout.ShardSize(s, view.n)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "index ", id, ": ", cluster_->Name(s), " holds ", info.num_points(),
          " points where the layout puts ", view.layout.ShardSize(s, view.n)));
    }
  }
  if (view.n == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("index ", id, " is LOADING, not READY; call BuildIndex first"));
  }
  absl::MutexLock lock(&mutex_);
  ready_[id] = view;
  return view;
}

absl::StatusOr<std::vector<double>> RouterService::Points(const grpc::ServerContextBase* context,
                                                          const std::string& id,
                                                          const ReadyView& view,
                                                          const std::vector<int64_t>& ids) {
  const int64_t d = view.dimension;
  std::vector<v1::GetPointsRequest> requests(view.layout.shards);
  std::vector<v1::GetPointsResponse> responses(view.layout.shards);
  std::vector<std::vector<size_t>> where(view.layout.shards);  // positions in `ids`
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t s = view.layout.ShardOf(ids[i]);
    requests[s].add_ids(view.layout.LocalOf(ids[i]));
    where[s].push_back(i);
  }
  std::vector<ShardCluster::Call> calls;
  for (int64_t s = 0; s < view.layout.shards; ++s) {
    if (where[s].empty()) continue;
    requests[s].set_index_id(ShardIndexId(id, s, view.layout));
    ShardCluster::Call call;
    call.shard = s;
    call.issue = [request = &requests[s], response = &responses[s]](
                     v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                     std::function<void(grpc::Status)> done) {
      response->Clear();
      stub->async()->GetPoints(ctx, request, response, std::move(done));
    };
    calls.push_back(std::move(call));
  }
  cluster_->Run(calls, context, "GetPoints");
  if (grpc::Status status = ShardCluster::FirstError(calls); !status.ok()) return ToAbsl(status);
  std::vector<double> out(ids.size() * d);
  for (int64_t s = 0; s < view.layout.shards; ++s) {
    if (responses[s].coordinates_size() != static_cast<int>(where[s].size() * d)) {
      if (where[s].empty()) continue;
      return absl::InternalError(absl::StrCat(cluster_->Name(s), " returned ",
                                              responses[s].coordinates_size(),
                                              " coordinates for ", where[s].size(), " points"));
    }
    for (size_t j = 0; j < where[s].size(); ++j) {
      std::copy_n(responses[s].coordinates().data() + j * d, d, out.data() + where[s][j] * d);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Index life.

grpc::Status RouterService::CreateIndex(grpc::ServerContext* context,
                                        const v1::CreateIndexRequest* request,
                                        v1::IndexInfo* response) {
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(ValidateRouterIndexId(request->index_id()));
    // No silent fallback: the shards' requests below would drop the source.
    if (!request->source_index_id().empty() ||
        request->source_tree() != v1::SOURCE_TREE_UNSPECIFIED) {
      return Invalid(request->source_index_id().empty() ? "source_tree" : "source_index_id",
                     "indexes created from a source are not supported through rcknn-router");
    }
    if (!request->has_spec()) return absl::InvalidArgumentError("spec: is required");
    v1::IndexSpec normalized;
    absl::StatusOr<core::IndexSpec> checked = server::ToCoreSpec(request->spec(), &normalized);
    if (!checked.ok()) return checked.status();
    if (request->spec().has_inducing_method() &&
        request->spec().inducing_method() != v1::INDUCING_METHOD_UNIFORM) {
      return Invalid("spec.inducing_method",
                     "only the uniform draw is supported through rcknn-router (it draws over all "
                     "shards as one server would)");
    }
    if (request->spec().factors_supplied()) {
      return Invalid("spec.factors_supplied",
                     "is not supported through rcknn-router: a query by id travels to the shards "
                     "as a query by point, which needs the inducing points");
    }
    const std::string& id = request->index_id();
    absl::StatusOr<ShardLayout> existing = Resolve(context, id);
    if (existing.ok()) return absl::AlreadyExistsError(absl::StrCat("index ", id, " already exists"));
    if (existing.status().code() != absl::StatusCode::kNotFound) return existing.status();
    if (request->expected_num_points() < 0 ||
        request->expected_num_points() > kMaxExpectedPoints) {
      return Invalid("expected_num_points",
                     absl::StrCat("is ", request->expected_num_points(), "; give a count in [0, ",
                                  kMaxExpectedPoints, "] (0: unknown)"));
    }
    const int64_t shards = cluster_->size();  // discovery may add shards meanwhile
    if (shards < min_shards_) {
      return absl::UnavailableError(absl::StrCat(
          "rcknn-router knows ", shards, " shards so far and creates indexes over at least ",
          min_shards_, " (--min_shards); retry once the shards are discovered"));
    }
    const ShardLayout layout = ShardLayout::ForExpected(
        shards, request->expected_num_points() > 0 ? request->expected_num_points()
                                                   : shard_points_ * shards);
    std::vector<v1::CreateIndexRequest> requests(layout.shards);
    std::vector<std::vector<v1::IndexInfo>> infos(layout.shards);
    std::vector<ShardCluster::Call> calls;
    for (int64_t s = 0; s < layout.shards; ++s) {
      requests[s].set_index_id(ShardIndexId(id, s, layout));
      *requests[s].mutable_spec() = request->spec();
      infos[s].resize(cluster_->replicas(s));
      for (int64_t r = 0; r < cluster_->replicas(s); ++r) {
        ShardCluster::Call call;
        call.shard = s;
        call.replica = r;
        call.issue = [req = &requests[s], out = &infos[s][r]](
                         v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                         std::function<void(grpc::Status)> done) {
          out->Clear();
          stub->async()->CreateIndex(ctx, req, out, std::move(done));
        };
        calls.push_back(std::move(call));
      }
    }
    cluster_->Run(calls, context, "CreateIndex");
    for (const ShardCluster::Call& call : calls) {
      // A replica that has it already: an earlier CreateIndex that failed part-way, retried.
      if (!call.status.ok() && call.status.error_code() != grpc::StatusCode::ALREADY_EXISTS) {
        return ToAbsl(call.status);
      }
    }
    {
      absl::MutexLock lock(&mutex_);
      layouts_[id] = layout;
    }
    return Aggregate(context, id, response);
  };
  return ToGrpcStatus(run());
}

grpc::Status RouterService::BuildIndex(grpc::ServerContext* context,
                                       const v1::BuildIndexRequest* request,
                                       v1::IndexInfo* response) {
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(server::ValidateIndexId(request->index_id()));
    if (!request->inducing_points().empty()) {
      return Invalid("inducing_points",
                     "are chosen by rcknn-router itself; give them in the spec instead");
    }
    const std::string& id = request->index_id();
    ASSIGN_OR_RETURN(ShardLayout layout, Resolve(context, id));
    // Under the upload lock: no upload can slip in between the count and the build.
    std::shared_ptr<absl::Mutex> upload_lock = UploadLock(id);
    absl::MutexLock hold(upload_lock.get());
    ASSIGN_OR_RETURN(auto infos, ShardInfos(context, id, layout, true));
    int64_t n = 0;
    for (int64_t s = 0; s < layout.shards; ++s) {
      for (const v1::IndexInfo& info : infos[s]) {
        if (info.num_points() != infos[s][0].num_points() || info.state() != infos[s][0].state()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "index ", id, ": the replicas of ", cluster_->Name(s), " disagree (",
              infos[s][0].num_points(), " points ", StateName(infos[s][0].state()), " vs ",
              info.num_points(), " points ", StateName(info.state()), ")"));
        }
      }
      n += infos[s][0].num_points();
    }
    for (int64_t s = 0; s < layout.shards; ++s) {
      const v1::IndexInfo& info = infos[s][0];
      if (info.num_points() > 0 && info.state() != v1::INDEX_STATE_LOADING) {
        return absl::FailedPreconditionError(
            absl::StrCat("index ", id, " is already ", StateName(info.state()),
                         "; BuildIndex is accepted once, while LOADING"));
      }
      if (info.num_points() != layout.ShardSize(s, n)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "index ", id, ": ", cluster_->Name(s), " holds ", info.num_points(),
            " points where the layout puts ", layout.ShardSize(s, n)));
      }
    }
    if (n == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("index ", id, " has no points; upload them with UploadPoints first"));
    }
    const v1::IndexSpec& spec = infos[0][0].spec();
    std::vector<double> inducing;
    if (spec.metric() == v1::METRIC_RESIDUAL_CORRELATION && spec.inducing_points().empty()) {
      const int64_t m = spec.has_inducing_count()
                            ? spec.inducing_count()
                            : std::min<int64_t>(core::kDefaultInducingCount, n);
      if (m > n) {
        return Invalid("spec.inducing_count",
                       absl::StrCat(m, " inducing points were asked for, but the index holds only ",
                                    n, " points"));
      }
      // The draw one server makes over all n points (core/residual_correlation.cc).
      const std::vector<int64_t> ids = core::SampleDistinct(n, m, spec.inducing_seed());
      ReadyView view;
      view.layout = layout;
      view.dimension = spec.dimension();
      view.n = n;
      ASSIGN_OR_RETURN(inducing, Points(context, id, view, ids));
    }
    std::vector<v1::BuildIndexRequest> requests(layout.shards);
    std::vector<std::vector<v1::IndexInfo>> built(layout.shards);
    std::vector<ShardCluster::Call> calls;
    for (int64_t s = 0; s < layout.shards; ++s) {
      if (infos[s][0].num_points() == 0) continue;
      requests[s].set_index_id(ShardIndexId(id, s, layout));
      requests[s].mutable_inducing_points()->Add(inducing.begin(), inducing.end());
      built[s].resize(cluster_->replicas(s));
      for (int64_t r = 0; r < cluster_->replicas(s); ++r) {
        ShardCluster::Call call;
        call.shard = s;
        call.replica = r;
        call.issue = [req = &requests[s], out = &built[s][r]](
                         v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                         std::function<void(grpc::Status)> done) {
          out->Clear();
          stub->async()->BuildIndex(ctx, req, out, std::move(done));
        };
        calls.push_back(std::move(call));
      }
    }
    cluster_->Run(calls, context, "BuildIndex");
    if (grpc::Status status = ShardCluster::FirstError(calls); !status.ok()) return ToAbsl(status);
    return Aggregate(context, id, response);
  };
  return ToGrpcStatus(run());
}

grpc::Status RouterService::GetIndex(grpc::ServerContext* context,
                                     const v1::GetIndexRequest* request, v1::IndexInfo* response) {
  if (absl::Status status = server::ValidateIndexId(request->index_id()); !status.ok()) {
    return ToGrpcStatus(status);
  }
  return ToGrpcStatus(Aggregate(context, request->index_id(), response));
}

grpc::Status RouterService::WatchIndex(grpc::ServerContext* context,
                                       const v1::GetIndexRequest* request,
                                       grpc::ServerWriter<v1::IndexInfo>* writer) {
  if (absl::Status status = server::ValidateIndexId(request->index_id()); !status.ok()) {
    return ToGrpcStatus(status);
  }
  std::string last;
  for (;;) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    v1::IndexInfo info;
    if (absl::Status status = Aggregate(context, request->index_id(), &info); !status.ok()) {
      return ToGrpcStatus(status);
    }
    v1::IndexInfo compared = info;
    compared.clear_build_seconds();  // ticks while building: not a change by itself
    const std::string bytes = compared.SerializeAsString();
    if (bytes != last) {
      if (!writer->Write(info)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away");
      }
      last = bytes;
    }
    if (IsTerminal(info.state())) return grpc::Status::OK;
    absl::SleepFor(kWatchInterval);
  }
}

grpc::Status RouterService::ListIndexes(grpc::ServerContext* context,
                                        const v1::ListIndexesRequest* request,
                                        v1::ListIndexesResponse* response) {
  if (cluster_->size() == 0) return ToGrpcStatus(NoShardsYet());
  v1::ListIndexesResponse listed;
  std::vector<ShardCluster::Call> calls(1);
  calls[0].shard = 0;
  calls[0].issue = [&listed, request](v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                                      std::function<void(grpc::Status)> done) {
    listed.Clear();
    stub->async()->ListIndexes(ctx, request, &listed, std::move(done));
  };
  cluster_->Run(calls, context, "ListIndexes");
  if (!calls[0].status.ok()) return calls[0].status;
  for (const v1::IndexInfo& shard_info : listed.indexes()) {  // ordered by shard index id
    std::optional<ParsedShardIndexId> parsed = ParseShardIndexId(shard_info.index_id());
    if (!parsed.has_value() || parsed->shard != 0 ||
        parsed->layout.shards > cluster_->size()) {
      continue;
    }
    v1::IndexInfo info;
    absl::Status status = Aggregate(context, parsed->index_id, &info);
    if (status.code() == absl::StatusCode::kNotFound) continue;  // deleted meanwhile
    if (!status.ok()) return ToGrpcStatus(status);
    *response->add_indexes() = std::move(info);
  }
  std::sort(response->mutable_indexes()->begin(), response->mutable_indexes()->end(),
            [](const v1::IndexInfo& a, const v1::IndexInfo& b) { return a.index_id() < b.index_id(); });
  return grpc::Status::OK;
}

grpc::Status RouterService::DeleteIndex(grpc::ServerContext* context,
                                        const v1::DeleteIndexRequest* request,
                                        v1::DeleteIndexResponse* response) {
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(server::ValidateIndexId(request->index_id()));
    const std::string& id = request->index_id();
    ASSIGN_OR_RETURN(ShardLayout layout, Resolve(context, id));
    Forget(id);
    std::vector<v1::DeleteIndexRequest> requests(layout.shards);
    std::vector<std::vector<v1::DeleteIndexResponse>> out(layout.shards);
    std::vector<ShardCluster::Call> calls;
    for (int64_t s = 0; s < layout.shards; ++s) {
      requests[s].set_index_id(ShardIndexId(id, s, layout));
      out[s].resize(cluster_->replicas(s));
      for (int64_t r = 0; r < cluster_->replicas(s); ++r) {
        ShardCluster::Call call;
        call.shard = s;
        call.replica = r;
        call.issue = [req = &requests[s], resp = &out[s][r]](
                         v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                         std::function<void(grpc::Status)> done) {
          stub->async()->DeleteIndex(ctx, req, resp, std::move(done));
        };
        calls.push_back(std::move(call));
      }
    }
    cluster_->Run(calls, context, "DeleteIndex");
    for (const ShardCluster::Call& call : calls) {
      // Gone already from that replica: an earlier DeleteIndex that failed part-way, retried.
      if (!call.status.ok() && call.status.error_code() != grpc::StatusCode::NOT_FOUND) {
        return ToAbsl(call.status);
      }
    }
    return absl::OkStatus();
  };
  return ToGrpcStatus(run());
}

grpc::Status RouterService::GetPoints(grpc::ServerContext* context,
                                      const v1::GetPointsRequest* request,
                                      v1::GetPointsResponse* response) {
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(server::ValidateIndexId(request->index_id()));
    ASSIGN_OR_RETURN(ReadyView view, Ready(context, request->index_id()));
    std::vector<int64_t> ids(request->ids().begin(), request->ids().end());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= view.n) {
        return absl::InvalidArgumentError(absl::StrCat("ids[", i, "] = ", ids[i],
                                                       " is out of range [0, ", view.n, ")"));
      }
    }
    ASSIGN_OR_RETURN(std::vector<double> points, Points(context, request->index_id(), view, ids));
    response->mutable_coordinates()->Add(points.begin(), points.end());
    return absl::OkStatus();
  };
  return ToGrpcStatus(run());
}

std::shared_ptr<absl::Mutex> RouterService::UploadLock(const std::string& id) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<absl::Mutex>& slot = upload_locks_[id];
  if (slot == nullptr) slot = std::make_shared<absl::Mutex>();
  return slot;
}

// ---------------------------------------------------------------------------------------------
// Search.

grpc::Status RouterService::Search(grpc::ServerContext* context, const v1::SearchRequest* request,
                                   v1::SearchResponse* response) {
  return ToGrpcStatus(RunSearch(context, *request, response));
}

grpc::Status RouterService::SearchStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::SearchResponse, v1::SearchRequest>* stream) {
  v1::SearchRequest request;
  for (int64_t number = 0; stream->Read(&request); ++number) {
    v1::SearchResponse response;
    const absl::Status status = RunSearch(context, request, &response);
    if (!status.ok()) {
      return ToGrpcStatus(server::WithPrefix(status, absl::StrCat("request ", number, ": ")));
    }
    if (!stream->Write(response)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
  }
  return grpc::Status::OK;
}

absl::Status RouterService::RunSearch(const grpc::ServerContextBase* context,
                                      const v1::SearchRequest& request,
                                      v1::SearchResponse* response) {
  const absl::Time start = absl::Now();
  RETURN_IF_ERROR(server::ValidateSearchRequest(request));
  if (!request.ordering().empty() || request.ids_are_ranks()) {
    return Invalid("ordering", "orderings (ComputeOrdering) are not supported through rcknn-router");
  }
  const std::string& id = request.index_id();
  ASSIGN_OR_RETURN(ReadyView view, Ready(context, id));
  const int64_t k = request.k();
  const bool by_id = !request.query_ids().empty();
  const bool pred = request.predecessor_mode();
  const int d = view.dimension;

  core::QueryBatch batch;
  batch.ids = absl::MakeConstSpan(request.query_ids().data(), request.query_ids().size());
  batch.points = absl::MakeConstSpan(request.query_points().data(), request.query_points().size());
  core::KnnOptions options;
  options.k = k;
  options.include_self = request.include_self();
  options.predecessor_mode = pred;
  RETURN_IF_ERROR(core::ValidateQuery(batch, options, view.n, d));
  const int64_t nq = core::NumQueries(batch, d);
  if (!request.query_id_bounds().empty() && request.query_id_bounds().size() != nq) {
    return Invalid("query_id_bounds", absl::StrCat("holds ", request.query_id_bounds().size(),
                                                   " values for ", nq,
                                                   " query points; give one per point"));
  }

  // Every query as a point, with the global bound on candidate ids (n: none).
  std::vector<double> points;
  if (by_id) {
    std::vector<int64_t> ids(request.query_ids().begin(), request.query_ids().end());
    ASSIGN_OR_RETURN(points, Points(context, id, view, ids));
  } else {
    points.assign(request.query_points().begin(), request.query_points().end());
  }
  std::vector<int64_t> bounds(nq, view.n);
  for (int64_t q = 0; q < nq; ++q) {
    if (pred) bounds[q] = request.query_ids(q);
    if (!request.query_id_bounds().empty()) {
      bounds[q] = std::clamp<int64_t>(request.query_id_bounds(q), 0, view.n);
    }
  }
  // A query by id must not find itself unless include_self: one more candidate per shard
  // leaves k once its own id is dropped (predecessor mode's bound excludes it already).
  const bool drop_self = by_id && !pred && !request.include_self();
  const int64_t shard_k = drop_self ? k + 1 : k;

  const int64_t num_shards = view.layout.shards;
  std::vector<v1::SearchRequest> requests(num_shards);
  std::vector<v1::SearchResponse> responses(num_shards);
  std::vector<std::vector<int64_t>> members(num_shards);  // query numbers sent to each shard
  std::vector<ShardCluster::Call> calls;
  for (int64_t s = 0; s < num_shards; ++s) {
    if (view.sizes[s] == 0) continue;
    v1::SearchRequest& shard_request = requests[s];
    bool bounded = false;
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t local_bound = view.layout.CountBelow(s, bounds[q]);
      if (local_bound == 0) continue;  // nothing on this shard qualifies
      members[s].push_back(q);
      shard_request.add_query_id_bounds(local_bound);
      bounded = bounded || local_bound < view.sizes[s];
      shard_request.mutable_query_points()->Add(points.data() + q * d, points.data() + (q + 1) * d);
    }
    if (members[s].empty()) continue;
    if (!bounded) shard_request.clear_query_id_bounds();
    shard_request.set_index_id(ShardIndexId(id, s, view.layout));
    shard_request.set_k(shard_k);
    ShardCluster::Call call;
    call.shard = s;
    call.issue = [req = &shard_request, resp = &responses[s]](
                     v1::Rcknn::Stub* stub, grpc::ClientContext* ctx,
                     std::function<void(grpc::Status)> done) {
      resp->Clear();
      stub->async()->Search(ctx, req, resp, std::move(done));
    };
    calls.push_back(std::move(call));
  }
  cluster_->Run(calls, context, "Search");
  if (grpc::Status status = ShardCluster::FirstError(calls); !status.ok()) {
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) Forget(id);
    return ToAbsl(status);
  }

  // Merge by (distance, global id).
  std::vector<std::vector<std::pair<double, int64_t>>> candidates(nq);
  v1::SearchStats stats;
  for (int64_t s = 0; s < num_shards; ++s) {
    const v1::SearchResponse& shard_response = responses[s];
    if (members[s].empty()) continue;
    if (shard_response.num_queries() != static_cast<int64_t>(members[s].size()) ||
        shard_response.k() != shard_k ||
        shard_response.neighbor_ids_size() != shard_response.distances_size() ||
        shard_response.neighbor_ids_size() != static_cast<int64_t>(members[s].size()) * shard_k) {
      return absl::InternalError(absl::StrCat(cluster_->Name(s), ": the answer has the wrong shape"));
    }
    for (size_t i = 0; i < members[s].size(); ++i) {
      const int64_t q = members[s][i];
      for (int64_t r = 0; r < shard_k; ++r) {
        const int64_t local = shard_response.neighbor_ids(i * shard_k + r);
        if (local < 0) break;
        const int64_t global = view.layout.GlobalOf(s, local);
        if (drop_self && global == request.query_ids(q)) continue;
        candidates[q].emplace_back(shard_response.distances(i * shard_k + r), global);
      }
    }
    const v1::SearchStats& st = shard_response.stats();
    stats.set_distance_evaluations(stats.distance_evaluations() + st.distance_evaluations());
    stats.set_heap_pushes(stats.heap_pushes() + st.heap_pushes());
    stats.set_nodes_visited(stats.nodes_visited() + st.nodes_visited());
    stats.set_subtrees_pruned(stats.subtrees_pruned() + st.subtrees_pruned());
    stats.set_subtrees_pruned_by_bound(stats.subtrees_pruned_by_bound() +
                                       st.subtrees_pruned_by_bound());
    stats.set_subtrees_pruned_by_predecessor(stats.subtrees_pruned_by_predecessor() +
                                             st.subtrees_pruned_by_predecessor());
    stats.set_brute_force_queries(stats.brute_force_queries() + st.brute_force_queries());
  }
  response->set_num_queries(nq);
  response->set_k(k);
  std::vector<int64_t> out_ids(nq * k, -1);
  std::vector<double> out_distances(nq * k, std::numeric_limits<double>::infinity());
  for (int64_t q = 0; q < nq; ++q) {
    std::vector<std::pair<double, int64_t>>& c = candidates[q];
    const size_t keep = std::min<size_t>(c.size(), static_cast<size_t>(k));
    std::partial_sort(c.begin(), c.begin() + keep, c.end());
    for (size_t r = 0; r < keep; ++r) {
      out_ids[q * k + r] = c[r].second;
      out_distances[q * k + r] = c[r].first;
    }
  }
  if (request.raw_answer()) {
    // Little-endian int64 and float64 bytes, as the server's raw layout (this is a
    // little-endian build, as the server's raw layout assumes too).
    response->set_neighbor_ids_raw(reinterpret_cast<const char*>(out_ids.data()),
                                   out_ids.size() * sizeof(int64_t));
    response->set_distances_raw(reinterpret_cast<const char*>(out_distances.data()),
                                out_distances.size() * sizeof(double));
  } else {
    response->mutable_neighbor_ids()->Add(out_ids.begin(), out_ids.end());
    response->mutable_distances()->Add(out_distances.begin(), out_distances.end());
  }
  stats.set_search_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  *response->mutable_stats() = stats;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Uploads.

RouterService::Upload::~Upload() { Abort(); }

absl::Status RouterService::Upload::Begin(const std::string& index_id) {
  RETURN_IF_ERROR(server::WithPrefix(server::ValidateIndexId(index_id), "first chunk: "));
  ASSIGN_OR_RETURN(layout_, service_->Resolve(context_, index_id));
  index_id_ = index_id;
  lock_ = service_->UploadLock(index_id);
  lock_->Lock();
  ASSIGN_OR_RETURN(auto infos, service_->ShardInfos(context_, index_id, layout_, true));
  ShardCluster& cluster = *service_->cluster_;
  for (int64_t s = 0; s < layout_.shards; ++s) {
    for (const v1::IndexInfo& info : infos[s]) {
      if (info.num_points() != infos[s][0].num_points()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "index ", index_id, ": the replicas of ", cluster.Name(s), " disagree (",
            infos[s][0].num_points(), " vs ", info.num_points(), " points)"));
      }
      if (info.num_points() > 0 && info.state() != v1::INDEX_STATE_LOADING) {
        return absl::FailedPreconditionError(
            absl::StrCat("index ", index_id, " is ", StateName(info.state()),
                         "; points can only be uploaded before BuildIndex"));
      }
    }
    existing_ += infos[s][0].num_points();
  }
  for (int64_t s = 0; s < layout_.shards; ++s) {
    if (infos[s][0].num_points() != layout_.ShardSize(s, existing_)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "index ", index_id, ": ", cluster.Name(s), " holds ", infos[s][0].num_points(),
          " points where the layout puts ", layout_.ShardSize(s, existing_)));
    }
  }
  dimension_ = infos[0][0].spec().dimension();
  streams_.resize(layout_.shards);
  return absl::OkStatus();
}

absl::Status RouterService::Upload::Chunk(const v1::UploadPointsRequest& chunk) {
  if (index_id_.empty()) {
    RETURN_IF_ERROR(Begin(chunk.index_id()));
  } else if (!chunk.index_id().empty() && chunk.index_id() != index_id_) {
    return absl::InvalidArgumentError(absl::StrCat("index_id: chunk ", chunks_, " names ",
                                                   chunk.index_id(), " but the stream uploads to ",
                                                   index_id_));
  }
  const int64_t size = chunk.coordinates_size();
  if (!chunk.factors().empty()) {
    return Invalid("factors", "the index spec does not have factors_supplied");
  }
  if (!chunk.residual_variances().empty()) {
    return Invalid("residual_variances", "the index spec does not have factors_supplied");
  }
  if (size % dimension_ != 0) {
    return Invalid("coordinates", absl::StrCat("chunk ", chunks_, " holds ", size,
                                               " values, not a multiple of the dimension ",
                                               dimension_));
  }
  const int64_t first = existing_ + received_;
  for (int64_t i = 0; i < size; ++i) {
    if (!std::isfinite(chunk.coordinates(i))) {
      return Invalid("coordinates", absl::StrCat("value ", chunk.coordinates(i), " at point ",
                                                 first + i / dimension_, ", column ",
                                                 i % dimension_, " is not finite"));
    }
  }
  const int64_t rows = size / dimension_;
  // The rows within one shard's range go to it together.
  for (int64_t row = 0; row < rows;) {
    const int64_t global = first + row;
    const int64_t shard = layout_.ShardOf(global);
    const int64_t run = std::min(rows - row, layout_.End(shard) - global);
    RETURN_IF_ERROR(Forward(shard, chunk.coordinates().data() + row * dimension_, run));
    row += run;
  }
  received_ += rows;
  ++chunks_;
  return absl::OkStatus();
}

absl::Status RouterService::Upload::Forward(int64_t shard, const double* coordinates,
                                            int64_t rows) {
  ShardCluster& cluster = *service_->cluster_;
  std::vector<std::unique_ptr<Stream>>& replicas = streams_[shard];
  if (replicas.empty()) {
    for (int64_t r = 0; r < cluster.replicas(shard); ++r) {
      auto stream = std::make_unique<Stream>();
      stream->shard = shard;
      stream->replica = r;
      stream->context = grpc::ClientContext::FromServerContext(*context_);
      stream->writer = cluster.stub(shard, r)->UploadPoints(stream->context.get(),
                                                            &stream->response);
      replicas.push_back(std::move(stream));
    }
  }
  v1::UploadPointsRequest piece;
  piece.mutable_coordinates()->Add(coordinates, coordinates + rows * dimension_);
  for (const std::unique_ptr<Stream>& stream : replicas) {
    if (!stream->named) piece.set_index_id(ShardIndexId(index_id_, shard, layout_));
    const bool ok = stream->writer->Write(piece);
    piece.clear_index_id();
    stream->named = true;
    if (!ok) {
      // The shard ended the stream: its status says why.
      const grpc::Status status = stream->writer->Finish();
      stream->writer.reset();
      return absl::Status(
          status.ok() ? absl::StatusCode::kUnavailable
                      : static_cast<absl::StatusCode>(status.error_code()),
          absl::StrCat(cluster.Name(shard), " replica ", cluster.address(shard, stream->replica),
                       ": ", status.error_message()));
    }
  }
  return absl::OkStatus();
}

absl::Status RouterService::Upload::Finish(v1::UploadPointsResponse* response) {
  if (index_id_.empty()) {
    return absl::InvalidArgumentError(
        "index_id: the stream carried no chunk; the first chunk must name the index");
  }
  ShardCluster& cluster = *service_->cluster_;
  for (auto& replicas : streams_) {
    for (auto& stream : replicas) stream->writer->WritesDone();
  }
  std::string failed;
  absl::StatusCode code = absl::StatusCode::kOk;
  int64_t applied = 0;
  for (auto& replicas : streams_) {
    for (auto& stream : replicas) {
      const grpc::Status status = stream->writer->Finish();
      stream->writer.reset();
      if (status.ok()) {
        ++applied;
        continue;
      }
      code = static_cast<absl::StatusCode>(status.error_code());
      absl::StrAppend(&failed, failed.empty() ? "" : "; ", cluster.Name(stream->shard),
                      " replica ", cluster.address(stream->shard, stream->replica), ": ",
                      status.error_message());
    }
  }
  streams_.clear();
  if (!failed.empty()) {
    if (applied > 0) {
      return absl::DataLossError(absl::StrCat(
          "the upload was applied by some shard replicas only (", failed,
          "); the index's shards now disagree: delete the index and upload again"));
    }
    return absl::Status(code, failed);
  }
  response->set_points_received(received_);
  response->set_total_points(existing_ + received_);
  return absl::OkStatus();
}

void RouterService::Upload::Abort() {
  for (auto& replicas : streams_) {
    for (auto& stream : replicas) {
      if (stream->writer == nullptr) continue;
      stream->context->TryCancel();
      (void)stream->writer->Finish();
      stream->writer.reset();
    }
  }
  streams_.clear();
  if (lock_ != nullptr) {
    lock_->Unlock();
    lock_.reset();
  }
}

namespace {

// UploadPoints: chunks arrive as raw bytes and are parsed here, so a message that does not parse
// fails the stream with INVALID_ARGUMENT instead of looking like its end. One worker thread per
// stream forwards the chunks (its writes to the shards block), reading the next chunk only when
// the last one is forwarded.
class UploadReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UploadReactor(RouterService* service, grpc::CallbackServerContext* context,
                grpc::ByteBuffer* response)
      : upload_(service, context), context_(context), response_(response) {
    absl::MutexLock lock(&mutex_);
    StartRead(&buffer_);
    worker_ = std::thread([this] { Work(); });
  }
  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mutex_);
    read_done_ = true;
    read_ok_ = ok;
  }
  void OnDone() override {
    // Finish is the worker's last act, but OnDone may run before it has returned, or on it.
    if (worker_.get_id() == std::this_thread::get_id()) {
      worker_.detach();
    } else {
      worker_.join();
    }
    delete this;
  }

 private:
  void Work() {
    absl::Status status;
    for (int64_t chunks = 0;; ++chunks) {
      bool ok;
      {
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(&read_done_));
        read_done_ = false;
        ok = read_ok_;
      }
      if (!ok) {
        if (context_->IsCancelled()) {
          status = absl::CancelledError("the upload was cancelled; nothing was applied");
        } else {
          v1::UploadPointsResponse response;
          status = upload_.Finish(&response);
          if (status.ok()) {
            bool own = false;
            grpc::SerializationTraits<v1::UploadPointsResponse>::Serialize(response, response_,
                                                                           &own);
          }
        }
        break;
      }
      v1::UploadPointsRequest chunk;
      if (!grpc::SerializationTraits<v1::UploadPointsRequest>::Deserialize(&buffer_, &chunk)
               .ok()) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "chunk ", chunks, ": the message is not a valid rcknn.v1.UploadPointsRequest"));
        break;
      }
      status = upload_.Chunk(chunk);
      if (!status.ok()) break;
      StartRead(&buffer_);
    }
    upload_.Abort();
    Finish(ToGrpcStatus(status));
  }

  RouterService::Upload upload_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
  grpc::ByteBuffer buffer_;
  absl::Mutex mutex_;
  bool read_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool read_ok_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread worker_;
};

}  // namespace

grpc::ServerReadReactor<grpc::ByteBuffer>* RouterService::UploadPoints(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new UploadReactor(this, context, response);
}

}  // namespace rcknn::router
