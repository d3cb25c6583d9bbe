"""Seeded splits and minibatching."""

import pytest
import torch

from pyrobust.data import DSprites, DSpritesDataset, minibatches, train_test_split


def test_split_of_a_count_is_a_seeded_partition():
    train, test = train_test_split(1000, test_fraction=0.25, seed=0)
    assert train.dtype == torch.long and len(train) == 750 and len(test) == 250
    torch.testing.assert_close(torch.cat([train, test]).sort().values, torch.arange(1000))
    assert (train.diff() > 0).all() and (test.diff() > 0).all()  # sorted, no repeats
    again = train_test_split(1000, test_fraction=0.25, seed=0)
    other = train_test_split(1000, test_fraction=0.25, seed=1)
    assert torch.equal(test, again[1]) and not torch.equal(test, other[1])
    # a random subset, not a block: both halves of the range are represented
    assert 0.3 < float((test < 500).double().mean()) < 0.7


def test_split_sizes_at_the_ends():
    assert [len(t) for t in train_test_split(10, 0.3, seed=0)] == [7, 3]
    assert [len(t) for t in train_test_split(737_280, 0.1, seed=0)] == [663_552, 73_728]
    assert [len(t) for t in train_test_split(5, 0.0, seed=0)] == [5, 0]
    assert [len(t) for t in train_test_split(5, 1.0, seed=0)] == [0, 5]
    assert [len(t) for t in train_test_split(0, 0.5, seed=0)] == [0, 0]


def test_split_of_tensors_follows_the_split_of_indices():
    x = torch.arange(40.0).view(20, 2)
    y = torch.arange(20)
    train_idx, test_idx = train_test_split(20, 0.2, seed=5)
    x_train, x_test = train_test_split(x, 0.2, seed=5)
    torch.testing.assert_close(x_test, x[test_idx])
    torch.testing.assert_close(x_train, x[train_idx])
    (xt, yt), (xs, ys) = train_test_split((x, y), 0.2, seed=5)
    torch.testing.assert_close(xt[:, 1], 2.0 * yt.float() + 1)
    torch.testing.assert_close(ys, test_idx)
    torch.testing.assert_close(xs[:, 0], 2.0 * ys.float())  # rows stay paired
    torch.testing.assert_close(yt, train_idx)
    gen = torch.Generator().manual_seed(5)
    torch.testing.assert_close(train_test_split(20, 0.2, seed=gen)[1], test_idx)


def test_split_bad_input():
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(10, 1.5)
    with pytest.raises(ValueError, match=">= 0"):
        train_test_split(-1, 0.5)
    with pytest.raises(ValueError, match="first dimension"):
        train_test_split((torch.zeros(3), torch.zeros(4)), 0.5)
    with pytest.raises(TypeError, match="n_or_tensor"):
        train_test_split("10", 0.5)
    with pytest.raises(TypeError, match="seed"):
        train_test_split(10, 0.5, seed=1.5)


def test_minibatches_cover_every_item_once_in_a_seeded_order():
    x = torch.arange(103.0).view(103, 1)
    batches = list(minibatches(x, 10, seed=0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    seen = torch.cat(batches).view(-1)
    torch.testing.assert_close(seen.sort().values, x.view(-1))
    assert not torch.equal(seen, x.view(-1))  # shuffled
    torch.testing.assert_close(torch.cat(list(minibatches(x, 10, seed=0))).view(-1), seen)
    ordered = torch.cat(list(minibatches(x, 10, shuffle=False))).view(-1)
    torch.testing.assert_close(ordered, x.view(-1))
    assert [len(b) for b in minibatches(x, 10, seed=0, drop_last=True)] == [10] * 10
    assert len(minibatches(x, 10)) == 11 and len(minibatches(x, 10, drop_last=True)) == 10
    assert len(minibatches(x[:100], 10)) == 10 and len(minibatches(x[:0], 10)) == 0


def test_minibatches_with_a_generator_advance_per_epoch():
    x = torch.arange(50)
    gen = torch.Generator().manual_seed(0)
    first = torch.cat(list(minibatches(x, 16, seed=gen)))
    second = torch.cat(list(minibatches(x, 16, seed=gen)))
    assert not torch.equal(first, second)
    # one iterable, several epochs: an int seed repeats its order, a Generator moves on
    fixed = minibatches(x, 16, seed=0)
    assert torch.equal(torch.cat(list(fixed)), torch.cat(list(fixed)))
    moving = minibatches(x, 16, seed=torch.Generator().manual_seed(0))
    epoch_1, epoch_2 = torch.cat(list(moving)), torch.cat(list(moving))
    torch.testing.assert_close(epoch_1, first)
    torch.testing.assert_close(epoch_2, second)
    replay = torch.Generator().manual_seed(0)
    torch.testing.assert_close(torch.cat(list(minibatches(x, 16, seed=replay))), first)


def test_minibatches_of_tuples_and_datasets():
    x, y = torch.arange(20.0), torch.arange(20)
    for bx, by in minibatches((x, y), 6, seed=1):
        torch.testing.assert_close(bx.long(), by)
    for bx, by in minibatches(torch.utils.data.TensorDataset(x, y), 6, seed=1):
        torch.testing.assert_close(bx.long(), by)

    class Squares(torch.utils.data.Dataset):  # a plain map-style Dataset: item by item
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i * i

    for bx, by in minibatches(Squares(), 3, seed=0):
        torch.testing.assert_close(bx.view(-1).long() ** 2, by)


def test_minibatches_render_dsprites_a_batch_at_a_time():
    idx = torch.arange(0, 737_280, 7_373)[:40]
    data = DSpritesDataset(idx)
    ds = DSprites()
    n = 0
    for imgs, factors in minibatches(data, 16, seed=0, device="cpu"):
        assert imgs.shape[1:] == (1, 64, 64)
        torch.testing.assert_close(imgs, ds.images(factors), rtol=0, atol=0)
        n += len(imgs)
    assert n == 40


def test_minibatches_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        minibatches(torch.zeros(4), 0)
    with pytest.raises(TypeError, match="data"):
        minibatches([1, 2, 3], 2)
    with pytest.raises(ValueError, match="0-d"):
        minibatches(torch.tensor(1.0), 2)


@pytest.mark.gpu
def test_minibatches_and_splits_on_the_gpu():
    x = torch.arange(10.0)
    batch = next(iter(minibatches(x, 4, seed=0, device="cuda")))
    assert batch.device.type == "cuda"
    cpu = next(iter(minibatches(x, 4, seed=0)))
    torch.testing.assert_close(batch.cpu(), cpu)
    on_gpu = next(iter(minibatches(x.cuda(), 4, seed=0)))  # same order on every device
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), cpu)
    train, test = train_test_split(x.cuda(), 0.3, seed=0)
    assert train.device.type == test.device.type == "cuda"
    torch.testing.assert_close(test.cpu(), train_test_split(x, 0.3, seed=0)[1])
