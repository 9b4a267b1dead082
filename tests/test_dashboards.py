"""What TensorBoard shows for a run, read back from the event files the way TensorBoard reads them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import PROBES

SCALARS = [
    "train/loss",
    "train/lr/pg1",
    "train/grad_norm",
    "train/tokens_per_sec",
    "train/mfu",
    "val/loss",
    "val/perplexity",
    "val/accuracy",
]


@pytest.fixture(scope="module")
def events(trained_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = (trained_run / "lightning_logs").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _texts(events, tag: str) -> list[tuple[int, str]]:
    from tensorboard.util import tensor_util

    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in events.Tensors(tag)]


def test_scalars_have_clear_names_and_finite_values(events) -> None:
    tags = events.Tags()["scalars"]
    assert set(SCALARS) <= set(tags) and "hp_metric" not in tags
    for tag in SCALARS:
        values = [e.value for e in events.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), tag
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    assert all(0 < e.value < 1 for e in events.Scalars("train/mfu"))  # against the fixed CPU peak (conftest)
    # Gradient norm comes with every logged training step (log_every_n_steps=2 of 12 steps).
    assert [e.step for e in events.Scalars("train/grad_norm")] == [e.step for e in events.Scalars("train/loss")]
    for loss, ppl in zip(events.Scalars("val/loss"), events.Scalars("val/perplexity")):
        assert ppl.step == loss.step and ppl.value == pytest.approx(math.exp(loss.value), rel=1e-5)


def test_fill_mask_probe_panel_at_each_validation(events) -> None:
    panels = _texts(events, "val/fill_mask/text_summary")
    assert len(panels) == 2  # validations at steps 6 and 12
    for _, text in panels:
        assert text.startswith("| probe | predictions |")
        rows = text.splitlines()[2:]
        assert [row.split(" | ")[0].lstrip("| ") for row in rows] == PROBES
        assert rows[1].count(" / ") == 1  # two masks in the second probe


def test_corpus_report_is_logged_with_the_run(events) -> None:
    ((step, text),) = _texts(events, "data/corpus_report/text_summary")
    assert step == 0 and "| documents |" in text and "| tokens per epoch |" in text


def test_hparams_tab_has_settings_and_final_validation_metrics(events, trained_run: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/loss", "val/perplexity", "val/accuracy"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["hidden_size"].number_value == 32 and hparams["max_seq_length"].number_value == 32
    assert hparams["trainer/max_steps"].number_value == 12
    # The tab's values are the last of each metric's series, which is the last validation's.
    last = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)["mlm_lightning"]["val_metrics"]
    assert events.Scalars("val/loss")[-1].value == pytest.approx(last["val/loss"])
    # The record adds no point of its own: each validation is one point.
    assert [e.step for e in events.Scalars("val/loss")] == [6, 12]


def test_every_panel_uses_the_optimizer_steps_that_name_the_checkpoints(events, trained_run: Path) -> None:
    # Validations after 6 and 12 optimizer steps (val_check_interval 6 of max_steps 12), once each.
    for tag in ("val/loss", "val/perplexity", "val/accuracy"):
        assert [e.step for e in events.Scalars(tag)] == [6, 12], tag
    assert [step for step, _ in _texts(events, "val/fill_mask/text_summary")] == [6, 12]
    # The best checkpoint's name carries the step of the validation that chose it.
    (best,) = (trained_run / "checkpoints").glob("epoch*.ckpt")
    assert int(best.name.split("-step")[1].split("-")[0]) in (6, 12)
    # Training scalars: every log_every_n_steps=2 optimizer steps, at the steps done (2, 4, ..., 12).
    assert [e.step for e in events.Scalars("train/loss")] == list(range(2, 13, 2))


@pytest.mark.slow  # a whole run / a subprocess: CI (make test-all) runs it, make test does not
def test_custom_scalars_layout_puts_each_set_before_and_after_on_one_chart(adapted_run: Path) -> None:
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    (run_dir,) = (adapted_run / "lightning_logs").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    scalars = acc.Tags()["scalars"]

    def shown(title: str) -> list[str]:
        return sorted(t for t in scalars if any(re.search(pattern, t) for pattern in charts[title]))

    # Each set's perplexity from the base model (step 0) to the end on one chart, nothing else on it.
    for name in ("domain", "general"):
        title = f"perplexity, {name}: before (step 0) and after"
        assert shown(title) == [f"val/{name}/perplexity"]
        assert [e.step for e in acc.Scalars(f"val/{name}/perplexity")][0] == 0
    # Every set's loss (log perplexity) together: forgetting of `general` beside the adaptation to `domain`.
    assert shown("loss = log(perplexity), every set: step 0 is the base model") == [
        "val/domain/loss",
        "val/general/loss",
    ]
    assert shown("learning rate (warm-up, decay)") == sorted(t for t in scalars if t.startswith("train/lr/"))
    assert all(shown(title) for title in charts), charts  # no chart is empty


def _screenshot_script():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "dashboard_screenshot.py"
    spec = importlib.util.spec_from_file_location("dashboard_screenshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_headless_browser_screenshot_of_the_custom_scalars_tab(adapted_run: Path, tmp_path: Path) -> None:
    script = _screenshot_script()
    if script.find_chromium() is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    png = tmp_path / "dashboard.png"
    layout = script.screenshot(adapted_run, png, width=1200, height=1600)
    titles = [chart["title"] for category in layout["category"] for chart in category["chart"]]
    assert "perplexity, domain: before (step 0) and after" in titles
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # charts drawn, not a blank page
