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
    assert c.unmatched.tolist() == [2, 2, 2]
    table = c.markdown("t")
    assert "| faces | 1 | 0 | 1 |" in table and "| recall at score ≥ 0.5 | 0.0 | – | 100.0 |" in table
