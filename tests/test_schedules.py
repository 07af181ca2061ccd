
import pytest

from onebit.train.schedules import learning_rate, restart_cycles


def test_paper_restart_cycles():
    assert restart_cycles(254) == [2, 4, 8, 16, 32, 64, 128]
    assert restart_cycles(62) == [2, 4, 8, 16, 32]
    assert restart_cycles(10) == [2, 4, 4]  # last cycle cut short


def test_cosine_runs_once_from_max_to_min_per_iteration():
    lrs = [learning_rate(s, 400, 300, "cosine", 0.1, 1e-5) for s in range(300 * 400)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(1e-5, abs=1e-8)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[150 * 400] == pytest.approx((0.1 + 1e-5) / 2)


def test_warm_restarts_restart_at_max():
    spe = 10
    lr = [learning_rate(s, spe, 14, "restarts", 0.1, 0.0) for s in range(14 * spe)]
    assert lr[0] == lr[2 * spe] == lr[6 * spe] == pytest.approx(0.1)
    assert lr[2 * spe - 1] < 0.001 and lr[6 * spe - 1] < 0.001
    assert lr[spe] == pytest.approx(0.05)  # middle of the 2-epoch cycle
    assert lr[2 * spe + 2 * spe] == pytest.approx(0.05)  # middle of the 4-epoch cycle


def test_unknown_schedule():
    with pytest.raises(ValueError):
        learning_rate(0, 1, 1, "step", 0.1, 0.0)


def test_warmup_ramps_linearly_up_to_the_schedule_then_follows_it():
    spe, epochs = 10, 5
    plain = [learning_rate(t, spe, epochs, "cosine", 0.1, 0.0) for t in range(spe * epochs)]
    warm = [learning_rate(t, spe, epochs, "cosine", 0.1, 0.0, warmup_epochs=2) for t in range(spe * epochs)]
    assert warm[0] == pytest.approx(plain[0] / 20) and warm[9] == pytest.approx(plain[9] * 10 / 20)
    assert all(w == pytest.approx(p * (t + 1) / 20) for t, (w, p) in enumerate(zip(warm[:20], plain[:20])))
    assert warm[20:] == plain[20:]
    assert learning_rate(0, spe, epochs, "restarts", 0.1, 0.0, 2, warmup_epochs=1) == pytest.approx(0.01)


def test_restarts_follow_the_first_cycle_given_and_unknown_schedules_are_named():
    """learning_rate passes first_cycle on: with 3-epoch first cycles (3 + 6 epochs) the rate restarts at
    epoch 3, not at epoch 2 as the default (2 + 4 + ...) would; an unknown name is refused by name."""
    import pytest

    spe = 10
    lr = [learning_rate(s, spe, 9, "restarts", 0.1, 0.0, first_cycle=3) for s in range(9 * spe)]
    assert lr[3 * spe] == pytest.approx(0.1) and lr[2 * spe] < 0.05          # restart at epoch 3 only
    assert lr[3 * spe - 1] < 1e-3 and lr[-1] < 1e-3
    with pytest.raises(ValueError, match=r"unknown schedule 'step'; choose from \('cosine', 'restarts'\)"):
        learning_rate(0, spe, 9, "step", 0.1, 0.0)
