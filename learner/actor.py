"""Ray actor shell over `LearnerRank` (one per ZeRO-3 rank)."""
from __future__ import annotations

import ray


@ray.remote
class LearnerActor:
    """Created empty so the driver can ask rank 0 for a rendezvous address before any rank initialises."""

    def address(self) -> tuple[str, int]:
        """A free address on this actor's node: for rank 0's DeepSpeed rendezvous and for the sync group."""
        from common.sync_group import free_port

        return free_port()

    def check_storage(self, out_dir: str, token: str, model_path: str) -> tuple[str, str]:
        """Before `setup`: this node sees the driver's run directory and the model (common/storage.py). Returns
        (Ray node id, working directory) for the driver's log."""
        import os

        from common.storage import check_shared_storage

        check_shared_storage(out_dir, token, model_path)
        return ray.get_runtime_context().get_node_id(), os.getcwd()

    def setup(self, *args, **kwargs) -> None:
        """Build this rank's `LearnerRank` (loads the model under ZeRO-3; arguments as its constructor)."""
        from learner.rank import LearnerRank

        self.rank = LearnerRank(*args, **kwargs)

    def train_step(self, shard):
        """`LearnerRank.train_step` on this rank's shard; returns its metrics."""
        return self.rank.train_step(shard)

    def weight_plan(self):
        """`LearnerRank.weight_plan`."""
        return self.rank.weight_plan()

    def init_weight_sync(self, host: str, port: int, world_size: int) -> None:
        """Join the weight-sync group (rank 0 hosts it at `host:port`)."""
        return self.rank.init_weight_sync(host, port, world_size)

    def sync_weights(self):
        """Send this rank's partitions to every engine; returns timing and byte counts."""
        return self.rank.sync_weights()

    def state_checksums(self):
        """float64 sum of each full parameter (collective: call on every rank)."""
        return self.rank.state_checksums()

    def get_parameter(self, name: str):
        """One full parameter as a numpy array (collective)."""
        return self.rank.get_parameter(name)

    def save(self, directory: str) -> None:
        """This rank's part of a resumable checkpoint under `directory` (collective)."""
        return self.rank.save(directory)

    def load(self, directory: str) -> None:
        """Restore what `save` wrote (collective, same number of ranks)."""
        return self.rank.load(directory)

    def export_hf(self, directory: str, processor_path: str) -> None:
        """A `from_pretrained` checkpoint of the policy in `directory`, rank 0 writing (collective)."""
        return self.rank.export_hf(directory, processor_path)

