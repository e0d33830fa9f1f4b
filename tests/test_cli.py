"""The command line's own behaviour: choices from the preset tables, refusals without tracebacks, honest hints."""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace

import pytest

from compactvision import cli
from compactvision.models.teacher import PRESETS as TEACHER_PRESETS
from compactvision.pipeline import COMPRESS_PRESETS, PRESETS as PIPELINE_PRESETS


def _choices(command: str, option: str = "--preset") -> list[str]:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if option in a.option_strings).choices)


def test_preset_choices_are_the_preset_tables():
    assert _choices("teacher") == list(TEACHER_PRESETS)
    assert _choices("pipeline") == list(PIPELINE_PRESETS)
    assert _choices("compress") == list(COMPRESS_PRESETS) == [*PIPELINE_PRESETS, "paper", "recompress"]
    assert _choices("recompress") == list(COMPRESS_PRESETS)


def test_compress_defaults_to_the_reference_width():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["compress"]
    default = next(a for a in sub._actions if "--preset" in a.option_strings).default
    assert set(COMPRESS_PRESETS[default].student_channels) == {100}
    assert all(min(c.student_channels) >= 64 for c in COMPRESS_PRESETS.values())


def test_strategy_and_readout_options_override_the_preset_into_a_valid_config():
    def config(*extra: str):
        return cli._compression_config(cli.build_parser().parse_args(["recompress", "imported", "--out", "o", *extra]))

    preset = COMPRESS_PRESETS["recompress"]
    assert config() == preset
    fresh = config("--strategy", "per_neuron", "--readout-form", "dense")
    assert fresh.strategy == "per_neuron" and fresh.readout_form == "dense"
    assert fresh.neuron_epochs >= 1, "a fresh per-neuron student is fitted, even where the preset's copies are not"
    assert config("--readout-rank", "2").readout_rank == 2 and preset.readout_rank == 1
    assert preset.prune.compensation == "least_squares"
    assert config("--compensation", "mean").prune.compensation == "mean"
    assert config("--criterion", "reconstruction").prune.compensation == "mean"  # the reference's own carry
    assert preset.neuron_channel_l1 == 0 and preset.neuron_epochs == 0
    assert config("--strategy", "per_neuron", "--slimming", "0.5").neuron_channel_l1 == 0.5
    assert config("--round-epochs", "2").round_epochs == 2
    assert config("--budget", "even").prune.budget == "even" and preset.prune.budget == "greedy"


def test_round_epochs_follow_the_visits_they_come_between(monkeypatch):
    def config(*extra: str):
        return cli._compression_config(cli.build_parser().parse_args(["compress", "run", "--preset", "demo", *extra]))

    monkeypatch.setitem(COMPRESS_PRESETS, "demo", replace(COMPRESS_PRESETS["demo"], round_epochs=2))
    assert config().round_epochs == 2
    reference = config("--criterion", "reconstruction")
    assert reference.prune.rounds == 1 and reference.round_epochs == 0  # one visit: nothing to retrain between
    assert config("--round-epochs", "0").round_epochs == 0
    with pytest.raises(cli.CompactVisionError, match="rounds >= 2"):
        config("--criterion", "reconstruction", "--round-epochs", "2")


def _pipeline_preset(*extra: str):
    """What `pipeline` would build from these options: the preset's name, or a custom preset."""
    return cli._pipeline_preset(cli.build_parser().parse_args(["pipeline", "--out", "o", *extra]))


def test_pipeline_slimming_changes_only_the_presets_slimming():
    from compactvision.pipeline import PRESETS

    assert _pipeline_preset() == "demo"
    slim = _pipeline_preset("--preset", "tiny", "--slimming", "0.25")
    assert slim.compress.neuron_channel_l1 == 0.25
    assert slim.compress == replace(PRESETS["tiny"].compress, neuron_channel_l1=0.25)
    with pytest.raises(cli.CompactVisionError, match="neuron_epochs"):
        _pipeline_preset("--preset", "v4", "--slimming", "0.5")


def test_pipeline_round_epochs_change_only_the_presets_retraining_between_visits():
    from compactvision.pipeline import PRESETS

    other = PRESETS["demo"].compress.round_epochs + 1
    both = _pipeline_preset("--round-epochs", str(other), "--v1-stride", "2")
    assert both.compress == replace(PRESETS["demo"].compress, round_epochs=other)
    assert both.teacher_overrides["vone_stride"] == 2 and PRESETS["demo"].compress.round_epochs != other
    with pytest.raises(cli.CompactVisionError, match="round_epochs"):
        _pipeline_preset("--round-epochs", "-1")


def test_pipeline_v1_stride_changes_only_the_teachers_v1_grid():
    from compactvision.pipeline import PRESETS

    fine = _pipeline_preset("--v1-stride", "2")
    assert fine == replace(PRESETS["demo"], teacher_overrides={**PRESETS["demo"].teacher_overrides, "vone_stride": 2})
    both = _pipeline_preset("--preset", "tiny", "--v1-stride", "2", "--slimming", "0.25")
    assert both.teacher_overrides["vone_stride"] == 2 and both.compress.neuron_channel_l1 == 0.25
    assert "vone_stride" not in PRESETS["demo"].teacher_overrides, "the preset itself is left alone"
    with pytest.raises(cli.CompactVisionError, match="vone_stride"):
        _pipeline_preset("--v1-stride", "0")


def test_pipeline_twin_design_changes_only_the_experiment():
    from compactvision.pipeline import PRESETS

    design = _pipeline_preset("--twin-images", "6000", "--test-images", "200")
    assert design == replace(PRESETS["demo"], images=6000, test_images=200) != PRESETS["demo"]
    assert _pipeline_preset("--test-images", "200").images == PRESETS["demo"].images
    tiny = _pipeline_preset("--preset", "tiny", "--twin-images", "3000")
    assert tiny.test_images is None, "every image repeated, as before"
    for bad in (["--test-images", "0"], ["--twin-images", "100", "--test-images", "99"]):
        with pytest.raises(cli.CompactVisionError, match="test_images"):
            _pipeline_preset(*bad)
    with pytest.raises(cli.CompactVisionError, match="--data"):
        _pipeline_preset("--test-images", "300", "--data", "release")


def test_slimming_without_a_per_neuron_fit_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["compress", str(tmp_path / "run"), "--preset", "recompress", "--slimming", "0.5"])
    assert code == 2 and "neuron_epochs" in capsys.readouterr().err


def test_unknown_compress_preset_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.main(["compress", str(run), "--preset", "huge"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and all(repr(name) in err for name in COMPRESS_PRESETS)
    assert not run.exists(), "nothing is written"


def test_building_the_parser_does_not_import_torch():
    code = "import sys; from compactvision.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "`compactvision --help` stays fast"


@pytest.mark.parametrize("argv,handler,hint", [
    (["teacher", "--data", "twin", "--out", "x"], "_teacher", "rerun with --resume"),
    (["compress", "x"], "_compress", "run the same command again"),
    (["pipeline", "--out", "x"], "_pipeline", "run the same command again"),
])
def test_an_interrupt_suggests_only_flags_the_command_has(monkeypatch, capsys, argv, handler, hint):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, handler, interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert hint in err and ("--resume" in err) == (handler == "_teacher")


def _options(parser: argparse.ArgumentParser, name: str = "compactvision"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        elif action.option_strings and action.dest != "help":
            yield name, parser, action


def test_every_option_says_what_it_does_and_its_default():
    seen = 0
    for command, parser, action in _options(cli.build_parser()):
        seen += 1
        assert action.help, f"{command} {action.option_strings[0]} has no description"
        text = parser.formatter_class(prog=command)._get_help_string(action)
        if action.default is not None and action.default is not False:
            assert "default" in text, f"{command} {action.option_strings[0]} does not say its default"
    assert seen > 30


def test_a_swallowed_interrupt_still_stops_at_the_next_progress_report(monkeypatch):
    """Python drops a KeyboardInterrupt raised inside a finaliser; the command must still stop, and soon."""
    import compactvision.cli as cli

    monkeypatch.setattr(cli, "_stop_requested", False)
    report = cli._progress("none")
    report("teacher", 1, 8)  # no stop asked: it reports
    try:
        cli._interrupt(2, None)
    except KeyboardInterrupt:
        pass  # what a finaliser would have swallowed
    with pytest.raises(KeyboardInterrupt):
        report("teacher", 2, 8)


def test_pruning_options_that_do_not_go_together_are_a_clear_error(tmp_path, capsys):
    code = cli.main(["compress", str(tmp_path / "run"), "--criterion", "reconstruction", "--compensation",
                     "least_squares"])
    assert code == 2 and "compensation='mean'" in capsys.readouterr().err


def test_teacher_readout_folds_and_probe_reach_the_config_and_bad_values_are_clear_errors(tmp_path, monkeypatch, capsys):
    import compactvision.teacher_stage as stage

    seen = {}

    def record(data, out, **kwargs):
        seen.update(kwargs["config_overrides"])
        raise SystemExit(0)

    monkeypatch.setattr(stage, "train_teacher", record)
    with pytest.raises(SystemExit):
        cli.main(["teacher", "--data", "release", "--out", str(tmp_path / "a"), "--readout-folds", "5",
                  "--heldout-probe", "4", "--heldout-probe-weight", "0.25", "--heldout-basis", "0.4"])
    assert seen["readout_folds"] == 5
    assert seen["heldout_probe_pool"] == 4 and seen["heldout_probe_weight"] == 0.25
    assert seen["heldout_basis_weight"] == 0.4
    seen.clear()
    with pytest.raises(SystemExit):
        cli.main(["teacher", "--data", "release", "--out", str(tmp_path / "b")])
    assert not {"readout_folds", "heldout_probe_pool", "heldout_probe_weight", "heldout_basis_weight"} & set(seen), \
        "the preset's own choice stands"
    monkeypatch.undo()
    for option, value, message in [("--readout-folds", "1", "readout_folds must be 0"),
                                   ("--heldout-probe-weight", "2", "heldout_probe_weight must be in"),
                                   ("--heldout-basis", "-0.5", "heldout_basis_weight must be in")]:
        code = cli.main(["teacher", "--data", "twin", "--images", "40", "--neurons", "2", "--out",
                         str(tmp_path / "c"), option, value, "--progress", "none"])
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "c").exists(), "nothing is written"
