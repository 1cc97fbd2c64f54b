"""The process-wide malloc settings, and the operator's way to override them."""

import subprocess
import sys

PROBE = "from shipper.malloc_tuning import tune_malloc; print(tune_malloc())"


def probe(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_glibc_gets_the_shippers_thresholds():
    assert probe({}) == ("True" if sys.platform == "linux" else "False")


def test_thresholds_in_the_environment_win():
    assert probe({"MALLOC_TRIM_THRESHOLD_": "131072"}) == "False"
