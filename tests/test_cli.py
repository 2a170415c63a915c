"""CLI smoke tests: every data command, and errors as one paragraph with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import requires_data, run_cli


def test_help_lists_the_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "data" in out
    code, out, _ = run_cli(capsys, "data", "--help")
    assert code == 0 and all(c in out for c in ("stats", "convert", "fetch", "split", "list"))


def test_stats_of_the_synthetic_catalogue(capsys):
    code, out, _ = run_cli(capsys, "data", "stats", "synthetic-tiny")
    assert code == 0
    assert "users" in out and "60" in out and "modality audio" in out


@requires_data("lastfm-kgcn")
def test_stats_of_lastfm_report_the_published_counts(capsys):
    code, out, _ = run_cli(capsys, "data", "stats", "lastfm-kgcn")
    assert code == 0
    for number in ("1,872", "3,846", "9,366", "60", "15,518", "21,173"):
        assert number in out


def test_convert_and_read_back(tmp_path, capsys):
    for fmt in ("native", "recbole"):
        code, out, _ = run_cli(capsys, "data", "convert", "synthetic-tiny", str(tmp_path / fmt), "--to", fmt)
        assert code == 0, out
        code, out, _ = run_cli(capsys, "data", "stats", str(tmp_path / fmt))
        assert code == 0 and "modality image" in out


def test_split_writes_a_loadable_split(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "data", "split", "synthetic-tiny", "--protocol", "ctr",
                       "--out", str(tmp_path / "s"))
    assert code == 0 and "train" in out
    assert (tmp_path / "s" / "split.json").is_file()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("data", "stats", "no-such-dataset"), "neither a dataset name"),
        (("data", "stats", "synthetic-huge"), "unknown synthetic preset"),
        (("data", "fetch", "synthetic"), "nothing to fetch"),
        (("data", "split", "synthetic-tiny", "--out", "/tmp/x", "--temporal", "--protocol", "ctr"),
         "temporal"),
    ],
)
def test_user_errors_exit_2_without_traceback(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert fragment in err and "Traceback" not in err + out


def test_malformed_file_is_named_with_its_line(tmp_path, capsys):
    (tmp_path / "userID2itemID4ratings.tsv").write_text("userID\titemID\trating\nu1\ta\tlots\n")
    (tmp_path / "itemID2entityID.txt").write_text("itemID\tentityID\na\t1\n")
    (tmp_path / "kg.txt").write_text("head\trelation\ttail\n1\tr\t2\n")
    code, _, err = run_cli(capsys, "data", "stats", str(tmp_path))
    assert code == 2
    assert "userID2itemID4ratings.tsv, line 2" in err and "rating" in err


def test_usage_error_exits_2(capsys):
    code, _, err = run_cli(capsys, "data", "stats")
    assert code == 2 and "Missing argument" in err


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "mmkgrec", "data", "stats", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_threshold_option_redefines_positives(tmp_path, capsys):
    """--threshold on a RecBole folder (no sidecar: every interaction counts) changes the
    positives `data stats` reports; a threshold that leaves none is a clear error (exit 2)."""
    from mmkgrec.data import load

    code, out, _ = run_cli(capsys, "data", "convert", "synthetic-tiny",
                           str(tmp_path / "rb"), "--to", "recbole")
    assert code == 0, out
    (tmp_path / "rb" / "rb.mmkgrec.json").unlink()  # as a user's own RecBole folder
    values = load(str(tmp_path / "rb")).interactions["value"].to_numpy()
    cut = float(np.median(values))
    expected = int((values >= cut).sum())
    assert 0 < expected < len(values)
    code, out, _ = run_cli(capsys, "data", "stats", str(tmp_path / "rb"), "--threshold", str(cut))
    assert code == 0, out
    assert f"positive threshold {cut:g}" in out and f"{expected:,}" in out
    code, out, err = run_cli(capsys, "data", "stats", str(tmp_path / "rb"), "--threshold", "1e9")
    assert code == 2 and "leaves" in out + err and "Traceback" not in out + err


def test_stats_names_the_atomic_files_it_ignores(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "data", "convert", "synthetic-tiny", str(tmp_path / "rb"),
                           "--to", "recbole")
    assert code == 0, out
    (tmp_path / "rb" / "rb.user").write_text("user_id:token\tage:float\nu0\t31\n")
    code, out, _ = run_cli(capsys, "data", "stats", str(tmp_path / "rb"))
    assert code == 0 and "ignored atomic files: rb.user" in out.replace("\n", " ")


def test_help_does_not_import_torch():
    """`mmkgrec --help` (and a command's help) renders without importing torch."""
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from mmkgrec.cli import app\n"
            "for args in (['--help'], ['train', '--help'], ['data', '--help']):\n"
            "    result = CliRunner().invoke(app, args)\n"
            "    assert result.exit_code == 0 and 'Usage' in result.output, result.output\n"
            "assert 'torch' not in sys.modules, 'the CLI help imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
