import torch

from onebit.data.augment import Augmentation, random_cutout, random_flip, random_translate
from onebit.data.batches import epoch_batches


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=64):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen(123), dtype=torch.uint8)


def find_shift(src, dst, s=4):
    """The (dy, dx) such that dst's interior equals src shifted by it."""
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            a = dst[:, s:32 - s, s:32 - s]
            b = src[:, s - dy:32 - s - dy, s - dx:32 - s - dx]
            if torch.equal(a, b):
                return dy, dx
    return None


def test_translate_shifts_content_and_fills_border_with_noise():
    x = images()
    y = random_translate(x, 4, gen())
    shifts = [find_shift(x[i], y[i]) for i in range(len(x))]
    assert all(s is not None for s in shifts)
    assert len(set(shifts)) > 10  # shifts vary per image
    assert {s[0] for s in shifts} <= set(range(-4, 5))
    # exposed border is noise, not zeros or replicated edge
    i = next(k for k, s in enumerate(shifts) if s[0] == 4)
    assert y[i, :, :4].float().std() > 50


def test_translate_zero_is_identity():
    x = images(4)
    assert torch.equal(random_translate(x, 0, gen()), x)


def test_flip_mirrors_about_half():
    x = images(400)
    y = random_flip(x, gen())
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(2)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_cutout_replaces_one_square_patch_that_may_hang_over_the_edge():
    x = torch.zeros(500, 3, 32, 32, dtype=torch.uint8)  # noise is almost never 0 in a whole pixel
    y = random_cutout(x, 18, gen())
    changed = (y != 0).any(1)  # (N, H, W)
    areas = changed.sum((1, 2))
    assert int(areas.max()) <= 18 * 18
    assert int(areas.min()) < 18 * 18 // 2 and int(areas.max()) > 18 * 18 * 0.9  # clipped at edges sometimes
    for k in range(20):
        rows, cols = changed[k].any(1).nonzero(), changed[k].any(0).nonzero()
        assert rows.numel() <= 18 and cols.numel() <= 18
        assert rows.max() - rows.min() + 1 == rows.numel()  # one contiguous block


def test_epoch_batches_are_deterministic_per_seed_and_epoch():
    x = images(300)
    labels = torch.arange(300)
    aug = Augmentation()
    a = list(epoch_batches(x, labels, 125, seed=3, epoch=5, augment=aug))
    b = list(epoch_batches(x, labels, 125, seed=3, epoch=5, augment=aug))
    c = list(epoch_batches(x, labels, 125, seed=3, epoch=6, augment=aug))
    assert len(a) == 2  # the remainder of 50 is dropped
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert len(set(torch.cat([y for _, y in a]).tolist())) == 250  # no image twice in an epoch


def test_ranks_split_the_global_batch():
    x, labels = images(250), torch.arange(250)
    whole = list(epoch_batches(x, labels, 125, 0, 0, Augmentation()))
    parts = [list(epoch_batches(x, labels, 125, 0, 0, Augmentation(), rank=r, world_size=2)) for r in (0, 1)]
    for step, (xb, yb) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), xb)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), yb)


def _cutout_mask(size, n=2000, hw=8, seed=5):
    """Where random_cutout put noise: the same generator on an all-0 and an all-255 batch draws the same
    patches and noise, so the two outputs agree exactly on the patch and nowhere else."""
    zeros = torch.zeros(n, 1, hw, hw, dtype=torch.uint8)
    out0 = random_cutout(zeros, size, gen(seed))
    out255 = random_cutout(zeros + 255, size, gen(seed))
    assert out0.dtype == out255.dtype == torch.uint8
    return (out0 == out255)[:, 0], out0[:, 0]


def test_cutout_patches_are_whole_squares_centred_anywhere_and_filled_with_full_range_noise():
    mask, noise = _cutout_mask(4)
    rows, cols = mask.any(2), mask.any(1)                       # (n, hw): rows / columns the patch covers
    assert mask.sum(dim=(1, 2)).eq(rows.sum(1) * cols.sum(1)).all()          # one axis-aligned rectangle
    inside = (rows.sum(1) == 4) & (cols.sum(1) == 4)
    assert inside.any() and mask[inside].reshape(-1, 64).sum(1).eq(16).all()  # a whole 4 x 4 patch
    # centres uniform over the image, top-left at centre - size // 2: a centre on row 0 leaves rows 0-1,
    # one on the last row rows 6-7; nothing hangs over by more
    heights_at_top = rows.sum(1)[rows[:, 0]]
    assert heights_at_top.min() == 2 and (rows.sum(1) >= 2).all()
    widths_at_left = cols.sum(1)[cols[:, 0]]
    assert widths_at_left.min() == 2 and (cols.sum(1) >= 2).all()
    assert rows[:, -1].any() and cols[:, -1].any()
    values = noise[mask]
    assert values.min() == 0 and values.max() == 255            # uniform 0..255 noise, both ends reached


def test_cutout_of_one_pixel_and_of_nothing():
    mask, _ = _cutout_mask(1, n=200)
    assert mask.sum(dim=(1, 2)).eq(1).all()
    x = images(4)
    assert torch.equal(random_cutout(x, 0, gen()), x)


def test_translate_reaches_every_shift_fills_with_full_range_noise_and_keeps_uint8():
    x = torch.zeros(400, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 8, 8] = 1                                           # a marker pixel (noise may also be 1)
    shifted = random_translate(x + 0, 2, gen(9))
    assert shifted.dtype == torch.uint8 and shifted.shape == x.shape
    zero = torch.zeros_like(x)
    zero_out = random_translate(zero, 2, gen(9))                # same draws: where the two differ is the marker
    where = (shifted != zero_out)[:, 0].nonzero()
    dys, dxs = where[:, 1] - 8, where[:, 2] - 8
    assert len(where) == 400                                    # one marker per image, never cut off
    assert set(dys.tolist()) == set(range(-2, 3)) and set(dxs.tolist()) == set(range(-2, 3))
    # the exposed border is noise over the full 0..255: a 0 in a shifted all-255 image, and a 255 in a
    # shifted all-0 one, can only be noise
    assert (random_translate(zero + 255, 2, gen(4)) == 0).any() and (zero_out == 255).any()
    assert not torch.equal(random_translate(x + 0, 1, gen(3)), x)         # a shift of at most 1 is a shift


def test_every_draw_follows_the_batch_device_not_the_default_device():
    """Each augmentation creates its noise, offsets and masks on the batch's device: with the default
    device set elsewhere (here 'meta', as a user's ``torch.set_default_device('cuda')`` would), a tensor
    made without ``device=x.device`` lands on it, and the result is no longer the same CPU batch."""
    x = images(8)
    for augment in (lambda x, g: random_translate(x, 3, g), random_flip, lambda x, g: random_cutout(x, 5, g),
                    Augmentation(translate=2, flip=True, cutout=3)):
        expected = augment(x, gen(5))
        with torch.device("meta"):
            out = augment(x, gen(5))
        assert out.device == x.device and torch.equal(out, expected)
