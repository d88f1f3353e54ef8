// Reading and writing the arrays the `rcknn` tool exchanges with files: CSV (one row per line,
// values separated by commas or blanks, '#' starts a comment) or raw little-endian arrays
// (float64 for coordinates and distances, int64 for ids) whose row length is given separately.
#ifndef RCKNN_CLIENT_POINT_IO_H_
#define RCKNN_CLIENT_POINT_IO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace rcknn::client {

enum class FileFormat { kCsv, kRaw };

// "csv" | "f64" | "raw" | "" (guessed from the extension: .csv is CSV, anything else raw).
absl::StatusOr<FileFormat> ParseFileFormat(const std::string& name, const std::string& path);

struct Matrix {
  int64_t rows = 0;
  int columns = 0;
  std::vector<double> values;  // row-major
};

// `columns` is required for raw files; for CSV it is checked if > 0, else taken from the file.
absl::StatusOr<Matrix> ReadMatrix(const std::string& path, FileFormat format, int columns);
// Ids, one per CSV row (or value), or raw int64.
absl::StatusOr<std::vector<int64_t>> ReadIds(const std::string& path, FileFormat format);

absl::Status WriteMatrix(const std::string& path, FileFormat format, const double* values,
                         int64_t rows, int columns);
absl::Status WriteIds(const std::string& path, FileFormat format, const int64_t* values,
                      int64_t rows, int columns);

}  // namespace rcknn::client

#endif  // RCKNN_CLIENT_POINT_IO_H_
