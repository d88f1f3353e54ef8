#!/usr/bin/python3
"""The suite's last check (a ctest FIXTURES_CLEANUP test): no rcknn-server started by a test of
this build outlives the tests. A test's processes are told apart from others (a quickstart
server started by hand from the same build, another build's tests) by the environment ctest
gives the tests that start servers: RCKNN_TEST_MARK=<build dir>. Stray servers are listed, then
killed, and the check fails.

  no_stray_servers.py --server=BIN --mark=BUILD_DIR
"""
import os
import signal
import sys


def main():
    args = dict(arg.lstrip("-").partition("=")[::2] for arg in sys.argv[1:])
    binary = os.path.realpath(args["server"])
    mark = f"RCKNN_TEST_MARK={args['mark']}".encode()
    strays = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environment = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        if exe == binary and mark in environment:
            strays.append((int(pid), command))
    for pid, command in strays:
        print(f"no_stray_servers: pid {pid} still running after the tests: {command}",
              file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if strays:
        print(f"no_stray_servers: {len(strays)} rcknn-server(s) left running by the tests "
              "(killed now); a test does not stop what it starts", file=sys.stderr)
        return 1
    print("no_stray_servers: no rcknn-server left running by the tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
