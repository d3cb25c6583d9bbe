"""The procedural dSprites grid against its definition (THEORY-free: pure geometry and counting)."""

import math

import numpy as np
import pytest
import torch

from pyrobust.data import DSprites, DSpritesDataset
from pyrobust.data import dsprites as dsprites_module

SIZES = (1, 3, 6, 40, 32, 32)
SQUARE, ELLIPSE, HEART = 0, 1, 2


@pytest.fixture(scope="module")
def ds():
    return DSprites()


def one(shape=0, scale=5, orientation=0, pos_x=16, pos_y=16):
    return torch.tensor([[0, shape, scale, orientation, pos_x, pos_y]])


def centroid(img: torch.Tensor) -> tuple[float, float]:
    """(row, col) centroid in pixel-index units of a (..., 64, 64) binary image."""
    img = img.reshape(64, 64).double()
    r = torch.arange(64, dtype=torch.float64)
    m = img.sum()
    return float((img.sum(1) * r).sum() / m), float((img.sum(0) * r).sum() / m)


def centre_px(level: int) -> int:
    """The documented placement: round(14 + 36 * pos), pos = level / 31."""
    return math.floor(14 + 36 * level / 31 + 0.5)


# -- the grid --------------------------------------------------------------------------------


def test_grid_definition(ds):
    assert ds.factor_names == ("color", "shape", "scale", "orientation", "posX", "posY")
    assert ds.factor_sizes == SIZES
    assert ds.num_factors == 6
    assert len(ds) == 737_280 == math.prod(SIZES)
    assert ds.shape_names == ("square", "ellipse", "heart")
    expected = [
        np.ones(1),
        np.arange(1.0, 4.0),
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2 * np.pi, 40),
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    ]
    for k, (name, want) in enumerate(zip(ds.factor_names, expected, strict=True)):
        np.testing.assert_allclose(ds.factor_grid(k).numpy(), want, rtol=0, atol=1e-15)
        np.testing.assert_allclose(ds.factor_grid(name).numpy(), want, rtol=0, atol=1e-15)


def test_factor_values_match_the_grid(ds):
    f = ds.sample_factors(500, seed=1)
    v = ds.factor_values(f)
    assert v.shape == (500, 6) and v.dtype == torch.float64
    for k in range(6):
        torch.testing.assert_close(v[:, k], ds.factor_grid(k)[f[:, k]], rtol=0, atol=0)
    assert ds.factor_values(f, dtype=torch.float32).dtype == torch.float32
    # extreme rows, as the original's latents_values
    ends = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 2, 5, 39, 31, 31]])
    torch.testing.assert_close(
        ds.factor_values(ends),
        torch.tensor([[1, 1, 0.5, 0, 0, 0], [1, 3, 1, 2 * math.pi, 1, 1]], dtype=torch.float64),
    )


def test_index_factor_round_trip_random_and_edges(ds):
    gen = torch.Generator().manual_seed(0)
    strides = [245760, 40960, 1024, 32, 1]
    edges = [0, 1, 31, 32, 1023, 1024, 40959, 40960, 245759, 245760, 737278, 737279]
    edges += [s * k - 1 for s in strides for k in (1, 2) if s * k - 1 >= 0]
    index = torch.cat([torch.randint(0, 737_280, (5000,), generator=gen), torch.tensor(edges)])
    f = ds.index_to_factors(index)
    assert f.dtype == torch.long and f.shape == (index.numel(), 6)
    # row-major order, as the original file (independent reference: numpy)
    ref = np.stack(np.unravel_index(index.numpy(), SIZES), axis=-1)
    np.testing.assert_array_equal(f.numpy(), ref)
    torch.testing.assert_close(ds.factors_to_index(f), index, rtol=0, atol=0)
    # and factors -> index -> factors over every level of every factor
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(n) for n in (1, 3, 6, 40, 2, 2)], indexing="ij"), -1
    ).reshape(-1, 6)
    grid[:, 4:] *= 31
    torch.testing.assert_close(ds.index_to_factors(ds.factors_to_index(grid)), grid)
    # leading dims are kept
    assert ds.index_to_factors(index[:12].view(3, 4)).shape == (3, 4, 6)


def test_sample_factors_seeded_and_uniform(ds):
    a = ds.sample_factors(20_000, seed=3)
    b = ds.sample_factors(20_000, seed=3)
    c = ds.sample_factors(20_000, seed=4)
    assert a.shape == (20_000, 6) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < torch.tensor(SIZES))).all()
    for k, n in enumerate(SIZES):
        freq = torch.bincount(a[:, k], minlength=n).double() / a.shape[0]
        # binomial sd of a frequency <= 0.5 / sqrt(20000) = 0.0035; 5 sd
        assert (freq - 1.0 / n).abs().max() < 0.018
    assert ds.sample_factors(0, seed=0).shape == (0, 6)


# -- the images ------------------------------------------------------------------------------


def test_images_are_binary_with_shape_and_dtype(ds):
    f = ds.sample_factors(64, seed=0)
    x = ds.images(f)
    assert x.shape == (64, 1, 64, 64) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert (x.sum((1, 2, 3)) > 0).all()
    assert ds.images(f.view(4, 16, 6)).shape == (4, 16, 1, 64, 64)
    assert ds.images(f[0]).shape == (1, 64, 64)
    torch.testing.assert_close(ds.images(f, dtype=torch.float64), x.double(), rtol=0, atol=0)
    torch.testing.assert_close(ds.images_from_index(ds.factors_to_index(f)), x, rtol=0, atol=0)


def test_images_into_a_reused_buffer(ds):
    f = ds.sample_factors(48, seed=2).view(6, 8, 6)
    buffer = torch.full((6, 8, 1, 64, 64), 7.0, dtype=torch.float64)
    got = ds.images(f, out=buffer)
    assert got is buffer
    torch.testing.assert_close(buffer, ds.images(f, dtype=torch.float64), rtol=0, atol=0)
    index = ds.factors_to_index(f)
    torch.testing.assert_close(ds.images_from_index(index, out=buffer.zero_()), got)
    with pytest.raises(ValueError, match=r"shape \(6, 8, 1, 64, 64\)"):
        ds.images(f, out=torch.empty(48, 1, 64, 64))
    with pytest.raises(ValueError, match="contiguous"):
        ds.images(f, out=torch.empty(6, 8, 1, 64, 64).transpose(0, 1).contiguous().transpose(0, 1))
    with pytest.raises(ValueError, match="conflicts"):
        ds.images(f, dtype=torch.float32, out=buffer)
    with pytest.raises(TypeError, match="floating"):
        ds.images(f, out=torch.empty(6, 8, 1, 64, 64, dtype=torch.long))


def test_deterministic_across_calls_and_a_fresh_render(ds, monkeypatch):
    f = ds.sample_factors(256, seed=7)
    first = ds.images(f)
    torch.testing.assert_close(ds.images(f), first, rtol=0, atol=0)
    monkeypatch.setattr(dsprites_module, "_MASK_CACHE", {})
    torch.testing.assert_close(DSprites().images(f), first, rtol=0, atol=0)


def test_square_at_orientation_zero_is_an_axis_aligned_filled_square(ds):
    for scale in range(6):
        img = ds.images(one(SQUARE, scale, 0)).reshape(64, 64)
        rows, cols = img.nonzero(as_tuple=True)
        h = int(rows.max() - rows.min() + 1)
        w = int(cols.max() - cols.min() + 1)
        assert h == w  # a square
        assert int(img.sum()) == h * w  # fills its bounding box: axis-aligned
        side = 13 * (0.5 + 0.1 * scale) * math.sqrt(2)
        assert abs(w - side) <= 1.0
    # rotated by 46 degrees it no longer fills its bounding box (ideal ratio 1/2)
    img = ds.images(one(SQUARE, 5, 5)).reshape(64, 64)
    rows, cols = img.nonzero(as_tuple=True)
    fill = float(img.sum()) / float((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    assert 0.45 < fill < 0.6


def test_orientation_rotates_counter_clockwise(ds):
    """The ellipse's long axis (second moments, y up) points along the orientation angle."""
    levels = torch.arange(40)
    f = torch.zeros(40, 6, dtype=torch.long)
    f[:, 1], f[:, 2], f[:, 3], f[:, 4], f[:, 5] = ELLIPSE, 5, levels, 16, 16
    img = ds.images(f).reshape(40, 64, 64).double()
    r = torch.arange(64, dtype=torch.float64)
    m = img.sum((1, 2))
    y = -(img.sum(2) * r).sum(1) / m  # y up
    x = (img.sum(1) * r).sum(1) / m
    yy, xx = -r.view(1, 64, 1) - y.view(-1, 1, 1), r.view(1, 1, 64) - x.view(-1, 1, 1)
    mxx, myy, mxy = (
        (img * xx * xx).sum((1, 2)),
        (img * yy * yy).sum((1, 2)),
        (img * xx * yy).sum((1, 2)),
    )
    axis = 0.5 * torch.atan2(2 * mxy, mxx - myy)
    theta = ds.factor_grid("orientation")
    diff = torch.remainder(axis - theta + math.pi / 2, math.pi) - math.pi / 2
    assert diff.abs().max() < math.radians(2.5)
    # 0 and 2 pi are the same picture, as in the original
    torch.testing.assert_close(img[0], img[39], rtol=0, atol=0)


def test_heart_is_upright_at_orientation_zero(ds):
    img = ds.images(one(HEART, 5, 0)).reshape(64, 64)
    rows = img.nonzero(as_tuple=True)[0]
    top, bottom = int(rows.min()), int(rows.max())
    quarter = (bottom - top) // 4
    assert img[top + quarter].sum() > 1.3 * img[bottom - quarter].sum()  # lobes up, tip down
    assert img[bottom].sum() <= 4  # the tip
    c = centre_px(16)  # the two lobes leave a notch on the vertical axis at the top
    assert img[top].sum() > 0 and img[top, c - 1] == 0 and img[top, c] == 0
    torch.testing.assert_close(img, img.flip(1).roll(2 * c - 64, 1), rtol=0, atol=0)  # mirror


def test_position_moves_the_centroid(ds):
    levels = torch.arange(32)
    for shape in (SQUARE, ELLIPSE, HEART):
        f = torch.zeros(32, 6, dtype=torch.long)
        f[:, 1], f[:, 2], f[:, 3], f[:, 4], f[:, 5] = shape, 3, 7, levels, 10
        cx = torch.tensor([centroid(im)[1] for im in ds.images(f)])
        assert (cx.diff() > 0).all()  # right with posX
        f[:, 4], f[:, 5] = 10, levels
        cy = torch.tensor([centroid(im)[0] for im in ds.images(f)])
        assert (cy.diff() > 0).all()  # down with posY
    # symmetric shapes: the centroid is the documented centre, to the pixel
    for level in (0, 7, 16, 31):
        row, col = centroid(ds.images(one(SQUARE, 5, 0, level, 31 - level)))
        assert col == pytest.approx(centre_px(level) - 0.5, abs=1e-9)
        assert row == pytest.approx(centre_px(31 - level) - 0.5, abs=1e-9)
    # the centre travels over roughly [0.2, 0.8] of the canvas
    assert centre_px(0) / 64 == pytest.approx(0.22, abs=0.01)
    assert centre_px(31) / 64 == pytest.approx(0.78, abs=0.01)


def test_scale_grows_the_area_as_the_square_of_the_scale(ds):
    # analytic areas in units of R^2 (R = 13 px x scale): 2, pi/2, heart / 1.25^2
    u = np.linspace(-1.5, 1.5, 2001)
    a, b = np.meshgrid(u, u)
    heart_area = ((a**2 + b**2 - 1) ** 3 - a**2 * b**3 <= 0).mean() * 9.0
    unit_area = {SQUARE: 2.0, ELLIPSE: math.pi / 2, HEART: heart_area / 1.25**2}
    for shape, unit in unit_area.items():
        areas = torch.stack([ds.images(one(shape, s, 3)).sum() for s in range(6)])
        assert (areas.diff() > 0).all()
        assert float(areas[-1]) == pytest.approx(unit * 13**2, rel=0.03)
        assert float(areas[0]) == pytest.approx(unit * 6.5**2, rel=0.06)


def test_shapes_differ_from_each_other(ds):
    for scale, orientation in [(5, 0), (2, 10), (5, 25)]:
        imgs = [ds.images(one(s, scale, orientation)).bool() for s in range(3)]
        for i in range(3):
            for j in range(i + 1, 3):
                iou = (imgs[i] & imgs[j]).sum() / (imgs[i] | imgs[j]).sum()
                assert iou < 0.8


def test_every_sprite_stays_inside_the_canvas(ds):
    """All 720 masks at the four extreme positions leave the border pixels empty."""
    masks = torch.stack(
        torch.meshgrid(torch.arange(3), torch.arange(6), torch.arange(40), indexing="ij"), -1
    ).reshape(-1, 3)
    corners = torch.tensor([[0, 0], [0, 31], [31, 0], [31, 31]])
    f = torch.cat(
        [
            torch.zeros(720, 4, 1, dtype=torch.long),
            masks.view(720, 1, 3).expand(720, 4, 3),
            corners.view(1, 4, 2).expand(720, 4, 2),
        ],
        -1,
    )
    img = ds.images(f).reshape(-1, 64, 64)
    border = img[:, 0].sum() + img[:, -1].sum() + img[:, :, 0].sum() + img[:, :, -1].sum()
    assert border == 0
    assert (img.sum((1, 2)) > 0).all()


# -- validation ------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors(ds):
    with pytest.raises(TypeError, match="integer factor indices"):
        ds.images(torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 6\)"):
        ds.images(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"column 3 \('orientation'\) must lie in 0\.\.39"):
        ds.images(torch.tensor([[0, 0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match="column 1"):
        ds.factors_to_index(torch.tensor([[0, -1, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"0\.\.737279"):
        ds.index_to_factors(torch.tensor([737_280]))
    with pytest.raises(TypeError, match="integer image indices"):
        ds.images_from_index(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="dtype"):
        ds.images(one(), dtype=torch.int64)
    with pytest.raises(ValueError, match="`n`"):
        ds.sample_factors(-1)
    with pytest.raises(ValueError, match="factor"):
        ds.factor_grid("rotation")


# -- the Dataset -----------------------------------------------------------------------------


def test_dataset_over_a_subset(ds):
    idx = torch.tensor([5, 737_279, 0, 123_456, 40_960])
    data = DSpritesDataset(idx)
    assert len(data) == 5
    img, f = data[1]
    assert img.shape == (1, 64, 64) and f.shape == (6,)
    torch.testing.assert_close(f, ds.index_to_factors(torch.tensor(737_279)))
    torch.testing.assert_close(img, ds.images_from_index(torch.tensor(737_279)), rtol=0, atol=0)
    imgs, fs = data[torch.tensor([0, 2, 4])]
    torch.testing.assert_close(imgs, ds.images_from_index(idx[[0, 2, 4]]), rtol=0, atol=0)
    torch.testing.assert_close(fs, ds.index_to_factors(idx[[0, 2, 4]]))
    torch.testing.assert_close(data[-1][0], data[4][0], rtol=0, atol=0)
    torch.testing.assert_close(data[1:3][1], data[[1, 2]][1])
    torch.testing.assert_close(data.factors(), ds.index_to_factors(idx))
    with pytest.raises(IndexError):
        data[5]
    only_images = DSpritesDataset(idx, return_factors=False)
    assert isinstance(only_images[0], torch.Tensor)
    full = DSpritesDataset()
    assert len(full) == 737_280
    torch.testing.assert_close(full[123_456][0], data[3][0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="indices"):
        DSpritesDataset(torch.tensor([-1]))
    with pytest.raises(ValueError, match="one-dimensional"):
        DSpritesDataset(torch.zeros(2, 2, dtype=torch.long))


def test_dataloader_collates_items(ds):
    data = DSpritesDataset(torch.arange(10) * 1000)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    imgs, fs = next(iter(loader))
    assert imgs.shape == (4, 1, 64, 64) and fs.shape == (4, 6)
    torch.testing.assert_close(imgs, ds.images_from_index(torch.arange(4) * 1000), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_images_equal_cpu_images(ds):
    f = ds.sample_factors(2048, seed=0)
    on_gpu = ds.images(f.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), ds.images(f), rtol=0, atol=0)
    assert ds.sample_factors(4, seed=0, device="cuda").device.type == "cuda"
    data = DSpritesDataset(torch.arange(8), device="cuda")
    assert data[torch.arange(4)][0].device.type == "cuda"


@pytest.mark.slow
def test_rendering_reaches_50k_images_per_second(ds):
    import time

    f = ds.sample_factors(1024, seed=0)
    ds.images(f)
    best = math.inf
    for _ in range(20):
        start = time.perf_counter()
        ds.images(f)
        best = min(best, time.perf_counter() - start)
    assert 1024 / best >= 50_000
