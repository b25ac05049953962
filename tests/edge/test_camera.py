"""Frame sources: files, folders, synthetic, time-outs on hung devices, reopen with back-off."""

from __future__ import annotations

import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.bench import source_config_for
from edge.camera import SOURCE_TYPE_NAMES, SourceConfig, ThreadedSource, synthetic_frame
from edge.errors import ConfigError, SourceError
from edge.picamera import Picamera2Source, picamera_to_bgr
from edge.reconnect import SOURCE_TYPES, ReconnectingSource, open_source


def drain(source: Any, limit: int = 500, timeout_s: float = 2.0) -> list:
    frames = []
    while len(frames) < limit:
        frame = source.read(timeout_s)
        if frame is None:
            if source.ended:
                break
            raise AssertionError("read timed out on a file source")
        frames.append(frame)
    return frames


def test_image_folder_in_order_skipping_unreadable(tmp_path: Path) -> None:
    for i, name in enumerate(["b.png", "a.png", "c.jpg"]):
        cv2.imwrite(str(tmp_path / name), np.full((24, 32, 3), 40 * (i + 1), np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source({"type": "images", "path": str(tmp_path)}, reconnect=False)
    frames = drain(src)
    src.close()
    assert [int(f.image[0, 0, 0]) for f in frames] == [80, 40, 120]  # a, b, c (JPEG ~ exact on flat)
    assert [f.frame_id for f in frames] == [1, 2, 3]
    assert all(f.image.shape == (24, 32, 3) for f in frames)

    looped = open_source({"type": "images", "path": str(tmp_path), "loop": True}, reconnect=False)
    assert len(drain(looped, limit=10)) == 10
    looped.close()


def test_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        open_source({"type": "images", "path": str(tmp_path)}, reconnect=False)


def _write_video(path: Path, n: int, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8))
    writer.release()


def test_video_file_every_frame_then_end(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    _write_video(video, 10)
    src = open_source({"type": "video", "path": str(video)}, reconnect=False)
    frames = drain(src)
    assert len(frames) == 10 and src.ended
    assert [int(f.image.mean()) for f in frames[:3]] == pytest.approx([0, 20, 40], abs=3)
    src.close()
    # Wrapped the daemon's way: a file that ends is done (not reopened), frame ids continue.
    wrapped = open_source({"type": "video", "path": str(video), "loop": True})
    frames = drain(wrapped, limit=25)
    assert len(frames) == 25 and [f.frame_id for f in frames] == list(range(1, 26))
    wrapped.close()


def test_video_paced_by_fps(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    _write_video(video, 6)
    src = open_source({"type": "video", "path": str(video), "fps": 20.0}, reconnect=False)
    t0 = time.monotonic()
    assert len(drain(src)) == 6
    assert time.monotonic() - t0 >= 5 / 20 * 0.9
    src.close()


def test_synthetic_source_is_deterministic() -> None:
    src = open_source(
        {"type": "synthetic", "path": "", "width": 80, "height": 60, "frames": 4}, reconnect=False
    )
    frames = drain(src)
    assert len(frames) == 4 and src.ended
    assert np.array_equal(frames[2].image, synthetic_frame(2, 80, 60))
    assert frames[0].ts <= frames[-1].ts


class HangingSource(ThreadedSource):
    """Delivers ``good`` frames, then blocks inside the "driver" forever (until released)."""

    live = True

    def __init__(self, cfg: SourceConfig, good: int = 0, hang_connect: bool = False) -> None:
        super().__init__(cfg)
        self.good, self.hang_connect = good, hang_connect
        self.release = threading.Event()

    def _connect(self) -> dict[str, int]:
        if self.hang_connect:
            self.release.wait()
        return {"n": 0}

    def _grab(self, state: dict[str, int]) -> np.ndarray | None:
        if state["n"] >= self.good:
            self.release.wait()
            return None
        state["n"] += 1
        return np.zeros((8, 8, 3), np.uint8)


def test_read_times_out_on_a_hung_device() -> None:
    src = HangingSource(SourceConfig(type="synthetic", name="hung"), good=1)
    src.open()
    assert src.read(1.0) is not None
    t0 = time.monotonic()
    assert src.read(0.2) is None
    assert 0.15 <= time.monotonic() - t0 < 1.0
    assert not src.ended
    t0 = time.monotonic()
    src.close()  # must not wait for the stuck driver call
    assert time.monotonic() - t0 < 1.5
    src.release.set()


def test_open_times_out_on_a_hung_device() -> None:
    src = HangingSource(SourceConfig(type="synthetic", name="hung", open_timeout_s=0.2), hang_connect=True)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=re.escape("timed out opening after 0.2 s")):
        src.open()
    assert time.monotonic() - t0 < 1.0
    src.release.set()


class FlakySource(ThreadedSource):
    """Fails to open ``fail_opens`` times, then gives ``frames_per_open`` frames and dies."""

    live = True

    def __init__(self, fail_opens: int, frames_per_open: int = 1000) -> None:
        super().__init__(SourceConfig(type="synthetic", name="flaky"))
        self.fail_opens, self.frames_per_open = fail_opens, frames_per_open
        self.open_times: list[float] = []

    def _connect(self) -> dict[str, int]:
        self.open_times.append(time.monotonic())
        if len(self.open_times) <= self.fail_opens:
            raise SourceError("flaky: device not found")
        return {"n": 0}

    def _grab(self, state: dict[str, int]) -> np.ndarray:
        if state["n"] >= self.frames_per_open:
            raise OSError("USB disconnect")
        state["n"] += 1
        time.sleep(0.005)
        return np.zeros((8, 8, 3), np.uint8)


def _read_until_frame(src: ReconnectingSource, budget_s: float = 5.0) -> Any:
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        frame = src.read(0.05)
        if frame is not None:
            return frame
    raise AssertionError("no frame within budget")


def test_reopen_with_exponential_back_off() -> None:
    flaky = FlakySource(fail_opens=4)
    statuses: list[tuple[str, str]] = []
    src = ReconnectingSource(
        flaky, on_status=lambda s, r: statuses.append((s, r)), reconnect_min_s=0.05, reconnect_max_s=0.3
    )
    src.open()  # fails, and does not raise: start-up never blocks on a camera
    assert statuses == [("offline", "flaky: device not found")]
    _read_until_frame(src)
    gaps = np.diff(flaky.open_times)
    assert len(gaps) == 4
    # 0.05, 0.1, 0.2, then capped at 0.3; each wait at least the back-off, not much more.
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.3], strict=True):
        assert expected * 0.9 <= gap < expected + 0.15, (gaps, expected)
    assert [s for s, _ in statuses] == ["offline", "online"]
    src.close()


def test_device_lost_mid_stream_goes_offline_and_comes_back() -> None:
    flaky = FlakySource(fail_opens=0, frames_per_open=3)
    statuses: list[str] = []
    src = ReconnectingSource(flaky, on_status=lambda s, r: statuses.append(s), reconnect_min_s=0.05)
    src.open()
    ids = [_read_until_frame(src).frame_id for _ in range(7)]
    assert ids == list(range(1, 8))  # ids keep increasing across reopens
    assert statuses[:3] == ["online", "offline", "online"]
    assert src.attempts >= 3
    src.close()


def test_stalled_source_is_reopened() -> None:
    stuck = HangingSource(SourceConfig(type="synthetic", name="stuck"), good=2)
    statuses: list[tuple[str, str]] = []
    src = ReconnectingSource(
        stuck, on_status=lambda s, r: statuses.append((s, r)), reconnect_min_s=0.05, stall_timeout_s=0.3
    )
    src.open()
    assert _read_until_frame(src) is not None
    deadline = time.monotonic() + 3.0
    while len(statuses) < 2 and time.monotonic() < deadline:
        src.read(0.05)
    assert statuses[1][0] == "offline" and "stalled" in statuses[1][1]
    before = src.attempts
    time.sleep(0.06)
    src.read(0.05)
    assert src.attempts == before + 1
    stuck.release.set()
    src.close()


def test_unplugged_v4l2_device_backs_off_without_raising() -> None:
    statuses: list[tuple[str, str]] = []
    cfg = {"type": "opencv", "path": "/dev/video97", "reconnect_min_s": 0.05}
    src = open_source(cfg, on_status=lambda s, r: statuses.append((s, r)))
    assert src.read(0.1) is None
    assert statuses and statuses[0][0] == "offline" and "/dev/video97 does not exist" in statuses[0][1]
    with pytest.raises(SourceError, match="does not exist"):
        open_source(cfg, reconnect=False)
    src.close()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        open_source({"type": "video", "file": "x.avi"})
    with pytest.raises(ConfigError, match=re.escape("source.type")):
        SourceConfig(type="webcam")
    with pytest.raises(ConfigError, match=re.escape("[source] path")):
        open_source({"type": "video", "path": str(tmp_path / "missing.avi")})
    assert set(SOURCE_TYPES) == set(SOURCE_TYPE_NAMES)  # the names the config accepts all build
    with pytest.raises(ConfigError, match="reconnect_max_s"):
        SourceConfig(reconnect_min_s=5, reconnect_max_s=1)


def test_bench_source_spec(tmp_path: Path) -> None:
    assert source_config_for("synthetic").type == "synthetic"
    assert source_config_for("0").type == "opencv"
    assert source_config_for("rtsp://u:p@cam/stream").type == "url"
    assert source_config_for(str(tmp_path)).type == "images"
    with pytest.raises(ConfigError):
        source_config_for(str(tmp_path / "nothing.mp4"))


def test_picamera_arrays_to_bgr() -> None:
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 2] = 200  # red
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # what the lores YUV420 stream returns
    back = picamera_to_bgr(i420, 64, 48)
    assert back.shape == (48, 64, 3) and abs(int(back[..., 2].mean()) - 200) < 6 and back[..., 0].mean() < 10
    xbgr = np.dstack([bgr, np.full((48, 64), 255, np.uint8)])
    assert np.array_equal(picamera_to_bgr(xbgr, 64, 48), bgr)
    assert picamera_to_bgr(bgr, 64, 48) is bgr


def test_picamera2_source_configures_main_and_lores(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Pi camera here: a stand-in ``picamera2`` module records what the source asks of it."""
    calls: dict[str, Any] = {}

    class FakePicamera2:
        def __init__(self, num: int) -> None:
            calls["num"] = num

        def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
            return kw

        def configure(self, config: dict[str, Any]) -> None:
            calls["config"] = config

        def start(self) -> None:
            calls["started"] = True

        def capture_array(self, stream: str) -> np.ndarray:
            calls["stream"] = stream
            return np.full((40, 60, 4), 7, np.uint8)

        def stop(self) -> None:
            calls["stopped"] = True

        def close(self) -> None:
            calls["closed"] = True

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    src = Picamera2Source(SourceConfig(type="picamera2", path="1", width=60, height=40, fps=15))
    src.open()
    frame = src.read(2.0)
    src.close()
    assert frame is not None and frame.image.shape == (40, 60, 3)
    assert calls["num"] == 1 and calls["stream"] == "main" and calls["stopped"] and calls["closed"]
    assert calls["config"]["main"] == {"size": (60, 40), "format": "RGB888"}
    assert calls["config"]["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert calls["config"]["controls"] == {"FrameRate": 15.0}


def test_picamera2_missing_is_a_clear_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as on a non-Pi machine
    with pytest.raises(SourceError, match="picamera2 is not importable"):
        open_source({"type": "picamera2", "path": "0"}, reconnect=False)


def test_live_source_keeps_the_newest_frame_and_counts_drops() -> None:
    src = ReconnectingSource(FlakySource(fail_opens=0))
    src.open()
    first = _read_until_frame(src)
    time.sleep(0.2)  # a slow detector: the camera keeps producing (one frame per ~5 ms)
    second = _read_until_frame(src)
    assert second.ts - first.ts > 0.15  # not a backlog frame from just after `first`
    assert src.dropped_frames >= 10
    src.close()


def test_live_synthetic_source_stands_in_for_a_camera() -> None:
    """``live = true``: frames keep coming at ``fps`` while nobody reads, the reader gets the newest."""
    cfg = {"type": "synthetic", "path": "", "width": 40, "height": 30, "fps": 100.0}
    src = open_source({**cfg, "live": True}, reconnect=False)
    first = src.read(2.0)
    time.sleep(0.3)  # a slow detector: ~30 frames are produced meanwhile, all but the newest dropped
    second = src.read(2.0)
    assert first is not None and second is not None
    assert second.ts - first.ts > 0.25 and src.dropped_frames >= 15
    src.close()
    # Not live (the default for synthetic): every frame is kept, in order, none dropped.
    src = open_source({**cfg, "frames": 6}, reconnect=False)
    time.sleep(0.2)
    frames = drain(src)
    assert len(frames) == 6 and src.dropped_frames == 0
    assert np.array_equal(frames[1].image, synthetic_frame(1, 40, 30))
    src.close()


def test_url_credentials_never_in_names() -> None:
    cfg = SourceConfig(type="url", path="rtsp://admin:hunter2@10.0.0.2:554/live")
    assert "hunter2" not in cfg.name and cfg.name == "url:rtsp://***@10.0.0.2:554/live"
