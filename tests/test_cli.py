"""The command line: dispatch, help, user errors as one clear line, and `mmbert info` against a real model."""

import pytest

from mmbert import ModelConfig, MmBertForMaskedLM
from mmbert.cli import COMMANDS, main
from mmbert.commands.info import parameter_counts


def test_every_listed_command_imports_and_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0, name
        assert "usage: mmbert" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_info_counts_match_the_model(preset, capsys):
    config = ModelConfig.from_preset(preset, norm_bias=preset == "tiny", attention_bias=preset == "tiny")
    model = MmBertForMaskedLM(config)
    counts = parameter_counts(config)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())  # tied decoder counted once
    assert counts["embeddings"] == sum(p.numel() for p in model.model.embeddings.parameters())
    assert main(["info", preset]) == 0
    assert "GllGll"[: config.num_hidden_layers] in capsys.readouterr().out


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    assert main([]) == 2
