// The rcknn.v1.Rcknn service: each handler validates its request, converts it to core types,
// calls the registry, the pool or core, and maps the status back (server/proto_conversion.h).
// Handlers never compute on their own thread: searches and builds run on the QueryPool.
//
// The two client-streaming methods (UploadPoints, SearchStream) take raw messages and parse them
// themselves (server/stream_reactors.h): gRPC's synchronous Read() reports a message that does
// not parse exactly like the end of the stream, which would apply a partial upload or answer OK
// to a stream whose tail was garbage. Parsed this way, such a message is INVALID_ARGUMENT.
#ifndef RCKNN_SERVER_RCKNN_SERVICE_H_
#define RCKNN_SERVER_RCKNN_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "rcknn/v1/rcknn.grpc.pb.h"
#include "server/blocking_executor.h"
#include "server/index_registry.h"
#include "server/index_store.h"
#include "server/memory_budget.h"
#include "server/query_pool.h"
#include "server/server_metrics.h"
#include "server/server_options.h"

namespace rcknn::server {

// Points of one UploadPoints stream, validated chunk by chunk and applied when it ends.
struct UploadState {
  std::shared_ptr<IndexEntry> entry;  // set by the first chunk
  PointBatch staged;
  MemoryReservation memory;  // covers `staged`
  int64_t existing = 0;  // points in the index when the stream started
  int64_t chunks = 0;
};

using RawStreamingService = v1::Rcknn::WithRawCallbackMethod_UploadPoints<
    v1::Rcknn::WithRawCallbackMethod_SearchStream<v1::Rcknn::Service>>;

class RcknnService final : public RawStreamingService {
 public:
  // `registry`, `pool`, `metrics`, `budget` and `store` (null: nothing is persisted) must
  // outlive the service and every build it starts on the pool.
  RcknnService(const ServerOptions& options, IndexRegistry* registry, QueryPool* pool,
               ServerMetrics* metrics, MemoryBudget* budget, IndexStore* store)
      : options_(options),
        registry_(registry),
        pool_(pool),
        metrics_(metrics),
        budget_(budget),
        store_(store) {}

  // Registers every index found in the store (start-up, before serving): LOADING ones with their
  // uploads, FAILED ones with the reason, and built ones restored on the pool (BUILDING until
  // READY). Returns how many indexes were found.
  int64_t LoadStoredIndexes();

  // Runs `job` on the service's threads for blocking work (disk writes), in submission order
  // per thread; jobs still queued run before the service is destroyed.
  void RunBlocking(std::function<void()> job) { blocking_.Submit(std::move(job)); }

  // Ends WatchIndex streams (UNAVAILABLE) so that a graceful shutdown does not wait on them.
  void BeginShutdown() { shutting_down_.store(true); }

  grpc::Status CreateIndex(grpc::ServerContext* context, const v1::CreateIndexRequest* request,
                           v1::IndexInfo* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* UploadPoints(grpc::CallbackServerContext* context,
                                                          grpc::ByteBuffer* response) override;
  grpc::Status BuildIndex(grpc::ServerContext* context, const v1::BuildIndexRequest* request,
                          v1::IndexInfo* response) override;
  grpc::Status GetIndex(grpc::ServerContext* context, const v1::GetIndexRequest* request,
                        v1::IndexInfo* response) override;
  grpc::Status WatchIndex(grpc::ServerContext* context, const v1::GetIndexRequest* request,
                          grpc::ServerWriter<v1::IndexInfo>* writer) override;
  grpc::Status ListIndexes(grpc::ServerContext* context, const v1::ListIndexesRequest* request,
                           v1::ListIndexesResponse* response) override;
  grpc::Status DeleteIndex(grpc::ServerContext* context, const v1::DeleteIndexRequest* request,
                           v1::DeleteIndexResponse* response) override;
  grpc::Status Search(grpc::ServerContext* context, const v1::SearchRequest* request,
                      v1::SearchResponse* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SearchStream(
      grpc::CallbackServerContext* context) override;

  // The steps of UploadPoints: each chunk, then the end of the stream (applies it).
  absl::Status AcceptUploadChunk(const v1::UploadPointsRequest& chunk, UploadState* state);
  absl::Status FinishUpload(UploadState* state, v1::UploadPointsResponse* response);
  // One Search request, for both Search and SearchStream. Stops at `deadline` or when
  // `is_cancelled` turns true (polled while the pool works).
  absl::Status RunSearch(const v1::SearchRequest& request, absl::Time deadline,
                         const std::function<bool()>& is_cancelled, v1::SearchResponse* response);

 private:
  absl::Status DoCreateIndex(const v1::CreateIndexRequest& request, v1::IndexInfo* response);
  absl::Status DoBuildIndex(const v1::BuildIndexRequest& request, v1::IndexInfo* response);
  absl::Status DoWatchIndex(grpc::ServerContext* context, const v1::GetIndexRequest& request,
                            grpc::ServerWriter<v1::IndexInfo>* writer);
  // Sets the gauges of index states, points and memory from the registry; called after every
  // change of them.
  void UpdateIndexGauges();
  // The check BeginBuild runs for BuildIndex and for start-up restores (`verb`: "building" or
  // "restoring", for the error): sets `spec` for the index's n points and reserves the build's
  // memory in `memory`.
  std::function<absl::Status(int64_t)> BuildCheck(const IndexEntry& entry, absl::string_view verb,
                                                  core::IndexSpec* spec, MemoryReservation* memory);
  // Runs the build (or, with `restore`, the restore from the store) of `entry` on the pool and
  // publishes the result; `build_memory` is released when it ends.
  void StartBuild(std::shared_ptr<IndexEntry> entry, core::IndexSpec spec, core::IndexData data,
                  MemoryReservation build_memory, bool restore);

  const ServerOptions options_;
  IndexRegistry* const registry_;
  QueryPool* const pool_;
  ServerMetrics* const metrics_;
  MemoryBudget* const budget_;
  IndexStore* const store_;
  std::atomic<bool> shutting_down_{false};
  // Upload commits; several, so that one slow fsync does not hold every other upload. Last
  // member: its destructor runs the remaining jobs while everything they use still exists.
  BlockingExecutor blocking_{4};
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_RCKNN_SERVICE_H_
