"""Child process of tests/test_fuzz_cli.py: runs ``refvae.cli.main.main`` on each argv read from
stdin (one JSON list per line) under the limits given on the command line, and prints one JSON
result per case: the exit code (or ``"traceback"``/``"timeout"``), stderr, and the seconds it took.

Limits: ``resource.setrlimit`` caps the address space (``RLIMIT_AS``) and CPU seconds of the
whole child; ``signal.alarm`` caps each case's wall time.
"""
import contextlib
import io
import json
import resource
import signal
import sys
import time
import traceback


class Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise Timeout()


def main():
    address_space, cpu_seconds, per_case = (int(a) for a in sys.argv[1:4])
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    from refvae.cli.main import main as refvae_main

    signal.signal(signal.SIGALRM, _alarm)
    for line in sys.stdin:
        argv = json.loads(line)
        err, out = io.StringIO(), io.StringIO()
        t = time.perf_counter()
        signal.alarm(per_case)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                try:
                    code = refvae_main(argv)
                except SystemExit as exc:
                    code = exc.code
        except Timeout:
            code = "timeout"
        except BaseException:  # noqa: BLE001 - what the test looks for
            code = "traceback"
            err.write(traceback.format_exc())
        finally:
            signal.alarm(0)
        print(json.dumps({"argv": argv, "code": code, "stderr": err.getvalue(),
                          "seconds": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
    main()
