import numpy as np
import pandas as pd

from appraiser import schema
from appraiser.predict import Appraiser, score_file, score_frame


def test_chunked_scoring_matches_one_pass(trained, public, tmp_path):
    model = Appraiser.champion().model
    stones = public.sample(1000, random_state=2)[list(schema.FEATURES)]
    source = tmp_path / "in.csv"
    stones.to_csv(source, index=False)
    seen: list[int] = []
    summary = score_file(model, source, tmp_path / "out.csv", chunk_rows=300, progress=seen.append)
    assert summary.rows == 1000 and summary.errors == 0
    assert seen == [300, 300, 300, 100]
    chunked = pd.read_csv(tmp_path / "out.csv")
    whole = score_frame(model, stones.astype(str))
    np.testing.assert_allclose(chunked["price"], whole["price"].astype(float))


def test_error_lines_refer_to_the_file(trained, public, tmp_path):
    model = Appraiser.champion().model
    stones = public.head(10)[list(schema.FEATURES)].astype(object)
    stones.iloc[4, 0] = "abc"
    scored = score_frame(model, stones)
    assert np.isnan(scored.loc[4, "price"]) and "carat: not a number" in scored.loc[4, "error"]
    assert scored["price"].notna().sum() == 9
