"""Approximate-time pairing: the pure-Python pairer, and the same contract on every importable node backend."""

from __future__ import annotations

import random

import pytest

from mafs_core.pairing import ApproxTimePairer

# ---------------------------------------------------------------- mafs_core.pairing (no ROS)


def feed(pairer: ApproxTimePairer, events: list[tuple[int, float, object]]) -> list:
    return [m for s, t, item in events if (m := pairer.add(s, t, item)) is not None]


def test_exact_stamps_pair_one_to_one() -> None:
    p = ApproxTimePairer(queue_size=5, slop=0.01)
    matches = feed(p, [(i % 2, 1.0 + 0.1 * (i // 2), (i % 2, i // 2)) for i in range(20)])
    assert [m.items for m in matches] == [((0, k), (1, k)) for k in range(10)]
    assert all(m.diff == 0 for m in matches)
    assert p.stats.matched == 10 and p.stats.unmatched == [0, 0] and p.pending() == (0, 0)


def test_slop_is_strict_and_closest_stamp_wins() -> None:
    p = ApproxTimePairer(queue_size=10, slop=0.05)
    assert p.add(0, 10.0, "t") is None
    assert p.add(1, 10.06, "far") is None  # outside slop
    assert p.add(1, 10.05, "edge") is None  # exactly slop: message_filters requires strictly less
    m = p.add(1, 10.04, "near")
    assert m is not None and m.items == ("t", "near") and m.diff == pytest.approx(-0.04)

    p = ApproxTimePairer(queue_size=10, slop=0.05)
    p.add(1, 5.00, "a")
    p.add(1, 5.03, "b")
    m = p.add(0, 5.02, "t")  # 5.03 is closer than 5.00
    assert m is not None and m.items == ("t", "b")
    assert p.pending() == (0, 1)


def test_queue_overflow_evicts_oldest_and_counts_it() -> None:
    p = ApproxTimePairer(queue_size=4, slop=0.01)
    for i in range(10):
        assert p.add(0, float(i), i) is None
    assert p.pending() == (4, 0) and p.stats.unmatched == [6, 0]
    assert p.add(1, 0.0, "late") is None  # its partner was evicted
    m = p.add(1, 9.0, "ok")
    assert m is not None and m.items == (9, "ok")
    m = p.add(0, 0.0, "resent")  # "late" waited in its queue: a new thermal item at 0.0 pairs with it
    assert m is not None and m.items == ("resent", "late")
    s = p.summary()
    assert s["received"] == [11, 2] and s["matched"] == 2 and s["pending"] == [3, 0]


def test_new_item_older_than_a_full_queue_is_evicted_without_matching() -> None:
    p = ApproxTimePairer(queue_size=2, slop=0.5)
    p.add(1, 0.0, "rgb0")
    p.add(0, 5.0, "a")
    p.add(0, 6.0, "b")
    assert p.add(0, 0.1, "stale") is None  # would match rgb0 but is evicted first, like message_filters
    assert p.stats.unmatched[0] == 1 and p.pending() == (2, 1)


def test_repeated_stamp_replaces_queued_item() -> None:
    p = ApproxTimePairer(queue_size=4, slop=0.01)
    p.add(0, 1.0, "first")
    p.add(0, 1.0, "second")
    assert p.stats.unmatched == [1, 0]
    assert p.add(1, 1.0, "rgb").items == ("second", "rgb")


@pytest.mark.parametrize("n", [1, 3, 9])
def test_out_of_order_sequences_recombine(n: int) -> None:
    """message_filters' own test: shuffled stream 0, then shuffled stream 1, all pairs found."""
    rng = random.Random(n)
    seq0 = [(0, float(t), f"t{t}") for t in range(n)]
    seq1 = [(1, float(t), f"r{t}") for t in range(n)]
    p = ApproxTimePairer(queue_size=n, slop=0.1)
    assert feed(p, rng.sample(seq0, n)) == []
    matches = feed(p, rng.sample(seq1, n))
    assert {m.items for m in matches} == {(f"t{t}", f"r{t}") for t in range(n)}


def test_thermal_offset_corrects_a_fixed_clock_difference() -> None:
    # thermal camera clock runs 0.5 s ahead: its stamps are rgb + 0.5 (+ jitter)
    rng = random.Random(0)
    events = []
    for k in range(30):
        t = 100.0 + k / 30
        events += [(1, t, ("rgb", k)), (0, t + 0.5 + rng.uniform(-0.003, 0.003), ("th", k))]
    without = feed(ApproxTimePairer(queue_size=10, slop=0.01), events)
    assert without == []
    p = ApproxTimePairer(queue_size=10, slop=0.01, offsets=(-0.5, 0.0))
    matches = feed(p, events)
    assert [(m.items[0][1], m.items[1][1]) for m in matches] == [(k, k) for k in range(30)]
    assert all(m.stamps[0] - m.stamps[1] == pytest.approx(0.5, abs=0.004) for m in matches)  # raw stamps kept
    assert abs(p.stats.diff.mean) < 0.003 and p.stats.diff.abs_max <= 0.0031


def test_statistics_of_stamp_differences() -> None:
    p = ApproxTimePairer(queue_size=10, slop=0.1)
    diffs = [0.01, -0.02, 0.03, 0.0]
    for k, d in enumerate(diffs):
        p.add(1, float(k), k)
        p.add(0, k + d, k)
    st = p.stats.diff
    assert st.count == 4 and st.mean == pytest.approx(sum(diffs) / 4)
    assert st.min == pytest.approx(-0.02) and st.max == pytest.approx(0.03) and st.abs_max == pytest.approx(0.03)
    assert st.std == pytest.approx((sum((d - st.mean) ** 2 for d in diffs) / 4) ** 0.5)
    assert p.summary()["stamp_diff"]["count"] == 4


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        ApproxTimePairer(queue_size=0)
    with pytest.raises(ValueError, match="slop"):
        ApproxTimePairer(slop=0.0)
    with pytest.raises(ValueError, match="stream"):
        ApproxTimePairer().add(2, 0.0, None)


# ---------------------------------------------------------------- mafs_ros.sync: same contract, every backend

sync = pytest.importorskip("mafs_ros.sync", reason="ROS message packages not installed")

BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(b not in sync.available_backends(),
                                                     reason=f"{b} not importable here (no ROS distribution)"))
            for b in ("message_filters", "builtin")]


def img(stamp: float, tag: str):
    from sensor_msgs.msg import Image

    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec = int(stamp), round((stamp - int(stamp)) * 1e9)
    m.header.frame_id = tag
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_pairs_offsets_and_counts(backend: str) -> None:
    out: list[tuple[str, str]] = []
    s = sync.make_sync(backend, queue_size=3, slop=0.01, thermal_offset=-0.25,
                       on_pair=lambda t, r: out.append((t.header.frame_id, r.header.frame_id)))
    assert s.name == backend
    for k in range(6):
        t = 50.0 + 0.1 * k
        s.add_rgb(img(t, f"r{k}"))
        s.add_thermal(img(t + 0.25 + 0.002, f"t{k}"))
    for k in range(5):  # thermal only: queue 3 -> 2 evicted
        s.add_thermal(img(60.0 + k, f"x{k}"))
    assert out == [(f"t{k}", f"r{k}") for k in range(6)]
    st = s.stats()
    assert st["received"] == [11, 6] and st["matched"] == 6
    assert st["pending"] == [3, 0] and st["unmatched"] == [2, 0]
    assert st["stamp_diff"]["mean"] == pytest.approx(0.002, abs=1e-6)
    s.add_rgb(img(70.0, "far"))
    assert s.closest_gap() == pytest.approx(64.0 - 0.25 - 70.0)  # latest thermal (offset applied) - nearest rgb


def test_auto_backend_and_bad_name() -> None:
    assert sync.make_sync("auto", 5, 0.05, 0.0, lambda t, r: None).name == sync.available_backends()[0]
    with pytest.raises(ValueError, match=r"sync\.backend"):
        sync.make_sync("nope", 5, 0.05, 0.0, lambda t, r: None)


# ---------------------------------------------------------------- time going backwards (bag loops, clock resets)


def looped_bag(passes: int = 3, seconds: float = 10.0, rgb_hz: float = 30.0, thermal_hz: float = 9.0) -> list:
    """A bag played ``passes`` times: (stream, stamp, (pass, stream, index)) in playback order."""
    one = sorted([(1, k / rgb_hz) for k in range(round(seconds * rgb_hz))]
                 + [(0, k / thermal_hz + 0.004) for k in range(round(seconds * thermal_hz))], key=lambda e: e[1])
    return [(s, t, (n, s, i)) for n in range(passes) for i, (s, t) in enumerate(one)]


def pairs_per_pass(matches: list, passes: int) -> list[int]:
    return [sum(m.items[0][0] == n for m in matches) for n in range(passes)]


def test_looping_bag_pairs_the_same_every_pass_once_jumps_back_are_detected() -> None:
    events = looped_bag()
    # message_filters' policy (and this class without jump_back): both queues fill with end-of-bag stamps,
    # every later message is older than all of them and is evicted on arrival
    starved = ApproxTimePairer(queue_size=10, slop=0.05)
    assert pairs_per_pass(feed(starved, events), 3) == [90, 4, 4]
    p = ApproxTimePairer(queue_size=10, slop=0.05, jump_back=1.0)
    assert pairs_per_pass(feed(p, events), 3) == [90, 90, 90]
    assert sum(p.stats.jumps_back) == 2  # once per loop: the first stream to go back clears both queues
    assert p.stats.received == [270, 900] and p.stats.matched == 270


def test_jump_back_keeps_late_frames_and_a_constant_camera_offset() -> None:
    p = ApproxTimePairer(queue_size=10, slop=0.05, jump_back=1.0)
    for k in range(20):  # thermal 5 s behind RGB, uncorrected: never a "jump", just no pairs
        assert p.add(1, 100.0 + 0.1 * k, k) is None
        assert p.add(0, 95.0 + 0.1 * k, k) is None
    assert p.stats.jumps_back == [0, 0]
    q = ApproxTimePairer(queue_size=10, slop=0.05, jump_back=1.0)
    q.add(1, 10.0, "r0")
    q.add(1, 10.5, "r1")
    m = q.add(0, 10.49, "late")  # out of order by 0.01 s within a stream's history: pairs as usual
    assert m is not None and m.items == ("late", "r1") and q.stats.jumps_back == [0, 0]
    q.add(0, 12.0, "t")
    m = q.add(0, 10.0, "back")  # 2 s back: "t" (later than the jump + 1 s) is dropped, r0 at 10.0 stays
    assert m is not None and m.items == ("back", "r0") and q.stats.jumps_back == [1, 0]
    assert q.pending() == (0, 0) and q.stats.unmatched == [1, 0]
    with pytest.raises(ValueError):
        ApproxTimePairer(jump_back=1.0).add(3, 0.0, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_recovers_from_a_bag_loop_and_says_so(backend: str) -> None:
    passes: list[int] = []
    jumps: list[tuple[int, float]] = []
    s = sync.make_sync(backend, 10, 0.05, 0.0, lambda t, r: passes.append(int(t.header.frame_id)),
                       on_jump=lambda stream, back: jumps.append((stream, back)))
    for stream, t, (n, _, _) in looped_bag():
        (s.add_thermal if stream == 0 else s.add_rgb)(img(100.0 + t, str(n)))
    assert [passes.count(n) for n in range(3)] == [90, 90, 90]
    assert len(jumps) == 2 and all(back == pytest.approx(10.0, abs=0.2) for _, back in jumps)
    st = s.stats()
    assert st["jumps_back"] == [0, 2] and st["matched"] == 270  # RGB (stamp 0.0) goes back first, once a loop


def test_shifted_thermal_stamp_is_never_negative() -> None:
    from builtin_interfaces.msg import Time as TimeMsg
    from rclpy.time import Time

    stamp, clamped = sync.shifted_stamp(TimeMsg(sec=0, nanosec=20_000_000), -50_000_000)
    assert (stamp.sec, stamp.nanosec, clamped) == (0, 0, True)
    Time.from_msg(stamp)  # what message_filters does with it: raised for the unclamped stamp (sec = -1)
    stamp, clamped = sync.shifted_stamp(TimeMsg(sec=3, nanosec=10), -1_000_000_000)
    assert (stamp.sec, stamp.nanosec, clamped) == (2, 10, False)
    shifted = sync._Shifted(img(0.02, "t"), -50_000_000)  # the message_filters path's wrapper
    assert shifted.clamped and (shifted.header.stamp.sec, shifted.header.stamp.nanosec) == (0, 0)
    Time.from_msg(shifted.header.stamp)
