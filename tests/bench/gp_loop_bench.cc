// gp-loop-bench: the GP fitting loop's building blocks on the workloads of docs/design.md
// section 7, one JSON object per line.
//
//   gp-loop-bench --workload=gold|dense|scale --mode=orderings [--threads=2]
//     builds the index, then times every computed ordering (random, maximin in scaled
//     coordinates, maximin under the residual correlation).
//   gp-loop-bench --workload=gold|dense|scale --mode=reparam [--factors=1.01,1.1,2]
//       [--all_points=true] [--scale_points=N] [--lift_slack=-1] [--fresh_first=false]
//       [--interleave=0] [--recycle=false]
//     builds the source index, then for each lengthscale factor re-parameterises it with the
//     tree refitted and with a fresh tree (one after the other, refit first unless
//     --fresh_first), times both builds and, with --all_points, the all-points predecessor
//     search (k = 30) on each right after its build (with --interleave, once more in slices
//     alternating between the two trees); checks the two answers
//     against each other and a sample against the brute force; and reports what
//     TreeStart::kAuto measures and chooses. With --recycle each of the two builds is preceded
//     by freeing a refitted index of the same size (built for the purpose), the freed memory
//     kept by core::ArrayCache: the fitting loop's state when it deletes the previous index.
//   gp-loop-bench --workload=gold|dense --mode=inducing [--lloyd=0,3,10]
//     for each inducing-point choice (uniform draw, k-means++ with each Lloyd count): the
//     residual variances p and the k-NN distances of the workload's query ids.
#include <sys/resource.h>

#include <algorithm>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/array_cache.h"
#include "core/knn_index.h"
#include "core/ordering.h"
#include "core/random.h"
#include "core/status_macros.h"
#include "tbb/task_arena.h"
#include "core/flags_usage.h"
#include "tests/testing/shared_data.h"

ABSL_FLAG(std::string, workload, "gold", "gold | dense | scale");
ABSL_FLAG(std::string, mode, "orderings", "orderings | inducing | reparam");
ABSL_FLAG(int, threads, 2, "worker threads (one tbb::task_arena of this size)");
ABSL_FLAG(std::string, data_dir, rcknn::testing::DefaultDataDir(),
          "directory of the fixed data sets (tests/data)");
ABSL_FLAG(int64_t, scale_points, 1000000, "scale: number of generated points");
ABSL_FLAG(std::string, methods, "random,maximin_euclidean,maximin_residual",
          "orderings: comma-separated methods to time");
ABSL_FLAG(std::string, lloyd, "0,3,10", "inducing: Lloyd iteration counts to compare");
ABSL_FLAG(std::string, factors, "1.01,1.1,2", "reparam: lengthscale factors to compare");
ABSL_FLAG(bool, all_points, true, "reparam: time the all-points search on each index");
ABSL_FLAG(int64_t, all_points_k, 30, "reparam: k of the all-points search");
ABSL_FLAG(double, lift_slack, -1.0,
          "reparam: RefitOptions::lift_slack of the refits (negative: the shape kept whole)");
ABSL_FLAG(int, interleave, 0,
          "reparam: then search all points again in this many slices of ids, alternately on the "
          "two trees (refit, fresh; fresh, refit; ...), and report the sums: both trees see the "
          "same machine while the load drifts (0: not run)");
ABSL_FLAG(bool, recycle, false,
          "reparam: free an index of the same size right before each of the two builds, as the "
          "fitting loop frees the previous hyperparameters' index, with core::ArrayCache keeping "
          "freed arrays as rcknn-server does: each build may then reuse that index's V memory");
ABSL_FLAG(bool, fresh_first, false,
          "reparam: build and search the fresh tree before the refitted one (the second big "
          "job in a process can run at another speed, so compare both orders)");

namespace rcknn {
namespace {

using core::KnnIndex;

double Seconds(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// CPU seconds (user + system) of this process so far: on a shared machine a far steadier
// measure of a search's work than its wall time.
double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

struct Workload {
  core::IndexSpec spec;  // inducing points by count and seed (not the shipped ones)
  core::IndexData data;
  std::vector<int64_t> query_ids;
  int64_t k = 30;
};

absl::StatusOr<Workload> Load(const std::string& name) {
  Workload w;
  if (name == "scale") {
    // The same points and kernel as rcknn-bench's scale workload.
    const int64_t n = absl::GetFlag(FLAGS_scale_points);
    core::SplitMix64 rng(20261123);
    w.data.points.resize(n, 2);
    for (int64_t i = 0; i < n; ++i) {
      w.data.points(i, 0) = rng.Normal();
      w.data.points(i, 1) = rng.Normal();
    }
    w.spec.dimension = 2;
    w.spec.residual.kernel.type = core::KernelType::kRbf;
    w.spec.residual.kernel.lengthscales = {0.5};
    w.spec.residual.inducing_count = 256;
    w.spec.residual.inducing_seed = 7;
    for (int64_t q = 0; q < 1000; ++q) w.query_ids.push_back(rng.UniformBelow(n));
    return w;
  }
  absl::StatusOr<testing::Dataset> set = testing::LoadDataset(absl::GetFlag(FLAGS_data_dir), name);
  if (!set.ok()) return set.status();
  w.spec = set->Spec();
  w.spec.residual.inducing_points.reset();
  w.spec.residual.inducing_count = static_cast<int64_t>(set->inducing_ids.size());
  w.spec.residual.inducing_seed = 7;
  w.data = set->Data();
  w.query_ids = set->query_ids;
  w.k = set->k;
  return w;
}

int RunOrderings(const std::string& name, Workload w, tbb::task_arena& arena) {
  const int64_t n = w.data.points.rows();
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(w.spec, std::move(w.data), &arena);
  if (!index.ok()) {
    std::cerr << index.status() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
                   "{\"workload\":\"%s\",\"step\":\"build\",\"points\":%d,\"seconds\":%.3f}",
                   name, n, Seconds(start))
            << std::endl;
  for (absl::string_view method : absl::StrSplit(absl::GetFlag(FLAGS_methods), ',')) {
    core::OrderingRequest request;
    if (method == "random") {
      request.method = core::OrderingMethod::kRandom;
    } else if (method == "maximin_euclidean") {
      request.method = core::OrderingMethod::kMaximinEuclidean;
    } else if (method == "maximin_residual") {
      request.method = core::OrderingMethod::kMaximinResidual;
    } else {
      std::cerr << "unknown method " << method << "\n";
      return 1;
    }
    start = absl::Now();
    core::MaximinStats stats;
    absl::StatusOr<std::vector<int64_t>> order =
        core::ComputeOrdering(**index, request, &arena, nullptr, nullptr, &stats);
    const double seconds = Seconds(start);
    if (!order.ok()) {
      std::cerr << order.status() << "\n";
      return 1;
    }
    std::cout << absl::StrFormat(
                     "{\"workload\":\"%s\",\"step\":\"ordering\",\"method\":\"%s\",\"points\":%d,"
                     "\"seconds\":%.3f,\"distance_evaluations_per_point\":%.1f}",
                     name, std::string(method), n, seconds,
                     static_cast<double>(stats.distance_evaluations) / n)
              << std::endl;
  }
  return 0;
}

struct AllPoints {
  double seconds = 0.0;
  double cpu_seconds = 0.0;
  double evaluations_per_query = 0.0;
  core::TraversalStats stats;
  std::vector<int64_t> ids;
  std::vector<double> dists;
};

// The predecessor search of ids [begin, end) into rows [begin, end) of `out`, its seconds and
// CPU seconds added to `out`'s.
absl::Status SearchSlice(const KnnIndex& index, int64_t k, int64_t begin, int64_t end,
                         tbb::task_arena& arena, AllPoints& out, core::TraversalStats* stats) {
  std::vector<int64_t> ids(end - begin);
  std::iota(ids.begin(), ids.end(), begin);
  core::QueryBatch batch;
  batch.ids = ids;
  core::KnnOptions options;
  options.k = k;
  options.predecessor_mode = true;
  const absl::Time start = absl::Now();
  const double cpu_start = CpuSeconds();
  RETURN_IF_ERROR(index.Search(batch, options, &arena, nullptr, out.ids.data() + begin * k,
                               out.dists.data() + begin * k, stats));
  out.seconds += Seconds(start);
  out.cpu_seconds += CpuSeconds() - cpu_start;
  return absl::OkStatus();
}

absl::StatusOr<AllPoints> SearchAll(const KnnIndex& index, int64_t k, tbb::task_arena& arena) {
  const int64_t n = index.size();
  AllPoints out;
  out.ids.resize(n * k);
  out.dists.resize(n * k);
  RETURN_IF_ERROR(SearchSlice(index, k, 0, n, arena, out, &out.stats));
  out.evaluations_per_query = static_cast<double>(out.stats.distance_evaluations) / n;
  return out;
}

// The brute force's answers for `count` ids spread over [0, n) against `all` (their rows).
std::string CheckSample(const KnnIndex& index, const AllPoints& all, int64_t k, int64_t count,
                        tbb::task_arena& arena) {
  const int64_t n = index.size();
  std::vector<int64_t> ids;
  for (int64_t q = 0; q < count; ++q) ids.push_back((2 * q + 1) * n / (2 * count));
  core::QueryBatch batch;
  batch.ids = ids;
  core::KnnOptions options;
  options.k = k;
  options.predecessor_mode = true;
  std::vector<int64_t> ref_ids(count * k);
  std::vector<double> ref(count * k);
  absl::Status status = index.SearchBruteForce(batch, options, &arena, nullptr, ref_ids.data(),
                                               ref.data());
  if (!status.ok()) return status.ToString();
  std::vector<int64_t> got_ids;
  std::vector<double> got;
  for (int64_t id : ids) {
    got_ids.insert(got_ids.end(), all.ids.begin() + id * k, all.ids.begin() + (id + 1) * k);
    got.insert(got.end(), all.dists.begin() + id * k, all.dists.begin() + (id + 1) * k);
  }
  return testing::CompareAnswers(got_ids.data(), got.data(), ref_ids.data(), ref.data(), count, k);
}

// The search's counters per query and the tree's shape: what explains a difference in CPU
// seconds that the evaluation counts do not.
void PrintCounters(const std::string& name, const char* tree_name, const KnnIndex& index,
                   const AllPoints& all) {
  const core::CoverTree& tree = index.tree();
  const int64_t n = tree.size();
  const double per = 1.0 / static_cast<double>(n);
  int64_t internal = 0;
  for (int64_t node = 0; node < n; ++node) {
    internal += tree.end_child(node) > tree.first_child(node);
  }
  const core::TraversalStats& st = all.stats;
  std::cout << absl::StrFormat(
                   "{\"workload\":\"%s\",\"step\":\"reparam_counters\",\"tree\":\"%s\","
                   "\"cpu_seconds\":%.3f,\"evals_per_query\":%.1f,"
                   "\"cpu_ns_per_eval\":%.1f,\"nodes_visited_per_query\":%.1f,"
                   "\"heap_pushes_per_query\":%.1f,\"pruned_by_bound_per_query\":%.1f,"
                   "\"pruned_by_predecessor_per_query\":%.1f,\"scanned_queries\":%d,"
                   "\"depth\":%d,\"mean_node_depth\":%.2f,\"root_children\":%d,"
                   "\"max_children\":%d,\"mean_children\":%.2f}",
                   name, tree_name, all.cpu_seconds, all.evaluations_per_query,
                   1e9 * all.cpu_seconds / static_cast<double>(st.distance_evaluations),
                   st.nodes_visited * per, st.heap_pushes * per, st.pruned_by_bound * per,
                   st.pruned_by_predecessor * per, st.brute_force_queries, tree.depth(),
                   static_cast<double>(tree.storage().ring.size()) * per,
                   tree.end_child(0) - tree.first_child(0), tree.max_children(),
                   static_cast<double>(n - 1) / static_cast<double>(std::max<int64_t>(1, internal)))
            << std::endl;
}

int RunReparam(const std::string& name, Workload w, tbb::task_arena& arena) {
  const int64_t n = w.data.points.rows();
  const int64_t k = absl::GetFlag(FLAGS_all_points_k);
  const bool all_points = absl::GetFlag(FLAGS_all_points);
  absl::Time start = absl::Now();
  const core::IndexSpec base = w.spec;
  absl::StatusOr<std::unique_ptr<KnnIndex>> source =
      KnnIndex::Build(w.spec, std::move(w.data), &arena);
  if (!source.ok()) {
    std::cerr << source.status() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
                   "{\"workload\":\"%s\",\"step\":\"source\",\"points\":%d,\"seconds\":%.3f,"
                   "\"factor_seconds\":%.3f,\"tree_seconds\":%.3f}",
                   name, n, Seconds(start), (*source)->timings().factor_seconds,
                   (*source)->timings().tree_seconds)
            << std::endl;
  bool ok = true;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_factors), ',')) {
    double factor = 0.0;
    if (!absl::SimpleAtod(part, &factor) || !(factor > 0.0)) {
      std::cerr << "bad --factors entry " << part << "\n";
      return 1;
    }
    core::IndexSpec spec = base;
    for (double& l : spec.residual.kernel.lengthscales) l *= factor;
    std::unique_ptr<KnnIndex> built[2];
    AllPoints searched[2];
    // Slot 0 is the refitted tree, slot 1 the fresh one, whichever is built first.
    const core::TreeStart starts[2] = {core::TreeStart::kRefit, core::TreeStart::kRebuild};
    const bool fresh_first = absl::GetFlag(FLAGS_fresh_first);
    const bool recycle = absl::GetFlag(FLAGS_recycle);
    std::unique_ptr<KnnIndex> previous[2];  // freed right before build i with --recycle
    if (recycle) {
      core::ArrayCache::Default().Configure(int64_t{1} << 40, absl::Hours(1));
      for (auto& index : previous) {
        core::ReparameterizeOptions options;
        options.tree_start = core::TreeStart::kRefit;
        absl::StatusOr<std::unique_ptr<KnnIndex>> made =
            KnnIndex::Reparameterize(**source, spec, options, &arena);
        if (!made.ok()) {
          std::cerr << made.status() << "\n";
          return 1;
        }
        index = *std::move(made);
      }
    }
    const int64_t reused_before = core::ArrayCache::Default().reused();
    for (int i : fresh_first ? std::vector<int>{1, 0} : std::vector<int>{0, 1}) {
      previous[i].reset();
      core::ReparameterizeOptions options;
      options.tree_start = starts[i];
      options.refit.lift_slack = absl::GetFlag(FLAGS_lift_slack);
      absl::StatusOr<std::unique_ptr<KnnIndex>> index =
          KnnIndex::Reparameterize(**source, spec, options, &arena);
      if (!index.ok()) {
        std::cerr << index.status() << "\n";
        return 1;
      }
      built[i] = *std::move(index);
      if (all_points) {
        absl::StatusOr<AllPoints> result = SearchAll(*built[i], k, arena);
        if (!result.ok()) {
          std::cerr << result.status() << "\n";
          return 1;
        }
        searched[i] = *std::move(result);
      }
    }
    // The same searches again, slice by slice, alternating the trees (and which goes first),
    // into the same answer rows: the check below covers them too.
    const int slices = absl::GetFlag(FLAGS_interleave);
    AllPoints again[2];
    if (all_points && slices > 0) {
      for (int i = 0; i < 2; ++i) again[i].ids.swap(searched[i].ids);
      for (int i = 0; i < 2; ++i) again[i].dists.swap(searched[i].dists);
      for (int s = 0; s < slices; ++s) {
        const int64_t begin = s * n / slices;
        const int64_t end = (s + 1) * n / slices;
        for (int j = 0; j < 2; ++j) {
          const int i = (j + s + (fresh_first ? 1 : 0)) % 2;
          const absl::Status status = SearchSlice(*built[i], k, begin, end, arena, again[i],
                                                  nullptr);
          if (!status.ok()) {
            std::cerr << status << "\n";
            return 1;
          }
        }
      }
      for (int i = 0; i < 2; ++i) again[i].ids.swap(searched[i].ids);
      for (int i = 0; i < 2; ++i) again[i].dists.swap(searched[i].dists);
      std::cout << absl::StrFormat(
                       "{\"workload\":\"%s\",\"step\":\"reparam_interleaved\",\"points\":%d,"
                       "\"lengthscale_factor\":%g,\"order\":\"%s\",\"lift_slack\":%g,"
                       "\"slices\":%d,\"warm_search_seconds\":%.3f,\"fresh_search_seconds\":%.3f,"
                       "\"search_ratio\":%.3f,\"warm_search_cpu_seconds\":%.3f,"
                       "\"fresh_search_cpu_seconds\":%.3f,\"search_cpu_ratio\":%.3f}",
                       name, n, factor, fresh_first ? "fresh_first" : "refit_first",
                       absl::GetFlag(FLAGS_lift_slack), slices, again[0].seconds,
                       again[1].seconds, again[0].seconds / again[1].seconds,
                       again[0].cpu_seconds, again[1].cpu_seconds,
                       again[0].cpu_seconds / again[1].cpu_seconds)
                << std::endl;
    }
    const int64_t reused = core::ArrayCache::Default().reused() - reused_before;
    std::string check = "not searched";
    if (all_points) {
      check = testing::CompareAnswers(searched[0].ids.data(), searched[0].dists.data(),
                                      searched[1].ids.data(), searched[1].dists.data(), n, k);
      if (check.empty()) check = CheckSample(*built[0], searched[0], k, 100, arena);
      ok = ok && check.empty();
    }
    core::ReparameterizeOptions automatic;
    automatic.refit.lift_slack = absl::GetFlag(FLAGS_lift_slack);
    absl::StatusOr<std::unique_ptr<KnnIndex>> chosen =
        KnnIndex::Reparameterize(**source, spec, automatic, &arena);
    if (!chosen.ok()) {
      std::cerr << chosen.status() << "\n";
      return 1;
    }
    const core::ReparameterizeReport& r = (*chosen)->reparameterize_report();
    const core::BuildTimings& warm = built[0]->timings();
    const core::BuildTimings& fresh = built[1]->timings();
    std::cout << absl::StrFormat(
                     "{\"workload\":\"%s\",\"step\":\"reparam\",\"points\":%d,"
                     "\"lengthscale_factor\":%g,\"order\":\"%s\",\"lift_slack\":%g,"
                     "\"recycle\":%s,\"reused_arrays\":%d,"
                     "\"warm_factor_seconds\":%.3f,"
                     "\"warm_tree_seconds\":%.3f,\"fresh_factor_seconds\":%.3f,"
                     "\"fresh_tree_seconds\":%.3f,\"build_ratio\":%.3f,\"tree_ratio\":%.3f,"
                     "\"warm_search_seconds\":%.3f,\"fresh_search_seconds\":%.3f,"
                     "\"search_ratio\":%.3f,\"warm_search_cpu_seconds\":%.3f,"
                     "\"fresh_search_cpu_seconds\":%.3f,\"search_cpu_ratio\":%.3f,"
                     "\"warm_evals_per_query\":%.1f,"
                     "\"fresh_evals_per_query\":%.1f,\"exact\":%s,"
                     "\"auto_refitted\":%s,\"auto_distortion\":%.3f,\"auto_refit_evals\":%.1f,"
                     "\"auto_predicted_saving_seconds\":%.3f,"
                     "\"auto_predicted_build_seconds\":%.3f,\"auto_probe_seconds\":%.3f}",
                     name, n, factor, fresh_first ? "fresh_first" : "refit_first",
                     absl::GetFlag(FLAGS_lift_slack), recycle ? "true" : "false", reused,
                     warm.factor_seconds, warm.tree_seconds,
                     fresh.factor_seconds, fresh.tree_seconds,
                     (warm.factor_seconds + warm.tree_seconds) /
                         (fresh.factor_seconds + fresh.tree_seconds),
                     warm.tree_seconds / fresh.tree_seconds, searched[0].seconds,
                     searched[1].seconds,
                     all_points ? searched[0].seconds / searched[1].seconds : 0.0,
                     searched[0].cpu_seconds, searched[1].cpu_seconds,
                     all_points ? searched[0].cpu_seconds / searched[1].cpu_seconds : 0.0,
                     searched[0].evaluations_per_query, searched[1].evaluations_per_query,
                     !all_points ? "null" : (check.empty() ? "true" : "false"),
                     r.refitted ? "true" : "false",
                     r.distortion, r.refit_evaluations, r.predicted_saving_seconds,
                     r.predicted_build_seconds, r.probe_seconds)
              << std::endl;
    if (all_points) {
      for (int i = 0; i < 2; ++i) PrintCounters(name, i == 0 ? "refit" : "fresh", *built[i],
                                                searched[i]);
    }
    if (!check.empty() && all_points) std::cerr << "answers differ: " << check << "\n";
  }
  return ok ? 0 : 1;
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1))];
}

int RunInducing(const std::string& name, const Workload& w, tbb::task_arena& arena) {
  struct Choice {
    std::string label;
    core::InducingMethod method;
    int lloyd;
  };
  std::vector<Choice> choices = {{"uniform", core::InducingMethod::kUniform, 0}};
  for (absl::string_view count : absl::StrSplit(absl::GetFlag(FLAGS_lloyd), ',')) {
    int lloyd = 0;
    if (!absl::SimpleAtoi(count, &lloyd)) return 1;
    choices.push_back({absl::StrFormat("kmeans++/lloyd=%d", lloyd),
                       core::InducingMethod::kKMeansPlusPlus, lloyd});
  }
  for (const Choice& choice : choices) {
    core::IndexSpec spec = w.spec;
    spec.residual.inducing_method = choice.method;
    spec.residual.lloyd_iterations = choice.lloyd;
    core::IndexData data;
    data.points = w.data.points;
    const absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<KnnIndex>> index =
        KnnIndex::Build(spec, std::move(data), &arena);
    const double seconds = Seconds(start);
    if (!index.ok()) {
      std::cerr << index.status() << "\n";
      return 1;
    }
    const auto& space = dynamic_cast<const core::ResidualSpace&>((*index)->space());
    std::vector<double> p(space.p().data(), space.p().data() + space.p().size());
    core::KnnOptions options;
    options.k = w.k;
    const int64_t nq = static_cast<int64_t>(w.query_ids.size());
    std::vector<int64_t> ids(nq * w.k);
    std::vector<double> dists(nq * w.k);
    core::QueryBatch batch;
    batch.ids = w.query_ids;
    const absl::Status status =
        (*index)->Search(batch, options, &arena, nullptr, ids.data(), dists.data());
    if (!status.ok()) {
      std::cerr << status << "\n";
      return 1;
    }
    std::vector<double> first(nq), kth(nq);
    for (int64_t q = 0; q < nq; ++q) {
      first[q] = dists[q * w.k];
      kth[q] = dists[q * w.k + w.k - 1];
    }
    std::cout << absl::StrFormat(
                     "{\"workload\":\"%s\",\"step\":\"inducing\",\"choice\":\"%s\",\"m\":%d,"
                     "\"build_seconds\":%.3f,\"factor_seconds\":%.3f,\"p_mean\":%.4g,"
                     "\"p_median\":%.4g,\"p_min\":%.4g,\"p_max\":%.4g,\"nn1_median\":%.4f,"
                     "\"nnk_median\":%.4f,\"nnk_mean\":%.4f,\"k\":%d}",
                     name, choice.label, spec.residual.inducing_count, seconds,
                     (*index)->timings().factor_seconds,
                     std::accumulate(p.begin(), p.end(), 0.0) / p.size(), Quantile(p, 0.5),
                     Quantile(p, 0.0), Quantile(p, 1.0), Quantile(first, 0.5),
                     Quantile(kth, 0.5), std::accumulate(kth.begin(), kth.end(), 0.0) / nq,
                     w.k)
              << std::endl;
  }
  return 0;
}

}  // namespace
}  // namespace rcknn

int main(int argc, char** argv) {
  rcknn::core::SetUpFlagsUsage(
      "gp-loop-bench", "tests/bench/gp_loop_bench.cc",
      "the GP fitting loop's building blocks (orderings, inducing-point choices) on a workload, "
      "one JSON object per line.\n"
      "Usage: gp-loop-bench --workload=gold|dense|scale --mode=orderings|inducing [--threads=2] "
      "[flags]");
  absl::ParseCommandLine(argc, argv);
  tbb::task_arena arena(absl::GetFlag(FLAGS_threads));
  const std::string workload = absl::GetFlag(FLAGS_workload);
  absl::StatusOr<rcknn::Workload> w = rcknn::Load(workload);
  if (!w.ok()) {
    std::cerr << w.status() << "\n";
    return 1;
  }
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "orderings") return rcknn::RunOrderings(workload, std::move(*w), arena);
  if (mode == "inducing") return rcknn::RunInducing(workload, *w, arena);
  if (mode == "reparam") return rcknn::RunReparam(workload, std::move(*w), arena);
  std::cerr << "unknown --mode " << mode << "\n";
  return 1;
}
