#include "core/cover_tree.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status_macros.h"
#include "tbb/parallel_for.h"

namespace rcknn::core {
namespace {

constexpr int64_t kMemberBlock = 256;  // members compared with the centers at once
constexpr int64_t kCenterChunk = 256;  // centers per gathered block of rows
constexpr int64_t kRootBlock = 4096;   // ids per task when measuring distances to the root
constexpr int32_t kUnsetLevel = std::numeric_limits<int32_t>::max();

struct Member {
  double dist;  // distance to the node whose subtree the member is in
  int64_t id;
};

// Construction state indexed by stored id. Each id's entries are written by the one task that
// owns the id's node, so no locking is needed.
class Builder {
 public:
  Builder(const MetricSpace& space, double base, const Cancellation* cancellation,
          const ProgressCallback& progress)
      : children_(space.size()),
        level_(space.size(), kUnsetLevel),
        max_dist_(space.size(), 0.0),
        parent_dist_(space.size(), 0.0),
        space_(space),
        base_(base),
        log_base_(std::log(base)),
        cancellation_(cancellation),
        progress_(progress) {}

  void BuildNode(int64_t center, std::vector<Member> members);
  void Place(int64_t count) {
    const int64_t before = placed_.fetch_add(count, std::memory_order_relaxed);
    if (!progress_) return;
    const int64_t n = space_.size();
    const int64_t step = std::max<int64_t>(1, n / 100);
    if ((before + count) / step != before / step || before + count == n) {
      progress_(static_cast<double>(before + count) / n);
    }
  }
  void Fail(absl::Status status) {
    absl::MutexLock lock(&mutex_);
    if (status_.ok()) status_ = std::move(status);
    failed_.store(true, std::memory_order_relaxed);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  absl::Status status() const {
    absl::MutexLock lock(&mutex_);
    return status_;
  }

  std::vector<std::vector<int64_t>> children_;
  std::vector<int32_t> level_;
  std::vector<double> max_dist_;
  std::vector<double> parent_dist_;

 private:
  // Largest level l with b^(l - 1) < radius <= b^l.
  int32_t LevelFor(double radius) const {
    int32_t level = static_cast<int32_t>(std::ceil(std::log(radius) / log_base_));
    while (std::pow(base_, level) < radius) ++level;
    while (std::pow(base_, level - 1) >= radius) --level;
    return level;
  }
  // Chooses centers among `members` (sorted farthest first) so that every member is within
  // `radius` of the node's point or of a center, centers being more than `radius` from the node's
  // point and from each other. Returns, per member, -1 (stays with the node) or the index of its
  // center in `centers`, and its distance to that in `members[i].dist`.
  std::vector<int64_t> ChooseCenters(std::vector<Member>& members, double radius,
                                     std::vector<int64_t>& centers);

  const MetricSpace& space_;
  const double base_;
  const double log_base_;
  const Cancellation* cancellation_;
  const ProgressCallback& progress_;
  std::atomic<int64_t> placed_{0};
  mutable absl::Mutex mutex_;
  absl::Status status_;
  std::atomic<bool> failed_{false};
};

std::vector<int64_t> Builder::ChooseCenters(std::vector<Member>& members, double radius,
                                            std::vector<int64_t>& centers) {
  const int64_t num = static_cast<int64_t>(members.size());
  std::vector<int64_t> assigned(num, -1);
  std::vector<PointRows> full_chunks;  // centers [256 c, 256 c + 256) as rows
  std::vector<double> distances;
  for (int64_t start = 0; start < num; start += kMemberBlock) {
    const int64_t count = std::min(kMemberBlock, num - start);
    std::vector<int64_t> ids(count);
    for (int64_t i = 0; i < count; ++i) ids[i] = members[start + i].id;
    const PointRows rows = space_.Gather(ids);

    // Compare the block with every center chosen before it, chunk by chunk.
    const int64_t known = static_cast<int64_t>(centers.size());
    if (known > 0) {
      const int64_t num_full = known / kCenterChunk;
      PointRows partial;
      if (known % kCenterChunk != 0) {
        std::vector<int64_t> partial_ids;
        for (int64_t c = num_full * kCenterChunk; c < known; ++c) {
          partial_ids.push_back(members[centers[c]].id);
        }
        partial = space_.Gather(partial_ids);
      }
      const int64_t num_chunks = num_full + (known % kCenterChunk != 0 ? 1 : 0);
      // Per chunk and member: (distance, center index) of the nearest center in the chunk.
      std::vector<std::pair<double, int64_t>> nearest(num_chunks * count);
      auto compare_chunk = [&](int64_t c) {
        const PointRows& chunk = c < num_full ? full_chunks[c] : partial;
        const int64_t nc = chunk.size();
        std::vector<double> d(count * nc);
        space_.RowsToRows(rows, 0, count, chunk, 0, nc, d.data());
        for (int64_t i = 0; i < count; ++i) {
          std::pair<double, int64_t> best{std::numeric_limits<double>::infinity(), -1};
          for (int64_t j = 0; j < nc; ++j) {
            if (d[i * nc + j] < best.first) best = {d[i * nc + j], c * kCenterChunk + j};
          }
          nearest[c * count + i] = best;
        }
      };
      if (num_chunks > 1) {
        tbb::parallel_for(int64_t{0}, num_chunks, compare_chunk);
      } else {
        compare_chunk(0);
      }
      for (int64_t c = 0; c < num_chunks; ++c) {
        for (int64_t i = 0; i < count; ++i) {
          const auto& [d, index] = nearest[c * count + i];
          if (d < members[start + i].dist) {
            members[start + i].dist = d;
            assigned[start + i] = index;
          }
        }
      }
    }

    // Members still uncovered become centers, in order, and cover the rest of the block.
    for (int64_t i = 0; i < count; ++i) {
      Member& member = members[start + i];
      if (member.dist <= radius) continue;
      const int64_t index = static_cast<int64_t>(centers.size());
      assigned[start + i] = index;
      centers.push_back(start + i);
      if (centers.size() % kCenterChunk == 0) {
        std::vector<int64_t> chunk_ids(kCenterChunk);
        for (int64_t c = 0; c < kCenterChunk; ++c) {
          chunk_ids[c] = members[centers[centers.size() - kCenterChunk + c]].id;
        }
        full_chunks.push_back(space_.Gather(chunk_ids));
      }
      const int64_t rest = count - i - 1;
      if (rest == 0) continue;
      distances.resize(rest);
      space_.RowsToRows(rows, i + 1, rest, rows, i, 1, distances.data());
      for (int64_t j = 0; j < rest; ++j) {
        Member& other = members[start + i + 1 + j];
        if (distances[j] < other.dist) {
          other.dist = distances[j];
          assigned[start + i + 1 + j] = index;
        }
      }
    }
  }
  return assigned;
}

void Builder::BuildNode(int64_t center, std::vector<Member> members) {
  double max_dist = 0.0;
  for (const Member& member : members) max_dist = std::max(max_dist, member.dist);
  max_dist_[center] = max_dist;

  std::vector<std::pair<int64_t, std::vector<Member>>> jobs;
  while (!members.empty()) {
    if (failed()) return;
    if (absl::Status status = CheckCancelled(cancellation_); !status.ok()) {
      Fail(std::move(status));
      return;
    }
    double radius = 0.0;
    for (const Member& member : members) radius = std::max(radius, member.dist);
    if (radius <= 0.0) {
      // Everything left is at distance 0 from the center: leaf children.
      for (const Member& member : members) {
        children_[center].push_back(member.id);
        level_[member.id] = CoverTree::kDuplicateLevel;
        parent_dist_[member.id] = 0.0;
      }
      Place(static_cast<int64_t>(members.size()));
      break;
    }
    const int32_t level = LevelFor(radius);
    if (level_[center] == kUnsetLevel) level_[center] = level;
    const double child_radius = std::pow(base_, level - 1);
    std::sort(members.begin(), members.end(), [](const Member& a, const Member& b) {
      return a.dist != b.dist ? a.dist > b.dist : a.id < b.id;
    });
    // Distances to the node's own point, kept for the members that stay with it.
    std::vector<int64_t> centers;  // member indices
    std::vector<double> parent_dists(members.size());
    for (size_t i = 0; i < members.size(); ++i) parent_dists[i] = members[i].dist;
    const std::vector<int64_t> assigned = ChooseCenters(members, child_radius, centers);

    const size_t first_job = jobs.size();
    for (int64_t index : centers) {
      const int64_t id = members[index].id;
      children_[center].push_back(id);
      level_[id] = level - 1;
      parent_dist_[id] = parent_dists[index];
      jobs.emplace_back(id, std::vector<Member>());
    }
    std::vector<Member> rest;
    for (size_t i = 0; i < members.size(); ++i) {
      if (assigned[i] < 0) {
        rest.push_back(members[i]);
      } else if (members[i].id != jobs[first_job + assigned[i]].first) {
        jobs[first_job + assigned[i]].second.push_back(members[i]);
      }
    }
    Place(static_cast<int64_t>(centers.size()));
    members = std::move(rest);
  }
  tbb::parallel_for(size_t{0}, jobs.size(), [&](size_t j) {
    BuildNode(jobs[j].first, std::move(jobs[j].second));
  });
}

}  // namespace

absl::StatusOr<CoverTree> CoverTree::Build(const MetricSpace& space,
                                           const CoverTreeOptions& options,
                                           tbb::task_arena* arena,
                                           const Cancellation* cancellation,
                                           const ProgressCallback& progress) {
  if (!std::isfinite(options.base) || options.base <= 1.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cover tree base must be finite and > 1, got ", options.base));
  }
  const int64_t n = space.size();
  if (n < 1) return absl::InvalidArgumentError("cannot build a tree over an empty point set");
  Builder builder(space, options.base, cancellation, progress);
  auto run = [&] {
    // The root is id 0; every other point starts as its member.
    std::vector<Member> members(n - 1);
    const PointRows root = space.Gather({0});
    const int64_t tasks = (n + kRootBlock - 1) / kRootBlock;
    tbb::parallel_for(int64_t{0}, tasks, [&](int64_t t) {
      const int64_t begin = t * kRootBlock;
      const int64_t count = std::min(kRootBlock, n - begin);
      std::vector<double> d(count);
      space.RowsToRange(root, 0, 1, begin, count, d.data());
      for (int64_t j = 0; j < count; ++j) {
        const int64_t id = space.id_at(begin + j);  // the tree holds ids, whatever the layout
        if (id > 0) members[id - 1] = {d[j], id};
      }
    });
    builder.Place(1);
    builder.BuildNode(0, std::move(members));
  };
  if (arena != nullptr) {
    arena->execute(run);
  } else {
    run();
  }
  if (builder.failed()) return builder.status();
  if (builder.level_[0] == kUnsetLevel) builder.level_[0] = 0;

  CoverTree tree;
  tree.base_ = options.base;
  tree.point_.reserve(n);
  tree.first_child_.resize(n + 1);
  tree.point_.push_back(0);
  for (int64_t i = 0; i < static_cast<int64_t>(tree.point_.size()); ++i) {
    tree.first_child_[i] = static_cast<int64_t>(tree.point_.size());
    for (int64_t child : builder.children_[tree.point_[i]]) tree.point_.push_back(child);
  }
  tree.first_child_[n] = n;
  if (static_cast<int64_t>(tree.point_.size()) != n) {
    return absl::InternalError(absl::StrCat("cover tree build placed ", tree.point_.size(),
                                            " of ", n, " points"));
  }
  tree.level_.resize(n);
  tree.max_dist_.resize(n);
  tree.parent_dist_.resize(n);
  tree.parent_.assign(n, -1);
  tree.subtree_min_id_.resize(n);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = tree.point_[node];
    tree.level_[node] = builder.level_[id];
    tree.max_dist_[node] = builder.max_dist_[id];
    tree.parent_dist_[node] = builder.parent_dist_[id];
    for (int64_t c = tree.first_child_[node]; c < tree.first_child_[node + 1]; ++c) {
      tree.parent_[c] = node;
    }
  }
  if (arena != nullptr) {
    arena->execute([&] { tree.ComputeRings(space); });
  } else {
    tree.ComputeRings(space);
  }
  for (int64_t node = n - 1; node >= 0; --node) {
    int64_t min_id = tree.point_[node];
    for (int64_t c = tree.first_child_[node]; c < tree.first_child_[node + 1]; ++c) {
      min_id = std::min(min_id, tree.subtree_min_id_[c]);
    }
    tree.subtree_min_id_[node] = min_id;
  }
  tree.ComputeOrder();
  return tree;
}

void CoverTree::ComputeOrder() {
  const int64_t n = size();
  subtree_size_.assign(n, 1);
  // Children have larger node numbers than their parents (breadth-first storage).
  for (int64_t node = n - 1; node >= 1; --node) subtree_size_[parent_[node]] += subtree_size_[node];
  preorder_.assign(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    int64_t next = preorder_[node] + 1;
    for (int64_t c = first_child_[node]; c < first_child_[node + 1]; ++c) {
      preorder_[c] = next;
      next += subtree_size_[c];
    }
  }
  preorder_ids_.assign(n, 0);
  node_of_.assign(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    preorder_ids_[preorder_[node]] = point_[node];
    node_of_[point_[node]] = node;
  }
}

void CoverTree::ComputeRings(const MetricSpace& space) {
  const int64_t n = size();
  ring_offset_.assign(n + 1, 0);
  std::vector<int64_t> depth(n, 0);
  for (int64_t node = 1; node < n; ++node) depth[node] = depth[parent_[node]] + 1;
  for (int64_t node = 0; node < n; ++node) ring_offset_[node + 1] = ring_offset_[node] + depth[node];
  ring_.resize(ring_offset_[n]);
  // Each node's distances to its ancestors, as degenerate rings.
  tbb::parallel_for(int64_t{1}, n, [&](int64_t node) {
    const int64_t t = depth[node];
    std::vector<int64_t> ancestors(t);
    for (int64_t a = parent_[node], j = t - 1; a >= 0; a = parent_[a], --j) {
      ancestors[j] = point_[a];
    }
    const PointRows row = space.Gather({point_[node]});
    std::vector<double> d(t);
    space.RowToIds(row, 0, ancestors, d.data());
    for (int64_t j = 0; j < t; ++j) ring_[ring_offset_[node] + j] = {d[j], d[j]};
  });
  // Children before parents (breadth-first order reversed): widen each parent's rings by its
  // children's, for the ancestors they share.
  for (int64_t node = n - 1; node >= 1; --node) {
    const int64_t p = parent_[node];
    for (int64_t j = 0; j < depth[p]; ++j) {
      auto& ring = ring_[ring_offset_[p] + j];
      const auto& child = ring_[ring_offset_[node] + j];
      ring.first = std::min(ring.first, child.first);
      ring.second = std::max(ring.second, child.second);
    }
  }
}

int64_t CoverTree::memory_bytes() const {
  return static_cast<int64_t>(point_.size() * sizeof(int64_t) + level_.size() * sizeof(int32_t) +
                              max_dist_.size() * sizeof(double) +
                              parent_dist_.size() * sizeof(double) +
                              parent_.size() * sizeof(int64_t) +
                              first_child_.size() * sizeof(int64_t) +
                              subtree_min_id_.size() * sizeof(int64_t) +
                              ring_offset_.size() * sizeof(int64_t) +
                              ring_.size() * sizeof(std::pair<double, double>) +
                              (subtree_size_.size() + preorder_.size() + preorder_ids_.size() +
                               node_of_.size()) * sizeof(int64_t));
}

int64_t CoverTree::depth() const {
  int64_t deepest = 0;
  for (int64_t node = 0; node < size(); ++node) deepest = std::max(deepest, node_depth(node));
  return deepest;
}

int64_t CoverTree::max_children() const {
  int64_t widest = 0;
  for (int64_t node = 0; node < size(); ++node) {
    widest = std::max(widest, first_child_[node + 1] - first_child_[node]);
  }
  return widest;
}

absl::Status CoverTree::CheckInvariants(const MetricSpace& space, double slack,
                                        bool check_separation) const {
  const int64_t n = size();
  if (n != space.size()) {
    return absl::InternalError(absl::StrCat("tree has ", n, " nodes, space ", space.size()));
  }
  std::vector<char> seen(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = point_[node];
    if (id < 0 || id >= n || seen[id]) {
      return absl::InternalError(absl::StrCat("id ", id, " at node ", node,
                                              " is out of range or appears twice"));
    }
    seen[id] = 1;
  }
  if (first_child_[0] != 1 || first_child_[n] != n) {
    return absl::InternalError("child ranges do not cover nodes 1..n-1");
  }
  std::vector<double> d;
  for (int64_t node = 0; node < n; ++node) {
    const int64_t begin = first_child_[node];
    const int64_t end = first_child_[node + 1];
    if (end < begin) return absl::InternalError(absl::StrCat("node ", node, ": bad child range"));
    const PointRows self = space.Gather({point_[node]});
    d.resize(end - begin);
    space.RowToIds(self, 0, points(begin, end), d.data());
    int64_t min_id = point_[node];
    for (int64_t c = begin; c < end; ++c) {
      min_id = std::min(min_id, subtree_min_id_[c]);
      const double dc = d[c - begin];
      if (parent_[c] != node) {
        return absl::InternalError(absl::StrCat("node ", c, ": parent is not ", node));
      }
      if (level_[c] == kDuplicateLevel) {
        if (dc > slack) {
          return absl::InternalError(absl::StrCat("duplicate child ", c, " is at distance ", dc));
        }
        continue;
      }
      if (!(level_[c] < level_[node])) {
        return absl::InternalError(absl::StrCat("node ", c, " level ", level_[c],
                                                " not below its parent's ", level_[node]));
      }
      if (dc > std::pow(base_, level_[c] + 1) + slack) {
        return absl::InternalError(absl::StrCat("covering: node ", c, " at level ", level_[c],
                                                " is ", dc, " from its parent"));
      }
      if (check_separation && dc <= std::pow(base_, level_[c]) - slack) {
        return absl::InternalError(absl::StrCat("separation: node ", c, " at level ", level_[c],
                                                " is only ", dc, " from its parent"));
      }
      if (std::abs(dc - parent_dist_[c]) > slack) {
        return absl::InternalError(absl::StrCat("node ", c, ": stored parent distance ",
                                                parent_dist_[c], ", measured ", dc));
      }
    }
    if (min_id != subtree_min_id_[node]) {
      return absl::InternalError(absl::StrCat("node ", node, ": subtree minimum id ",
                                              subtree_min_id_[node], ", expected ", min_id));
    }
    // Separation among siblings of one level.
    for (int64_t a = begin; check_separation && a < end; ++a) {
      if (level_[a] == kDuplicateLevel) continue;
      const PointRows row = space.Gather({point_[a]});
      for (int64_t b = a + 1; b < end && level_[b] == level_[a]; ++b) {
        double dab;
        space.RowToIds(row, 0, points(b, b + 1), &dab);
        if (dab <= std::pow(base_, level_[a]) - slack) {
          return absl::InternalError(absl::StrCat("separation: siblings ", a, " and ", b,
                                                  " at level ", level_[a], " are ", dab,
                                                  " apart"));
        }
      }
    }
  }
  // Max-descendant bounds and rings: every node against each of its ancestors, and the ring of
  // every node on the path between them.
  for (int64_t node = 1; node < n; ++node) {
    const PointRows row = space.Gather({point_[node]});
    for (int64_t a = parent_[node]; a >= 0; a = parent_[a]) {
      double dist;
      space.RowToIds(row, 0, points(a, a + 1), &dist);
      if (dist > max_dist_[a] + slack) {
        return absl::InternalError(absl::StrCat("node ", node, " is ", dist, " from ancestor ",
                                                a, " whose max_dist is ", max_dist_[a]));
      }
      const int64_t j = node_depth(a);
      for (int64_t c = node; c != a; c = parent_[c]) {
        const auto& ring = rings(c)[j];
        if (dist < ring.first - slack || dist > ring.second + slack) {
          return absl::InternalError(absl::StrCat("node ", node, " is ", dist, " from ancestor ",
                                                  a, " outside the ring [", ring.first, ", ",
                                                  ring.second, "] of node ", c));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace rcknn::core

namespace rcknn::core {

static_assert(sizeof(std::pair<double, double>) == 2 * sizeof(double));

void CoverTree::Save(SnapshotWriter& writer) const {
  writer.WriteValue<int64_t>(size());
  writer.WriteValue<double>(base_);
  writer.WriteVector(point_);
  writer.WriteVector(level_);
  writer.WriteVector(max_dist_);
  writer.WriteVector(parent_dist_);
  writer.WriteVector(parent_);
  writer.WriteVector(first_child_);
  writer.WriteVector(subtree_min_id_);
  writer.WriteVector(ring_offset_);
  writer.WriteArray(reinterpret_cast<const double*>(ring_.data()),
                    2 * static_cast<int64_t>(ring_.size()));
}

absl::StatusOr<CoverTree> CoverTree::Load(SnapshotReader& reader, int64_t num_points) {
  int64_t n = 0;
  CoverTree tree;
  RETURN_IF_ERROR(reader.ReadValue(&n));
  if (n != num_points || n < 1) {
    return reader.Corrupt(
        absl::StrCat("the tree holds ", n, " points, the index has ", num_points));
  }
  RETURN_IF_ERROR(reader.ReadValue(&tree.base_));
  const uint64_t size = static_cast<uint64_t>(n);
  RETURN_IF_ERROR(reader.ReadVector(&tree.point_, size));
  if (tree.point_.size() != size) {
    return reader.Corrupt(absl::StrCat("tree: ", tree.point_.size(), " nodes for ", n, " points"));
  }
  RETURN_IF_ERROR(reader.ReadVector(&tree.level_, size));
  RETURN_IF_ERROR(reader.ReadVector(&tree.max_dist_, size));
  RETURN_IF_ERROR(reader.ReadVector(&tree.parent_dist_, size));
  RETURN_IF_ERROR(reader.ReadVector(&tree.parent_, size));
  RETURN_IF_ERROR(reader.ReadVector(&tree.first_child_, size + 1));
  RETURN_IF_ERROR(reader.ReadVector(&tree.subtree_min_id_, size));
  RETURN_IF_ERROR(reader.ReadVector(&tree.ring_offset_, size + 1));
  std::vector<double> ring;
  RETURN_IF_ERROR(reader.ReadVector(&ring));
  if (ring.size() % 2 != 0) return reader.Corrupt("the tree's ring array has an odd length");
  tree.ring_.resize(ring.size() / 2);
  if (!ring.empty()) {  // memcpy of null pointers is undefined even for 0 bytes
    std::memcpy(static_cast<void*>(tree.ring_.data()), ring.data(), ring.size() * sizeof(double));
  }
  // The checksum first: a corrupt file is reported as such, not as a broken tree.
  RETURN_IF_ERROR(reader.Finish());
  RETURN_IF_ERROR(tree.CheckStructure(reader));
  tree.ComputeOrder();
  return tree;
}

absl::Status CoverTree::CheckStructure(const SnapshotReader& reader) const {
  const int64_t n = static_cast<int64_t>(point_.size());
  auto bad = [&](absl::string_view what) { return reader.Corrupt(absl::StrCat("tree: ", what)); };
  if (!std::isfinite(base_) || base_ <= 1.0) return bad(absl::StrCat("base ", base_));
  for (size_t size : {level_.size(), max_dist_.size(), parent_dist_.size(), parent_.size(),
                      subtree_min_id_.size()}) {
    if (static_cast<int64_t>(size) != n) return bad("arrays of different lengths");
  }
  if (static_cast<int64_t>(first_child_.size()) != n + 1 ||
      static_cast<int64_t>(ring_offset_.size()) != n + 1) {
    return bad("offset arrays of the wrong length");
  }
  std::vector<char> seen(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = point_[node];
    if (id < 0 || id >= n || seen[id]) return bad(absl::StrCat("id ", id, " at node ", node));
    seen[id] = 1;
    if (!(max_dist_[node] >= 0.0) || !std::isfinite(max_dist_[node]) ||
        !(parent_dist_[node] >= 0.0) || !std::isfinite(parent_dist_[node])) {
      return bad(absl::StrCat("node ", node, ": bad distance bound"));
    }
  }
  if (first_child_[0] != std::min<int64_t>(1, n) || first_child_[n] != n || parent_[0] != -1) {
    return bad("child ranges do not cover nodes 1..n-1");
  }
  for (int64_t node = 0; node < n; ++node) {
    const int64_t begin = first_child_[node];
    const int64_t end = first_child_[node + 1];
    if (begin <= node || end < begin || end > n) {
      return bad(absl::StrCat("node ", node, ": child range [", begin, ", ", end, ")"));
    }
    for (int64_t c = begin; c < end; ++c) {
      if (parent_[c] != node) return bad(absl::StrCat("node ", c, ": wrong parent"));
      if (level_[c] >= level_[node]) return bad(absl::StrCat("node ", c, ": level not below"));
    }
  }
  if (ring_offset_[0] != 0 || ring_offset_[n] != static_cast<int64_t>(ring_.size())) {
    return bad("ring offsets do not match the rings");
  }
  std::vector<int64_t> depth(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    if (node > 0) depth[node] = depth[parent_[node]] + 1;
    if (ring_offset_[node + 1] - ring_offset_[node] != depth[node]) {
      return bad(absl::StrCat("node ", node, ": ring count differs from its depth"));
    }
  }
  for (const auto& [lo, hi] : ring_) {
    if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi) return bad("a ring is not an interval");
  }
  std::vector<int64_t> min_id(point_.begin(), point_.end());
  for (int64_t node = n - 1; node > 0; --node) {
    min_id[parent_[node]] = std::min(min_id[parent_[node]], min_id[node]);
  }
  for (int64_t node = 0; node < n; ++node) {
    if (subtree_min_id_[node] != min_id[node]) {
      return bad(absl::StrCat("node ", node, ": wrong subtree minimum id"));
    }
  }
  return absl::OkStatus();
}

}  // namespace rcknn::core
