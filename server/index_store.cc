#include "server/index_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "core/index_file.h"
#include "core/snapshot_file.h"
#include "core/status_macros.h"
#include "server/logging.h"

namespace rcknn::server {
namespace {

namespace fs = std::filesystem;

constexpr char kSpecFile[] = "spec.rcknn";
constexpr char kTreeFile[] = "tree.rcknn";
constexpr char kBuildSpecFile[] = "build-spec.rcknn";
constexpr char kSourceFile[] = "source.rcknn";
// An empty file, present when tree.rcknn holds a re-parameterised index's refitted source tree
// (IndexInfo.tree_refitted): committed before the tree file, removed before a fresh tree's.
constexpr char kRefittedFile[] = "tree-refitted.rcknn";
constexpr char kUploadPrefix[] = "upload-";
constexpr char kOrderingPrefix[] = "ordering-";
constexpr char kSuffix[] = ".rcknn";
constexpr char kTempSuffix[] = ".tmp";

std::string UploadFile(int64_t sequence) {
  return absl::StrFormat("%s%06d%s", kUploadPrefix, sequence, kSuffix);
}

absl::Status FsError(absl::string_view what, const fs::path& path, const std::error_code& error) {
  return absl::UnavailableError(absl::StrCat(what, " ", path.string(), ": ", error.message()));
}

absl::Status SyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot fsync ", path, ": ", std::strerror(saved)));
  }
  return absl::OkStatus();
}

// Reads the owner id that starts every payload; DATA_LOSS if it is another index's.
absl::Status CheckOwner(core::SnapshotReader& reader, absl::string_view id) {
  std::string owner;
  RETURN_IF_ERROR(reader.ReadString(&owner, 1024));
  if (owner != id) {
    return reader.Corrupt(absl::StrCat("belongs to index \"", owner, "\", not ", id));
  }
  return absl::OkStatus();
}

// The spec's bytes, checked by the file's checksum; decoding them is the service's (its
// SpecDecoder).
absl::StatusOr<std::string> ReadSpec(const std::string& path, absl::string_view id) {
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotReader> reader,
                   core::SnapshotReader::Open(path, core::SnapshotKind::kIndexSpec));
  RETURN_IF_ERROR(CheckOwner(*reader, id));
  std::string bytes;
  RETURN_IF_ERROR(reader->ReadString(&bytes, uint64_t{1} << 30));
  RETURN_IF_ERROR(reader->Finish());
  return bytes;
}

absl::StatusOr<PointBatch> ReadUpload(const std::string& path, absl::string_view id,
                                      int64_t sequence, int dimension) {
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotReader> reader,
                   core::SnapshotReader::Open(path, core::SnapshotKind::kUpload));
  RETURN_IF_ERROR(CheckOwner(*reader, id));
  int64_t stored_sequence = 0;
  PointBatch batch;
  RETURN_IF_ERROR(reader->ReadValue(&stored_sequence));
  RETURN_IF_ERROR(reader->ReadValue(&batch.num_points));
  RETURN_IF_ERROR(reader->ReadValue(&batch.factor_columns));
  RETURN_IF_ERROR(reader->ReadVector(&batch.coordinates));
  RETURN_IF_ERROR(reader->ReadVector(&batch.factors));
  RETURN_IF_ERROR(reader->ReadVector(&batch.residual_variances));
  RETURN_IF_ERROR(reader->Finish());
  if (stored_sequence != sequence) {
    return reader->Corrupt(absl::StrCat("holds upload ", stored_sequence, ", not ", sequence));
  }
  const auto n = static_cast<uint64_t>(batch.num_points);
  if (batch.num_points < 1 || batch.factor_columns < 0 ||
      batch.coordinates.size() != n * static_cast<uint64_t>(dimension) ||
      batch.factors.size() != n * static_cast<uint64_t>(batch.factor_columns) ||
      batch.residual_variances.size() != (batch.factor_columns > 0 ? n : 0)) {
    return reader->Corrupt("array lengths do not match the point count");
  }
  return batch;
}

// source.rcknn: the source's id, the owner id of the linked upload files, uploads, points.
struct SourceRecord {
  std::string source_id;
  std::string points_owner;
  int64_t uploads = 0;
  int64_t points = 0;
};

absl::StatusOr<SourceRecord> ReadSource(const std::string& path, absl::string_view id) {
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotReader> reader,
                   core::SnapshotReader::Open(path, core::SnapshotKind::kSource));
  RETURN_IF_ERROR(CheckOwner(*reader, id));
  SourceRecord record;
  RETURN_IF_ERROR(reader->ReadString(&record.source_id, 1024));
  RETURN_IF_ERROR(reader->ReadString(&record.points_owner, 1024));
  RETURN_IF_ERROR(reader->ReadValue(&record.uploads));
  RETURN_IF_ERROR(reader->ReadValue(&record.points));
  RETURN_IF_ERROR(reader->Finish());
  if (record.uploads < 1 || record.points < 1 || !ValidateIndexId(record.source_id).ok() ||
      !ValidateIndexId(record.points_owner).ok()) {
    return reader->Corrupt("not a valid source record");
  }
  return record;
}

std::string OrderingFile(absl::string_view name) {
  return absl::StrCat(kOrderingPrefix, name, kSuffix);
}

absl::StatusOr<StoredOrdering> ReadOrdering(const std::string& path, absl::string_view id,
                                            absl::string_view name) {
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotReader> reader,
                   core::SnapshotReader::Open(path, core::SnapshotKind::kOrdering));
  RETURN_IF_ERROR(CheckOwner(*reader, id));
  StoredOrdering ordering;
  uint32_t method = 0;
  RETURN_IF_ERROR(reader->ReadString(&ordering.name, 1024));
  RETURN_IF_ERROR(reader->ReadValue(&method));
  RETURN_IF_ERROR(reader->ReadValue(&ordering.seconds));
  RETURN_IF_ERROR(reader->ReadVector(&ordering.permutation));
  RETURN_IF_ERROR(reader->Finish());
  if (ordering.name != name) {
    return reader->Corrupt(absl::StrCat("holds ordering \"", ordering.name, "\", not ", name));
  }
  if (method > static_cast<uint32_t>(core::OrderingMethod::kMaximinResidual)) {
    return reader->Corrupt(absl::StrCat("unknown ordering method ", method));
  }
  ordering.method = static_cast<core::OrderingMethod>(method);
  return ordering;
}

}  // namespace

IndexStore::IndexStore(std::string data_dir, int lock_fd, std::string testonly_pause_dir)
    : data_dir_(std::move(data_dir)),
      lock_fd_(lock_fd),
      testonly_pause_dir_(std::move(testonly_pause_dir)) {}

IndexStore::~IndexStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

absl::StatusOr<std::unique_ptr<IndexStore>> IndexStore::Open(
    const std::string& data_dir, const std::string& testonly_pause_before_commit) {
  std::error_code error;
  for (const char* sub : {"indexes", "trash"}) {
    fs::create_directories(fs::path(data_dir) / sub, error);
    if (error) return FsError("cannot create --data_dir", fs::path(data_dir) / sub, error);
  }
  const std::string lock_path = (fs::path(data_dir) / "LOCK").string();
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot open ", lock_path, " (--data_dir): ", std::strerror(errno)));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int saved = errno;
    ::close(fd);
    if (saved == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--data_dir ", data_dir, " is in use by another rcknn-server (", lock_path,
          " is locked)"));
    }
    return absl::UnavailableError(absl::StrCat("cannot lock ", lock_path, ": ", std::strerror(saved)));
  }
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    RCKNN_LOG(kWarning, "cannot write the pid into ", lock_path, ": ", std::strerror(errno));
  }
  RETURN_IF_ERROR(core::SyncDirectory(data_dir));
  return std::unique_ptr<IndexStore>(new IndexStore(data_dir, fd, testonly_pause_before_commit));
}

std::string IndexStore::IndexDir(absl::string_view id) const {
  return (fs::path(data_dir_) / "indexes" / std::string(id)).string();
}

std::vector<StoredIndex> IndexStore::LoadAll(const SpecDecoder& decode) {
  std::error_code error;
  // The trash holds only indexes a client deleted.
  for (const fs::directory_entry& entry : fs::directory_iterator(fs::path(data_dir_) / "trash", error)) {
    std::error_code ignored;
    fs::remove_all(entry.path(), ignored);
  }
  std::vector<std::string> ids;
  for (const fs::directory_entry& entry :
       fs::directory_iterator(fs::path(data_dir_) / "indexes", error)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !ValidateIndexId(name).ok()) {
      RCKNN_LOG(kWarning, "--data_dir: ignoring ", entry.path().string(),
                ", which is not an index directory");
      continue;
    }
    ids.push_back(name);
  }
  if (error) {
    RCKNN_LOG(kError, "--data_dir: cannot list ", data_dir_, "/indexes: ", error.message());
  }
  std::sort(ids.begin(), ids.end());
  std::vector<StoredIndex> indexes;
  for (const std::string& id : ids) {
    StoredIndex index = LoadIndex(id, decode);
    if (index.id.empty()) continue;  // an index that was never created
    indexes.push_back(std::move(index));
  }
  return indexes;
}

StoredIndex IndexStore::LoadIndex(const std::string& id, const SpecDecoder& decode) {
  StoredIndex index;
  index.id = id;
  const fs::path dir = IndexDir(id);
  std::vector<int64_t> sequences;
  std::vector<std::string> ordering_names;
  bool has_spec = false;
  bool has_build_spec = false;
  bool has_source = false;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (absl::EndsWith(name, kTempSuffix)) {
      // An interrupted write: never acknowledged to anyone.
      RCKNN_LOG(kInfo, "--data_dir: removing ", entry.path().string(),
                ", left by an interrupted write");
      std::error_code ignored;
      fs::remove(entry.path(), ignored);
      continue;
    }
    if (name == kSpecFile) {
      has_spec = true;
    } else if (name == kTreeFile) {
      index.has_tree = true;
    } else if (absl::StartsWith(name, kOrderingPrefix) && absl::EndsWith(name, kSuffix) &&
               name.size() > sizeof(kOrderingPrefix) - 1 + sizeof(kSuffix) - 1 &&
               ValidateIndexId(name.substr(sizeof(kOrderingPrefix) - 1,
                                           name.size() - (sizeof(kOrderingPrefix) - 1) -
                                               (sizeof(kSuffix) - 1)))
                   .ok()) {
      ordering_names.push_back(name.substr(
          sizeof(kOrderingPrefix) - 1,
          name.size() - (sizeof(kOrderingPrefix) - 1) - (sizeof(kSuffix) - 1)));
    } else if (name == kBuildSpecFile) {
      has_build_spec = true;
    } else if (name == kSourceFile) {
      has_source = true;
    } else if (name == kRefittedFile) {
      // Read with the tree (RestoreTree).
    } else if (int64_t sequence = 0;
               absl::StartsWith(name, kUploadPrefix) && absl::EndsWith(name, kSuffix) &&
               absl::SimpleAtoi(name.substr(sizeof(kUploadPrefix) - 1,
                                            name.size() - sizeof(kUploadPrefix) + 1 -
                                                sizeof(kSuffix) + 1),
                                &sequence) &&
               sequence >= 1 && name == UploadFile(sequence)) {
      sequences.push_back(sequence);
    } else {
      RCKNN_LOG(kWarning, "--data_dir: ignoring unknown file ", entry.path().string());
    }
  }
  if (error) {
    index.status = FsError("cannot list", dir, error);
    return index;
  }
  if (!has_spec) {
    if (has_source && !index.has_tree && ordering_names.empty()) {
      // CreateIndex from a source was interrupted before its spec was committed: the index
      // never existed (its upload files are links or copies of the source's).
      RCKNN_LOG(kInfo, "--data_dir: removing ", dir.string(),
                ", an interrupted CreateIndex from a source");
      fs::remove_all(dir, error);
      index.id.clear();
      return index;
    }
    if (fs::is_empty(dir, error) && !error) {
      // CreateIndex was interrupted before its spec was committed: the index never existed.
      RCKNN_LOG(kInfo, "--data_dir: removing ", dir.string(), ", an interrupted CreateIndex");
      fs::remove(dir, error);
      index.id.clear();
      return index;
    }
    index.status = absl::DataLossError(absl::StrCat((dir / kSpecFile).string(), ": missing"));
    return index;
  }
  absl::StatusOr<std::string> spec = ReadSpec((dir / kSpecFile).string(), id);
  if (!spec.ok()) {
    index.status = spec.status();
    return index;
  }
  absl::StatusOr<IndexSpecRecord> decoded = decode(*spec);
  if (!decoded.ok()) {
    index.spec.wire = *std::move(spec);
    index.status = absl::DataLossError(absl::StrCat(
        (dir / kSpecFile).string(), ": the saved spec is not valid: ", decoded.status().message()));
    return index;
  }
  index.spec = *std::move(decoded);
  if (has_build_spec) {
    absl::StatusOr<std::string> build_spec = ReadSpec((dir / kBuildSpecFile).string(), id);
    if (!build_spec.ok()) {
      index.status = build_spec.status();
      return index;
    }
    absl::StatusOr<IndexSpecRecord> build_decoded = decode(*build_spec);
    if (!build_decoded.ok()) {
      index.status = absl::DataLossError(
          absl::StrCat((dir / kBuildSpecFile).string(), ": the saved build spec is not valid: ",
                       build_decoded.status().message()));
      return index;
    }
    index.build_spec = *std::move(build_decoded);
  }
  // The id the upload files carry: this index's, or for one created from a source the id of
  // the index that received the uploads.
  std::string upload_owner = id;
  if (has_source) {
    absl::StatusOr<SourceRecord> source = ReadSource((dir / kSourceFile).string(), id);
    if (!source.ok()) {
      index.status = source.status();
      return index;
    }
    index.source_id = source->source_id;
    upload_owner = source->points_owner;
    if (static_cast<int64_t>(sequences.size()) < source->uploads) {
      index.status = absl::DataLossError(absl::StrCat(
          (dir / kSourceFile).string(), ": names ", source->uploads, " upload files of index ",
          source->source_id, ", the directory holds ", sequences.size()));
      return index;
    }
  }
  std::sort(sequences.begin(), sequences.end());
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t expected = static_cast<int64_t>(i) + 1;
    if (sequences[i] != expected) {
      index.status = absl::DataLossError(absl::StrCat(
          (dir / UploadFile(expected)).string(), ": missing (", sequences.size(),
          " upload files up to number ", sequences.back(), ")"));
      return index;
    }
    absl::StatusOr<PointBatch> batch =
        ReadUpload((dir / UploadFile(expected)).string(), upload_owner, expected,
                   index.spec.core.dimension);
    if (!batch.ok()) {
      index.status = batch.status();
      return index;
    }
    index.uploads.push_back(*std::move(batch));
  }
  if (index.has_tree && sequences.empty()) {
    index.status = absl::DataLossError(
        absl::StrCat((dir / kTreeFile).string(), ": a built index without any upload file"));
    return index;
  }
  if (!ordering_names.empty() && !index.has_tree) {
    index.status = absl::DataLossError(absl::StrCat(
        (dir / OrderingFile(ordering_names[0])).string(), ": an ordering of an unbuilt index"));
    return index;
  }
  std::sort(ordering_names.begin(), ordering_names.end());
  for (const std::string& name : ordering_names) {
    absl::StatusOr<StoredOrdering> ordering =
        ReadOrdering((dir / OrderingFile(name)).string(), id, name);
    if (!ordering.ok()) {
      index.status = ordering.status();
      return index;
    }
    index.orderings.push_back(*std::move(ordering));
  }
  return index;
}

absl::Status IndexStore::CreateIndex(absl::string_view id, absl::string_view spec,
                                     const SourceLink* source) {
  const fs::path dir = IndexDir(id);
  std::error_code error;
  if (fs::exists(dir / kSpecFile, error)) {
    return absl::AlreadyExistsError(
        absl::StrCat("index ", id, " already exists in --data_dir ", data_dir_));
  }
  fs::create_directory(dir, error);
  if (error) return FsError("cannot create", dir, error);
  RETURN_IF_ERROR(core::SyncDirectory(dir.parent_path().string()));
  if (source != nullptr) RETURN_IF_ERROR(LinkSource(id, *source));
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotWriter> writer,
                   core::SnapshotWriter::Create((dir / kSpecFile).string(),
                                                core::SnapshotKind::kIndexSpec));
  writer->WriteString(id);
  writer->WriteString(spec);
  return writer->Commit();
}

absl::Status IndexStore::LinkSource(absl::string_view id, const SourceLink& source) {
  const fs::path dir = IndexDir(id);
  const fs::path source_dir = IndexDir(source.source_id);
  // The source may itself have been created from a source: its files carry that index's id.
  std::string points_owner = source.source_id;
  std::error_code error;
  if (fs::exists(source_dir / kSourceFile, error)) {
    ASSIGN_OR_RETURN(SourceRecord record,
                     ReadSource((source_dir / kSourceFile).string(), source.source_id));
    points_owner = record.points_owner;
  }
  {
    ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotWriter> writer,
                     core::SnapshotWriter::Create((dir / kSourceFile).string(),
                                                  core::SnapshotKind::kSource));
    writer->WriteString(id);
    writer->WriteString(source.source_id);
    writer->WriteString(points_owner);
    writer->WriteValue<int64_t>(source.uploads);
    writer->WriteValue<int64_t>(source.points);
    RETURN_IF_ERROR(writer->Commit());
  }
  for (int64_t sequence = 1; sequence <= source.uploads; ++sequence) {
    const fs::path from = source_dir / UploadFile(sequence);
    const fs::path to = dir / UploadFile(sequence);
    fs::create_hard_link(from, to, error);
    if (error) {
      // A file system without hard links: a copy, written under a temporary name first.
      const fs::path temp = to.string() + kTempSuffix;
      std::error_code copy_error;
      fs::copy_file(from, temp, fs::copy_options::overwrite_existing, copy_error);
      if (copy_error) return FsError("cannot link or copy", from, copy_error);
      RETURN_IF_ERROR(SyncFile(temp.string()));
      fs::rename(temp, to, copy_error);
      if (copy_error) return FsError("cannot rename", temp, copy_error);
    }
  }
  return core::SyncDirectory(dir.string());
}

void IndexStore::PauseBeforeCommit(absl::string_view id, const std::string& file) const {
  if (testonly_pause_dir_.empty()) return;
  const std::string marker = (fs::path(testonly_pause_dir_) / absl::StrCat(id, ".", file)).string();
  RCKNN_LOG(kWarning, "--testonly_pause_before_commit: ", id, "/", file,
            " written to its temporary name; waiting for ", marker, ".resume");
  { std::ofstream paused(marker + ".paused"); }
  std::error_code error;
  while (!fs::exists(marker + ".resume", error)) absl::SleepFor(absl::Milliseconds(2));
}

absl::Status IndexStore::WriteBuildSpec(absl::string_view id,
                                       const std::optional<std::string>& spec) {
  const fs::path path = fs::path(IndexDir(id)) / kBuildSpecFile;
  if (!spec.has_value()) {
    std::error_code error;
    if (!fs::exists(path, error)) return absl::OkStatus();
    fs::remove(path, error);
    if (error) return FsError("cannot remove", path, error);
    return core::SyncDirectory(path.parent_path().string());
  }
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotWriter> writer,
                   core::SnapshotWriter::Create(path.string(), core::SnapshotKind::kIndexSpec));
  writer->WriteString(id);
  writer->WriteString(*spec);
  return writer->Commit();
}

absl::Status IndexStore::WriteUpload(absl::string_view id, int64_t sequence,
                                     const PointBatch& batch) {
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotWriter> writer,
                   core::SnapshotWriter::Create(
                       (fs::path(IndexDir(id)) / UploadFile(sequence)).string(),
                       core::SnapshotKind::kUpload));
  writer->WriteString(id);
  writer->WriteValue<int64_t>(sequence);
  writer->WriteValue<int64_t>(batch.num_points);
  writer->WriteValue<int64_t>(batch.factor_columns);
  writer->WriteVector(batch.coordinates);
  writer->WriteVector(batch.factors);
  writer->WriteVector(batch.residual_variances);
  PauseBeforeCommit(id, UploadFile(sequence));
  return writer->Commit();
}

absl::Status IndexStore::WriteTree(absl::string_view id, int64_t uploads, double build_seconds,
                                   const core::KnnIndex& index) {
  // The marker first: a crash before the tree's commit leaves no tree to mislabel, and the
  // next build rewrites or removes the marker.
  const fs::path refitted = fs::path(IndexDir(id)) / kRefittedFile;
  std::error_code error;
  if (index.reparameterize_report().refitted) {
    { std::ofstream marker(refitted); }
    if (!fs::exists(refitted, error)) return FsError("cannot create", refitted, error);
    RETURN_IF_ERROR(SyncFile(refitted.string()));
    RETURN_IF_ERROR(core::SyncDirectory(refitted.parent_path().string()));
  } else if (fs::exists(refitted, error)) {
    fs::remove(refitted, error);
    if (error) return FsError("cannot remove", refitted, error);
    RETURN_IF_ERROR(core::SyncDirectory(refitted.parent_path().string()));
  }
  return core::WriteIndexFile((fs::path(IndexDir(id)) / kTreeFile).string(),
                              core::IndexFileHeaderOf(index, id, uploads, build_seconds),
                              index.tree().storage(), [&] { PauseBeforeCommit(id, kTreeFile); });
}

absl::Status IndexStore::WriteOrdering(absl::string_view id, const StoredOrdering& ordering) {
  RETURN_IF_ERROR(ValidateIndexId(ordering.name, "name"));
  ASSIGN_OR_RETURN(std::unique_ptr<core::SnapshotWriter> writer,
                   core::SnapshotWriter::Create(
                       (fs::path(IndexDir(id)) / OrderingFile(ordering.name)).string(),
                       core::SnapshotKind::kOrdering));
  writer->WriteString(id);
  writer->WriteString(ordering.name);
  writer->WriteValue<uint32_t>(static_cast<uint32_t>(ordering.method));
  writer->WriteValue<double>(ordering.seconds);
  writer->WriteVector(ordering.permutation);
  return writer->Commit();
}

absl::StatusOr<std::unique_ptr<core::KnnIndex>> IndexStore::RestoreTree(
    absl::string_view id, int64_t uploads, const core::IndexSpec& spec, core::IndexData data,
    tbb::task_arena* arena, const core::Cancellation* cancellation,
    const core::ProgressCallback& progress, double* build_seconds, bool* refitted) {
  const std::string path = (fs::path(IndexDir(id)) / kTreeFile).string();
  std::error_code error;
  *refitted = fs::exists(fs::path(IndexDir(id)) / kRefittedFile, error);
  ASSIGN_OR_RETURN(core::IndexFileContents contents, core::ReadIndexFile(path));
  const core::IndexFileHeader& header = contents.header;
  if (header.owner != id) {
    return absl::DataLossError(
        absl::StrCat(path, ": belongs to index \"", header.owner, "\", not ", id));
  }
  if (header.uploads != uploads) {
    return absl::DataLossError(absl::StrCat(path, ": was built from ", header.uploads,
                                            " uploads, the index directory holds ", uploads));
  }
  *build_seconds = header.build_seconds;
  return core::RestoreFromIndexFile(path, std::move(contents), spec, std::move(data), arena,
                                    cancellation, progress);
}

absl::Status IndexStore::DeleteIndex(absl::string_view id) {
  const fs::path dir = IndexDir(id);
  std::error_code error;
  if (!fs::exists(dir, error)) return absl::OkStatus();
  const fs::path trash = fs::path(data_dir_) / "trash" /
                         absl::StrCat(id, ".", absl::ToUnixNanos(absl::Now()));
  fs::rename(dir, trash, error);
  if (error) return FsError(absl::StrCat("cannot move ", dir.string(), " to"), trash, error);
  RETURN_IF_ERROR(core::SyncDirectory(dir.parent_path().string()));
  RETURN_IF_ERROR(core::SyncDirectory(trash.parent_path().string()));
  fs::remove_all(trash, error);
  if (error) {
    RCKNN_LOG(kWarning, "cannot remove ", trash.string(), ": ", error.message(),
              " (removed at the next start)");
  }
  return absl::OkStatus();
}

}  // namespace rcknn::server
