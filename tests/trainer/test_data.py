"""Readers (label.txt, WIDER), augmentation, synthetic scenes, pseudo-labels and the loader."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.errors import ConfigError, DatasetError
from tests.shared_paths import need_shared
from trainer.config import load_config
from trainer.data.augment import TrainTransform, mirror, random_crop
from trainer.data.dataset import (
    DataConfig,
    FaceDataset,
    build_dataset,
    build_loader,
    endless_batches,
    interleaved_batches,
    resized,
)
from trainer.data.labels import read_label_txt, write_label_txt
from trainer.data.pseudo import pseudo_label
from trainer.data.synthetic import FaceCrops, face_box_from_points, load_face_crops, make_scene
from trainer.data.wider import read_wider, read_wider_bbx_txt

FACE = "10 20 30 40 15.0 30.0 0.0 32.0 30.0 0.0 24.0 40.0 0.0 17.0 50.0 0.0 31.0 50.0 0.0 0.9"


def _write_images(root: Path, names: list[str], size: tuple[int, int] = (100, 80)) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / n), np.full((size[1], size[0], 3), 128, np.uint8))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_label_txt_reads_boxes_landmarks_and_boxes_only(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", ["a/1.jpg", "a/2.jpg"])
    (tmp_path / "label.txt").write_text(
        f"# a/1.jpg\n{FACE}\n50 10 20 20 -1 -1 -1.0 " + "-1 " * 12 + "\n# a/2.jpg\n5 6 7 8\n"
    )
    samples = read_label_txt(tmp_path / "label.txt")
    assert [s.image.name for s in samples] == ["1.jpg", "2.jpg"]
    np.testing.assert_allclose(samples[0].boxes[0], [10, 20, 40, 60])
    np.testing.assert_allclose(samples[0].landmarks[0, :4], [15, 30, 32, 30])
    assert samples[0].has_landmarks.tolist() == [True, False]
    assert (samples[0].landmarks[1] == -1).all()
    np.testing.assert_allclose(samples[1].boxes, [[5, 6, 12, 14]])
    assert not samples[1].has_landmarks.any()


def test_bad_entries_skipped_and_counted_in_one_warning(tmp_path: Path, caplog) -> None:
    _write_images(tmp_path / "images", ["ok.jpg"], size=(100, 80))
    (tmp_path / "label.txt").write_text(
        "# ok.jpg\n"
        f"{FACE}\n"
        "1 2 3\n"  # malformed: 3 numbers
        "1 2 x 4\n"  # malformed: not a number
        "200 200 10 10\n"  # outside the 100x80 image
        "# missing.jpg\n1 1 5 5\n"  # missing image
    )
    with caplog.at_level(logging.WARNING):
        samples = read_label_txt(tmp_path / "label.txt")
    assert len(samples) == 1 and len(samples[0].boxes) == 1
    msgs = _warnings(caplog)
    assert len(msgs) == 1, msgs
    assert "skipped 4 bad entries" in msgs[0]
    assert "2 malformed line" in msgs[0] and "1 missing image" in msgs[0]
    assert "1 box outside the image" in msgs[0]


def test_box_partly_outside_is_clipped(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", ["ok.jpg"], size=(100, 80))
    (tmp_path / "label.txt").write_text("# ok.jpg\n90 70 20 20\n")
    (s,) = read_label_txt(tmp_path / "label.txt")
    np.testing.assert_allclose(s.boxes, [[90, 70, 100, 80]])


@pytest.mark.parametrize("content", ["", "\n\n", "1 2 3 4\n", "# gone.jpg\n1 1 4 4\n"])
def test_empty_or_unusable_label_file_is_a_one_line_dataset_error(tmp_path: Path, content: str) -> None:
    label = tmp_path / "label.txt"
    label.write_text(content)
    with pytest.raises(DatasetError) as err:
        read_label_txt(label)
    assert str(label) in str(err.value) and "\n" not in str(err.value)


def test_missing_label_file_is_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.txt"):
        read_label_txt(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match="no training data configured"):
        build_dataset(DataConfig())


def test_write_then_read_label_txt_round_trips(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", ["1.jpg"])
    (tmp_path / "label.txt").write_text(f"# 1.jpg\n{FACE}\n60 10 20 20\n")
    samples = read_label_txt(tmp_path / "label.txt")
    out = write_label_txt(samples, tmp_path / "copy" / "label.txt", tmp_path / "images")
    again = read_label_txt(out, image_root=tmp_path / "images")
    np.testing.assert_allclose(again[0].boxes, samples[0].boxes, atol=1e-3)
    np.testing.assert_allclose(again[0].landmarks, samples[0].landmarks, atol=1e-3)


def test_mirror_flips_pixels_boxes_and_swaps_left_right_landmarks() -> None:
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, :10] = 255  # bright stripe on the left
    boxes = np.array([[20, 10, 40, 40]], np.float32)
    # left eye (25, 20), right eye (35, 20), nose (30, 25), left mouth (26, 32), right mouth (34, 32)
    ldm = np.array([[25, 20, 35, 20, 30, 25, 26, 32, 34, 32]], np.float32)
    out, b, lm = mirror(img, boxes, np.concatenate([ldm, np.full((1, 10), -1, np.float32)]))
    assert out[:, -10:].min() == 255 and out[:, :-10].max() == 0
    np.testing.assert_allclose(b, [[60, 10, 80, 40]])
    # The eye seen on the image's left after the flip (x = 100 - 35) is again "left eye" (index 0).
    np.testing.assert_allclose(lm[0], [65, 20, 75, 20, 70, 25, 66, 32, 74, 32])
    assert lm[0, 0] < lm[0, 2] and lm[0, 6] < lm[0, 8]
    assert (lm[1] == -1).all()  # a face without landmarks stays without


def test_random_crop_keeps_faces_consistent() -> None:
    rng = np.random.default_rng(3)
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    boxes = np.array([[50, 50, 90, 100], [250, 150, 300, 210]], np.float32)
    ldm = np.array([[60, 70, 80, 70, 70, 80, 62, 90, 78, 90], [-1] * 10], np.float32)
    for _ in range(20):
        crop, b, lm, ok = random_crop(img, boxes, ldm, rng)
        assert ok and crop.shape[0] == crop.shape[1]
        assert (b[:, 2] > b[:, 0]).all() and (b >= 0).all() and (b <= crop.shape[0]).all()
        for bb, ll in zip(b, lm, strict=True):
            if ll[0] >= 0:  # landmarks still inside their (unclipped) box
                assert (ll[0::2] >= bb[0]).all() and (ll[0::2] <= bb[2]).all()
            else:
                assert (ll == -1).all()


def test_random_crop_draws_only_the_given_scales() -> None:
    rng = np.random.default_rng(5)
    img = np.zeros((300, 400, 3), np.uint8)
    boxes = np.array([[140, 140, 160, 160]], np.float32)  # a 20-px face fits every crop below
    ldm = np.full((1, 10), -1, np.float32)
    sides = {random_crop(img, boxes, ldm, rng, scales=(0.3, 0.45))[0].shape[0] for _ in range(40)}
    assert sides == {90, 135}  # 0.3 and 0.45 of the 300-px short side, nothing else
    from trainer.data.dataset import DataConfig

    with pytest.raises(ValueError, match="crop_scales"):
        DataConfig(crop_scales=(0.3, 1.5))


def test_train_transform_output_is_normalised_chw_minus_mean() -> None:
    img = np.full((120, 160, 3), (104, 117, 123), np.uint8)
    boxes = np.array([[40, 30, 80, 90]], np.float32)
    ldm = np.array([[50, 50, 70, 50, 60, 60, 52, 75, 68, 75]], np.float32)
    x, b, lm = TrainTransform(96, crop=False, distort=False, mirror=False)(
        img, boxes, ldm, np.random.default_rng(0)
    )
    assert x.shape == (3, 96, 96) and x.dtype == np.float32
    assert np.abs(x[:, :80, :80]).max() == 0  # the mean colour maps to 0; padding is the mean too
    np.testing.assert_allclose(b, [[40 / 160, 30 / 160, 80 / 160, 90 / 160]], rtol=1e-6)
    assert (lm >= 0).all() and (lm <= 1).all()


def _pattern_crops(n: int = 3) -> FaceCrops:
    """Crops that are green with a red 3x3 dot on each landmark: where they land is visible."""
    rng = np.random.default_rng(1)
    jpegs, pts, boxes = [], [], []
    for _ in range(n):
        p = np.array([[30, 35], [50, 35], [40, 45], [32, 55], [48, 55]], np.float32)
        p += rng.uniform(-3, 3, p.shape).astype(np.float32)
        img = np.zeros((80, 80, 3), np.uint8)
        img[:] = (0, 200, 0)
        for x, y in p.round().astype(int):
            img[y - 1 : y + 2, x - 1 : x + 2] = (0, 0, 255)
        jpegs.append(cv2.imencode(".png", img)[1].tobytes())
        pts.append(p)
        boxes.append(face_box_from_points(p, (80, 80)))
    return FaceCrops(tuple(jpegs), np.stack(pts), np.stack(boxes))


def test_synthetic_scene_labels_land_on_the_pasted_crops() -> None:
    crops = _pattern_crops()
    for seed in range(5):
        s = make_scene(crops, np.random.default_rng(seed), (320, 240), faces=(3, 6), face_px=(30, 60))
        img = s.pixels
        assert img.shape == (240, 320, 3) and s.image is None and len(s.boxes) >= 1
        for box, lm in zip(s.boxes, s.landmarks, strict=True):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            pts = lm.reshape(5, 2)
            assert (pts[:, 0] > x1).all() and (pts[:, 0] < x2).all()
            assert (pts[:, 1] > y1).all() and (pts[:, 1] < y2).all()
            for x, y in pts.round().astype(int):
                b, g, r = img[y, x].astype(int)
                assert r > 120 and g < 120, f"landmark ({x}, {y}) not on a red dot: {(b, g, r)}"
            # Between the two eye dots the face is the crop's green.
            cx, cy = ((pts[0] + pts[1]) / 2).round().astype(int)
            assert img[cy, cx, 1] > 150 and img[cy, cx, 2] < 100


def test_synthetic_face_box_is_tight_around_landmarks() -> None:
    p = np.array([[30, 35], [50, 35], [40, 45], [32, 55], [48, 55]], np.float32)
    x1, y1, x2, y2 = face_box_from_points(p, (80, 80))
    assert x1 < 30 and x2 > 50 and y1 < 35 and y2 > 55
    assert 1.0 < (y2 - y1) / (x2 - x1) < 1.5  # taller than wide, like WIDER boxes
    assert (x2 - x1) < 50  # tight: well inside the 80-pixel crop


@pytest.mark.shared
def test_face_crop_archive_loads_and_counts_missing_files(caplog) -> None:
    archive = need_shared("data/face-crops-5pt/lfw5590_net7876_aflw_80px.tar.gz")
    load_face_crops.cache_clear()
    with caplog.at_level(logging.WARNING):
        crops = load_face_crops(str(archive), "test")
    assert len(crops) > 1000 and crops.points.shape == (len(crops), 5, 2)
    assert crops.image(0).shape == (80, 80, 3)
    msgs = _warnings(caplog)
    assert len(msgs) <= 1 and all("missing image" in m for m in msgs)


def test_pseudo_labels_keep_confident_detections(tmp_path: Path, caplog) -> None:
    _write_images(tmp_path, ["a.jpg", "b.jpg"], size=(100, 80))
    (tmp_path / "c.jpg").write_bytes(b"not an image")

    def detect(img: np.ndarray):
        boxes = np.array([[10, 10, 40, 50], [60, 10, 130, 50], [0, 0, 2, 2]], np.float32)
        ldm = np.tile(np.array([15, 20, 30, 20, 22, 30, 17, 40, 28, 40], np.float32), (3, 1))
        return boxes, np.array([0.95, 0.9, 0.3]), ldm

    with caplog.at_level(logging.WARNING):
        samples = pseudo_label(sorted(tmp_path.glob("*.jpg")), detect, score_threshold=0.5)
    assert len(samples) == 2
    np.testing.assert_allclose(samples[0].boxes, [[10, 10, 40, 50], [60, 10, 100, 50]])  # clipped
    assert samples[0].has_landmarks.all()
    assert len(_warnings(caplog)) == 1 and "1 missing image" in _warnings(caplog)[0]
    with pytest.raises(DatasetError, match=r"no face with score >= 0\.99"):
        pseudo_label(sorted(tmp_path.glob("*.jpg")), detect, score_threshold=0.99)


def test_loader_order_and_augmentation_are_reproducible_and_skippable(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", [f"{i}.jpg" for i in range(6)], size=(100, 80))
    (tmp_path / "label.txt").write_text("".join(f"# {i}.jpg\n{FACE}\n" for i in range(6)))
    ds = build_dataset(DataConfig(label_file=str(tmp_path / "label.txt"), img_dim=64), seed=7)

    def batches(epoch: int, skip: int = 0) -> list[torch.Tensor]:
        return [x for x, _ in build_loader(ds, 2, epoch, seed=7, skip_batches=skip)]

    a, b = batches(0), batches(0)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a[1:], batches(0, skip=1), strict=True))
    assert not torch.equal(torch.stack(a), torch.stack(batches(1)))  # a new epoch, new order/augmentation


def test_face_dataset_rejects_empty() -> None:
    with pytest.raises(DatasetError, match="empty dataset"):
        FaceDataset([], TrainTransform())


@pytest.mark.shared
def test_wider_val_dev_readers_agree() -> None:
    root = need_shared("data/wider-val-dev")
    from_label = read_label_txt(root / "label.txt")
    from_mat = read_wider(root)
    from_txt = read_wider_bbx_txt(
        root / "wider_face_split" / "wider_face_val_bbx_gt.txt", root / "WIDER_val" / "images"
    )
    assert len(from_mat) == len(from_txt) == len(from_label) == 99
    assert sum(len(s.boxes) for s in from_mat) == sum(len(s.boxes) for s in from_txt) > 2000
    by_image = {t.image: t for t in from_txt}
    for m in from_mat:  # the .mat lists images in another order than the .txt
        np.testing.assert_allclose(m.boxes, by_image[m.image].boxes)
        assert not m.has_landmarks.any()


@pytest.mark.shared
def test_pseudo_labels_from_a_real_onnx_teacher_feed_the_dataset(tmp_path: Path) -> None:
    teacher = need_shared("weights/peers/retinaface_mbnet0.25.onnx")
    photos = need_shared("data/photos")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("1.jpg", "10.jpg"):
        (folder / name).write_bytes((photos / name).read_bytes())
    from trainer.eval.predict import pseudo_teacher

    cfg = DataConfig(pseudo_images=str(folder), pseudo_teacher=str(teacher), pseudo_scale=320, img_dim=128)
    with pytest.raises(DatasetError, match=r"data\.pseudo_teacher"):
        build_dataset(cfg)  # the data layer runs no model itself: the caller hands it the teacher
    ds = build_dataset(cfg, detect=pseudo_teacher(cfg))
    assert len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and len(target) >= 1
    assert (target[:, 14] == 1).all()  # the RetinaFace teacher gives landmarks for every face


def test_endless_batches_match_per_epoch_loaders_and_resume(tmp_path: Path) -> None:
    """One persistent-worker loader gives exactly the per-epoch loaders' batches, across epochs, with
    workers or without, and from any start batch (a resumed run)."""
    _write_images(tmp_path / "images", [f"{i}.jpg" for i in range(6)], size=(100, 80))
    (tmp_path / "label.txt").write_text("".join(f"# {i}.jpg\n{FACE}\n" for i in range(6)))
    ds = build_dataset(DataConfig(label_file=str(tmp_path / "label.txt"), img_dim=64), seed=7)
    expected = [x for epoch in range(3) for x, _ in build_loader(ds, 2, epoch, seed=7)]  # 3 per epoch

    def take(n: int, start: int = 0) -> list[torch.Tensor]:
        stream = endless_batches(ds, 2, seed=7, start_batch=start)
        return [next(stream)[0] for _ in range(n)]

    assert all(torch.equal(x, y) for x, y in zip(take(9), expected, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(take(5, start=4), expected[4:], strict=True))
    with pytest.raises(DatasetError, match="no full batch of 7"):
        next(endless_batches(ds, 7))
    # Under DDP each rank streams its own shard, batch for batch the per-epoch loader's: the two ranks
    # never see the same image in an epoch, and an epoch is half as many steps.
    shards = []
    for rank in (0, 1):
        stream = endless_batches(ds, 1, seed=7, start_batch=1, rank=rank, world_size=2)
        want = [x for e in range(2) for x, _ in build_loader(ds, 1, e, seed=7, rank=rank, world_size=2)]
        got = [next(stream)[0] for _ in range(5)]
        assert all(torch.equal(x, y) for x, y in zip(got, want[1:], strict=True))
        shards.append(want[:3])
    assert not any(torch.equal(a, b) for a in shards[0] for b in shards[1])
    # With worker processes, in a fresh interpreter: after the edge tests (MQTT broker children,
    # OpenVINO / ORT threads) this process was killed by SIGSEGV once DataLoader workers had run in
    # it, whatever the start method; a trainer run is always a process of its own.
    check = (
        "import sys, torch\n"
        "from trainer.data.dataset import DataConfig, build_dataset, build_loader, endless_batches\n"
        f"ds = build_dataset(DataConfig(label_file={str(tmp_path / 'label.txt')!r}, img_dim=64), seed=7)\n"
        "want = [x for e in range(3) for x, _ in build_loader(ds, 2, e, seed=7)]\n"
        "stream = endless_batches(ds, 2, seed=7, num_workers=2)\n"
        "got = [next(stream)[0] for _ in range(9)]\n"
        "stream.close()\n"
        "sys.exit(0 if all(torch.equal(a, b) for a, b in zip(got, want, strict=True)) else 3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_interleaved_batches_take_turns_and_resume_every_stream(tmp_path: Path) -> None:
    """Two input sizes take turns step by step, each stream the one its size alone would give, and a
    stream started at step k continues every size where the uninterrupted one was."""
    _write_images(tmp_path / "images", [f"{i}.jpg" for i in range(6)], size=(100, 80))
    (tmp_path / "label.txt").write_text("".join(f"# {i}.jpg\n{FACE}\n" for i in range(6)))
    small = build_dataset(DataConfig(label_file=str(tmp_path / "label.txt"), img_dim=64), seed=7)
    large = build_dataset(DataConfig(label_file=str(tmp_path / "label.txt"), img_dim=96), seed=7)
    sources = [(small, 2), (large, 1)]

    def take(n: int, start: int = 0) -> list[torch.Tensor]:
        stream = interleaved_batches(sources, seed=7, start_batch=start)
        try:
            return [next(stream)[0] for _ in range(n)]
        finally:
            stream.close()

    straight = take(10)
    assert [tuple(x.shape) for x in straight[:2]] == [(2, 3, 64, 64), (1, 3, 96, 96)]
    assert all(x.shape[-1] == (64 if t % 2 == 0 else 96) for t, x in enumerate(straight))
    alone = endless_batches(small, 2, seed=7)
    assert all(torch.equal(x, next(alone)[0]) for x in straight[0::2])
    alone.close()
    for start in (3, 4):
        resumed = take(10 - start, start=start)
        assert all(torch.equal(x, y) for x, y in zip(resumed, straight[start:], strict=True))
    # One source is the plain endless stream.
    one = interleaved_batches([(small, 2)], seed=7)
    assert torch.equal(next(one)[0], straight[0])
    one.close()


@pytest.mark.parametrize(
    "pair", [(100, 2), (640, 0), (640,), (640, 2, (0.5, 1.5)), (640, 2, (), 1), (640, 2, 0.5)]
)
def test_extra_inputs_must_be_sizes_and_batches(pair: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"extra_inputs entries must be \[img_dim"):
        DataConfig(extra_inputs=(pair,))  # type: ignore[arg-type]


def test_extra_inputs_read_with_or_without_their_own_crop_scales(tmp_path: Path) -> None:
    toml = tmp_path / "data.toml"
    toml.write_text("extra_inputs = [[640, 2], [1024, 1, []], [480, 2, [0.5, 1]]]\n")
    cfg = load_config(toml, DataConfig)
    assert cfg.extra_inputs == ((640, 2), (1024, 1, ()), (480, 2, (0.5, 1.0)))
    toml.write_text("extra_inputs = [[640, 2, [2]]]\n")
    with pytest.raises(ConfigError, match="extra_inputs entries must be"):
        load_config(toml, DataConfig)
    toml.write_text("extra_inputs = [[640]]\n")  # the error names the forms it takes
    with pytest.raises(ConfigError, match=r"expected tuple\[int, int\] or tuple\[int, int, tuple"):
        load_config(toml, DataConfig)


def test_resized_without_crop_shows_the_whole_image_padded(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", [f"{i}.jpg" for i in range(4)], size=(200, 160))
    (tmp_path / "label.txt").write_text("".join(f"# {i}.jpg\n{FACE}\n" for i in range(4)))
    ds = build_dataset(DataConfig(label_file=str(tmp_path / "label.txt"), img_dim=64), seed=7)
    whole = resized(ds, 96, seed=7, crop_scales=())
    # The 200x160 image padded to 200x200: the face (10, 20)-(40, 60) keeps its place and scale,
    # mirrored or not; a crop (the main stream's) would have moved or scaled it.
    straight, mirrored = torch.tensor([0.05, 0.1, 0.2, 0.3]), torch.tensor([0.8, 0.1, 0.95, 0.3])
    for i in range(len(ds)):
        image, target = whole[i]
        assert tuple(image.shape) == (3, 96, 96)
        box = target[0, :4]
        assert torch.allclose(box, straight, atol=1e-6) or torch.allclose(box, mirrored, atol=1e-6)
    assert ds.datasets[0].transform.crop  # the original keeps its crops
    chosen = resized(ds, 96, seed=7, crop_scales=(0.5,))
    assert chosen.datasets[0].transform.scales == (0.5,) and chosen.datasets[0].transform.crop


def test_resized_dataset_keeps_samples_and_draws_its_own_crops(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", [f"{i}.jpg" for i in range(4)], size=(200, 160))
    (tmp_path / "label.txt").write_text("".join(f"# {i}.jpg\n{FACE}\n" for i in range(4)))
    ds = build_dataset(DataConfig(label_file=str(tmp_path / "label.txt"), img_dim=64), seed=7)
    same_seed, own_seed = resized(ds, 96, seed=7), resized(ds, 96, seed=8)
    assert len(own_seed) == len(ds) and ds.datasets[0].transform.img_dim == 64  # the original is untouched
    image, target = same_seed[0]
    assert tuple(image.shape) == (3, 96, 96)
    torch.testing.assert_close(target, ds[0][1])  # same seed: the same crop, only larger
    assert any(not torch.equal(own_seed[i][1], ds[i][1]) for i in range(len(ds)))  # its own crops
