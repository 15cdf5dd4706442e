"""The Kafka broker's jars: fetched from Maven Central through scripts/kafka/pom.xml, cached.

They land in <repo>/.cache/kafka/<version>/libs. Standard library only. scripts/kafka_local.py
runs the broker on them and re-exports these names, so `kafka_local.fetch()` and
`kafka_local.KafkaLocalError` keep working for its importers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
CACHE_ROOT = REPO_ROOT / ".cache" / "kafka"


class KafkaLocalError(RuntimeError):
    """Fetching, starting or stopping the local broker failed."""


def kafka_version() -> str:
    """The Kafka version pinned in scripts/kafka/pom.xml."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise KafkaLocalError(f"no <kafka.version> in {POM}")
    return match.group(1).strip()


def libs_dir(version: str | None = None) -> Path:
    return CACHE_ROOT / (version or kafka_version()) / "libs"


def fetch(version: str | None = None, quiet: bool = False) -> Path:
    """Copy the broker's runtime jars into the cache (once); return the libs directory."""
    version = version or kafka_version()
    libs = libs_dir(version)
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaLocalError("mvn not found: install Maven (Debian package 'maven')")
    staging = libs.with_name(f"libs.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    if not quiet:
        print(f"fetching Kafka {version} jars into {libs}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaLocalError(f"mvn failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    (staging / ".complete").write_text(version + "\n")
    # Rename last, so a half-finished fetch is never taken for a complete one.
    try:
        staging.rename(libs)
    except OSError:
        # Another process (a parallel test run) finished first: keep its copy.
        shutil.rmtree(staging, ignore_errors=True)
        if not (libs / ".complete").exists():
            raise
    return libs
