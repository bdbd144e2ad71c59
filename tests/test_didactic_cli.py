"""experiments/didactic/prover_terms.py: the Theorem 3.1 terms from the command line."""

import pathlib

import pytest

from tests import test_prover_diagnostics as pdx_tests
from tests.files import load_script
from pavjax import trajectories

_SCRIPT = (pathlib.Path(__file__).resolve().parents[1] / "experiments" / "didactic" /
           "prover_terms.py")


@pytest.fixture(scope="module")
def cli():
  return load_script(_SCRIPT, "prover_terms")


def test_curve_shape(cli):
  xs = [1, 2, 3, 4, 5]
  assert cli.curve_shape(xs, [0, 2, 3, 2, 0]).startswith("inverted U (peak at 3)")
  assert cli.curve_shape(xs, [0, 1, 2, 3, 4]).startswith("increasing")
  assert cli.curve_shape(xs, [4, 3, 2, 1, 0]).startswith("decreasing")
  assert cli.curve_shape(xs, [1, 1, 1, 1, 1]) == "flat"


def test_cli_rollouts_with_provers(cli, tmp_path, capsys):
  # pylint: disable=protected-access
  trajectories.save(str(tmp_path / "base"), pdx_tests._hand_table(), "test")
  trajectories.save(str(tmp_path / "ckpt"), pdx_tests._hand_prover_table(), "test")
  assert cli.main([f"--rollouts={tmp_path / 'base'}", "--bok_ks=1,2",
                   f"--prover=rl_step_100={tmp_path / 'ckpt'}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  (line,) = [l for l in lines if "rl_step_100" in l]
  assert line.split()[0] == "checkpoint"
  assert len([l for l in lines if l.split()[:1] == ["bok"]]) == 2
  with pytest.raises(SystemExit):
    cli.main([f"--rollouts={tmp_path / 'base'}", f"--prover={tmp_path / 'ckpt'}"])


def test_cli(cli, tmp_path, capsys):
  out = tmp_path / "terms.png"
  assert cli.main(["--planted", "--gammas=1,5,10", "--bok_ks=1,4", f"--plot={out}"]) == 0
  text = capsys.readouterr().out
  assert "distinguishability" in text and "improvement over gamma" in text
  assert out.exists() and out.stat().st_size > 0
