#!/usr/bin/python3
"""`rcknn load` against the real rcknn-server binary: the two ghz scenarios of deploy/ghz (one
query id per Search, and 64 per Search; k = 50, with each config's concurrency) on a small
gold-like index built with the `rcknn` tool. Checks every field of the ghz-style JSON report and
that no call failed; then a weighted mix at a target rate, and a mix that fails on purpose
(errors must be counted, not fatal).

  load_test.py --server=BIN --rcknn=BIN --ghz_dir=deploy/ghz --work_dir=DIR \
      [--proto_dir=.. --data_dir=..]   (accepted for symmetry with the other e2e tests)
"""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
# Queries per request of each config (deploy/ghz/README.md; its request files hold them).
SCENARIOS = {"search_single.json": 1, "search_batch64.json": 64}
# Requests per scenario here: enough for stable percentiles, small enough for a quick test.
MAX_TOTAL = 1500
PERCENTAGES = [10, 25, 50, 75, 90, 95, 99]


class LoadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ARGS["work_dir"], exist_ok=True)
        cls.server = rcknn_e2e.start_server(cls, ARGS["server"],
                                            os.path.join(ARGS["work_dir"], "server.log"))
        points = os.path.join(ARGS["work_dir"], "points.f64")
        cls.rcknn("gen", "--n=4096", "--dim=3", "--seed=3", f"--output={points}")
        cls.rcknn("create", "--index=gold", "--dim=3", "--kernel=rbf", "--variance=1",
                  "--lengthscale=1", "--inducing=128")
        cls.rcknn("upload", "--index=gold", f"--input={points}", "--format=f64", "--dim=3")
        cls.rcknn("build", "--index=gold", "--wait=true")

    @classmethod
    def tearDownClass(cls):
        code = cls.server.terminate()
        assert code == 0, cls.server.log()

    @classmethod
    def rcknn(cls, *args, check=True):
        result = subprocess.run([ARGS["rcknn"], f"--server={cls.server.address}", *args],
                                capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"rcknn {' '.join(args)} failed:\n{result.stderr}")
        return result

    def load(self, *args):
        result = self.rcknn("load", "--index=gold", *args)
        return json.loads(result.stdout)

    def check_report(self, report, count):
        self.assertEqual(set(report), {"count", "total", "average", "fastest", "slowest", "rps",
                                       "latencyDistribution", "statusCodeDistribution",
                                       "errorDistribution"})
        self.assertEqual(report["count"], count)
        self.assertGreater(report["total"], 0)
        self.assertLessEqual(report["fastest"], report["average"])
        self.assertLessEqual(report["average"], report["slowest"])
        self.assertGreater(report["fastest"], 0)
        self.assertAlmostEqual(report["rps"], count / (report["total"] * 1e-9), delta=0.01 * count)
        distribution = report["latencyDistribution"]
        self.assertEqual([d["percentage"] for d in distribution], PERCENTAGES)
        latencies = [d["latency"] for d in distribution]
        self.assertEqual(latencies, sorted(latencies))
        self.assertGreaterEqual(latencies[0], report["fastest"])
        self.assertLessEqual(latencies[-1], report["slowest"])

    def test_ghz_scenarios_without_errors(self):
        for config_name, batch in SCENARIOS.items():
            with self.subTest(config=config_name):
                with open(os.path.join(ARGS["ghz_dir"], config_name)) as f:
                    config = json.load(f)
                self.assertEqual(config["call"], "rcknn.v1.Rcknn.Search")
                total = min(config["total"], MAX_TOTAL)
                report = self.load("--k=50", f"--concurrency={config['concurrency']}",
                                   f"--total={total}", f"--batch={batch}", "--seed=7")
                self.check_report(report, total)
                self.assertEqual(report["statusCodeDistribution"], {"OK": total})
                self.assertEqual(report["errorDistribution"], {})

    def test_mix_at_a_target_rate_for_a_duration(self):
        report = self.load("--k=10", "--concurrency=4", "--duration=1s", "--rps=200",
                           "--mix=search:3,get_index:1")
        # 200 requests/s for 1 s, give or take the last request in flight.
        self.assertGreaterEqual(report["count"], 150)
        self.assertLessEqual(report["count"], 201)
        self.check_report(report, report["count"])
        self.assertEqual(report["statusCodeDistribution"], {"OK": report["count"]})

    def test_failed_calls_are_counted(self):
        # k over the limit of one answer message: every Search fails, GetIndex does not.
        report = self.load("--k=100000000", "--concurrency=2", "--total=40", "--batch=64",
                           "--mix=search:1,get_index:1")
        self.check_report(report, 40)
        codes = report["statusCodeDistribution"]
        self.assertEqual(sum(codes.values()), 40)
        self.assertGreater(codes.get("ResourceExhausted", 0) + codes.get("InvalidArgument", 0), 0)
        self.assertEqual(sum(report["errorDistribution"].values()), 40 - codes.get("OK", 0))
        for error in report["errorDistribution"]:
            self.assertTrue(error.startswith("rpc error: code = "), error)

    def test_bad_flags_fail_before_sending(self):
        result = self.rcknn("load", "--index=gold", "--total=5", "--mix=delete:1", check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("--mix", result.stderr)
        result = self.rcknn("load", "--index=gold", check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("--total", result.stderr)


if __name__ == "__main__":
    rcknn_e2e.main()
