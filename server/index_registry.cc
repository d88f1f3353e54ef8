#include "server/index_registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace rcknn::server {
namespace {

void AppendVector(std::vector<double>& to, std::vector<double>& from) {
  if (to.empty()) {
    to = std::move(from);
  } else {
    to.insert(to.end(), from.begin(), from.end());
  }
}

core::RowMatrix ToMatrix(const std::vector<double>& values, int64_t rows, int64_t cols) {
  return Eigen::Map<const core::RowMatrix>(values.data(), rows, cols);
}

}  // namespace

absl::Status ValidateIndexId(absl::string_view id, absl::string_view field) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": is empty; name the index"));
  if (id.size() > kMaxIndexIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": is ", id.size(), " characters long, the limit is ", kMaxIndexIdLength));
  }
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": may hold only the characters A-Z a-z 0-9 . _ -"));
    }
  }
  return absl::OkStatus();
}

std::string IndexStateName(IndexState state) {
  switch (state) {
    case IndexState::kLoading:
      return "LOADING";
    case IndexState::kBuilding:
      return "BUILDING";
    case IndexState::kReady:
      return "READY";
    case IndexState::kFailed:
      return "FAILED";
  }
  return "UNKNOWN";
}

IndexEntry::IndexEntry(std::string id, IndexSpecRecord spec, std::string source_index_id)
    : id_(std::move(id)), source_index_id_(std::move(source_index_id)), spec_(std::move(spec)) {}

int64_t IndexEntry::factor_columns() const {
  absl::MutexLock lock(&mutex_);
  return loading_.factor_columns;
}

absl::StatusOr<int64_t> IndexEntry::Append(PointBatch batch, int64_t max_points,
                                           const PersistUpload& persist,
                                           MemoryReservation memory) {
  absl::MutexLock write_lock(&write_mutex_);
  const NotifyOnExit notify(this);
  int64_t sequence = 0;
  {
    absl::MutexLock lock(&mutex_);
    if (deleted_) return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
    if (state_ != IndexState::kLoading) {
      return absl::FailedPreconditionError(
          absl::StrCat("index ", id_, " is ", IndexStateName(state_),
                       "; points can only be uploaded before BuildIndex"));
    }
    if (!source_index_id_.empty() && persist) {
      // Its upload files are its source's; one of its own would not restore with them. (A
      // restart, which appends the stored files without `persist`, is not refused.)
      return absl::FailedPreconditionError(
          absl::StrCat("index ", id_, " was created from index ", source_index_id_,
                       " and takes no uploads; BuildIndex builds it"));
    }
    if (batch.num_points > max_points - num_points_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("index ", id_, " would hold ", num_points_ + batch.num_points,
                       " points, over the limit --max_points_per_index = ", max_points));
    }
    if (batch.factor_columns != 0 && loading_.factor_columns != 0 &&
        batch.factor_columns != loading_.factor_columns) {
      return absl::InvalidArgumentError(absl::StrCat("factors: rows of ", batch.factor_columns,
                                                     " values, but earlier uploads had ",
                                                     loading_.factor_columns));
    }
    if (batch.num_points == 0) return num_points_;
    sequence = uploads_ + 1;
  }
  // Outside mutex_ (GetIndex must not wait on the disk); write_mutex_ keeps the state LOADING
  // and the upload number free.
  if (persist) {
    if (absl::Status status = persist(batch, sequence); !status.ok()) return status;
  }
  absl::MutexLock lock(&mutex_);
  if (deleted_) return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
  if (batch.factor_columns != 0) loading_.factor_columns = batch.factor_columns;
  AppendVector(loading_.coordinates, batch.coordinates);
  AppendVector(loading_.factors, batch.factors);
  AppendVector(loading_.residual_variances, batch.residual_variances);
  loading_.num_points += batch.num_points;
  num_points_ = loading_.num_points;
  uploads_ = sequence;
  memory_.Absorb(std::move(memory));
  ++version_;
  return num_points_;
}

int64_t IndexEntry::uploads() const {
  absl::MutexLock lock(&mutex_);
  return uploads_;
}

absl::StatusOr<core::IndexData> IndexEntry::BeginBuild(
    const std::function<absl::Status(int64_t num_points)>& check) {
  absl::MutexLock write_lock(&write_mutex_);
  const NotifyOnExit notify(this);
  absl::MutexLock lock(&mutex_);
  if (deleted_) return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
  if (state_ != IndexState::kLoading) {
    return absl::FailedPreconditionError(
        absl::StrCat("index ", id_, " is already ", IndexStateName(state_),
                     "; BuildIndex is accepted once, while LOADING"));
  }
  if (num_points_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("index ", id_, " has no points; upload them with UploadPoints first"));
  }
  if (check) {
    if (absl::Status status = check(num_points_); !status.ok()) return status;
  }
  core::IndexData data;
  data.points = ToMatrix(loading_.coordinates, num_points_, spec_.core.dimension);
  if (spec_.core.factors_supplied) {
    data.factors = ToMatrix(loading_.factors, num_points_, loading_.factor_columns);
    data.residual_variances =
        Eigen::Map<const Eigen::VectorXd>(loading_.residual_variances.data(), num_points_);
  }
  loading_ = PointBatch();
  state_ = IndexState::kBuilding;
  build_start_ = absl::Now();
  ++version_;
  return data;
}

absl::Status IndexEntry::BeginSourcedBuild(
    int64_t num_points, int64_t uploads,
    const std::function<absl::Status(int64_t num_points)>& check, MemoryReservation memory) {
  absl::MutexLock write_lock(&write_mutex_);
  const NotifyOnExit notify(this);
  absl::MutexLock lock(&mutex_);
  if (deleted_) return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
  if (state_ != IndexState::kLoading || num_points_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "index ", id_, " is ", IndexStateName(state_), " with ", num_points_,
        " points; only a new index takes its points from a source"));
  }
  if (check) {
    if (absl::Status status = check(num_points); !status.ok()) return status;
  }
  num_points_ = num_points;
  uploads_ = uploads;
  memory_.Absorb(std::move(memory));
  state_ = IndexState::kBuilding;
  build_start_ = absl::Now();
  ++version_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> IndexEntry::Coordinates(absl::Span<const int64_t> ids) const {
  const int d = spec_.core.dimension;
  absl::MutexLock lock(&mutex_);
  if (deleted_) return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
  const double* points = nullptr;
  if (state_ == IndexState::kLoading) {
    points = loading_.coordinates.data();
  } else if (state_ == IndexState::kReady) {
    points = index_->space().points().data();
  } else {
    return absl::FailedPreconditionError(
        absl::StrCat("index ", id_, " is ", IndexStateName(state_),
                     "; its points can be read while LOADING or READY"));
  }
  std::vector<double> out(ids.size() * d);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= num_points_) {
      return absl::InvalidArgumentError(absl::StrCat("ids[", i, "] = ", ids[i],
                                                     " is out of range [0, ", num_points_, ")"));
    }
    std::copy_n(points + ids[i] * d, d, out.data() + i * d);
  }
  return out;
}

void IndexEntry::SetBuildProgress(double fraction) {
  // Monotone: reports from several threads may arrive out of order.
  double seen = build_progress_.load();
  const double value = std::clamp(fraction, 0.0, 1.0);
  while (value > seen && !build_progress_.compare_exchange_weak(seen, value)) {
  }
  // Watchers hear of whole steps only, once each.
  const int64_t step = static_cast<int64_t>(value / kProgressStep);
  int64_t notified = notified_progress_step_.load();
  while (step > notified && !notified_progress_step_.compare_exchange_weak(notified, step)) {
  }
  if (step > notified) NotifyWatchers();
}

void IndexEntry::FinishBuild(absl::StatusOr<std::unique_ptr<core::KnnIndex>> index,
                             double build_seconds, MemoryReservation build_memory) {
  const NotifyOnExit notify(this);
  absl::MutexLock lock(&mutex_);
  build_seconds_ = build_seconds >= 0.0 ? build_seconds
                                        : absl::ToDoubleSeconds(absl::Now() - build_start_);
  if (index.ok()) {
    // Orderings restored from disk come back with their index, or the index fails.
    for (StoredOrdering& stored : stored_orderings_) {
      absl::StatusOr<core::IndexOrdering> ordering =
          core::IndexOrdering::Create((*index)->tree(), std::move(stored.permutation));
      if (!ordering.ok()) {
        index = absl::DataLossError(absl::StrCat("ordering \"", stored.name,
                                                 "\" does not fit the index: ",
                                                 ordering.status().message()));
        break;
      }
      orderings_[stored.name] = std::make_shared<const NamedOrdering>(
          NamedOrdering{stored.name, stored.method, stored.seconds, *std::move(ordering)});
    }
    stored_orderings_.clear();
  }
  if (index.ok()) {
    index_ = std::shared_ptr<const core::KnnIndex>(std::move(index).value());
    state_ = IndexState::kReady;
    build_progress_.store(1.0);
    int64_t bytes = index_->memory_bytes();
    for (const auto& [name, ordering] : orderings_) bytes += ordering->ordering.memory_bytes();
    memory_.Resize(bytes);
  } else {
    orderings_.clear();
    error_ = index.status().ToString();
    state_ = IndexState::kFailed;
    memory_.Release();
  }
  build_memory.Release();
  ++version_;
}

void IndexEntry::MarkFailed(const absl::Status& error) {
  const NotifyOnExit notify(this);
  absl::MutexLock lock(&mutex_);
  error_ = error.ToString();
  state_ = IndexState::kFailed;
  loading_ = PointBatch();
  index_.reset();
  memory_.Release();
  ++version_;
}

absl::StatusOr<std::shared_ptr<const core::KnnIndex>> IndexEntry::ReadyIndex() const {
  absl::MutexLock lock(&mutex_);
  if (state_ == IndexState::kReady) return index_;
  std::string hint;
  switch (state_) {
    case IndexState::kLoading:
      hint = "call BuildIndex first";
      break;
    case IndexState::kBuilding:
      hint = "wait for INDEX_STATE_READY (WatchIndex)";
      break;
    default:
      hint = absl::StrCat("it failed: ", error_);
      break;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("index ", id_, " is ", IndexStateName(state_), ", not READY; ", hint));
}

IndexSnapshot IndexEntry::Snapshot() const {
  absl::MutexLock lock(&mutex_);
  IndexSnapshot snapshot;
  snapshot.state = state_;
  snapshot.num_points = num_points_;
  snapshot.build_progress = build_progress_.load();
  snapshot.build_seconds = state_ == IndexState::kBuilding
                               ? absl::ToDoubleSeconds(absl::Now() - build_start_)
                               : build_seconds_;
  snapshot.error = error_;
  snapshot.version = version_;
  switch (state_) {
    case IndexState::kLoading:
      snapshot.memory_bytes =
          static_cast<int64_t>((loading_.coordinates.size() + loading_.factors.size() +
                                loading_.residual_variances.size()) *
                               sizeof(double));
      break;
    case IndexState::kBuilding:
      snapshot.memory_bytes = memory_.bytes();
      break;
    case IndexState::kReady: {
      snapshot.memory_bytes = index_->memory_bytes();
      for (const auto& [name, ordering] : orderings_) {
        snapshot.memory_bytes += ordering->ordering.memory_bytes();
      }
      snapshot.timings = index_->timings();
      if (const auto* space = dynamic_cast<const core::ResidualSpace*>(&index_->space())) {
        snapshot.inducing_count = space->v().cols();
      }
      break;
    }
    default:
      break;
  }
  return snapshot;
}

IndexEntry::WatcherId IndexEntry::AddWatcher(std::function<void()> on_change) {
  absl::MutexLock lock(&watchers_mutex_);
  const WatcherId id = next_watcher_++;
  watchers_.emplace(id, std::move(on_change));
  return id;
}

void IndexEntry::RemoveWatcher(WatcherId id) {
  absl::MutexLock lock(&watchers_mutex_);
  watchers_.erase(id);
}

void IndexEntry::NotifyWatchers() {
  absl::MutexLock lock(&watchers_mutex_);
  for (const auto& [id, on_change] : watchers_) on_change();
}

absl::Status IndexEntry::RunWrite(const std::function<absl::Status()>& write,
                                  bool even_if_deleted) {
  absl::MutexLock write_lock(&write_mutex_);
  if (!even_if_deleted && deleted()) {
    return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
  }
  return write();
}

void IndexEntry::SetStoredOrderings(std::vector<StoredOrdering> orderings) {
  absl::MutexLock lock(&mutex_);
  stored_orderings_ = std::move(orderings);
}

absl::Status IndexEntry::AddOrdering(std::shared_ptr<const NamedOrdering> ordering,
                                     MemoryReservation memory) {
  const NotifyOnExit notify(this);
  absl::MutexLock lock(&mutex_);
  if (deleted_) return absl::NotFoundError(absl::StrCat("index ", id_, " was deleted"));
  if (state_ != IndexState::kReady) {
    return absl::FailedPreconditionError(absl::StrCat("index ", id_, " is ",
                                                      IndexStateName(state_), ", not READY"));
  }
  if (orderings_.contains(ordering->name)) {
    return absl::AlreadyExistsError(absl::StrCat("name: index ", id_,
                                                 " already has an ordering named \"",
                                                 ordering->name, "\""));
  }
  orderings_[ordering->name] = std::move(ordering);
  ordering_memory_.push_back(std::move(memory));
  ++version_;
  return absl::OkStatus();
}

bool IndexEntry::HasOrdering(absl::string_view name) const {
  absl::MutexLock lock(&mutex_);
  return orderings_.contains(name);
}

absl::StatusOr<std::shared_ptr<const NamedOrdering>> IndexEntry::FindOrdering(
    absl::string_view name) const {
  absl::MutexLock lock(&mutex_);
  const auto it = orderings_.find(name);
  if (it == orderings_.end()) {
    return absl::NotFoundError(
        absl::StrCat("ordering: index ", id_, " has no ordering named \"", name, "\""));
  }
  return it->second;
}

std::vector<std::string> IndexEntry::OrderingNames() const {
  absl::MutexLock lock(&mutex_);
  std::vector<std::string> names;
  for (const auto& [name, ordering] : orderings_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

void IndexEntry::MarkDeleted() {
  build_cancellation_.Cancel();
  const NotifyOnExit notify(this);
  absl::MutexLock lock(&mutex_);
  deleted_ = true;
  loading_ = PointBatch();
  memory_.Release();
  ordering_memory_.clear();
  ++version_;
}

bool IndexEntry::deleted() const {
  absl::MutexLock lock(&mutex_);
  return deleted_;
}

absl::Status IndexRegistry::Add(std::shared_ptr<IndexEntry> entry, bool enforce_limit) {
  absl::MutexLock lock(&mutex_);
  if (entries_.contains(entry->id())) {
    return absl::AlreadyExistsError(absl::StrCat("index ", entry->id(), " already exists"));
  }
  if (enforce_limit && static_cast<int64_t>(entries_.size()) >= max_indexes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server holds ", entries_.size(),
                     " indexes, the limit --max_indexes = ", max_indexes_, "; delete one first"));
  }
  const std::string id = entry->id();
  entries_.emplace(id, std::move(entry));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<IndexEntry>> IndexRegistry::Get(absl::string_view id) const {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("no index ", id));
  return it->second;
}

absl::StatusOr<std::shared_ptr<IndexEntry>> IndexRegistry::Remove(absl::string_view id) {
  std::shared_ptr<IndexEntry> entry;
  {
    absl::MutexLock lock(&mutex_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("no index ", id));
    entry = std::move(it->second);
    entries_.erase(it);
  }
  entry->MarkDeleted();
  return entry;
}

std::vector<std::shared_ptr<IndexEntry>> IndexRegistry::List() const {
  std::vector<std::shared_ptr<IndexEntry>> list;
  {
    absl::MutexLock lock(&mutex_);
    list.reserve(entries_.size());
    for (const auto& [id, entry] : entries_) list.push_back(entry);
  }
  std::sort(list.begin(), list.end(),
            [](const auto& a, const auto& b) { return a->id() < b->id(); });
  return list;
}

void IndexRegistry::CancelBuilds() {
  for (const std::shared_ptr<IndexEntry>& entry : List()) entry->CancelBuild();
}

}  // namespace rcknn::server
