"""The reward pool heals: a killed or hung reward actor is replaced and its calls are scored elsewhere, exactly once
each, with real scores; only a call that keeps failing scores 0, counted."""
import pytest
import ray

from common.records import RewardContext, Rollout
from reward_service.config import RewardConfig
from reward_service.pool import RewardPool

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=4, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _groups(n: int):
    """n groups of two answers to 'what colour': the first right (1.0), the second wrong (0.2)."""
    out = []
    for i in range(n):
        truth = ["red", "green", "blue", "yellow"][i % 4]
        wrong = "blue" if truth != "blue" else "red"
        rollouts = [Rollout(f"s{i}", [1], [2], text, [-0.1], 0, "stop") for text in (truth, wrong)]
        out.append((ray.put([rollouts]), [RewardContext(f"s{i}", "colour", truth)]))
    return out


def _assert_all_scored_once(jobs):
    for i, job in enumerate(jobs):
        [group] = job.result
        assert [s.rollout.sample_id for s in group] == [f"s{i}", f"s{i}"]
        assert [s.reward for s in group] == [1.0, 0.2], "a real score, not a failure's 0"
        assert all(s.error is None for s in group)


def test_a_reward_actor_killed_mid_step_is_replaced_and_its_groups_rescored(ray_local):
    pool = RewardPool(RewardConfig(num_workers=2, timeout_s=30, max_retries=2, cpus_per_worker=0.5))
    # Hold actor 0 busy so the calls queued on it are still pending when it is killed.
    ray.get([a.busy_seconds.remote() for a in pool.actors], timeout=60)
    pool.actors[0].block.remote(2.0)
    victim = pool.actors[0]
    jobs = [pool.submit(ref, ctx) for ref, ctx in _groups(6)]
    assert sum(job.handle is victim for job in jobs) == 3
    ray.kill(victim, no_restart=True)
    stats = pool.collect(jobs)
    _assert_all_scored_once(jobs)
    assert stats.retries == 3 and stats.failed_groups == 0 and stats.timeouts == 0
    assert pool.actors[0] is not victim  # replaced
    assert ray.get(pool.actors[0].busy_seconds.remote(), timeout=60) >= 0  # and the replacement answers


def test_a_hung_reward_actor_times_out_and_its_calls_are_scored_elsewhere(ray_local):
    pool = RewardPool(RewardConfig(num_workers=2, timeout_s=3, max_retries=2, cpus_per_worker=0.5))
    ray.get([a.busy_seconds.remote() for a in pool.actors], timeout=60)
    hung = pool.actors[1]
    hung.block.remote(600)  # hangs far past reward.timeout_s
    jobs = [pool.submit(ref, ctx) for ref, ctx in _groups(4)]
    stats = pool.collect(jobs)
    _assert_all_scored_once(jobs)
    assert stats.timeouts >= 1 and stats.retries == 2 and stats.failed_groups == 0
    assert pool.actors[1] is not hung


def test_after_max_retries_a_group_scores_zero_counted(ray_local):
    pool = RewardPool(RewardConfig(num_workers=1, timeout_s=2, max_retries=1, cpus_per_worker=0.5))
    ray.get(pool.actors[0].busy_seconds.remote(), timeout=60)
    [(ref, ctx)] = _groups(1)
    pool.actors[0].block.remote(600)
    job = pool.submit(ref, ctx)
    # The replacement hangs too: every attempt fails.
    original_new_actor = pool._new_actor

    def hanging_actor():
        actor = original_new_actor()
        actor.block.remote(600)
        return actor

    pool._new_actor = hanging_actor
    stats = pool.collect([job])
    assert stats.failed_groups == 1 and stats.retries == 1 and stats.timeouts == 2
    [group] = job.result
    assert [s.reward for s in group] == [0.0, 0.0] and all("reward failed 2 times" in s.error for s in group)
