// rcknn.v1.Rcknn served over shards (router/shard_layout.h, router/shard_cluster.h): the same
// API and answers as one rcknn-server holding all the points.
//
//  - CreateIndex / DeleteIndex / BuildIndex go to every replica of every shard. BuildIndex draws
//    the inducing points over all n points exactly as one server would (core::SampleDistinct
//    with the spec's seed; the drawn points in ascending id order), fetches their coordinates
//    from the shards (GetPoints) and builds every shard with them, so all shards compute the one
//    metric of the whole index.
//  - CreateIndex fixes the index's layout: contiguous ranges of ceil(expected / S) global ids
//    per shard, for the expected_num_points the request declares (else --shard_points per shard).
//  - UploadPoints splits each chunk along the shards' ranges and forwards the pieces to every
//    replica of their shards on one stream each; the shard streams commit only when the
//    client's stream ends cleanly (a failed or cancelled client stream cancels all of them).
//  - Search: a query by id first fetches its coordinates from the shard holding it, then every
//    query is sent as a point query to every shard that can hold a qualifying candidate (in
//    predecessor mode only the shards whose range starts below the query's id, with the count
//    of their ids below it as the bound, SearchRequest.query_id_bounds); a query by id excludes its own id
//    (unless include_self) by id, never by distance. The shards' rows are merged by
//    (distance, global id).
//  - GetIndex / WatchIndex / ListIndexes aggregate the shards' IndexInfo (points and memory
//    summed, progress weighted by points, the least advanced state).
//
// The cluster may grow (router/shard_discovery.h): an index keeps the shards it was created over
// (its layout's S, the first S of the cluster), new indexes use all the shards known at their
// creation. The router keeps nothing that the shards cannot tell it again: an index's layout is
// read from its shards' index names, and what it caches (layouts, and the shard sizes of READY indexes)
// is dropped with the index.
#ifndef RCKNN_ROUTER_ROUTER_SERVICE_H_
#define RCKNN_ROUTER_ROUTER_SERVICE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "rcknn/v1/rcknn.grpc.pb.h"
#include "router/shard_cluster.h"
#include "router/shard_layout.h"

namespace rcknn::router {

// What a search needs to know about a READY index.
struct ReadyView {
  ShardLayout layout;
  std::vector<int64_t> sizes;  // points per shard
  int64_t n = 0;
  int dimension = 0;
};

using RouterBaseService = v1::Rcknn::WithRawCallbackMethod_UploadPoints<v1::Rcknn::Service>;

class RouterService final : public RouterBaseService {
 public:
  // `cluster` must outlive the service. A new index that does not declare how many points it
  // expects gets ranges of `shard_points` ids per shard (router/shard_layout.h).
  // CreateIndex waits (answers UNAVAILABLE) until the cluster has `min_shards` shards.
  RouterService(ShardCluster* cluster, int64_t shard_points, int64_t min_shards)
      : cluster_(cluster), shard_points_(shard_points), min_shards_(min_shards) {}

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
  grpc::Status SearchStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::SearchResponse, v1::SearchRequest>* stream) override;
  grpc::Status GetPoints(grpc::ServerContext* context, const v1::GetPointsRequest* request,
                         v1::GetPointsResponse* response) override;

  // One upload stream, chunk by chunk (used by the UploadPoints reactor, on one thread).
  class Upload {
   public:
    Upload(RouterService* service, const grpc::ServerContextBase* context)
        : service_(service), context_(context) {}
    ~Upload();
    absl::Status Chunk(const v1::UploadPointsRequest& chunk);
    absl::Status Finish(v1::UploadPointsResponse* response);
    // Cancels every shard stream: nothing is applied.
    void Abort();

   private:
    struct Stream {
      int64_t shard = 0;
      int64_t replica = 0;
      std::unique_ptr<grpc::ClientContext> context;
      v1::UploadPointsResponse response;
      std::unique_ptr<grpc::ClientWriter<v1::UploadPointsRequest>> writer;
      bool named = false;
    };
    absl::Status Begin(const std::string& index_id);
    absl::Status Forward(int64_t shard, const double* coordinates, int64_t rows);

    RouterService* const service_;
    const grpc::ServerContextBase* const context_;
    std::string index_id_;
    ShardLayout layout_;
    int dimension_ = 0;
    int64_t existing_ = 0;
    int64_t received_ = 0;
    int64_t chunks_ = 0;
    std::shared_ptr<absl::Mutex> lock_;  // held while the stream lasts
    std::vector<std::vector<std::unique_ptr<Stream>>> streams_;  // [shard][replica], lazily
  };

 private:
  // The layout of index `id`, from the cache or from shard 0's index names. NOT_FOUND.
  absl::StatusOr<ShardLayout> Resolve(const grpc::ServerContextBase* context,
                                      const std::string& id);
  // One IndexInfo per shard (any replica), or per replica of every shard with `all_replicas`
  // ([shard][replica]).
  absl::StatusOr<std::vector<std::vector<v1::IndexInfo>>> ShardInfos(
      const grpc::ServerContextBase* context, const std::string& id, const ShardLayout& layout,
      bool all_replicas);
  absl::Status Aggregate(const grpc::ServerContextBase* context, const std::string& id,
                         v1::IndexInfo* out);
  absl::StatusOr<ReadyView> Ready(const grpc::ServerContextBase* context, const std::string& id);
  // Coordinates of global ids `ids`, row-major, fetched from their shards.
  absl::StatusOr<std::vector<double>> Points(const grpc::ServerContextBase* context,
                                             const std::string& id, const ReadyView& view,
                                             const std::vector<int64_t>& ids);
  absl::Status RunSearch(const grpc::ServerContextBase* context, const v1::SearchRequest& request,
                         v1::SearchResponse* response);
  std::shared_ptr<absl::Mutex> UploadLock(const std::string& id);
  void Forget(const std::string& id);

  ShardCluster* const cluster_;
  const int64_t shard_points_;
  const int64_t min_shards_;
  absl::Mutex mutex_;
  absl::flat_hash_map<std::string, ShardLayout> layouts_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, ReadyView> ready_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, std::shared_ptr<absl::Mutex>> upload_locks_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace rcknn::router

#endif  // RCKNN_ROUTER_ROUTER_SERVICE_H_
