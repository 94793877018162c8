"""The report figures' rules read what the figures need: the t-SNE embeds the un-whitened
gradients and colours the pool by the sources of the prepared data."""

from __future__ import annotations

import re

from smk_helpers import smk, write_config


def test_tsne_rule_reads_the_unwhitened_features_and_the_prepared_data(tmp_path):
    cfg = write_config(tmp_path)
    results = tmp_path / "results"
    res = smk(str(results / "figures" / "digits_tsne.png"), "-n", "--configfile", str(cfg), timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    job = re.search(r"^rule figure_tsne:\n\s+input: (.*)$", out, re.MULTILINE)
    assert job, out[-3000:]
    inputs = set(job.group(1).split(", "))
    features = results / "digits" / "features"
    assert {str(features / "candidates.npy"), str(features / "targets.npy"), str(results / "digits" / "data")} <= inputs
    assert not any("wfd_" in path for path in inputs), inputs
    assert str(results / "digits" / "selections" / "tarot.r0.1.csv") in inputs
