"""A failure while scoring one answer gives that answer 0 and is counted; the others are scored normally."""
from common.records import RewardContext, Rollout
from orchestration.driver.rollout import rollout_metrics
from reward_service.worker import RewardWorker


def _rollout(text: str) -> Rollout:
    return Rollout("s", [1, 2], [3, 4], text, [-0.1, -0.2], 0, "stop")


def test_error_on_one_answer_scores_zero_and_counts():
    worker = RewardWorker()
    good = RewardContext("s", "colour", "red")
    broken = RewardContext("t", "colour", "not-a-colour")  # corrupt ground truth: the reward raises
    groups = worker.score([[_rollout("red"), _rollout("blue")], [_rollout("red")]], [good, broken])
    assert [s.reward for s in groups[0]] == [1.0, 0.2]
    assert groups[1][0].reward == 0.0 and "not-a-colour" in groups[1][0].error
    m = rollout_metrics(groups)
    assert m["reward/errors"] == 1.0
    assert m["reward/mean"] == (1.0 + 0.2 + 0.0) / 3


def test_unknown_task_is_a_counted_error():
    worker = RewardWorker()
    [[scored]] = worker.score([[_rollout("red")]], [RewardContext("s", "nope", "red")])
    assert scored.reward == 0.0 and "no reward for task 'nope'" in scored.error
