"""Training across nodes with torchrun: two local 'nodes' of one process each meet through a c10d
rendezvous (gloo) and train one fold together, as the README's multi-node command does."""
import os
import socket
import subprocess
import sys
from pathlib import Path

MODEL = "nndoseTrainer__nndosePlans__3d_fullres"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_rendezvous_and_train_one_fold(env, tmp_path):
    train = Path(sys.executable).parent / "nndose_train"
    port = _port()
    nodes = []
    for rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "nndose_test",
                   "--no-python", str(train), "42", "3d_fullres", "all", "--epochs", "2", "--iterations_per_epoch", "2",
                   "--device", "cpu"]
        log = open(tmp_path / f"node{rank}.log", "w")
        nodes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()), log))
    for proc, log in nodes:
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{log.name}").read_text()[-2000:]
        log.close()
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    fold = env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all"
    assert len((fold / "training_log.txt").read_text().splitlines()) == 2 and (fold / "checkpoint_final.pth").is_file()
    # one process group: exactly one rank (the main one) logged the epochs, both finished
    assert sum("train loss" in log for log in logs) == 1 and all(": done" in log for log in logs)
