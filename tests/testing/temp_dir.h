// A scratch directory for tests that write files, and whole-file reads and writes of raw bytes.
#ifndef RCKNN_TESTS_TESTING_TEMP_DIR_H_
#define RCKNN_TESTS_TESTING_TEMP_DIR_H_

#include <filesystem>
#include <string>
#include <string_view>

namespace rcknn::testing {

// A new, empty directory under std::filesystem::temp_directory_path(), named `prefix` plus a
// unique suffix (mkdtemp), removed with everything in it when the object is destroyed. Aborts
// the test program if the directory cannot be made. Not copyable or movable: it owns the
// directory.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "rcknn");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The directory, without a trailing slash.
  const std::string& path() const { return path_; }
  // `name` inside the directory (not created).
  std::string Path(const std::string& name) const;

 private:
  std::string path_;
};

// The whole content of `path`; empty if it cannot be read.
std::string ReadBytes(const std::filesystem::path& path);

// Replaces the content of `path` with `bytes`; false if they could not all be written.
[[nodiscard]] bool WriteBytes(const std::filesystem::path& path, std::string_view bytes);

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_TESTING_TEMP_DIR_H_
