// Flags for tests only. They live outside server/main.cc so that --help (which lists main.cc's
// flags) does not offer them to operators; --helpfull shows them.
#ifndef RCKNN_SERVER_TESTONLY_FLAGS_H_
#define RCKNN_SERVER_TESTONLY_FLAGS_H_

#include <string>

#include "absl/flags/declare.h"

// ServerOptions::testonly_pause_before_commit.
ABSL_DECLARE_FLAG(std::string, testonly_pause_before_commit);

#endif  // RCKNN_SERVER_TESTONLY_FLAGS_H_
