#include "core/snapshot_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

// The state struct is public only with XXH_STATIC_LINKING_ONLY (stable within one version).
#define XXH_STATIC_LINKING_ONLY
#include "xxhash.h"

#include "core/status_macros.h"

namespace rcknn::core {
namespace {

constexpr char kMagic[8] = {'R', 'C', 'K', 'N', 'N', 'S', 'N', 'P'};
constexpr size_t kWriteBuffer = size_t{1} << 20;
constexpr size_t kReadChunk = size_t{8} << 20;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t kind;
  uint64_t payload_bytes;
  uint64_t payload_checksum;
  uint64_t header_checksum;  // of the 32 bytes above
  uint64_t reserved;
};
static_assert(sizeof(Header) == kSnapshotHeaderBytes);
constexpr size_t kCheckedHeaderBytes = 32;

absl::Status IoError(absl::string_view what, const std::string& path) {
  return absl::UnavailableError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// write(2) until done or an error.
bool WriteAll(int fd, const char* data, size_t bytes) {
  while (bytes > 0) {
    const ssize_t written = ::write(fd, data, bytes);
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += written;
    bytes -= static_cast<size_t>(written);
  }
  return true;
}

// read(2) until `bytes` are read; returns the number read (short only at the end of the file),
// or -1 on an error.
int64_t ReadAll(int fd, char* data, size_t bytes) {
  size_t total = 0;
  while (total < bytes) {
    const ssize_t got = ::read(fd, data + total, bytes - total);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (got == 0) break;
    total += static_cast<size_t>(got);
  }
  return static_cast<int64_t>(total);
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

struct SnapshotWriter::HashState {
  XXH3_state_t state;
};
struct SnapshotReader::HashState {
  XXH3_state_t state;
};

std::string SnapshotKindName(SnapshotKind kind) {
  switch (kind) {
    case SnapshotKind::kIndexSpec:
      return "index spec";
    case SnapshotKind::kUpload:
      return "upload";
    case SnapshotKind::kTree:
      return "tree";
    case SnapshotKind::kOrdering:
      return "ordering";
    case SnapshotKind::kSource:
      return "source";
  }
  return absl::StrCat("unknown kind ", static_cast<uint32_t>(kind));
}

absl::Status SyncDirectory(const std::string& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open directory", directory);
  const bool ok = ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return ok ? absl::OkStatus() : IoError("cannot fsync directory", directory);
}

// ---------------------------------------------------------------------------------------------
// SnapshotWriter

SnapshotWriter::SnapshotWriter(std::string path, SnapshotKind kind, int fd)
    : path_(std::move(path)),
      temp_path_(path_ + ".tmp"),
      kind_(kind),
      fd_(fd),
      hash_(std::make_unique<HashState>()) {
  XXH3_64bits_reset(&hash_->state);
  buffer_.reserve(kWriteBuffer);
}

absl::StatusOr<std::unique_ptr<SnapshotWriter>> SnapshotWriter::Create(std::string path,
                                                                       SnapshotKind kind) {
  const std::string temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot create", temp);
  std::unique_ptr<SnapshotWriter> writer(new SnapshotWriter(std::move(path), kind, fd));
  // Room for the header, written last.
  const Header blank{};
  if (!WriteAll(fd, reinterpret_cast<const char*>(&blank), sizeof(blank))) {
    writer->error_ = IoError("cannot write", temp);
  }
  return writer;
}

SnapshotWriter::~SnapshotWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void SnapshotWriter::Write(const void* data, size_t bytes) {
  if (bytes == 0) return;
  XXH3_64bits_update(&hash_->state, data, bytes);
  payload_bytes_ += bytes;
  if (!error_.ok()) return;
  if (buffer_.size() + bytes <= kWriteBuffer) {
    const char* begin = static_cast<const char*>(data);
    buffer_.insert(buffer_.end(), begin, begin + bytes);
    return;
  }
  Flush();
  if (!error_.ok()) return;
  if (bytes >= kWriteBuffer) {
    if (!WriteAll(fd_, static_cast<const char*>(data), bytes)) {
      error_ = IoError("cannot write", temp_path_);
    }
    return;
  }
  const char* begin = static_cast<const char*>(data);
  buffer_.insert(buffer_.end(), begin, begin + bytes);
}

void SnapshotWriter::Flush() {
  if (buffer_.empty() || !error_.ok()) return;
  if (!WriteAll(fd_, buffer_.data(), buffer_.size())) error_ = IoError("cannot write", temp_path_);
  buffer_.clear();
}

absl::Status SnapshotWriter::Commit() {
  if (committed_) return absl::FailedPreconditionError(absl::StrCat(path_, ": already committed"));
  Flush();
  if (!error_.ok()) return error_;
  Header header{};
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.version = kSnapshotFormatVersion;
  header.kind = static_cast<uint32_t>(kind_);
  header.payload_bytes = payload_bytes_;
  header.payload_checksum = XXH3_64bits_digest(&hash_->state);
  header.header_checksum = XXH3_64bits(&header, kCheckedHeaderBytes);
  if (::pwrite(fd_, &header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))) {
    return IoError("cannot write the header of", temp_path_);
  }
  if (::fsync(fd_) != 0) return IoError("cannot fsync", temp_path_);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return IoError("cannot close", temp_path_);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return IoError(absl::StrCat("cannot rename ", temp_path_, " to"), path_);
  }
  committed_ = true;
  return SyncDirectory(DirectoryOf(path_));
}

// ---------------------------------------------------------------------------------------------
// SnapshotReader

SnapshotReader::SnapshotReader(std::string path, int fd)
    : path_(std::move(path)), fd_(fd), hash_(std::make_unique<HashState>()) {}

SnapshotReader::~SnapshotReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<std::unique_ptr<SnapshotReader>> SnapshotReader::Open(std::string path,
                                                                     SnapshotKind kind) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return IoError("cannot open", path);
  }
  std::unique_ptr<SnapshotReader> reader(new SnapshotReader(std::move(path), fd));
  struct stat info {};
  if (::fstat(fd, &info) != 0) return IoError("cannot stat", reader->path_);
  Header header{};
  const int64_t got = ReadAll(fd, reinterpret_cast<char*>(&header), sizeof(header));
  if (got < 0) return IoError("cannot read", reader->path_);
  if (got < static_cast<int64_t>(sizeof(header))) {
    return reader->Corrupt(absl::StrCat("truncated: ", got, " bytes, shorter than the ",
                                        sizeof(header), "-byte header"));
  }
  if (std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0) {
    return reader->Corrupt("not an rcknn snapshot file (bad magic)");
  }
  if (header.header_checksum != XXH3_64bits(&header, kCheckedHeaderBytes)) {
    return reader->Corrupt("header checksum mismatch");
  }
  if (header.reserved != 0) return reader->Corrupt("reserved header bytes are not zero");
  if (header.version != kSnapshotFormatVersion) {
    return reader->Corrupt(absl::StrCat("format version ", header.version,
                                        "; this server reads version ", kSnapshotFormatVersion));
  }
  if (header.kind != static_cast<uint32_t>(kind)) {
    return reader->Corrupt(absl::StrCat("holds the wrong kind of data: ",
                                        SnapshotKindName(static_cast<SnapshotKind>(header.kind)),
                                        ", expected ", SnapshotKindName(kind)));
  }
  const uint64_t file_payload = static_cast<uint64_t>(info.st_size) - sizeof(header);
  if (file_payload != header.payload_bytes) {
    return reader->Corrupt(absl::StrCat(file_payload < header.payload_bytes ? "truncated" : "too long",
                                        ": the header says ", header.payload_bytes,
                                        " payload bytes, the file has ", file_payload));
  }
  reader->payload_bytes_ = header.payload_bytes;
  reader->payload_checksum_ = header.payload_checksum;
  // The whole payload is checked before anything in it is parsed: a corrupt file is reported as
  // corrupt, whatever its damage would have looked like to the parser.
  RETURN_IF_ERROR(reader->VerifyChecksum());
  return reader;
}

absl::Status SnapshotReader::Corrupt(absl::string_view what) const {
  return absl::DataLossError(absl::StrCat(path_, ": ", what));
}

absl::Status SnapshotReader::CheckCount(uint64_t count, size_t element_bytes,
                                        uint64_t max_count) const {
  if (count > max_count) {
    return Corrupt(absl::StrCat("an array of ", count, " values where at most ", max_count,
                                " are allowed"));
  }
  const uint64_t left = payload_bytes_ - consumed_;
  if (count > left / element_bytes) {
    return Corrupt(absl::StrCat("an array of ", count, " values runs past the end of the file"));
  }
  return absl::OkStatus();
}

absl::Status SnapshotReader::Read(void* data, size_t bytes) {
  if (bytes > payload_bytes_ - consumed_) {
    return Corrupt(absl::StrCat("a read of ", bytes, " bytes at payload offset ", consumed_,
                                " runs past the end of the file"));
  }
  const int64_t got = ReadAll(fd_, static_cast<char*>(data), bytes);
  if (got < 0) return IoError("cannot read", path_);
  if (got < static_cast<int64_t>(bytes)) return Corrupt("truncated while reading");
  consumed_ += bytes;
  return absl::OkStatus();
}

absl::Status SnapshotReader::VerifyChecksum() {
  XXH3_64bits_reset(&hash_->state);
  std::vector<char> buffer(std::min<uint64_t>(kReadChunk, payload_bytes_));
  uint64_t done = 0;
  while (done < payload_bytes_) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(buffer.size(), payload_bytes_ - done));
    const int64_t got = ReadAll(fd_, buffer.data(), chunk);
    if (got < 0) return IoError("cannot read", path_);
    if (got < static_cast<int64_t>(chunk)) return Corrupt("truncated while reading");
    XXH3_64bits_update(&hash_->state, buffer.data(), chunk);
    done += chunk;
  }
  if (XXH3_64bits_digest(&hash_->state) != payload_checksum_) {
    return Corrupt("payload checksum mismatch (the file is corrupt)");
  }
  if (::lseek(fd_, kSnapshotHeaderBytes, SEEK_SET) != kSnapshotHeaderBytes) {
    return IoError("cannot seek in", path_);
  }
  return absl::OkStatus();
}

absl::Status SnapshotReader::ReadString(std::string* text, uint64_t max_length) {
  uint64_t length = 0;
  if (absl::Status status = ReadValue(&length); !status.ok()) return status;
  if (absl::Status status = CheckCount(length, 1, max_length); !status.ok()) return status;
  text->resize(length);
  return Read(text->data(), length);
}

absl::Status SnapshotReader::Finish() {
  if (consumed_ != payload_bytes_) {
    return Corrupt(absl::StrCat(payload_bytes_ - consumed_, " payload bytes left unread"));
  }
  return absl::OkStatus();
}

}  // namespace rcknn::core
