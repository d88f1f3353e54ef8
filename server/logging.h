// A tiny leveled logger for the server and the client tool: Debian's Abseil (20220623) has no
// absl/log. Lines go to stderr as "<level> <UTC time> <message>". Thread-safe.
#ifndef RCKNN_SERVER_LOGGING_H_
#define RCKNN_SERVER_LOGGING_H_

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace rcknn::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" or "error" (case-insensitive); false for anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);
std::string LogLevelName(LogLevel level);

// The process-wide threshold: messages below it are dropped. Default kInfo.
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogMessage(LogLevel level, absl::string_view message);

}  // namespace rcknn::server

// RCKNN_LOG(kInfo, "built ", id, " in ", seconds, " s"): the arguments are absl::StrCat'ed only
// when the level is enabled.
#define RCKNN_LOG(level, ...)                                                                   \
  do {                                                                                          \
    if (::rcknn::server::LogEnabled(::rcknn::server::LogLevel::level)) {                        \
      ::rcknn::server::LogMessage(::rcknn::server::LogLevel::level, absl::StrCat(__VA_ARGS__)); \
    }                                                                                           \
  } while (false)

#endif  // RCKNN_SERVER_LOGGING_H_
