"""WaltzRL's RL batches: harmful and benign prompts in a fixed proportion (the fix for the stage-2 drift towards
always complying on the toy world's 41% harmful mix), each prompt repeated for its group baseline."""

from __future__ import annotations

from runner.safety.common import balance_prompts
from runner.safety.waltzrl_train import _batch_records
from runner.safety.world import ToySafetyWorld


def test_batches_hold_harmful_and_benign_prompts_in_a_fixed_proportion():
    train = ToySafetyWorld().records("train")  # 140 harmful of 340
    balanced = balance_prompts(train, 0.5, seed=0)
    assert sum(r.harmful for r in balanced) == sum(not r.harmful for r in balanced) == 200
    for seed in range(5):
        batch = _batch_records(balanced, 32, seed, group_size=4)  # 8 prompts, 4 episodes each
        assert sum(r.harmful for r in batch) == 16
        assert all(len({id(r) for r in batch[i:i + 4]}) == 1 for i in range(0, 32, 4))
        # the data's own mix: round(8 * 140 / 340) = 3 harmful prompts in every batch
        assert sum(r.harmful for r in _batch_records(train, 32, seed, group_size=4)) == 4 * 3
