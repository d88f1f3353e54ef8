#!/usr/bin/python3
"""The GP loop through the `rcknn` tool against the real server binary:

- `rcknn reparameterize` makes an index over another's points with the kernel flags given
  (the rest of the source's spec kept), without an upload; --source_tree=refit keeps the
  source's tree, and the new index answers as an index of the same spec built from uploaded
  points does;
- an unknown source is NOT_FOUND (exit 1);
- `rcknn search-all --ordering=NAME --ranks` labels its rows with ranks, not ids.

  gp_loop_cli_e2e_test.py --server=BIN --rcknn=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
"""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
K = 10


def run_rcknn(address, *args):
    return subprocess.run([ARGS["rcknn"], f"--server={address}", *args], capture_output=True,
                          text=True, timeout=120, check=False)


class GpLoopTool(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ARGS["work_dir"], exist_ok=True)
        cls.server = rcknn_e2e.start_server(cls, ARGS["server"],
                                            os.path.join(ARGS["work_dir"], "server.log"))
        cls.points = os.path.join(ARGS["data_dir"], "small.points.f64")

    def rcknn(self, *args):
        result = run_rcknn(self.server.address, *args)
        self.assertEqual(result.returncode, 0, f"rcknn {' '.join(args)}: {result.stderr}")
        return result.stdout

    def make(self, index, *kernel_flags):
        self.rcknn("create", f"--index={index}", "--dim=2", "--inducing=64",
                   "--inducing_seed=3", *kernel_flags)
        self.rcknn("upload", f"--index={index}", f"--input={self.points}", "--format=f64")
        self.rcknn("build", f"--index={index}")

    def all_points(self, index, name):
        prefix = os.path.join(ARGS["work_dir"], name)
        self.rcknn("search-all", f"--index={index}", f"--k={K}", "--predecessor",
                   f"--output={prefix}")
        return (rcknn_e2e.read_array(prefix + ".ids.i64", "q"),
                rcknn_e2e.read_array(prefix + ".dists.f64", "d"))

    def test_reparameterize_changes_only_the_flags_given(self):
        self.make("source", "--kernel=matern32", "--variance=1.5", "--lengthscale=0.9")
        out = self.rcknn("reparameterize", "--index=derived", "--source=source",
                         "--lengthscale=0.5", "--source_tree=refit")
        self.assertIn("tree: the source's, refitted", out)
        status = self.rcknn("status", "--index=derived")
        self.assertIn("ready", status)
        # The same spec from uploaded points: Matern 3/2 and variance 1.5 kept from the source.
        self.make("direct", "--kernel=matern32", "--variance=1.5", "--lengthscale=0.5")
        ids, dists = self.all_points("derived", "derived")
        ref_ids, ref_dists = self.all_points("direct", "direct")
        self.assertEqual(rcknn_e2e.compare_answers(ids, dists, ref_ids, ref_dists, K), "")
        # The source's kernel gives other answers (so the comparison above can fail).
        src_ids, src_dists = self.all_points("source", "source")
        self.assertNotEqual(rcknn_e2e.compare_answers(src_ids, src_dists, ref_ids, ref_dists, K),
                            "")
        missing = run_rcknn(self.server.address, "reparameterize", "--index=x",
                            "--source=missing", "--lengthscale=0.5")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("NOT_FOUND", missing.stderr)

    def test_search_all_with_ranks_labels_rows_by_rank(self):
        self.make("ordered", "--kernel=rbf", "--lengthscale=0.7")
        self.rcknn("order", "--index=ordered", "--name=mm", "--method=maximin_residual")
        out = self.rcknn("search-all", "--index=ordered", f"--k={K}", "--ordering=mm",
                         "--predecessor", "--ranks", "--print=3")
        rows = [line.strip() for line in out.splitlines() if line.startswith("  ")]
        self.assertEqual(len(rows), 3, out)
        for row in rows:
            self.assertTrue(row.startswith("rank "), row)
        out = self.rcknn("search-all", "--index=ordered", f"--k={K}", "--ordering=mm",
                         "--predecessor", "--print=3")
        rows = [line.strip() for line in out.splitlines() if line.startswith("  ")]
        self.assertTrue(rows and all(row.startswith("id ") for row in rows), out)


if __name__ == "__main__":
    rcknn_e2e.main()
