"""One name per concept: renamed flags still take their old spelling for one release, with a warning."""
import argparse
import warnings

import pytest

from common.flags import add_renamed_argument
from picking.rethreshold import output_formats


def parser():
    parser = argparse.ArgumentParser()
    add_renamed_argument(parser, "--output-dir", "--out", default="x")
    return parser


def test_the_new_name_is_silent_and_the_old_one_warns_with_the_same_value():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parser().parse_args(["--output-dir", "a"]).output_dir == "a"
    with pytest.warns(FutureWarning, match="--out is now called --output-dir"):
        assert parser().parse_args(["--out", "b"]).output_dir == "b"
    assert parser().parse_args([]).output_dir == "x"


def test_old_format_names_map_to_the_new_ones():
    with pytest.warns(FutureWarning, match="--formats star is now called relion"):
        assert output_formats(["star", "csv", "relion"]) == ("relion", "csv")
