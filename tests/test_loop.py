"""The training loop reads a step's loss back from the device only when it logs it (so that a GPU
never waits for the host between steps), yet still checks every loss before anything is saved
and names the exact iteration of the first non-finite one."""

import json

import pytest

from ref_numpy.train.batches import MicroBatchStreams, load_training_data
from ref_numpy.train.config import TrainConfig
from ref_numpy.train.loop import LoopState, Trainer, TrainingFailed, train_loop
from ref_numpy.train.run_log import RunLog


class Unread:
    """A number still on the device: float() reads it back, and the reading is recorded."""

    def __init__(self, value: float, it: int, events: list) -> None:
        self.value, self.it, self.events = value, it, events

    def __float__(self) -> float:
        self.events.append(("read", self.it))
        return self.value


class RecordingTrainer(Trainer):
    def __init__(self, losses: dict[int, float]) -> None:
        self.losses, self.events, self.it = losses, [], 0

    def step(self, micro_batches, lr):
        it = self.it
        self.it += 1
        self.events.append(("step", it))
        return Unread(self.losses.get(it, 2.0), it, self.events), Unread(1.0, it, self.events)

    def estimate_loss(self, batches):
        return {"train": 2.0, "val": 2.0}

    def save(self, state):
        self.events.append(("save", state.iter_num))


def run(tmp_path, corpus_dir, trainer: RecordingTrainer) -> None:
    config = TrainConfig(
        data_dir=str(corpus_dir), out_dir=str(tmp_path), max_iters=12, eval_interval=8,
        log_interval=4, eval_iters=1, batch_size=2, block_size=8,
    )  # fmt: skip
    data = load_training_data(config)
    log = RunLog(config.out_dir, config)
    train_loop(config, data, log, trainer, MicroBatchStreams(data, config), LoopState())


def test_losses_are_read_back_at_log_steps_and_all_before_a_save(tmp_path, corpus_dir):
    trainer = RecordingTrainer({})
    run(tmp_path, corpus_dir, trainer)
    events = trainer.events
    assert [it for kind, it in events if kind == "step"] == list(range(12))
    # step 1's loss is read back only after step 4 (the next logged step) has been queued
    assert events.index(("read", 1)) > events.index(("step", 4))
    for it in range(12):  # every step's loss and gradient norm is read once
        assert events.count(("read", it)) == 2
    saves = [(position, at) for position, (kind, at) in enumerate(events) if kind == "save"]
    assert [at for _, at in saves] == [8, 12]
    for position, saved_at in saves:  # each save comes after every earlier step was read
        read_before = {it for kind, it in events[:position] if kind == "read"}
        assert read_before == set(range(saved_at))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == [0, 4, 8]
    assert all(r["tokens_per_second"] > 0 for r in steps)


def test_a_non_finite_loss_between_logs_is_named_and_never_saved(tmp_path, corpus_dir):
    trainer = RecordingTrainer({6: float("nan")})  # not a logged step (4, 8); before the save at 8
    with pytest.raises(TrainingFailed, match="became nan at iteration 6"):
        run(tmp_path, corpus_dir, trainer)
    assert ("step", 7) in trainer.events  # the run went on past it, unread...
    assert not any(kind == "save" for kind, _ in trainer.events)  # ...but saved nothing
