// The rcknn.v1.Rcknn service: thin gRPC adapters over server/index_service.h. Each handler
// validates its request and converts it to core types (server/proto_conversion.h), calls the
// index service, maps the status back and fills the response; the RPC observer records it.
// Validation happens once, here and in the service's search plan (server/search_plan.h).
//
// No handler blocks a gRPC thread on the pool or the disk: Search and SearchStream are callback
// reactors completed by the pool; CreateIndex, DeleteIndex and the end of UploadPoints run on the
// I/O executor and finish from there. GetIndex, ListIndexes and BuildIndex are quick;
// WatchIndex is a write reactor woken by the index's change notifications (no thread waits
// between reports).
//
// The two client-streaming methods (UploadPoints, SearchStream) take raw messages and parse them
// themselves (server/stream_reactors.h): gRPC's synchronous Read() reports a message that does
// not parse exactly like the end of the stream, which would apply a partial upload or answer OK
// to a stream whose tail was garbage. Parsed this way, such a message is INVALID_ARGUMENT.
#ifndef RCKNN_SERVER_RCKNN_SERVICE_H_
#define RCKNN_SERVER_RCKNN_SERVICE_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "rcknn/v1/rcknn.grpc.pb.h"
#include "server/index_registry.h"
#include "server/index_service.h"
#include "server/index_store.h"
#include "server/memory_budget.h"
#include "server/proto_conversion.h"
#include "server/query_pool.h"
#include "server/server_metrics.h"
#include "server/server_options.h"

namespace rcknn::server {

using AsyncRcknnService = v1::Rcknn::WithRawCallbackMethod_UploadPoints<
    v1::Rcknn::WithRawCallbackMethod_SearchStream<v1::Rcknn::WithCallbackMethod_Search<
        v1::Rcknn::WithCallbackMethod_CreateIndex<v1::Rcknn::WithCallbackMethod_DeleteIndex<
            v1::Rcknn::WithCallbackMethod_ComputeOrdering<
                v1::Rcknn::WithCallbackMethod_WatchIndex<v1::Rcknn::Service>>>>>>>;

class RcknnService final : public AsyncRcknnService {
 public:
  // `registry`, `pool`, `metrics`, `budget` and `store` (null: nothing is persisted) must
  // outlive the service and every build it starts on the pool.
  RcknnService(const ServerOptions& options, IndexRegistry* registry, QueryPool* pool,
               ServerMetrics* metrics, MemoryBudget* budget, IndexStore* store)
      : service_(options, registry, pool, metrics, budget, store, SpecRecordFromWire) {}

  // See IndexService.
  int64_t LoadStoredIndexes() { return service_.LoadStoredIndexes(); }
  void BeginShutdown() { service_.BeginShutdown(); }
  IndexService& index_service() { return service_; }

  grpc::ServerUnaryReactor* CreateIndex(grpc::CallbackServerContext* context,
                                        const v1::CreateIndexRequest* request,
                                        v1::IndexInfo* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* UploadPoints(grpc::CallbackServerContext* context,
                                                          grpc::ByteBuffer* response) override;
  grpc::Status BuildIndex(grpc::ServerContext* context, const v1::BuildIndexRequest* request,
                          v1::IndexInfo* response) override;
  grpc::Status GetPoints(grpc::ServerContext* context, const v1::GetPointsRequest* request,
                         v1::GetPointsResponse* response) override;
  grpc::Status GetIndex(grpc::ServerContext* context, const v1::GetIndexRequest* request,
                        v1::IndexInfo* response) override;
  grpc::ServerWriteReactor<v1::IndexInfo>* WatchIndex(grpc::CallbackServerContext* context,
                                                      const v1::GetIndexRequest* request) override;
  grpc::Status ListIndexes(grpc::ServerContext* context, const v1::ListIndexesRequest* request,
                           v1::ListIndexesResponse* response) override;
  grpc::ServerUnaryReactor* DeleteIndex(grpc::CallbackServerContext* context,
                                        const v1::DeleteIndexRequest* request,
                                        v1::DeleteIndexResponse* response) override;
  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* context,
                                   const v1::SearchRequest* request,
                                   v1::SearchResponse* response) override;
  grpc::ServerUnaryReactor* ComputeOrdering(grpc::CallbackServerContext* context,
                                            const v1::ComputeOrderingRequest* request,
                                            v1::Ordering* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SearchStream(
      grpc::CallbackServerContext* context) override;

  // One chunk of UploadPoints (validated, converted and staged), for the upload reactor.
  absl::Status AcceptUploadChunk(const v1::UploadPointsRequest& chunk, UploadState* state);

  // One SearchRequest, for Search and for each message of SearchStream: validates and converts
  // it, and starts it on the pool with the answer written into `response` (which, like
  // `request`, must stay valid until `done` runs). `done` runs once, on a pool thread, unless
  // an error is returned (then nothing started). The handle cancels the search.
  absl::StatusOr<QueryPool::CancelHandle> StartSearch(const v1::SearchRequest& request,
                                                      absl::Time deadline,
                                                      v1::SearchResponse* response,
                                                      std::function<void(absl::Status)> done);

 private:
  IndexService service_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_RCKNN_SERVICE_H_
