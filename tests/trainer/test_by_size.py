"""trainer.eval.by_size: faces binned by size, found per score threshold, stray detections counted."""

from __future__ import annotations

import numpy as np

from trainer.eval.by_size import SizeRecall


def test_counts_found_faces_per_size_and_threshold() -> None:
    gt = np.array([[0, 0, 8, 8], [100, 100, 120, 120], [300, 0, 600, 300]], dtype=np.float32)  # 8, 20, 300 px
    dets = np.array(
        [
            [101, 101, 121, 121, 0.9],  # the 20-px face
            [305, 0, 600, 300, 0.4],  # the 300-px face, low score
            [700, 700, 740, 740, 0.8],  # nothing there
        ]
    )
    c = SizeRecall()
    c.add(gt, dets)
    c.add(np.zeros((0, 4)), dets[:1])  # an image without faces: every detection is unmatched
    assert c.faces.tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 1]
    r = c.recall()
    assert r[0, 2] == 100 and r[0, 8] == 100 and r[0, 0] == 0  # score >= 0.3 finds the 20 and 300 px
    assert r[1, 2] == 100 and r[1, 8] == 0  # >= 0.5 loses the big face
    assert np.isnan(r[0, 1])  # no face of 10-16 px
    # at each threshold: the 40-px stray (bin 32–48) and the 20-px box of the faceless image (16–24)
    assert c.unmatched.tolist() == [[0, 0, 1, 0, 1, 0, 0, 0, 0]] * 3
    table = c.markdown("t")
    assert "| faces | 1 | 0 | 1 |" in table and "| recall at score ≥ 0.5 | 0.0 | – | 100.0 |" in table
    assert "| unmatched at score ≥ 0.7, by their size | 0 | 0 | 1 | 0 | 1 | 0 | 0 | 0 | 0 | |" in table


def test_unmatched_detections_are_binned_by_their_own_size() -> None:
    c = SizeRecall(thresholds=(0.5,))
    gt = np.array([[0, 0, 20, 20]], dtype=np.float32)
    dets = np.array(
        [[0, 0, 20, 20, 0.9], [100, 100, 112, 112, 0.9], [0, 300, 300, 600, 0.6], [500, 0, 520, 20, 0.4]]
    )
    c.add(gt, dets)
    # the matched face is not a stray, the 12-px and 300-px boxes are, the 0.4 one is under the threshold
    assert c.unmatched.tolist() == [[0, 1, 0, 0, 0, 0, 0, 0, 1]]
