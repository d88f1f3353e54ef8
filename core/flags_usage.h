// --help for every rcknn binary (server, router, tool, benchmarks): the usage message and the
// flags of the binary's own source file, listed under the binary's name. Abseil's default lists
// only the flags of a file named after the binary (main.cc is not "rcknn-server") and heads them
// with the file's build path ("Flags from ../server/...").
#ifndef RCKNN_CORE_FLAGS_USAGE_H_
#define RCKNN_CORE_FLAGS_USAGE_H_

#include <algorithm>
#include <string>

#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace rcknn::core {

// Call once, before absl::ParseCommandLine. `source_suffix` ends the path of the file that
// defines the binary's flags, e.g. "server/main.cc".
inline void SetUpFlagsUsage(const std::string& program, const std::string& source_suffix,
                            absl::string_view usage_message) {
  absl::SetProgramUsageMessage(usage_message);
  absl::FlagsUsageConfig usage;
  usage.normalize_filename = [program, source_suffix](absl::string_view file) {
    if (absl::EndsWith(file, source_suffix)) return program;
    return std::string(file.substr(std::min(file.find_first_not_of("./"), file.size())));
  };
  usage.contains_help_flags = [program](absl::string_view file) { return file == program; };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace rcknn::core

#endif  // RCKNN_CORE_FLAGS_USAGE_H_
