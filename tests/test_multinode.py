"""Multi-node rehearsal on one machine: 2 nodes x 1 process (torchrun --nnodes 2, gloo on 127.0.0.1).

Each node's process is its node's *local* main process, so anything written by "the local main
process" would be written twice into a shared file system; only the global main process may
write run files, and every out-of-fold row is predicted exactly once.
"""

import socket
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.ddp import ENV, TORCHRUN, needs_torchrun
from tests.test_e2e import one_epoch_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_torchrun
def test_two_nodes_write_once_and_predict_every_oof_row_once(tmp_path, tiny_data):
    cfg = one_epoch_config(tmp_path, tiny_data)
    port = _free_port()
    env = {**ENV, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"}
    procs = [
        subprocess.Popen(
            [str(TORCHRUN), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
             "--master_addr", "127.0.0.1", "--master_port", str(port),
             "-m", "pipeline", "train", "--config", str(cfg)],  # fmt: skip
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    run_dir = tmp_path / "runs" / "smoke" / "simple_cnn" / "fold0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["processes"] == 2
    oof = np.load(run_dir / "oof.npz")
    folds = pd.read_csv(tiny_data["folds_file"], dtype={"id": str})
    assert sorted(oof["ids"]) == sorted(folds.loc[folds["fold"] == 0, "id"])  # every row, once
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 1/1: train_loss") == 1  # written by the global main process only
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 1
    node1_lines = outs[1][1].count("epoch 1/1: train_loss")
    assert node1_lines == 0, "node 1 logged the epoch: only the global main process should"
