from __future__ import annotations

import numpy as np

from mlm_lightning.data import MLMSampler


def indices(sampler: MLMSampler) -> list[int]:
    return [key[1] for key in sampler]  # (epoch, row, batch)


def test_evaluation_shards_cover_every_row_once() -> None:
    shards = [indices(MLMSampler(103, shuffle=False, rank=r, world_size=4, pad=False)) for r in range(4)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(103))
    assert [len(MLMSampler(103, shuffle=False, rank=r, world_size=4, pad=False)) for r in range(4)] == [
        len(s) for s in shards
    ]


def test_training_shards_are_equal_length_and_reshuffled_per_epoch() -> None:
    samplers = [MLMSampler(103, seed=1, rank=r, world_size=4) for r in range(4)]
    shards = [indices(s) for s in samplers]
    assert {len(s) for s in shards} == {26} and all(len(s) == 26 for s in samplers)
    assert set().union(*map(set, shards)) == set(range(103))
    for s in samplers:
        s.set_epoch(1)
    assert [indices(s) for s in samplers] != shards
    assert all(key[0] == 1 for key in samplers[0])


def test_bucketing_groups_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=2000)

    def padding(order: list[int], batch: int = 16) -> int:
        return sum(
            int(lengths[order[i : i + batch]].max() * len(order[i : i + batch]) - lengths[order[i : i + batch]].sum())
            for i in range(0, len(order), batch)
        )

    plain = indices(MLMSampler(2000, seed=0))
    bucketed = indices(MLMSampler(2000, seed=0, batch_size=16, lengths=lengths))
    assert sorted(bucketed) == list(range(2000))
    assert padding(bucketed) < 0.1 * padding(plain)


def test_resume_skips_consumed_batches_of_that_epoch_only() -> None:
    full = indices(MLMSampler(50, seed=3, batch_size=4))
    s = MLMSampler(50, seed=3, batch_size=4)
    s.resume(epoch=0, consumed_batches=5)
    assert indices(s) == full[20:]
    assert indices(s) == full  # the skip applies once
    s.resume(epoch=0, consumed_batches=5)
    s.set_epoch(1)
    assert len(indices(s)) == 50


def test_a_resume_on_other_data_starts_them_at_the_top_of_the_epoch() -> None:
    from mlm_lightning.data.sampling import ResumableDataLoader

    full = indices(MLMSampler(50, seed=3, batch_size=4))
    for keep, expected in ((True, full[20:]), (False, full)):
        loader = ResumableDataLoader(list(range(50)), batch_size=4, sampler=MLMSampler(50, seed=3, batch_size=4))
        loader.keep_position = keep  # False: data.resume_with_changed_data found other data
        loader.load_state_dict({"epoch": 0, "consumed_batches": 5})
        assert indices(loader.sampler) == expected
