"""Live tracking: the ledger's per-rollout summaries in TensorBoard event files, read back and checked
against the ledger itself; none when turned off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rledger import InstrumentedPPO, Ledger


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = sorted(p for p in folder.iterdir() if p.is_dir())
    acc = EventAccumulator(str(run))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.mark.parametrize("background", [True, False])
def test_tensorboard_holds_every_rollouts_summary(tmp_path, background):
    model = InstrumentedPPO(
        "MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=2, seed=0,
        ledger=tmp_path / "ledger", tensorboard_log=str(tmp_path / "tb"), background=background,
    )  # fmt: skip
    model.learn(128 * 6)
    tags = _scalars(tmp_path / "tb")
    led = Ledger(tmp_path / "ledger")
    s = led.samples_with_transitions(
        ["rollout", "pg_grad_norm", "advantage_used", "score_norm", "clipped", "self_reinforcement", "action"]
    )
    rollouts = [int(v) for _, v in tags["ledger/rollout"]]
    # every rollout's summary, in order, each at the timesteps its rollout ended at
    assert rollouts == [0, 1, 2, 3, 4, 5]
    steps = [step for step, _ in tags["ledger/rollout"]]
    assert steps == [128 * (k + 1) for k in rollouts]
    for i, k in enumerate(rollouts):
        r = s[s.rollout == k]
        ok = ~r.clipped & (r.advantage_used != 0) & (r.pg_grad_norm > 0) & (r.score_norm > 0)
        x, y = (
            np.log(np.abs(r.advantage_used[ok].to_numpy(float))),
            np.log(r.pg_grad_norm[ok].to_numpy(float)),
        )
        assert tags["ledger/r2_log_update_on_log_abs_advantage"][i][1] == pytest.approx(
            np.corrcoef(x, y)[0, 1] ** 2, rel=1e-5
        )
        assert tags["ledger/clipped_share"][i][1] == pytest.approx(r.clipped.mean(), abs=1e-7)
        action = r.action.map(lambda a: int(a[0]))
        for a in (0, 1):
            got = tags[f"ledger/self_reinforcement/action_{a}"][i][1]
            want = r.self_reinforcement[action == a].astype(float).sum()
            assert got == pytest.approx(want, rel=1e-5, abs=1e-9), (k, a)
    assert "train/clip_fraction" in tags  # SB3's own scalars are still there


def test_no_summaries_when_off(tmp_path):
    model = InstrumentedPPO(
        "MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=1, seed=0,
        ledger=tmp_path / "ledger", tensorboard_log=str(tmp_path / "tb"), summaries=False,
    )  # fmt: skip
    model.learn(384)
    tags = _scalars(tmp_path / "tb")
    assert not [t for t in tags if t.startswith("ledger/")] and "train/clip_fraction" in tags
    assert model._recorder.sink is not None and model._recorder.sink.take_summaries() == []


def test_track_without_wandb_is_one_line_and_writes_nothing(tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from rledger.cli import main

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: the missing-package message cannot be shown")
    out = tmp_path / "runs"
    for args in (
        ["run", str(Path(__file__).parents[1] / "experiments" / "smoke.yaml"), "--out", str(out), "--track"],
        ["train", "--env", "CartPole-v1", "--timesteps", "64", "--out", str(out / "one"), "--track"],
    ):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "--track" in res.output and "pip install wandb" in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()
