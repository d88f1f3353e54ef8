#include "server/testonly_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, testonly_pause_before_commit, "",
          "TEST ONLY, never in production: a directory; every upload and tree file, once written "
          "to its temporary name, waits before its commit until <dir>/<index>.<file>.resume "
          "exists, after creating <dir>/<index>.<file>.paused (crash tests kill the server "
          "there)");
