#include "server/index_service.h"

#include <new>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status_macros.h"
#include "server/build_spec.h"
#include "server/logging.h"

namespace rcknn::server {

IndexWatch::IndexWatch(std::shared_ptr<IndexEntry> entry, std::function<void()> on_change,
                       std::atomic<int64_t>* open)
    : entry_(std::move(entry)), open_(open) {
  open_->fetch_add(1);
  id_ = entry_->AddWatcher(std::move(on_change));
}

IndexWatch::~IndexWatch() {
  entry_->RemoveWatcher(id_);
  open_->fetch_sub(1);
}

IndexService::IndexService(const ServerOptions& options, IndexRegistry* registry, QueryPool* pool,
                           ServerMetrics* metrics, MemoryBudget* budget, IndexStore* store,
                           SpecDecoder decode_spec)
    : options_(options),
      registry_(registry),
      pool_(pool),
      metrics_(metrics),
      budget_(budget),
      store_(store),
      decode_spec_(std::move(decode_spec)),
      io_(std::max(1, options.io_threads)) {}

void IndexService::BeginShutdown() {
  shutting_down_.store(true);
  for (const std::shared_ptr<IndexEntry>& entry : registry_->List()) entry->NotifyWatchers();
}

void IndexService::UpdateIndexGauges() {
  IndexStateCounts counts;
  int64_t points = 0;
  int64_t memory_bytes = 0;
  for (const std::shared_ptr<IndexEntry>& entry : registry_->List()) {
    const IndexSnapshot snapshot = entry->Snapshot();
    switch (snapshot.state) {
      case IndexState::kLoading:
        ++counts.loading;
        break;
      case IndexState::kBuilding:
        ++counts.building;
        break;
      case IndexState::kReady:
        ++counts.ready;
        break;
      case IndexState::kFailed:
        ++counts.failed;
        break;
    }
    points += snapshot.num_points;
    memory_bytes += snapshot.memory_bytes;
  }
  metrics_->SetIndexCounts(counts);
  metrics_->SetIndexTotals(points, memory_bytes);
  metrics_->SetMemory(budget_->used(), budget_->limit());
}

absl::StatusOr<std::shared_ptr<IndexEntry>> IndexService::CreateIndex(const std::string& id,
                                                                      IndexSpecRecord spec) {
  auto entry = std::make_shared<IndexEntry>(id, std::move(spec));
  RETURN_IF_ERROR(registry_->Add(entry));
  if (store_ != nullptr) {
    if (absl::Status status = store_->CreateIndex(entry->id(), entry->spec().wire);
        !status.ok()) {
      (void)registry_->Remove(entry->id());
      return status;
    }
  }
  RCKNN_LOG(kInfo, "created index ", entry->id());
  UpdateIndexGauges();
  return entry;
}

absl::StatusOr<std::shared_ptr<IndexEntry>> IndexService::CreateIndexFromSource(
    const std::string& id, const std::string& source_id, IndexSpecRecord record,
    core::TreeStart tree_start) {
  ASSIGN_OR_RETURN(const std::shared_ptr<IndexEntry> source, registry_->Get(source_id));
  absl::StatusOr<std::shared_ptr<const core::KnnIndex>> source_index = source->ReadyIndex();
  if (!source_index.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("source_index_id: index ", source->id(), " is ",
                     IndexStateName(source->Snapshot().state),
                     "; an index is created from a source once the source is READY"));
  }
  auto entry = std::make_shared<IndexEntry>(id, std::move(record), source->id());
  const int64_t n = (*source_index)->size();
  const int64_t uploads = source->uploads();
  RETURN_IF_ERROR(registry_->Add(entry));
  auto undo = [&](absl::Status status) {
    (void)registry_->Remove(entry->id());
    return status;
  };
  if (store_ != nullptr) {
    // Under the source's write lock: its files cannot be deleted while they are linked.
    const SourceLink link{source->id(), uploads, n};
    absl::Status stored = source->RunWrite(
        [&] { return store_->CreateIndex(entry->id(), entry->spec().wire, &link); });
    if (!stored.ok()) {
      if (stored.code() == absl::StatusCode::kNotFound) {
        stored = absl::NotFoundError(
            absl::StrCat("source_index_id: index ", source->id(), " was deleted"));
      }
      if (stored.code() != absl::StatusCode::kAlreadyExists) {
        (void)store_->DeleteIndex(entry->id());
      }
      return undo(stored);
    }
  }
  core::IndexSpec spec;
  MemoryReservation build_memory;
  absl::StatusOr<MemoryReservation> index_memory =
      budget_->Reserve(0, absl::StrCat("index ", entry->id()));
  absl::Status started = index_memory.status();
  if (started.ok()) {
    started = entry->BeginSourcedBuild(
        n, uploads, BuildCheck(*entry, "building", nullptr, &spec, &build_memory),
        *std::move(index_memory));
  }
  if (!started.ok()) {
    if (store_ != nullptr) (void)store_->DeleteIndex(entry->id());
    return undo(started);
  }
  RCKNN_LOG(kInfo, "created index ", entry->id(), " from index ", source->id(), " (", n,
            " points, shared); building");
  core::ReparameterizeOptions options;
  options.tree_start = tree_start;
  StartBuild(entry, std::move(spec), core::IndexData(), std::move(build_memory),
             /*restore=*/false,
             [source_index = *std::move(source_index), options](
                 const core::IndexSpec& spec, tbb::task_arena* arena,
                 const core::Cancellation* cancellation, const core::ProgressCallback& progress) {
               return core::KnnIndex::Reparameterize(*source_index, spec, options, arena,
                                                     cancellation, progress);
             });
  UpdateIndexGauges();
  return entry;
}

absl::Status IndexService::BeginUpload(const std::string& index_id, UploadState* state) {
  ASSIGN_OR_RETURN(state->entry, registry_->Get(index_id));
  const IndexSnapshot snapshot = state->entry->Snapshot();
  if (snapshot.state != IndexState::kLoading) {
    return absl::FailedPreconditionError(
        absl::StrCat("index ", state->entry->id(), " is ", IndexStateName(snapshot.state),
                     "; points can only be uploaded before BuildIndex"));
  }
  state->existing = snapshot.num_points;
  state->staged.factor_columns = state->entry->factor_columns();
  const IndexSpecRecord& spec = state->entry->spec();
  if (state->staged.factor_columns == 0 && spec.core.factors_supplied && spec.inducing_count_set) {
    state->staged.factor_columns = spec.core.residual.inducing_count;
  }
  return absl::OkStatus();
}

absl::Status IndexService::ReserveChunk(UploadState* state, int64_t rows, int64_t values) {
  const IndexEntry& entry = *state->entry;
  // Each term is bounded by the message size limit, the sum by the points limit checked here.
  const int64_t total = state->existing + state->staged.num_points + rows;
  if (total > options_.max_points_per_index) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "index ", entry.id(), " would hold ", total,
        " points, over the limit --max_points_per_index = ", options_.max_points_per_index));
  }
  const std::optional<int64_t> bytes =
      CheckedMul(values, static_cast<int64_t>(sizeof(double)));
  if (!bytes.has_value()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the upload to index ", entry.id(), " is too large"));
  }
  return budget_->Grow(state->memory, *bytes, absl::StrCat("the upload to index ", entry.id()));
}

absl::StatusOr<UploadResult> IndexService::FinishUpload(UploadState* state) {
  const int64_t received = state->staged.num_points;
  IndexEntry::PersistUpload persist;
  if (store_ != nullptr) {
    persist = [this, id = state->entry->id()](const PointBatch& batch, int64_t sequence) {
      return store_->WriteUpload(id, sequence, batch);
    };
  }
  ASSIGN_OR_RETURN(const int64_t total,
                   state->entry->Append(std::move(state->staged), options_.max_points_per_index,
                                        persist, std::move(state->memory)));
  UpdateIndexGauges();
  RCKNN_LOG(kDebug, "index ", state->entry->id(), ": received ", received, " points in ",
            state->chunks, " chunks, ", total, " in total");
  return UploadResult{received, total};
}

absl::StatusOr<std::shared_ptr<IndexEntry>> IndexService::BuildIndex(
    const std::string& index_id, std::optional<IndexSpecRecord> build_spec) {
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(index_id));
  std::optional<core::IndexSpec> base;
  std::optional<std::string> build_wire;
  if (build_spec.has_value()) {
    base = build_spec->core;
    base->tree = entry->core_spec().tree;
    base->search = entry->core_spec().search;
    build_wire = std::move(build_spec->wire);
  }
  // The build's spec is durable before the build starts (under the entry's lock, so that no
  // other BuildIndex can interleave): a restart restores the tree over the same metric.
  std::function<absl::Status()> commit;
  if (store_ != nullptr) {
    commit = [this, &entry, &build_wire] { return store_->WriteBuildSpec(entry->id(), build_wire); };
  }
  core::IndexSpec spec;
  MemoryReservation build_memory;
  ASSIGN_OR_RETURN(core::IndexData data,
                   entry->BeginBuild(BuildCheck(*entry, "building", base ? &*base : nullptr,
                                                &spec, &build_memory, std::move(commit))));
  RCKNN_LOG(kInfo, "building index ", entry->id(), " over ", data.points.rows(), " points");
  StartBuild(entry, std::move(spec), std::move(data), std::move(build_memory), /*restore=*/false);
  UpdateIndexGauges();
  return entry;
}

std::function<absl::Status(int64_t)> IndexService::BuildCheck(
    const IndexEntry& entry, absl::string_view verb, const core::IndexSpec* base,
    core::IndexSpec* spec, MemoryReservation* memory, std::function<absl::Status()> commit) {
  return [this, &entry, verb, base, spec, memory, commit = std::move(commit)](int64_t n) {
    ASSIGN_OR_RETURN(*spec, SpecForBuild(base != nullptr ? *base : entry.core_spec(),
                                         entry.spec().inducing_count_set, n));
    ASSIGN_OR_RETURN(MemoryReservation reserved,
                     budget_->Reserve(core::KnnIndex::EstimateBuildBytes(*spec, n),
                                      absl::StrCat(verb, " index ", entry.id())));
    if (commit) RETURN_IF_ERROR(commit());
    *memory = std::move(reserved);
    return absl::OkStatus();
  };
}

void IndexService::StartBuild(std::shared_ptr<IndexEntry> entry, core::IndexSpec spec,
                              core::IndexData data, MemoryReservation build_memory,
                              bool restore, MakeIndex make) {
  // std::function needs a copyable callable: the data and the reservation travel in shared_ptrs.
  auto shared_data = std::make_shared<core::IndexData>(std::move(data));
  auto shared_memory = std::make_shared<MemoryReservation>(std::move(build_memory));
  tbb::task_arena* arena = pool_->arena();
  pool_->Run([this, entry, spec = std::move(spec), shared_data, shared_memory, arena,
              restore, make = std::move(make)]() mutable {
    absl::StatusOr<std::unique_ptr<core::KnnIndex>> index;
    double build_seconds = -1.0;
    auto progress = [raw = entry.get()](double f) { raw->SetBuildProgress(f); };
    try {
      if (make) {
        index = make(spec, arena, entry->build_cancellation(), progress);
      } else if (restore) {
        bool refitted = false;
        index = store_->RestoreTree(entry->id(), entry->uploads(), spec, std::move(*shared_data),
                                    arena, entry->build_cancellation(), progress, &build_seconds,
                                    &refitted);
        entry->set_restored_refitted(refitted && index.ok() && !(*index)->tree_rebuilt());
      } else {
        index = core::KnnIndex::Build(spec, std::move(*shared_data), arena,
                                      entry->build_cancellation(), progress);
      }
    } catch (const std::bad_alloc&) {
      index = absl::ResourceExhaustedError("the build ran out of memory");
    }
    // A build cancelled (shutdown past its grace, DeleteIndex) never publishes, even when the
    // cancellation came during a phase that does not check it (the tree's final passes, the
    // layout in tree order): otherwise whether it ends READY or FAILED depends on timing.
    if (index.ok()) {
      if (absl::Status cancelled = entry->build_cancellation()->Check(); !cancelled.ok()) {
        index = std::move(cancelled);
      }
    }
    shared_data.reset();
    if (restore && index.ok() && (*index)->tree_rebuilt()) {
      // Saved over factors that this build computes differently (core::KnnIndex::Restore): the
      // tree was built again and is saved below, so the next start-up adopts it.
      RCKNN_LOG(kWarning, "index ", entry->id(), ": the saved tree was built over factors V, p "
                "that this server computes differently (another CPU or rcknn version); rebuilt "
                "the tree over the recomputed factors in ", (*index)->timings().tree_seconds,
                " s and saving it");
      restore = false;
    }
    if (restore || !index.ok() || store_ == nullptr) {
      PublishBuild(entry, std::move(index), build_seconds, std::move(*shared_memory), restore);
      return;
    }
    // Durable before READY: a crash from here on finds either this whole file or none. The
    // write blocks on the disk, so it leaves the pool for the I/O executor.
    auto built = std::make_shared<std::unique_ptr<core::KnnIndex>>(*std::move(index));
    io_.Submit([this, entry, built, shared_memory] {
      // The duration is taken once, so that the file and GetIndex report the same one.
      const double seconds = entry->Snapshot().build_seconds;
      const absl::Status saved = entry->RunWrite(
          [&] { return store_->WriteTree(entry->id(), entry->uploads(), seconds, **built); });
      absl::StatusOr<std::unique_ptr<core::KnnIndex>> result = std::move(*built);
      if (!saved.ok() && !entry->deleted()) {
        result = absl::Status(saved.code(), absl::StrCat("the index was built but could not be "
                                                         "saved in --data_dir: ",
                                                         saved.message()));
      }
      PublishBuild(entry, std::move(result), seconds, std::move(*shared_memory),
                   /*restore=*/false);
    });
  });
}

void IndexService::PublishBuild(const std::shared_ptr<IndexEntry>& entry,
                                absl::StatusOr<std::unique_ptr<core::KnnIndex>> index,
                                double build_seconds, MemoryReservation build_memory,
                                bool restore) {
  entry->FinishBuild(std::move(index), build_seconds, std::move(build_memory));
  const IndexSnapshot snapshot = entry->Snapshot();
  if (snapshot.state == IndexState::kReady && !restore) {
    metrics_->RecordBuild(snapshot.build_seconds);
  }
  UpdateIndexGauges();
  if (snapshot.state == IndexState::kReady) {
    RCKNN_LOG(kInfo, "index ", entry->id(), restore ? " restored" : " built",
              ", READY: ", snapshot.num_points, " points");
  } else if (!entry->deleted()) {
    RCKNN_LOG(kWarning, "index ", entry->id(), " FAILED: ", snapshot.error);
  }
}

int64_t IndexService::LoadStoredIndexes() {
  if (store_ == nullptr) return 0;
  std::vector<StoredIndex> stored = store_->LoadAll(decode_spec_);
  for (StoredIndex& found : stored) {
    auto entry = std::make_shared<IndexEntry>(found.id, found.spec, found.source_id);
    if (absl::Status added = registry_->Add(entry, /*enforce_limit=*/false); !added.ok()) {
      RCKNN_LOG(kError, "--data_dir: index ", found.id, " not loaded: ", added.message());
      continue;
    }
    absl::Status status = found.status;
    for (PointBatch& batch : found.uploads) {
      if (!status.ok()) break;
      const int64_t bytes = static_cast<int64_t>(
          (batch.coordinates.size() + batch.factors.size() + batch.residual_variances.size()) *
          sizeof(double));
      absl::StatusOr<MemoryReservation> memory =
          budget_->Reserve(bytes, absl::StrCat("loading index ", found.id));
      status = memory.status();
      if (status.ok()) {
        status = entry->Append(std::move(batch), options_.max_points_per_index, nullptr,
                               *std::move(memory))
                     .status();
      }
    }
    std::optional<core::IndexSpec> base;
    if (status.ok() && found.has_tree && found.build_spec.has_value()) {
      base = found.build_spec->core;
      base->tree = entry->core_spec().tree;
      base->search = entry->core_spec().search;
    }
    if (status.ok() && found.has_tree) {
      entry->SetStoredOrderings(std::move(found.orderings));
      core::IndexSpec build_spec;
      MemoryReservation build_memory;
      absl::StatusOr<core::IndexData> data = entry->BeginBuild(BuildCheck(
          *entry, "restoring", base ? &*base : nullptr, &build_spec, &build_memory));
      status = data.status();
      if (status.ok()) {
        RCKNN_LOG(kInfo, "--data_dir: restoring index ", found.id, " (",
                  entry->Snapshot().num_points, " points)");
        StartBuild(entry, std::move(build_spec), *std::move(data), std::move(build_memory),
                   /*restore=*/true);
      }
    }
    if (!status.ok()) {
      entry->MarkFailed(status);
      RCKNN_LOG(kError, "--data_dir: index ", found.id, " FAILED: ", status.ToString(),
                " (its files are kept; DeleteIndex removes them)");
    } else if (!found.has_tree) {
      RCKNN_LOG(kInfo, "--data_dir: loaded index ", found.id, " (LOADING, ",
                entry->Snapshot().num_points, " points in ", found.uploads.size(), " uploads)");
    }
  }
  UpdateIndexGauges();
  return static_cast<int64_t>(stored.size());
}

absl::StatusOr<std::shared_ptr<IndexEntry>> IndexService::GetIndex(
    const std::string& index_id) const {
  return registry_->Get(index_id);
}

std::vector<std::shared_ptr<IndexEntry>> IndexService::ListIndexes() const {
  return registry_->List();
}

absl::StatusOr<std::unique_ptr<IndexWatch>> IndexService::WatchIndex(
    const std::string& index_id, std::function<void()> on_change) {
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(index_id));
  return std::make_unique<IndexWatch>(std::move(entry), std::move(on_change), &open_watches_);
}

absl::Status IndexService::DeleteIndex(const std::string& index_id) {
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> removed, registry_->Remove(index_id));
  UpdateIndexGauges();
  if (store_ != nullptr) {
    // No write of the entry is under way once RunWrite returns: a later one sees it deleted.
    const absl::Status status = removed->RunWrite(
        [&] { return store_->DeleteIndex(index_id); }, /*even_if_deleted=*/true);
    if (!status.ok()) {
      RCKNN_LOG(kError, "index ", index_id, " deleted, but not its files: ", status.ToString());
      return absl::Status(status.code(),
                          absl::StrCat("index ", index_id,
                                       " was deleted, but its files in --data_dir could not be "
                                       "removed and it will come back at the next start: ",
                                       status.message()));
    }
  }
  RCKNN_LOG(kInfo, "deleted index ", index_id);
  return absl::OkStatus();
}

absl::StatusOr<QueryPool::CancelHandle> IndexService::StartSearch(const SearchCall& call,
                                                                  const AnswerAllocator& allocate,
                                                                  SearchCallback done) {
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(call.index_id));
  ASSIGN_OR_RETURN(std::shared_ptr<const core::KnnIndex> index, entry->ReadyIndex());
  // An ordering: predecessor mode by rank, and optionally ranks in place of ids on the wire.
  core::QueryBatch queries = call.queries;
  core::KnnOptions options = call.options;
  std::shared_ptr<const NamedOrdering> ordering;
  auto ranked_ids = std::make_shared<std::vector<int64_t>>();
  if (!call.ordering.empty()) {
    if (!options.predecessor_mode && !call.ids_are_ranks) {
      return absl::InvalidArgumentError(
          "ordering: applies to predecessor_mode or ids_are_ranks; set one of them");
    }
    ASSIGN_OR_RETURN(ordering, entry->FindOrdering(call.ordering));
    if (options.predecessor_mode) {
      options.rank = ordering->ordering.rank();
      options.subtree_min_rank = ordering->ordering.subtree_min_rank();
    }
    if (call.ids_are_ranks && queries.by_id()) {
      const int64_t n = index->size();
      ranked_ids->resize(queries.ids.size());
      for (size_t i = 0; i < queries.ids.size(); ++i) {
        const int64_t rank = queries.ids[i];
        if (rank < 0 || rank >= n) {
          return absl::InvalidArgumentError(absl::StrCat("query_ids[", i, "] = ", rank,
                                                         " is not a rank in [0, ", n, ")"));
        }
        (*ranked_ids)[i] = ordering->ordering.permutation()[rank];
      }
      queries.ids = *ranked_ids;
    }
  } else if (call.ids_are_ranks) {
    return absl::InvalidArgumentError("ids_are_ranks: needs an ordering");
  }
  SearchLimits limits;
  limits.max_queries_per_search = options_.max_queries_per_search;
  limits.max_message_bytes = options_.max_message_bytes;
  ASSIGN_OR_RETURN(const SearchPlan plan, PlanSearch(queries, options, index->size(),
                                                     index->dimension(), limits, call.layout));
  absl::StatusOr<MemoryReservation> memory =
      budget_->Reserve(plan.memory_bytes, "the answer of this search");
  if (!memory.ok()) {
    metrics_->RecordSearchRejected(kRejectedMemory);
    return memory.status();
  }

  // What lives until the callback: the reservation and the per-query counts.
  struct Running {
    MemoryReservation memory;
    std::vector<int64_t> per_query_evaluations;
    absl::Time start;
  };
  auto running = std::make_shared<Running>();
  running->memory = *std::move(memory);
  running->per_query_evaluations.resize(static_cast<size_t>(plan.num_queries));
  const AnswerBuffers answer = allocate(plan.num_queries, plan.k);

  QueryPool::SearchJob job;
  job.index = std::move(index);
  job.queries = queries;
  job.options = options;
  job.deadline = call.deadline;
  job.out_ids = answer.ids;
  job.out_distances = answer.distances;
  job.per_query_evaluations = absl::MakeSpan(running->per_query_evaluations);
  running->start = absl::Now();
  const bool answer_in_ranks = ordering != nullptr && call.ids_are_ranks;
  absl::StatusOr<QueryPool::CancelHandle> handle = pool_->Submit(
      std::move(job), [this, running, done = std::move(done), ordering, ranked_ids, answer,
                       answer_in_ranks, entries = plan.answer_entries](
                          absl::Status status, const core::TraversalStats& stats) {
        if (status.ok() && answer_in_ranks) {
          const std::vector<int64_t>& rank = ordering->ordering.rank();
          for (int64_t j = 0; j < entries; ++j) {
            if (answer.ids[j] >= 0) answer.ids[j] = rank[answer.ids[j]];
          }
        }
        SearchOutcome outcome;
        outcome.seconds = absl::ToDoubleSeconds(absl::Now() - running->start);
        if (status.ok()) {
          outcome.stats = stats;
          // Once per batch, from the merged stats: never from inside the search.
          metrics_->RecordSearch(stats, running->per_query_evaluations);
        }
        // Released before the client can see the answer (as when the search ran on the
        // caller's thread): a client that sees the answer sees the budget without it.
        running->memory.Release();
        done(std::move(status), outcome);
      });
  if (!handle.ok() && absl::IsResourceExhausted(handle.status())) {
    metrics_->RecordSearchRejected(kRejectedQueueFull);
  }
  return handle;
}

absl::Status IndexService::StartComputeOrdering(const std::string& index_id,
                                               const std::string& name,
                                               core::OrderingRequest core_request,
                                               std::shared_ptr<core::Cancellation> cancellation,
                                               OrderingDone done) {
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(index_id));
  ASSIGN_OR_RETURN(std::shared_ptr<const core::KnnIndex> index, entry->ReadyIndex());
  if (entry->HasOrdering(name)) {
    return absl::AlreadyExistsError(absl::StrCat("name: index ", index_id,
                                                 " already has an ordering named \"", name,
                                                 "\""));
  }
  const int64_t n = index->size();
  // The answer carries the whole permutation (a varint per id): refuse before computing what
  // cannot be sent.
  int varint_bytes = 1;
  for (uint64_t v = static_cast<uint64_t>(n - 1); v >= 0x80; v >>= 7) ++varint_bytes;
  const double answer_bytes = static_cast<double>(n) * varint_bytes + 256.0;
  if (answer_bytes > static_cast<double>(options_.max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the ordering of ", n, " points (about ", static_cast<int64_t>(answer_bytes),
        " bytes) would exceed --max_message_bytes = ", options_.max_message_bytes));
  }
  // The kept ordering (permutation, ranks, subtree minimum ranks) plus the maximin walk's
  // per-point arrays while it runs (distances, heap, positions, tree-node maps), and for the
  // scaled-coordinate maximin a Euclidean copy of the coordinates and its tree.
  const int64_t kept_bytes = 3 * n * static_cast<int64_t>(sizeof(int64_t));
  ASSIGN_OR_RETURN(MemoryReservation reserved,
                   budget_->Reserve(kept_bytes + 6 * n * static_cast<int64_t>(sizeof(int64_t)) +
                                        core::KnnIndex::EstimateBuildBytes(index->spec(), n),
                                    "computing this ordering"));
  auto memory = std::make_shared<MemoryReservation>(std::move(reserved));
  const absl::Time start = absl::Now();
  pool_->Run([this, entry, index, core_request = std::move(core_request), cancellation, memory,
              start, name, done = std::move(done)]() mutable {
    absl::StatusOr<std::vector<int64_t>> permutation =
        core::ComputeOrdering(*index, core_request, pool_->arena(), cancellation.get());
    if (!permutation.ok()) {
      done(permutation.status());
      return;
    }
    absl::StatusOr<core::IndexOrdering> ordering =
        core::IndexOrdering::Create(index->tree(), *permutation);
    if (!ordering.ok()) {
      done(ordering.status());
      return;
    }
    auto stored = std::make_shared<StoredOrdering>(
        StoredOrdering{name, core_request.method, 0.0, *std::move(permutation)});
    stored->seconds = absl::ToDoubleSeconds(absl::Now() - start);
    auto named = std::make_shared<const NamedOrdering>(
        NamedOrdering{stored->name, stored->method, stored->seconds, *std::move(ordering)});
    const int64_t kept = named->ordering.memory_bytes();
    // The commit blocks on the disk.
    io_.Submit([this, entry, stored, named, memory, kept, done = std::move(done)] {
      memory->Resize(kept);
      const absl::Status status = entry->RunWrite([&]() -> absl::Status {
        if (entry->HasOrdering(stored->name)) {
          return absl::AlreadyExistsError(absl::StrCat("name: index ", entry->id(),
                                                       " already has an ordering named \"",
                                                       stored->name, "\""));
        }
        if (store_ != nullptr) RETURN_IF_ERROR(store_->WriteOrdering(entry->id(), *stored));
        return entry->AddOrdering(named, std::move(*memory));
      });
      if (!status.ok()) {
        done(status);
        return;
      }
      UpdateIndexGauges();
      done(std::shared_ptr<const StoredOrdering>(stored));
    });
  });
  return absl::OkStatus();
}

}  // namespace rcknn::server
