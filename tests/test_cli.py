"""The command line's usage mistakes: one line on stderr naming the problem and the help to read,
exit code 2, no usage dump and no traceback (like every other bad input)."""
import pytest

from refvae.cli.main import main


@pytest.mark.parametrize("argv,words", [
    (["train", "--threads", "x"], "argument --threads: invalid int value: 'x'"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["bench", "--threads", "0"], "expected a positive integer, got '0'"),
    (["bench", "--arch", "huge"], "invalid choice: 'huge'"),
    (["oracle", "compare"], "the following arguments are required: --config"),
    (["nonsense"], "invalid choice: 'nonsense'"),
])
def test_usage_mistakes_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert words in err and "--help" in err


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0 and "usage: refvae train" in capsys.readouterr().out


def _options(parser, name="refvae"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _options(p, f"{name} {sub}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


def test_every_option_has_help_and_train_help_is_grouped(capsys):
    from refvae.cli.main import build_parser

    options = list(_options(build_parser()))
    assert len(options) > 60
    assert [f"{name} {a.option_strings or a.dest}" for name, a in options if not a.help] == []
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    positions = [text.index(f"\n{group}:\n") for group
                 in ("model", "data", "optimisation", "output")]
    assert positions == sorted(positions)
    assert "--activation {tanh,sigmoid,softplus,relu,identity,silu}" in text
