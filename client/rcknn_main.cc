// rcknn: the command line client of rcknn-server.
//
//   rcknn [--server=HOST:PORT] <command> [flags]
//
// Commands: gen, create, upload, build, status, list, delete, reparameterize, order, search,
// search-all, bench, load.
// `rcknn --help` lists the flags; each command uses the ones named in its line of kUsage.
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/flags_usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/load_generator.h"
#include "client/point_io.h"
#include "client/rcknn_client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "address of rcknn-server");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20,
          "the server's --max_message_bytes: the channel's send and receive limit, and uploads "
          "and searches are split so that every request and answer stays under it");
ABSL_FLAG(double, timeout, 0, "deadline of each call in seconds (0: none)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA certificates to verify the server with: connect over TLS (empty: plaintext)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mutual TLS (needs --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, token, "",
          "bearer token sent as `authorization: Bearer <token>` (needs --tls_ca)");
ABSL_FLAG(std::string, token_file, "",
          "file holding the bearer token (its first line that is not blank or a # comment)");
ABSL_FLAG(std::string, index, "", "index id");
// gen
ABSL_FLAG(int64_t, n, 32768, "gen: number of points");
ABSL_FLAG(uint64_t, seed, 1, "gen: random seed; bench, load: seed of the query draw");
ABSL_FLAG(std::string, output, "",
          "gen: output file; search, search-all: output prefix (PREFIX.ids.*, PREFIX.dists.*)");
// create
ABSL_FLAG(int, dim, 0, "dimension of the points (create; raw input files)");
ABSL_FLAG(std::string, metric, "residual", "create: residual | euclidean");
ABSL_FLAG(std::string, kernel, "rbf", "create: rbf | matern12 | matern32 | matern52");
ABSL_FLAG(double, variance, 1.0, "create: kernel variance");
ABSL_FLAG(std::string, lengthscale, "1", "create: one lengthscale, or one per dimension (a,b,c)");
ABSL_FLAG(int64_t, inducing, 0, "create: number of inducing points (0: server default 512)");
ABSL_FLAG(int64_t, expected_points, 0,
          "create: how many points the index will hold (0: not declared); rcknn-router gives "
          "each shard an equal contiguous range of that many ids");
ABSL_FLAG(uint64_t, inducing_seed, 0, "create: seed of the inducing point draw");
ABSL_FLAG(std::string, inducing_points, "", "create: file of explicit inducing points");
ABSL_FLAG(double, jitter, -1, "create: jitter (negative: server default 1e-6)");
ABSL_FLAG(std::string, inducing_method, "",
          "create: uniform | kmeans++ (k-means++ seeding on the scaled coordinates; empty: the "
          "server's default, uniform)");
ABSL_FLAG(int, lloyd, -1, "create: Lloyd steps after k-means++ (negative: server default 0)");
ABSL_FLAG(std::string, source, "",
          "reparameterize: the READY index whose points the new index (--index) takes");
ABSL_FLAG(std::string, source_tree, "auto",
          "reparameterize: auto | refit | rebuild (the source's tree refitted, or a fresh one)");
ABSL_FLAG(std::string, name, "", "order: name of the ordering");
ABSL_FLAG(std::string, method, "maximin_residual",
          "order: random | maximin_euclidean | maximin_residual | supplied (--input: ids by rank)");
ABSL_FLAG(uint64_t, ordering_seed, 0, "order: seed of the random ordering");
ABSL_FLAG(std::string, ordering, "",
          "search, search-all: predecessor mode under this ordering of the index");
ABSL_FLAG(bool, ranks, false,
          "search, search-all: with --ordering, query ids and answers are ranks in it "
          "(search-all: row r is the point at rank r)");
// upload / search input
ABSL_FLAG(std::string, input, "", "upload: file of points (CSV or raw float64 with --dim)");
ABSL_FLAG(std::string, format, "", "csv | f64 (default: by file extension, .csv is CSV)");
// build
ABSL_FLAG(bool, wait, true, "build: follow the build until READY or FAILED");
// search
ABSL_FLAG(int64_t, k, 10, "search: neighbours per query");
ABSL_FLAG(std::string, ids, "", "search: query ids, comma-separated");
ABSL_FLAG(std::string, ids_file, "", "search, bench: file of query ids (CSV or raw int64)");
ABSL_FLAG(std::string, points, "", "search: file of out-of-sample query points");
ABSL_FLAG(bool, predecessor, false, "search: predecessor mode (only ids j < i qualify)");
ABSL_FLAG(bool, include_self, false, "search: a query id may return itself");
ABSL_FLAG(int, print, 3, "search, search-all: neighbour lists to print");
// bench
ABSL_FLAG(int64_t, queries, 1024, "bench: queries in the batch (random ids unless --ids_file)");
ABSL_FLAG(int, repeat, 5, "bench: timed repetitions of the batch");
ABSL_FLAG(int64_t, latency_queries, 2000, "bench: single-query Search calls for latency");
// load
ABSL_FLAG(int, concurrency, 1, "load: workers, each with one request in flight");
ABSL_FLAG(int64_t, total, 0, "load: requests to send (or --duration)");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "load: how long to send requests when --total is 0, e.g. 30s");
ABSL_FLAG(double, rps, 0, "load: target requests per second over all workers (0: no limit)");
ABSL_FLAG(int64_t, batch, 1, "load: query ids per Search request");
ABSL_FLAG(std::string, mix, "search:1", "load: weighted calls, e.g. search:9,get_index:1");
ABSL_FLAG(std::string, latency_of, "all",
          "load: calls whose latencies the report's distribution covers: all, or ok (only calls "
          "answered OK, e.g. the accepted ones under admission control); count and rps cover all");

namespace rcknn::client {
namespace {

constexpr char kUsage[] = R"(rcknn [--server=HOST:PORT] <command> [flags]

  gen        --n=32768 --dim=3 --seed=1 --output=FILE [--format=f64|csv]
             N(0,1) points (a gold-like data set)
  create     --index=ID --dim=D [--metric=residual|euclidean] [--kernel=rbf|matern12|matern32|matern52]
             [--variance=1] [--lengthscale=1[,l2,...]] [--inducing=512] [--inducing_seed=0]
             [--inducing_points=FILE] [--jitter=1e-6] [--inducing_method=uniform|kmeans++ [--lloyd=0]]
             [--expected_points=N]
  upload     --index=ID --input=FILE [--format=csv|f64] [--dim=D]
  build      --index=ID [--wait=true]
  reparameterize --index=NEW --source=ID [--kernel=...] [--variance=...] [--lengthscale=...]
             [--inducing=M] [--inducing_seed=S] [--inducing_points=FILE] [--jitter=J]
             [--inducing_method=uniform|kmeans++ [--lloyd=0]] [--source_tree=auto|refit|rebuild]
             [--wait=true]
             a new index over the source's points (no upload) with the source's spec changed
             by the kernel flags given; builds at once
  status     --index=ID
  list
  delete     --index=ID
  order      --index=ID --name=NAME [--method=maximin_residual|maximin_euclidean|random|supplied]
             [--ordering_seed=0] [--input=FILE (supplied: ids by rank)] [--output=FILE]
             computes an ordering kept with the index; writes its permutation (rank -> id)
  search     --index=ID --k=K (--ids=1,2,3 | --ids_file=FILE | --points=FILE [--dim=D])
             [--predecessor] [--include_self] [--ordering=NAME [--ranks]] [--output=PREFIX] [--print=3]
  search-all --index=ID --k=K [--predecessor] [--ordering=NAME [--ranks]] [--output=PREFIX] [--print=3]
             every stored point as a query: the Vecchia neighbour matrix
  bench      --index=ID --k=K [--ids_file=FILE | --queries=1024] [--repeat=5] [--latency_queries=2000]
             single-query latency p50/p99 and the queries/s of one batched Search, as JSON
  load       --index=ID --k=K (--total=N | --duration=30s) [--concurrency=1] [--rps=0]
             [--batch=1] [--mix=search:1[,get_index:W]] [--seed=1] [--latency_of=all|ok]
             closed-loop load of random query ids; a JSON report with ghz's fields

Every command: [--timeout=S] [--tls_ca=CA.pem [--tls_cert=CLIENT.pem --tls_key=CLIENT.key]]
             [--token=TOKEN | --token_file=FILE]   (TLS, mutual TLS, bearer token)
)";

std::string StateName(v1::IndexState state) {
  return absl::AsciiStrToLower(absl::StripPrefix(v1::IndexState_Name(state), "INDEX_STATE_"));
}

void PrintInfo(const v1::IndexInfo& info) {
  std::printf("%s: %s, %" PRId64 " points, dimension %d, build %.0f%% in %.3f s",
              info.index_id().c_str(), StateName(info.state()).c_str(), info.num_points(),
              info.spec().dimension(), 100.0 * info.build_progress(), info.build_seconds());
  if (info.memory_bytes() > 0) std::printf(", %.1f MiB", info.memory_bytes() / 1048576.0);
  if (!info.error().empty()) std::printf(", error: %s", info.error().c_str());
  std::printf("\n");
}

// Progress of an upload or a search: a bar redrawn in place on a terminal, else a plain line
// every 10%.
class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), tty_(isatty(fileno(stdout))) {}
  ~Progress() {
    if (tty_ && drawn_) std::printf("\n");
  }

  void Update(int64_t done, int64_t total) {
    const int percent = total > 0 ? static_cast<int>(100 * done / total) : 100;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = percent * kWidth / 100;
      std::printf("\r%s [%s%s] %3d%% (%" PRId64 "/%" PRId64 ")", what_.c_str(),
                  std::string(filled, '#').c_str(), std::string(kWidth - filled, ' ').c_str(),
                  percent, done, total);
    } else if (percent / 10 != last_percent_ / 10) {
      std::printf("%s: %3d%% (%" PRId64 "/%" PRId64 ")\n", what_.c_str(), percent, done, total);
    } else {
      return;
    }
    std::fflush(stdout);
    drawn_ = true;
    last_percent_ = percent;
  }
  ProgressCallback Callback() {
    return [this](int64_t done, int64_t total) { Update(done, total); };
  }

 private:
  const std::string what_;
  const bool tty_;
  bool drawn_ = false;
  int last_percent_ = -1;
};

absl::Status RequireIndex() {
  if (absl::GetFlag(FLAGS_index).empty()) return absl::InvalidArgumentError("--index is required");
  return absl::OkStatus();
}

absl::Status Gen() {
  const std::string output = absl::GetFlag(FLAGS_output);
  const int d = absl::GetFlag(FLAGS_dim) > 0 ? absl::GetFlag(FLAGS_dim) : 3;
  const int64_t n = absl::GetFlag(FLAGS_n);
  if (output.empty()) return absl::InvalidArgumentError("gen: --output is required");
  if (n < 1) return absl::InvalidArgumentError("gen: --n must be >= 1");
  auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), output);
  if (!format.ok()) return format.status();
  std::mt19937_64 engine(absl::GetFlag(FLAGS_seed));
  std::normal_distribution<double> normal;
  std::vector<double> values(n * d);
  for (double& v : values) v = normal(engine);
  if (absl::Status status = WriteMatrix(output, *format, values.data(), n, d); !status.ok()) {
    return status;
  }
  std::printf("wrote %" PRId64 " points of dimension %d to %s\n", n, d, output.c_str());
  return absl::OkStatus();
}

absl::Status Create(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  const int d = absl::GetFlag(FLAGS_dim);
  if (d < 1) return absl::InvalidArgumentError("create: --dim is required");
  v1::IndexSpec spec;
  spec.set_dimension(d);
  const std::string metric = absl::GetFlag(FLAGS_metric);
  if (metric == "euclidean") {
    spec.set_metric(v1::METRIC_EUCLIDEAN);
  } else if (metric == "residual") {
    spec.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
    const std::string kernel = absl::GetFlag(FLAGS_kernel);
    v1::KernelType type;
    if (!v1::KernelType_Parse(absl::StrCat("KERNEL_", absl::AsciiStrToUpper(kernel)), &type) ||
        type == v1::KERNEL_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("create: unknown --kernel ", kernel));
    }
    spec.mutable_kernel()->set_type(type);
    spec.mutable_kernel()->set_variance(absl::GetFlag(FLAGS_variance));
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_lengthscale), ',')) {
      double l;
      if (!absl::SimpleAtod(part, &l)) {
        return absl::InvalidArgumentError(absl::StrCat("create: bad --lengthscale ", part));
      }
      spec.mutable_kernel()->add_lengthscales(l);
    }
    if (absl::GetFlag(FLAGS_inducing) > 0) spec.set_inducing_count(absl::GetFlag(FLAGS_inducing));
    spec.set_inducing_seed(absl::GetFlag(FLAGS_inducing_seed));
    if (absl::GetFlag(FLAGS_jitter) >= 0) spec.set_jitter(absl::GetFlag(FLAGS_jitter));
    const std::string inducing_method = absl::GetFlag(FLAGS_inducing_method);
    if (inducing_method == "uniform") {
      spec.set_inducing_method(v1::INDUCING_METHOD_UNIFORM);
    } else if (inducing_method == "kmeans++") {
      spec.set_inducing_method(v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
    } else if (!inducing_method.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("create: --inducing_method must be uniform or kmeans++, got ",
                       inducing_method));
    }
    if (absl::GetFlag(FLAGS_lloyd) >= 0) spec.set_lloyd_iterations(absl::GetFlag(FLAGS_lloyd));
    const std::string inducing_file = absl::GetFlag(FLAGS_inducing_points);
    if (!inducing_file.empty()) {
      auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), inducing_file);
      if (!format.ok()) return format.status();
      auto matrix = ReadMatrix(inducing_file, *format, d);
      if (!matrix.ok()) return matrix.status();
      spec.mutable_inducing_points()->Add(matrix->values.begin(), matrix->values.end());
    }
  } else {
    return absl::InvalidArgumentError("create: --metric must be residual or euclidean");
  }
  auto info =
      client.CreateIndex(absl::GetFlag(FLAGS_index), spec, absl::GetFlag(FLAGS_expected_points));
  if (!info.ok()) return info.status();
  PrintInfo(*info);
  return absl::OkStatus();
}

// Names of the flags on the command line (set by Main before parsing): reparameterize changes
// only what was given, even when it was given its default value.
std::vector<std::string>& GivenFlags() {
  static std::vector<std::string> names;
  return names;
}

bool FlagGiven(absl::string_view name) {
  return std::find(GivenFlags().begin(), GivenFlags().end(), name) != GivenFlags().end();
}

// Follows the build of the index to READY or FAILED, printing progress; AbortedError on FAILED.
absl::Status FollowBuild(RcknnClient& client, const std::string& index_id);

absl::Status Reparameterize(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  const std::string source = absl::GetFlag(FLAGS_source);
  if (source.empty()) return absl::InvalidArgumentError("reparameterize: --source is required");
  auto source_info = client.GetIndex(source);
  if (!source_info.ok()) return source_info.status();
  v1::CreateIndexRequest request;
  request.set_index_id(absl::GetFlag(FLAGS_index));
  request.set_source_index_id(source);
  const std::string tree = absl::GetFlag(FLAGS_source_tree);
  if (tree == "refit") {
    request.set_source_tree(v1::SOURCE_TREE_REFIT);
  } else if (tree == "rebuild") {
    request.set_source_tree(v1::SOURCE_TREE_REBUILD);
  } else if (tree != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("reparameterize: --source_tree must be auto, refit or rebuild, got ", tree));
  }
  // The source's spec as it reports it, with what the flags change.
  v1::IndexSpec& spec = *request.mutable_spec();
  spec = source_info->spec();
  if (FlagGiven("kernel")) {
    const std::string kernel = absl::GetFlag(FLAGS_kernel);
    v1::KernelType type;
    if (!v1::KernelType_Parse(absl::StrCat("KERNEL_", absl::AsciiStrToUpper(kernel)), &type) ||
        type == v1::KERNEL_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("reparameterize: unknown --kernel ", kernel));
    }
    spec.mutable_kernel()->set_type(type);
  }
  if (FlagGiven("variance")) spec.mutable_kernel()->set_variance(absl::GetFlag(FLAGS_variance));
  if (FlagGiven("lengthscale")) {
    spec.mutable_kernel()->clear_lengthscales();
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_lengthscale), ',')) {
      double l;
      if (!absl::SimpleAtod(part, &l)) {
        return absl::InvalidArgumentError(
            absl::StrCat("reparameterize: bad --lengthscale ", part));
      }
      spec.mutable_kernel()->add_lengthscales(l);
    }
  }
  if (FlagGiven("inducing")) spec.set_inducing_count(absl::GetFlag(FLAGS_inducing));
  if (FlagGiven("inducing_seed")) spec.set_inducing_seed(absl::GetFlag(FLAGS_inducing_seed));
  if (FlagGiven("jitter")) spec.set_jitter(absl::GetFlag(FLAGS_jitter));
  if (FlagGiven("inducing_method")) {
    const std::string method = absl::GetFlag(FLAGS_inducing_method);
    if (method == "uniform") {
      spec.set_inducing_method(v1::INDUCING_METHOD_UNIFORM);
    } else if (method == "kmeans++") {
      spec.set_inducing_method(v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "reparameterize: --inducing_method must be uniform or kmeans++, got ", method));
    }
  }
  if (FlagGiven("lloyd")) spec.set_lloyd_iterations(absl::GetFlag(FLAGS_lloyd));
  if (FlagGiven("inducing_points")) {
    const std::string file = absl::GetFlag(FLAGS_inducing_points);
    auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), file);
    if (!format.ok()) return format.status();
    auto matrix = ReadMatrix(file, *format, spec.dimension());
    if (!matrix.ok()) return matrix.status();
    spec.clear_inducing_points();
    spec.mutable_inducing_points()->Add(matrix->values.begin(), matrix->values.end());
  }
  auto info = client.CreateIndex(request);
  if (!info.ok()) return info.status();
  if (!absl::GetFlag(FLAGS_wait)) {
    PrintInfo(*info);
    return absl::OkStatus();
  }
  if (absl::Status status = FollowBuild(client, info->index_id()); !status.ok()) return status;
  auto ready = client.GetIndex(info->index_id());
  if (!ready.ok()) return ready.status();
  std::printf("tree: %s\n", ready->tree_refitted() ? "the source's, refitted" : "built afresh");
  return absl::OkStatus();
}

absl::Status Upload(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  const std::string input = absl::GetFlag(FLAGS_input);
  if (input.empty()) return absl::InvalidArgumentError("upload: --input is required");
  auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), input);
  if (!format.ok()) return format.status();
  int d = absl::GetFlag(FLAGS_dim);
  if (d < 1) {
    auto info = client.GetIndex(absl::GetFlag(FLAGS_index));
    if (!info.ok()) return info.status();
    d = info->spec().dimension();
  }
  auto matrix = ReadMatrix(input, *format, d);
  if (!matrix.ok()) return matrix.status();
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::UploadPointsResponse> response;
  {
    Progress progress(absl::StrCat("uploading ", absl::GetFlag(FLAGS_index)));
    response =
        client.UploadPoints(absl::GetFlag(FLAGS_index), PointsView{matrix->values, matrix->columns},
                            {}, 0, {}, progress.Callback());
  }
  if (!response.ok()) return response.status();
  std::printf("uploaded %" PRId64 " points in %.3f s; the index holds %" PRId64 "\n",
              response->points_received(), absl::ToDoubleSeconds(absl::Now() - start),
              response->total_points());
  return absl::OkStatus();
}

absl::Status Build(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  auto info = client.BuildIndex(absl::GetFlag(FLAGS_index));
  if (!info.ok()) return info.status();
  if (!absl::GetFlag(FLAGS_wait)) {
    PrintInfo(*info);
    return absl::OkStatus();
  }
  return FollowBuild(client, absl::GetFlag(FLAGS_index));
}

absl::Status FollowBuild(RcknnClient& client, const std::string& index_id) {
  const bool tty = isatty(fileno(stdout));
  int last_percent = -1;
  auto final_info = client.WaitForIndex(index_id, [&](const v1::IndexInfo& i) {
    const int percent = static_cast<int>(100 * i.build_progress());
    if (i.state() == v1::INDEX_STATE_BUILDING && (tty || percent / 10 != last_percent / 10)) {
      std::printf(tty ? "\rbuilding %s: %3d%% (%.1f s)" : "building %s: %3d%% (%.1f s)\n",
                  i.index_id().c_str(), percent, i.build_seconds());
      std::fflush(stdout);
      last_percent = percent;
    }
  });
  if (tty) std::printf("\n");
  if (!final_info.ok()) return final_info.status();
  PrintInfo(*final_info);
  if (final_info->state() != v1::INDEX_STATE_READY) {
    return absl::AbortedError(absl::StrCat("the build failed: ", final_info->error()));
  }
  std::printf("build seconds: %.3f (factors %.3f, tree %.3f)\n", final_info->build_seconds(),
              final_info->factor_seconds(), final_info->tree_seconds());
  return absl::OkStatus();
}

absl::Status Status(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  auto info = client.GetIndex(absl::GetFlag(FLAGS_index));
  if (!info.ok()) return info.status();
  PrintInfo(*info);
  return absl::OkStatus();
}

absl::Status List(RcknnClient& client) {
  auto list = client.ListIndexes();
  if (!list.ok()) return list.status();
  if (list->empty()) std::printf("no indexes\n");
  for (const v1::IndexInfo& info : *list) PrintInfo(info);
  return absl::OkStatus();
}

absl::Status Delete(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  if (absl::Status status = client.DeleteIndex(absl::GetFlag(FLAGS_index)); !status.ok()) {
    return status;
  }
  std::printf("deleted %s\n", absl::GetFlag(FLAGS_index).c_str());
  return absl::OkStatus();
}

// `label` names what the query ids and the neighbours are: "id", or "rank" with --ranks.
void PrintRows(const SearchResult& result, const std::vector<int64_t>& query_ids, int count,
               absl::string_view label) {
  // Spread the printed rows over the batch: the first, the last and some between.
  const int64_t nq = result.num_queries;
  const int64_t shown = std::min<int64_t>(count, nq);
  for (int64_t s = 0; s < shown; ++s) {
    const int64_t q = shown == 1 ? 0 : s * (nq - 1) / (shown - 1);
    std::string line =
        query_ids.empty() ? absl::StrCat("query ", q) : absl::StrCat(label, " ", query_ids[q]);
    absl::StrAppend(&line, ":");
    const int64_t k_shown = std::min<int64_t>(result.k, 8);
    for (int64_t j = 0; j < k_shown; ++j) {
      const int64_t id = result.ids[q * result.k + j];
      if (id < 0) {
        absl::StrAppend(&line, " -");
      } else {
        absl::StrAppendFormat(&line, " %d(%.4f)", id, result.distances[q * result.k + j]);
      }
    }
    if (result.k > k_shown) absl::StrAppend(&line, " ... (", result.k, " in all)");
    std::printf("  %s\n", line.c_str());
  }
}

absl::Status WriteResult(const SearchResult& result) {
  const std::string prefix = absl::GetFlag(FLAGS_output);
  if (prefix.empty()) return absl::OkStatus();
  auto format = ParseFileFormat(
      absl::GetFlag(FLAGS_format).empty() ? "f64" : absl::GetFlag(FLAGS_format), "");
  if (!format.ok()) return format.status();
  const bool csv = *format == FileFormat::kCsv;
  const std::string ids_path = absl::StrCat(prefix, ".ids.", csv ? "csv" : "i64");
  const std::string dists_path = absl::StrCat(prefix, ".dists.", csv ? "csv" : "f64");
  const int k = static_cast<int>(result.k);
  if (absl::Status s = WriteIds(ids_path, *format, result.ids.data(), result.num_queries, k);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          WriteMatrix(dists_path, *format, result.distances.data(), result.num_queries, k);
      !s.ok()) {
    return s;
  }
  std::printf("wrote %s and %s\n", ids_path.c_str(), dists_path.c_str());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> QueryIds() {
  std::vector<int64_t> ids;
  const std::string list = absl::GetFlag(FLAGS_ids);
  const std::string file = absl::GetFlag(FLAGS_ids_file);
  if (!list.empty()) {
    for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
      int64_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        return absl::InvalidArgumentError(absl::StrCat("--ids: bad id ", part));
      }
      ids.push_back(id);
    }
  } else if (!file.empty()) {
    auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), file);
    if (!format.ok()) return format.status();
    return ReadIds(file, *format);
  }
  return ids;
}

absl::Status RunSearch(RcknnClient& client, SearchQuery& query,
                       const std::vector<int64_t>& query_ids, bool show_progress) {
  const absl::Time start = absl::Now();
  absl::StatusOr<SearchResult> result;
  if (show_progress) {
    Progress progress(absl::StrCat("searching ", query.index_id));
    result = client.Search(query, progress.Callback());
  } else {
    result = client.Search(query);
  }
  if (!result.ok()) return result.status();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("%" PRId64 " queries, k = %" PRId64 "%s: %.3f s, %.0f queries/s (%" PRId64
              " request%s, %.0f distance evaluations per query, %.3f s of server search)\n",
              result->num_queries, result->k, query.predecessor_mode ? ", predecessor mode" : "",
              seconds, result->num_queries / std::max(seconds, 1e-9), result->requests,
              result->requests == 1 ? "" : "s",
              static_cast<double>(result->stats.distance_evaluations()) /
                  std::max<int64_t>(1, result->num_queries),
              result->stats.search_seconds());
  PrintRows(*result, query_ids, absl::GetFlag(FLAGS_print),
            query.ids_are_ranks ? "rank" : "id");
  return WriteResult(*result);
}

SearchQuery BaseQuery() {
  SearchQuery query;
  query.index_id = absl::GetFlag(FLAGS_index);
  query.k = absl::GetFlag(FLAGS_k);
  query.predecessor_mode = absl::GetFlag(FLAGS_predecessor);
  query.include_self = absl::GetFlag(FLAGS_include_self);
  query.ordering = absl::GetFlag(FLAGS_ordering);
  query.ids_are_ranks = absl::GetFlag(FLAGS_ranks);
  return query;
}

absl::Status Order(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  v1::ComputeOrderingRequest request;
  request.set_index_id(absl::GetFlag(FLAGS_index));
  request.set_name(absl::GetFlag(FLAGS_name));
  const std::string method = absl::GetFlag(FLAGS_method);
  v1::OrderingMethod value;
  if (!v1::OrderingMethod_Parse(absl::StrCat("ORDERING_METHOD_", absl::AsciiStrToUpper(method)),
                                &value) ||
      value == v1::ORDERING_METHOD_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat("order: unknown --method ", method));
  }
  request.set_method(value);
  request.set_seed(absl::GetFlag(FLAGS_ordering_seed));
  const std::string input = absl::GetFlag(FLAGS_input);
  if (!input.empty()) {
    auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), input);
    if (!format.ok()) return format.status();
    auto ids = ReadIds(input, *format);
    if (!ids.ok()) return ids.status();
    request.mutable_permutation()->Add(ids->begin(), ids->end());
  }
  auto ordering = client.ComputeOrdering(request);
  if (!ordering.ok()) return ordering.status();
  std::printf("%s/%s: %s, %d points, %.3f s\n", ordering->index_id().c_str(),
              ordering->name().c_str(), v1::OrderingMethod_Name(ordering->method()).c_str(),
              ordering->permutation_size(), ordering->seconds());
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) return absl::OkStatus();
  auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), output);
  if (!format.ok()) return format.status();
  const std::vector<int64_t> permutation(ordering->permutation().begin(),
                                         ordering->permutation().end());
  if (absl::Status s = WriteIds(output, *format, permutation.data(),
                                static_cast<int64_t>(permutation.size()), 1);
      !s.ok()) {
    return s;
  }
  std::printf("wrote %s\n", output.c_str());
  return absl::OkStatus();
}

absl::Status Search(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  SearchQuery query = BaseQuery();
  auto ids = QueryIds();
  if (!ids.ok()) return ids.status();
  Matrix points;
  const std::string points_file = absl::GetFlag(FLAGS_points);
  if (!points_file.empty()) {
    auto format = ParseFileFormat(absl::GetFlag(FLAGS_format), points_file);
    if (!format.ok()) return format.status();
    int d = absl::GetFlag(FLAGS_dim);
    if (d < 1 && *format == FileFormat::kRaw) {
      auto info = client.GetIndex(query.index_id);
      if (!info.ok()) return info.status();
      d = info->spec().dimension();
    }
    auto matrix = ReadMatrix(points_file, *format, d);
    if (!matrix.ok()) return matrix.status();
    points = *std::move(matrix);
    query.points = PointsView{points.values, points.columns};
  }
  if (ids->empty() == points.values.empty()) {
    return absl::InvalidArgumentError("search: give one of --ids, --ids_file and --points");
  }
  query.ids = *ids;
  return RunSearch(client, query, *ids, /*show_progress=*/false);
}

absl::Status SearchAll(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  auto info = client.GetIndex(absl::GetFlag(FLAGS_index));
  if (!info.ok()) return info.status();
  std::vector<int64_t> ids(info->num_points());
  std::iota(ids.begin(), ids.end(), 0);
  SearchQuery query = BaseQuery();
  query.ids = ids;
  return RunSearch(client, query, ids, /*show_progress=*/true);
}

double Percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const size_t rank = static_cast<size_t>(std::ceil(p * values.size())) - 1;
  return values[std::min(rank, values.size() - 1)];
}

absl::Status Bench(RcknnClient& client) {
  if (absl::Status status = RequireIndex(); !status.ok()) return status;
  auto info = client.GetIndex(absl::GetFlag(FLAGS_index));
  if (!info.ok()) return info.status();
  const int64_t n = info->num_points();
  auto ids = QueryIds();
  if (!ids.ok()) return ids.status();
  std::mt19937_64 engine(absl::GetFlag(FLAGS_seed));
  std::uniform_int_distribution<int64_t> uniform(0, n - 1);
  if (ids->empty()) {
    ids->resize(absl::GetFlag(FLAGS_queries));
    for (int64_t& id : *ids) id = uniform(engine);
  }
  SearchQuery query = BaseQuery();

  // Latency: one query per Search call, one call at a time.
  const int64_t latency_queries = absl::GetFlag(FLAGS_latency_queries);
  std::vector<double> latencies_ms;
  for (int64_t i = -latency_queries / 10; i < latency_queries; ++i) {  // the first tenth warms up
    const int64_t id = uniform(engine);
    query.ids = absl::MakeConstSpan(&id, 1);
    const absl::Time start = absl::Now();
    auto result = client.Search(query);
    if (!result.ok()) return result.status();
    if (i >= 0) latencies_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }

  // Throughput: the whole batch in one Search call, repeated; the median is reported.
  query.ids = *ids;
  std::vector<double> rates;
  double server_seconds = 0.0;
  for (int r = 0; r < std::max(1, absl::GetFlag(FLAGS_repeat)); ++r) {
    const absl::Time start = absl::Now();
    auto result = client.Search(query);
    if (!result.ok()) return result.status();
    rates.push_back(result->num_queries / absl::ToDoubleSeconds(absl::Now() - start));
    server_seconds = result->stats.search_seconds();
  }
  std::printf("{\"index\":\"%s\",\"points\":%" PRId64 ",\"k\":%" PRId64
              ",\"predecessor_mode\":%s,"
              "\"latency_queries\":%zu,\"latency_ms_p50\":%.3f,\"latency_ms_p99\":%.3f,"
              "\"batch_queries\":%zu,\"batch_queries_per_second\":%.1f,"
              "\"batch_server_search_seconds\":%.4f}\n",
              query.index_id.c_str(), n, query.k, query.predecessor_mode ? "true" : "false",
              latencies_ms.size(), latencies_ms.empty() ? 0.0 : Percentile(latencies_ms, 0.5),
              latencies_ms.empty() ? 0.0 : Percentile(latencies_ms, 0.99), ids->size(),
              Percentile(rates, 0.5), server_seconds);
  return absl::OkStatus();
}

absl::Status Load(RcknnClient& client) {
  LoadOptions options;
  options.index_id = absl::GetFlag(FLAGS_index);
  options.k = absl::GetFlag(FLAGS_k);
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.total = absl::GetFlag(FLAGS_total);
  options.duration = absl::GetFlag(FLAGS_duration);
  options.rps = absl::GetFlag(FLAGS_rps);
  options.batch = absl::GetFlag(FLAGS_batch);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.timeout = client.options().timeout;
  const std::string latency_of = absl::GetFlag(FLAGS_latency_of);
  if (latency_of != "all" && latency_of != "ok") {
    return absl::InvalidArgumentError("--latency_of must be all or ok");
  }
  options.latency_of_ok_only = latency_of == "ok";
  auto mix = ParseLoadMix(absl::GetFlag(FLAGS_mix));
  if (!mix.ok()) return mix.status();
  options.mix = *std::move(mix);
  auto report = RunLoad(client, options);
  if (!report.ok()) return report.status();
  std::printf("%s\n", report->ToJson().c_str());
  return absl::OkStatus();
}

// The whole of `path`, named by `flag` in errors.
absl::StatusOr<std::string> ReadWholeFile(absl::string_view flag, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": cannot read"));
  std::stringstream text;
  text << file.rdbuf();
  if (text.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", path, ": empty file"));
  }
  return text.str();
}

// --tls_ca, --tls_cert, --tls_key, --token, --token_file -> options.
absl::Status SetSecurityOptions(ClientOptions* options) {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!cert.empty() && ca.empty()) return absl::InvalidArgumentError("--tls_cert needs --tls_ca");
  if (!ca.empty()) {
    options->tls = true;
    absl::StatusOr<std::string> roots = ReadWholeFile("tls_ca", ca);
    if (!roots.ok()) return roots.status();
    options->tls_root_certs = *std::move(roots);
  }
  if (!cert.empty()) {
    absl::StatusOr<std::string> chain = ReadWholeFile("tls_cert", cert);
    if (!chain.ok()) return chain.status();
    absl::StatusOr<std::string> private_key = ReadWholeFile("tls_key", key);
    if (!private_key.ok()) return private_key.status();
    options->tls_cert_chain = *std::move(chain);
    options->tls_private_key = *std::move(private_key);
  }
  std::string token = absl::GetFlag(FLAGS_token);
  const std::string token_file = absl::GetFlag(FLAGS_token_file);
  if (!token.empty() && !token_file.empty()) {
    return absl::InvalidArgumentError("--token and --token_file exclude each other");
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> text = ReadWholeFile("token_file", token_file);
    if (!text.ok()) return text.status();
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || absl::StartsWith(line, "#")) continue;
      token = std::string(line);
      break;
    }
    if (token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--token_file ", token_file, ": no token"));
    }
  }
  if (!token.empty() && !options->tls) {
    return absl::InvalidArgumentError("--token and --token_file need --tls_ca (TLS)");
  }
  options->token = std::move(token);
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  rcknn::core::SetUpFlagsUsage("rcknn", "client/rcknn_main.cc", kUsage);
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    GivenFlags().emplace_back(arg.substr(0, arg.find('=')));
  }
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 2) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  const std::string command = positional[1];
  ClientOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  // gRPC takes the channel's limits as an int; the server accepts the same range.
  if (options.max_message_bytes < 1024 ||
      options.max_message_bytes > std::numeric_limits<int>::max()) {
    std::fprintf(stderr, "rcknn: --max_message_bytes must be in [1024, %d], got %" PRId64 "\n",
                 std::numeric_limits<int>::max(), options.max_message_bytes);
    return 2;
  }
  if (absl::GetFlag(FLAGS_timeout) > 0) {
    options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout));
  }
  if (absl::Status security = SetSecurityOptions(&options); !security.ok()) {
    std::fprintf(stderr, "rcknn: %s\n", std::string(security.message()).c_str());
    return 2;
  }
  RcknnClient client(options);
  absl::Status status;
  if (command == "gen") {
    status = Gen();
  } else if (command == "create") {
    status = Create(client);
  } else if (command == "upload") {
    status = Upload(client);
  } else if (command == "build") {
    status = Build(client);
  } else if (command == "status") {
    status = Status(client);
  } else if (command == "list") {
    status = List(client);
  } else if (command == "delete") {
    status = Delete(client);
  } else if (command == "reparameterize") {
    status = Reparameterize(client);
  } else if (command == "order") {
    status = Order(client);
  } else if (command == "search") {
    status = Search(client);
  } else if (command == "search-all") {
    status = SearchAll(client);
  } else if (command == "bench") {
    status = Bench(client);
  } else if (command == "load") {
    status = Load(client);
  } else {
    std::fprintf(stderr, "unknown command %s\n\n%s", command.c_str(), kUsage);
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "rcknn %s: %s\n", command.c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace rcknn::client

int main(int argc, char** argv) { return rcknn::client::Main(argc, argv); }
